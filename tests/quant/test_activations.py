"""The activation grids of `optkit.quant.activations`: static, per-token and per-group, 8 and 4 bits."""

import pytest
import torch

from optkit.quant.activations import act_spec, dynamic_qmax, fake_quantize_rows, static_range
from optkit.quant.observers import Observer


def _rows(seed: int = 0) -> torch.Tensor:
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(seed))
    x[:, 5] *= 40.0  # one outlier channel, in the first group of 64
    return x


@pytest.mark.parametrize("bits", [4, 8])
def test_per_group_rounds_each_group_onto_its_own_range(bits):
    x = _rows()
    x[:, 64:] = x[:, 64:].abs()  # a one-signed group (a GELU's output) gets all its steps too
    q = fake_quantize_rows(x, "per-group", bits, group=64)
    for g in range(2):
        part, got = x[:, g * 64 : (g + 1) * 64], q[:, g * 64 : (g + 1) * 64]
        lo, hi = part.amin(1, keepdim=True).clamp(max=0), part.amax(1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (2**bits - 1)
        for row in got[:8]:
            assert row.unique().numel() <= 2**bits
        assert float((got - part).abs().div(scale).max()) <= 0.5 + 1e-3  # round to nearest
    assert dynamic_qmax(bits) == 2 ** (bits - 1) - 1


def test_per_group_keeps_an_outlier_channel_off_the_other_groups_grid():
    x = _rows()
    err = {
        mode: (fake_quantize_rows(x, mode, 4, group=64) - x)[:, 64:].pow(2).mean()
        for mode in ("per-token", "per-group")
    }
    assert err["per-group"] < err["per-token"] / 20  # the second group no longer sees channel 5


def test_per_group_falls_back_to_rows_when_the_group_does_not_divide():
    x = _rows()[:, :96]
    torch.testing.assert_close(
        fake_quantize_rows(x, "per-group", 4, group=64), fake_quantize_rows(x, "per-token", 4)
    )


def test_static_4bit_grid_has_sixteen_levels_and_its_range():
    x = _rows(1)
    obs = Observer("minmax")
    obs.update(x)
    scale, zero = obs.qparams(act_spec(4))
    q = fake_quantize_rows(x, "static", 4, observer="minmax")
    assert q.unique().numel() <= 16
    lo, hi = static_range(scale.reshape(()), (zero.reshape(()) - 128).to(torch.int8), 4)
    assert float(q.min()) >= lo - 1e-5 and float(q.max()) <= hi + 1e-5
    assert hi - lo == pytest.approx(15 * float(scale), rel=1e-6)
    assert static_range(scale, zero, 8) is None  # int8 rounding clamps by itself
