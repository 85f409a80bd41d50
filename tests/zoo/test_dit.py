import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.sampling import sample
from optkit.zoo.dit import DiT, DiTConfig, example_inputs, null_labels, sincos_pos_embed_2d
from optkit.zoo.registry import TrainSettings, get_model
from optkit.zoo.training import train_denoiser


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the adaLN-Zero parameters (zero at init) random values so that every path is live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_registry_entry_and_sizes() -> None:
    entry = get_model("dit")
    assert entry.task == "diffusion-image" and entry.sampler == "ddim"
    assert entry.sizes == ("tiny", "small")
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, DiT)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert n_tiny < 1_500_000
    small = entry.build(entry.configs["small"])
    assert 4 <= sum(p.numel() for p in small.parameters()) / n_tiny <= 10
    diffusion = entry.workload().diffusion
    assert diffusion.guidance_scale == 2.0
    assert torch.equal(diffusion.null_condition((torch.tensor([3, 4]),))[0], torch.tensor([10, 10]))


def test_adaln_zero_starts_at_zero_and_labels_condition() -> None:
    model = DiT(DiTConfig.tiny()).eval()
    inputs = example_inputs(model, 2, seed=3)
    x, t, y = inputs
    assert x.shape == (2, 2, 8, 8) and t.shape == (2,) and y.dtype == torch.int64
    for a, b in zip(inputs, example_inputs(model, 2, seed=3), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(model(*inputs), torch.zeros_like(x))  # adaLN-Zero + zero output layer
        h = torch.randn(2, 16, 96)
        c = torch.randn(2, 96)
        assert torch.equal(model.blocks[0](h, c), h)  # every block starts as the identity
    live = randomize_zero_init(model)
    with torch.no_grad():
        out = live(*inputs)
        null = live(x, t, null_labels((y,))[0])
    assert out.shape == x.shape and (out - null).abs().max() > 1e-4
    assert isinstance(live.blocks, nn.ModuleList) and len(live.blocks) == 6


def test_unpatchify_inverts_patch_layout() -> None:
    model = DiT(DiTConfig.tiny())
    img = torch.randn(2, 2, 8, 8)  # latents
    # tokens in raster order of 2x2 patches, positions within a patch row-major, channels last
    tokens = img.reshape(2, 2, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 8)
    assert torch.equal(model.unpatchify(tokens), img)


def test_sincos_positions() -> None:
    pos = sincos_pos_embed_2d(96, 8)
    assert pos.shape == (64, 96)
    # row half depends only on the row, column half only on the column
    grid = pos.reshape(8, 8, 96)
    assert torch.equal(grid[2, 0, :48], grid[2, 5, :48]) and torch.equal(grid[0, 3, 48:], grid[6, 3, 48:])
    assert torch.allclose(pos[:, :24] ** 2 + pos[:, 24:48] ** 2, torch.ones(64, 24))


def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = randomize_zero_init(DiT(DiTConfig.tiny())).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="dit")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert [p for p in program.block_paths() if p.startswith("blocks.")] == [f"blocks.{i}" for i in range(6)]
    figures = export_onnx(program, tmp_path / "dit.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-2


def test_training_reduces_loss_and_samples() -> None:
    cfg = DiTConfig(dim=32, depth=2, heads=2)
    model = DiT(cfg)
    gen = torch.Generator().manual_seed(0)
    # Synthetic latents: a bright square whose column is the label.
    images = -torch.ones(200, 2, 8, 8)
    labels = torch.randint(0, 10, (200,), generator=gen)
    for i in range(200):
        c = int(labels[i]) // 2
        images[i, :, 2:6, c : c + 3] = 1.0
    losses: list[float] = []

    def batches(g: torch.Generator, b: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        idx = torch.randint(0, 200, (b,), generator=g)
        return images[idx], (labels[idx],)

    settings = TrainSettings(
        steps=60, batch_size=32, lr=2e-3, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    figures = train_denoiser(model, batches, settings, "eps", null_cond=null_labels)
    assert len(losses) == 60 and figures["final_loss"] == pytest.approx(losses[-1])
    assert sum(losses[-10:]) / 10 < 0.6 * losses[0]
    y = torch.arange(4)
    x = sample(
        model,
        (4, 2, 8, 8),
        sampler="ddim",
        steps=5,
        seed=0,
        cond=(y,),
        uncond=null_labels((y,)),
        guidance_scale=2.0,
    )
    assert x.shape == (4, 2, 8, 8) and torch.isfinite(x).all()
    assert model.decode(x).shape == (4, 1, 16, 16)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="patch"):
        DiTConfig(patch=3)
    with pytest.raises(ConfigError, match="heads"):
        DiTConfig(dim=96, heads=5)


def test_train_fits_the_first_stage_then_the_transformer() -> None:
    entry = get_model("dit")
    model = DiT(DiTConfig(dim=32, depth=1, heads=2))
    figures = entry.train(model, TrainSettings(steps=5, batch_size=8, seed=0))
    assert figures["autoencoder_steps"] == 1 and figures["latent_scale"] != 1.0
    assert all(p.requires_grad for p in model.parameters())
    digits = torch.rand(2, 1, 16, 16) * 2 - 1
    z = model.encode(digits)
    assert z.shape == (2, 2, 8, 8) and model.decode(z).shape == (2, 1, 16, 16)


def test_shipped_checkpoint_draws_the_requested_digits() -> None:
    entry = get_model("dit")
    if not entry.checkpoint_path("tiny").exists():
        pytest.skip("no shipped dit checkpoint")
    from optkit.zoo.registry import EvalSettings

    figures = entry.evaluate(entry.create("tiny"), EvalSettings(num_samples=40, steps=20, batch_size=40))
    assert figures["class_accuracy"] >= 0.5  # chance is 0.1; 256 samples x 50 steps: see docs/zoo.md
