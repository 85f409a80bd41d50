import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.zoo.moviegen import (
    VideoTransformer,
    VideoTransformerConfig,
    apply_rope,
    digit_prompt,
    example_inputs,
    rope_3d_angles,
    video_block,
)
from optkit.zoo.registry import get_model


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the adaLN-Zero parameters (zero at init) random values so that every path is live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif p.dim() == 2 and (p.abs().sum(dim=1) == 0).any():  # per-block tables with zeroed gate rows
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def moving_squares(n: int, cfg: VideoTransformerConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic videos in [-1, 1]: a 4x4 square moving one pixel per frame; label = start column."""
    gen = torch.Generator().manual_seed(seed)
    r, frames = cfg.resolution, cfg.frames
    videos = -torch.ones(n, 1, frames, r, r)
    labels = torch.randint(0, 10, (n,), generator=gen)
    rows = torch.randint(0, r - 4, (n,), generator=gen)
    for i in range(n):
        for f in range(frames):
            col = (int(labels[i]) + f) % (r - 4)
            videos[i, 0, f, rows[i] : rows[i] + 4, col : col + 4] = 1.0
    return videos, labels


def flow_loss(model: nn.Module, x0: torch.Tensor, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    s = torch.rand(x0.shape[0], generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    xs = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
    return ((model(xs, 1000 * s, text) - (noise - x0)) ** 2).mean()


def training_reduces_loss(model: nn.Module, steps: int = 30, batch: int = 8) -> tuple[float, float]:
    """Loss on a fixed held-out draw before and after `steps` AdamW steps on moving squares."""
    cfg = model.config
    videos, labels = moving_squares(64, cfg, seed=0)
    prompts = digit_prompt(labels, cfg.text_len)
    held = (videos[:16], prompts[:16])

    def held_loss() -> float:
        with torch.no_grad():
            return float(flow_loss(model, *held, torch.Generator().manual_seed(123)))

    before = held_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 64, (batch,), generator=gen)
        loss = flow_loss(model, videos[idx], prompts[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return before, held_loss()


def test_registry_entry() -> None:
    entry = get_model("moviegen")
    assert entry.task == "diffusion-video" and entry.sampler == "flow-euler"
    assert entry.sizes == ("tiny", "small")
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, VideoTransformer) and tiny.config.mixer == "attention"
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert n_tiny < 1_500_000
    small = entry.build(entry.configs["small"])
    assert 4 <= sum(p.numel() for p in small.parameters()) / n_tiny <= 10


def test_shapes_blocks_and_deterministic_inputs() -> None:
    model = randomize_zero_init(VideoTransformer(VideoTransformerConfig.tiny())).eval()
    inputs = example_inputs(model, 2, seed=3)
    x, t, text = inputs
    assert x.shape == (2, 1, 8, 16, 16) and t.shape == (2,) and text.shape == (2, 4)
    assert text.dtype == torch.int64 and (text[:, 1:] == 0).all() and (text[:, 0] >= 1).all()
    for a, b in zip(inputs, example_inputs(model, 2, seed=3), strict=True):
        assert torch.equal(a, b)
    assert model(*inputs).shape == x.shape
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 4
    # the prompt conditions the output; the null prompt (all zeros) is a different condition
    null = model(x, t, torch.zeros_like(text))
    assert (model(x, t, text) - null).abs().max() > 1e-4


def test_patchify_round_trip() -> None:
    model = VideoTransformer(VideoTransformerConfig.tiny())
    x = torch.randn(2, 1, 8, 16, 16)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 4 * 8 * 8, 8)
    assert torch.equal(model.unpatchify(tokens), x)


def test_rope_3d_relative_positions() -> None:
    grid = (3, 4, 5)
    angles = rope_3d_angles(grid, 24)
    cos, sin = angles.cos(), angles.sin()
    q, k = torch.randn(1, 1, 1, 24).expand(1, 1, 60, 24), torch.randn(1, 1, 1, 24).expand(1, 1, 60, 24)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    dots = (rq[0, 0] @ rk[0, 0].T).reshape(3, 4, 5, 3, 4, 5)
    # same offset in (t, h, w) -> same score
    torch.testing.assert_close(dots[0, 0, 0, 1, 2, 3], dots[1, 1, 1, 2, 3, 4])
    assert not torch.allclose(dots[0, 0, 0, 1, 2, 3], dots[0, 0, 0, 1, 3, 2])


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = randomize_zero_init(VideoTransformer(VideoTransformerConfig.tiny())).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="moviegen")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert [p for p in program.block_paths() if p.startswith("blocks.")][:4] == [
        f"blocks.{i}" for i in range(4)
    ]
    assert export_onnx(program, tmp_path / "moviegen.onnx")["max_abs_error"] < 1e-4


@pytest.mark.slow
def test_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    before, after = training_reduces_loss(VideoTransformer(VideoTransformerConfig.tiny()))
    assert after < 0.8 * before


@pytest.mark.parametrize("kind", ["attention", "mate"])
def test_video_block(kind: str) -> None:
    block = video_block(kind, 32, (2, 8, 8), heads=2)
    assert block(torch.randn(1, 128, 32)).shape == (1, 128, 32)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="patch"):
        VideoTransformerConfig(patch=(3, 2, 2))
    with pytest.raises(ConfigError, match="mixer"):
        VideoTransformerConfig(mixer="conv")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        video_block("conv", 32, (2, 8, 8))  # type: ignore[arg-type]
