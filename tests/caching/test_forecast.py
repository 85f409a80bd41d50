"""TaylorSeer-style forecasting of cached values: exact on polynomials of its order, in the
runner (a block whose residual is linear in t is forecast exactly), and in the alignment fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optkit.caching import (
    CachedSampler,
    CacheSchedule,
    cache_units,
    fit_alignment,
    forecast,
    forecast_weights,
    uncached_sample,
)
from optkit.errors import ConfigError
from optkit.ir.capture import capture

TIMES = [900.0, 700.0, 450.0]  # non-uniform on purpose


def _history(fn, times=TIMES):
    return [(t, [fn(t)]) for t in times]


def test_order_1_is_exact_on_a_value_linear_in_t():
    a, b = torch.randn(3, 4), torch.randn(3, 4)

    def linear(t: float) -> torch.Tensor:
        return a + b * (t / 1000)

    (out,) = forecast(_history(linear, TIMES[:2]), 100.0, 1)
    torch.testing.assert_close(out, linear(100.0))
    (reused,) = forecast(_history(linear, TIMES[:2]), 100.0, 0)  # plain reuse: the last value
    assert torch.equal(reused, linear(TIMES[1]))


def test_order_2_is_exact_on_a_quadratic_and_order_1_is_not():
    a, b, c = torch.randn(5), torch.randn(5), torch.randn(5)

    def quadratic(t: float) -> torch.Tensor:
        s = t / 1000  # keep the values small so float32 stays exact enough
        return a + b * s + c * s * s

    (second,) = forecast(_history(quadratic), 200.0, 2)
    torch.testing.assert_close(second, quadratic(200.0))
    (first,) = forecast(_history(quadratic), 200.0, 1)
    assert (first - quadratic(200.0)).abs().max() > 1e-3


def test_a_short_history_lowers_the_order_and_weights_sum_to_one():
    value = torch.randn(2)
    (out,) = forecast([(900.0, [value])], 100.0, 2)  # one recompute so far: plain reuse
    assert torch.equal(out, value)
    assert sum(forecast_weights(TIMES, 123.0)) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="distinct"):
        forecast_weights([1.0, 1.0], 0.5)
    with pytest.raises(ConfigError, match="not been computed"):
        forecast([], 1.0, 1)


class _LinearBlock(nn.Module):
    """Residual block whose residual is linear in t: (h + w * t) - h = w * t."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4) * 1e-3)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return h + self.w * t[:, None]  # (B, 4)


class _LinearDenoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_LinearBlock(), _LinearBlock()])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h, t)
        return h - x  # the prediction depends on t only through the blocks' residuals


def test_the_runner_forecasts_a_residual_linear_in_t_exactly(sample_fn):
    torch.manual_seed(0)
    program = capture(_LinearDenoiser(), (torch.randn(2, 4), torch.rand(2) * 1000), name="linear")
    units = cache_units(program)
    flags = (True, True, False, False, True, False)  # two recomputes before the first reuse
    schedule = CacheSchedule(len(flags), {u.path: flags for u in units})
    kw = {"sampler": "ddim", "seed": 3, "sample_fn": sample_fn}
    reference = uncached_sample(program, (2, 4), steps=len(flags), **kw)
    forecast_1 = CachedSampler(program, schedule, units, forecast=1)
    reused = CachedSampler(program, schedule, units)
    torch.testing.assert_close(forecast_1.sample((2, 4), **kw), reference, rtol=1e-5, atol=1e-6)
    assert (reused.sample((2, 4), **kw) - reference).abs().max() > 1e-4
    assert forecast_1.evaluations == reused.evaluations == 2 * sum(flags)


def test_with_forecasting_every_recompute_before_a_reuse_fills_the_cache(tiny_denoiser_program):
    units = cache_units(tiny_denoiser_program)
    flags = (True, True, False, True, True)
    schedule = CacheSchedule(len(flags), {u.path: flags for u in units})
    plain = CachedSampler(tiny_denoiser_program, schedule, units)
    ahead = CachedSampler(tiny_denoiser_program, schedule, units, forecast=2)
    assert plain.plan(0) == ([], []) and ahead.plan(0) == ([], units)  # step 0 is history for step 2
    assert plain.plan(1) == ahead.plan(1) == ([], units)
    assert ahead.plan(3) == ([], [])  # no reuse after step 3: nothing to keep
    with pytest.raises(ConfigError, match="forecast must be 0"):
        CachedSampler(tiny_denoiser_program, schedule, units, forecast=3)


def test_forecast_alignment_fits_the_forecast_not_the_last_value():
    steps = [[torch.full((2, 3, 4, 4), 1.0 + s)] for s in range(4)]  # value = 1 + step: linear
    schedule = CacheSchedule(4, {"b": (True, True, False, False)})
    times = [900.0, 800.0, 700.0, 600.0]
    fits = fit_alignment({"b": steps}, schedule, forecast=1, timesteps=times)
    # The forecast is already exact: the fitted correction is the identity.
    torch.testing.assert_close(fits[("b", 3)][0].apply(torch.full((2, 3, 4, 4), 4.0)), steps[3][0])
    with pytest.raises(ConfigError, match="timestep"):
        fit_alignment({"b": steps}, schedule, forecast=1)
