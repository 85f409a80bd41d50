import numpy as np
import pytest
import torch
from optkit.backends import expand_depthwise, lower
from torch import nn

from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes
from tests.backends.conftest import host_float_tiles, outputs_of

pytestmark = pytest.mark.skipif(host_float_tiles() is None, reason="the pair is fused on CPUs with FMA tiles")


@pytest.fixture(autouse=True)
def _any_fma_width(monkeypatch):
    # Lowering fuses on AVX2 only (`applies`); the kernel is checked on AVX-512 hosts too.
    monkeypatch.setattr(expand_depthwise, "WIDTHS", (8, 16))


DEFAULT_WIDTHS = expand_depthwise.WIDTHS
ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "none": nn.Identity}


class _Block(nn.Module):
    """An inverted residual block (MobileNetV2): expand 1 x 1, BatchNorm, activation, depthwise
    3 x 3, BatchNorm, ReLU6, project 1 x 1; `share` also adds the expanded activation's mean to
    the output, so that it has a second reader."""

    def __init__(
        self, channels: int, expanded: int, stride: int, activation: str, share: bool = False
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, channels, 1)  # the block reads NHWC, as inside a network
        self.expand = nn.Sequential(
            nn.Conv2d(channels, expanded, 1, bias=False), nn.BatchNorm2d(expanded), ACTIVATIONS[activation]()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(expanded, expanded, 3, stride, 1, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded),
            nn.ReLU6(),
        )
        self.project = nn.Conv2d(expanded, channels, 1)
        self.share = share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.expand(self.stem(x))
        y = self.project(self.depthwise(e))
        return y + e.mean() if self.share else y


def _program(stride: int, activation: str = "relu6", share: bool = False, width: int = 12):
    torch.manual_seed(0)
    model = _Block(8, 32, stride, activation, share).eval()
    for bn in (model.expand[1], model.depthwise[1]):  # statistics that move the values
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    program = capture(model, (torch.randn(2, 8, width, width),))
    return PassManager(build_passes(["cleanup"])).run(program).program


@pytest.mark.parametrize(
    ("stride", "activation", "width"),
    [(1, "relu6", 12), (2, "relu6", 12), (1, "relu", 7), (2, "none", 9)],
)
def test_fused_block_matches_torch_and_the_kernels_apart(stride, activation, width, monkeypatch):
    # Widths 12, 7 and 9: register tiles of 4 and of 1 pixel, row blocks of several rows.
    program = _program(stride, activation, width=width)
    monkeypatch.setattr(expand_depthwise, "MIN_BYTES", 1 << 40)
    apart = lower(program, "cpu", num_cores=1)
    monkeypatch.setattr(expand_depthwise, "MIN_BYTES", 0)
    fused = lower(program, "cpu", num_cores=1)
    assert (apart.info["expand_depthwise_convs"], fused.info["expand_depthwise_convs"]) == (0, 1)
    (want,) = outputs_of(program)
    (got,) = fused.run(*program.example_inputs)
    (got_apart,) = apart.run(*program.example_inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, got_apart, rtol=1e-6, atol=1e-6)


def test_an_expansion_read_twice_stays_apart(monkeypatch):
    # The expanded activation feeds the depthwise conv and a mean: it must still be written.
    program = _program(1, share=True)
    monkeypatch.setattr(expand_depthwise, "MIN_BYTES", 0)
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["expand_depthwise_convs"] == 0
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


def test_lowering_fuses_on_avx2_only(monkeypatch):
    monkeypatch.setattr(expand_depthwise, "WIDTHS", DEFAULT_WIDTHS)
    assert expand_depthwise.applies(8)  # AVX2: measured
    assert not expand_depthwise.applies(16)  # AVX-512: not measured


def test_small_expansions_stay_apart():
    # 2 x 12 x 12 x 32 float32 (37 KiB) stays in cache between the two kernels: not fused.
    artifact = lower(_program(1), "cpu", num_cores=1)
    assert artifact.info["expand_depthwise_convs"] == 0


def test_row_blocks_divide_the_rows_and_fit_the_budget():
    # MobileNetV2's 56 x 56 x 96 stride-2 pair: 28 output rows; 7 per block read 15 expanded
    # rows (315 KiB), 14 per block would read 29 (609 KiB, past the 384 KiB budget).
    assert expand_depthwise.block_rows(28, 56, 96, 2, 3) == 7
    assert expand_depthwise.block_rows(28, 28, 144, 1, 3) == 14
    assert expand_depthwise.block_rows(5, 4096, 256, 1, 3) == 1  # one row is all the budget holds
    for rows, width, channels, stride in ((28, 56, 96, 2), (14, 14, 192, 1), (7, 7, 384, 1)):
        block = expand_depthwise.block_rows(rows, width, channels, stride, 3)
        assert rows % block == 0
        assert ((block - 1) * stride + 3) * width * channels * 4 <= expand_depthwise.BLOCK_BYTES


def test_a_kernel_the_rule_cannot_schedule_still_lowers(monkeypatch):
    # Whatever an epilogue holds, the fused kernel builds: on the generic rules if need be.
    def refuse(*_args):
        raise ValueError("refused")

    program = _program(2)
    monkeypatch.setattr(expand_depthwise, "MIN_BYTES", 0)
    monkeypatch.setattr(expand_depthwise, "schedule_expand_depthwise", refuse)
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["expand_depthwise_convs"] == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)
