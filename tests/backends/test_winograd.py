"""Winograd F(2 x 2, 3 x 3) and F(4 x 4, 3 x 3) convs (`winograd.py`): the transforms' algebra,
the lowered conv against torch with its epilogue (AVX-512 and AVX2 vectors), where it applies,
and exact math keeping the direct conv."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from optkit.backends import lower, vnni, winograd
from torch import nn

from optkit.cli.main import cli
from optkit.ir.capture import capture
from tests.backends.conftest import host_float_tiles, outputs_of

AVX512 = host_float_tiles() == vnni.F32
# AVX2 code runs on AVX-512 CPUs too: the float tile arithmetics this host can run
HOST_FMA = [vnni.F32_AVX2, vnni.F32] if AVX512 else [vnni.F32_AVX2] if host_float_tiles() else []


@pytest.mark.parametrize("variant", [winograd.F2, winograd.F4], ids=["F2", "F4"])
def test_the_transforms_compute_a_valid_correlation(variant):
    """Y = A^T [(G g G^T) . (B^T d B)] A is the m x m correlation of the alpha x alpha tile d with g."""
    rng = np.random.default_rng(0)
    m, alpha = variant.m, variant.alpha
    d, g = rng.standard_normal((alpha, alpha)), rng.standard_normal((3, 3))
    direct = np.array([[(d[i : i + 3, j : j + 3] * g).sum() for j in range(m)] for i in range(m)])
    u = variant.g @ g @ variant.g.T
    v = variant.bt @ d @ variant.bt.T
    np.testing.assert_allclose(variant.at @ (u * v) @ variant.at.T, direct, atol=1e-12)
    # the weight transform is the same per (input, output) channel, float32, positions first
    w = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    transformed = winograd.weight_transform(w, variant)
    assert transformed.shape == (alpha * alpha, 2, 5) and transformed.dtype == np.float32
    expected = variant.g @ w[:, :, 1, 3].astype(np.float64) @ variant.g.T
    np.testing.assert_allclose(transformed[:, 1, 3].reshape(alpha, alpha), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "pad", "groups", "channels", "arith", "applies"),
    [
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1, (16, 32), vnni.F32, True),
        ((3, 3), [2, 2], [1, 1], [1, 1, 1, 1], 1, (16, 32), vnni.F32, False),
        ((3, 3), [1, 1], [2, 2], [1, 1, 1, 1], 1, (16, 32), vnni.F32, False),
        ((3, 3), [1, 1], [1, 1], [0, 0, 0, 0], 1, (16, 32), vnni.F32, False),
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 2, (16, 32), vnni.F32, False),
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1, (4, 32), vnni.F32, False),
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1, (16, 40), vnni.F32, False),
        ((5, 5), [1, 1], [1, 1], [1, 1, 1, 1], 1, (16, 32), vnni.F32, False),
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1, (16, 32), vnni.F32_AVX2, True),
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1, (16, 32), vnni.U8S8, False),
        ((3, 3), [1, 1], [1, 1], [1, 1, 1, 1], 1, (16, 32), None, False),
    ],
    ids=[
        "fits",
        "strided",
        "dilated",
        "unpadded",
        "grouped",
        "rgb",
        "odd-outputs",
        "5x5",
        "avx2",
        "int8",
        "no-fma",
    ],
)
def test_applies(kernel, stride, dilation, pad, groups, channels, arith, applies):
    assert winograd.applies(kernel, stride, dilation, pad, groups, channels, arith) == applies


class _Block(nn.Module):
    """A ResNet block's second half: a 3 x 3 conv on an activation, its bias, a residual, ReLU."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, out, 1)  # the block's input is no transposed model image
        self.conv = nn.Conv2d(out, out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.first(x))
        return torch.relu(self.conv(y) + y)


@pytest.mark.parametrize("arith", HOST_FMA, ids=lambda a: f"lanes{a.width}")
@pytest.mark.parametrize(
    ("batch", "channels", "out", "height", "width"),
    [(2, 16, 32, 6, 6), (1, 32, 16, 5, 7), (16, 16, 16, 1, 2), (1, 16, 16, 8, 8), (2, 16, 32, 9, 11)],
)
def test_a_winograd_conv_matches_torch_with_its_epilogue(
    monkeypatch, arith, batch, channels, out, height, width
):
    monkeypatch.setattr(vnni, "float_arith", lambda _target: arith)  # AVX2's 8 lanes on any AVX2 host
    torch.manual_seed(0)
    x = torch.randn(batch, channels, height, width)
    program = capture(_Block(channels, out).eval(), (x,), name="block")
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["winograd_convs"] == 1
    (got,) = artifact.run(x)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HOST_FMA, reason="Winograd convs run on CPUs with AVX2 or AVX-512 FMAs")
@pytest.mark.parametrize(
    "options", [{"fast_math": False}, {"winograd": False}], ids=["exact-math", "no-winograd"]
)
def test_exact_math_or_no_winograd_keeps_the_direct_conv(options):
    torch.manual_seed(0)
    program = capture(_Block(16, 16).eval(), (torch.randn(1, 16, 6, 6),), name="block")
    artifact = lower(program, "cpu", num_cores=1, **options)
    assert artifact.info["winograd_convs"] == 0
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HOST_FMA, reason="Winograd convs run on CPUs with AVX2 or AVX-512 FMAs")
def test_the_lower_command_takes_no_winograd(tmp_path, monkeypatch):
    (tmp_path / "conv_block.py").write_text(
        "import torch\n"
        "from tests.backends.test_winograd import _Block\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return _Block(16, 16).eval(), (torch.randn(1, 16, 6, 6),)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for flags, convs in (([], 1), (["--no-winograd"], 0)):
        out = f"art{convs}"
        result = CliRunner().invoke(cli, ["-q", "lower", "conv_block:make", *flags, "-o", out])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / out / "manifest.json").read_text())["winograd_convs"] == convs


@pytest.mark.parametrize(
    ("batch", "size", "m"),
    [
        (8, (28, 28), 4),
        (8, (4, 4), 4),
        (2, (6, 6), 2),  # F4's 8 tiles cost more than F2's 18
        (1, (7, 7), 2),  # F4's 36 GEMMs would be 4 rows each
        (16, (1, 2), 2),
        (1, (4, 4), None),  # ResNet-18's last stage at batch 1: F2's 4 rows a GEMM, direct
        (1, (2, 2), None),
    ],
)
def test_the_variant_of_least_cost(batch, size, m):
    """F4 where its tiles past the edge cost less than F2's and its GEMMs have enough rows to pay
    for streaming their weights; else F2, or the direct conv (None)."""
    chosen = winograd.choose(batch, *size)
    assert (chosen.m if chosen is not None else None) == m


@pytest.mark.skipif(not HOST_FMA, reason="Winograd convs run on CPUs with AVX2 or AVX-512 FMAs")
def test_a_saved_artifact_stores_the_3x3_weights_and_loads_the_same_outputs(tmp_path):
    from optkit.backends import load_artifact
    from optkit.backends.weights import Spilled

    torch.manual_seed(0)
    x = torch.randn(8, 64, 12, 12)
    program = capture(_Block(64, 128).eval(), (x,), name="block")
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["winograd_convs"] == 1 and len(artifact.derivations) == 1
    # until saved, the 3 x 3 source waits in a temporary file, not in memory
    assert isinstance(next(iter(artifact.derivations.values())).source, Spilled)
    path = artifact.save(tmp_path / "art")
    manifest = json.loads((path / "manifest.json").read_text())
    (entry,) = [t for t in manifest["weights"]["tensors"] if "derived" in t]
    assert entry["shape"] == [3, 3, 128, 128] and entry["derived"]["kind"] == "winograd"
    # F4: 36 transformed positions stored as the 9 taps they come from
    assert (
        entry["derived"]["shape"][0] * 16 == 36 * 128
        and manifest["weights"]["bytes"] * 4 <= artifact.info["weight_bytes"] + 4096
    )
    loaded = load_artifact(path)
    np.testing.assert_array_equal(loaded.run(x)[0], artifact.run(x)[0])
