import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.flops import total_flops
from optkit.ir.onnx_io import export_onnx
from optkit.nn.mate import MATE, MateConfig
from optkit.nn.temporal_swin import TemporalSwinAttention
from optkit.zoo.moviegen import video_block

TINY = MateConfig(d_state=8, headdim=16, chunk_size=16, review_tokens=2, window=(2, 2, 2))


def _tesa_reference(module: TemporalSwinAttention, x: torch.Tensor) -> torch.Tensor:
    # Full attention over all tokens with an explicit (N, N) mask: same shifted window and same
    # region of the unshifted grid on every axis.
    t, h, w = module.grid
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in (t, h, w)), indexing="ij"), -1).reshape(
        -1, 3
    )
    allowed = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool)
    for axis in range(3):
        size, win, s = module.grid[axis], module.window[axis], module.shift[axis]
        rolled = (coords[:, axis] - s) % size
        window_id = rolled // win
        region = (
            (rolled >= size - win).long() + (rolled >= size - s).long() if s else torch.zeros_like(rolled)
        )
        allowed &= (window_id[:, None] == window_id[None]) & (region[:, None] == region[None])
    bsz, n, d = x.shape
    q, k, v = module.qkv(x).reshape(bsz, n, 3, module.heads, -1).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) * (d // module.heads) ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, n, d)
    return module.proj(out)


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(
    ("grid", "window"), [((4, 4, 4), (2, 2, 2)), ((2, 6, 4), (2, 3, 4)), ((4, 8, 8), (4, 4, 4))]
)
def test_temporal_swin_matches_masked_full_attention(shifted, grid, window) -> None:
    tesa = TemporalSwinAttention(16, 2, grid, window, shifted=shifted)
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 16)
    torch.testing.assert_close(tesa(x), _tesa_reference(tesa, x), atol=1e-5, rtol=1e-5)
    assert any(tesa.shift) == (shifted and any(wi < g for wi, g in zip(tesa.window, grid, strict=True)))


def test_temporal_swin_is_local() -> None:
    tesa = TemporalSwinAttention(16, 2, (4, 4, 4), (2, 2, 2))
    x = torch.randn(1, 64, 16)
    y = x.clone()
    y[:, 0] += 1.0  # token (0, 0, 0): its window is t, h, w in {0, 1}
    changed = (tesa(x) - tesa(y)).abs().amax(-1)[0].reshape(4, 4, 4) > 0
    assert changed[:2, :2, :2].all() and changed.sum() == 8


@pytest.mark.parametrize("layer_index", [0, 1, 2, 3])
@pytest.mark.parametrize("grid", [(2, 4, 4), (4, 4, 6)])
def test_mate_shapes_and_every_token_mixes(layer_index: int, grid: tuple[int, int, int]) -> None:
    mate = MATE(32, 2, grid, layer_index, TINY)
    n = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, n, 32)
    out = mate(x)
    assert out.shape == (2, n, 32)
    y = x.clone()
    y[:, n - 1] += 1.0  # the last token reaches the first through the bidirectional scan
    assert (mate(y) - out)[:, 0].abs().max() > 0
    assert mate.tesa.shift != (0, 0, 0) or layer_index % 2 == 0


def test_mate_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of the window"):
        MATE(32, 2, (3, 4, 4), 0, MateConfig(window=(2, 2, 2), headdim=16))
    with pytest.raises(ConfigError):
        MateConfig(review_tokens=-1)


def _block_flops(kind: str, grid: tuple[int, int, int]) -> int:
    block = video_block(kind, 32, grid, heads=2, mate=TINY)
    return total_flops(capture(block, (torch.randn(1, grid[0] * grid[1] * grid[2], 32),)))


@pytest.mark.slow
def test_mate_cost_is_linear_attention_is_not() -> None:
    small, large = (2, 8, 8), (8, 16, 16)  # 128 -> 2048 tokens (16x)
    mate_ratio = _block_flops("mate", large) / _block_flops("mate", small)
    attn_ratio = _block_flops("attention", large) / _block_flops("attention", small)
    assert 14 < mate_ratio < 16 * 1.1
    assert attn_ratio > 16 * 2


@pytest.mark.slow
def test_mate_capture_and_onnx_match_eager(tmp_path) -> None:
    mate = MATE(32, 2, (4, 4, 4), 1, TINY).eval()  # shifted windows, H-major scan
    x = torch.randn(2, 64, 32)
    program = capture(mate, (x,))
    with torch.no_grad():
        expected = mate(x)
    torch.testing.assert_close(program.run(x), expected, atol=1e-5, rtol=1e-5)
    figures = export_onnx(program, tmp_path / "mate.onnx")
    assert figures["max_abs_error"] < 1e-4
