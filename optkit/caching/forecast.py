"""Feature forecasting of cached block values (TaylorSeer, Liu et al., "From Reusing to
Forecasting: Accelerating Diffusion Models with TaylorSeers", ICCV 2025).

Plain block caching reuses a block's value from its last recompute step. TaylorSeer instead
extrapolates it: the values at the last recompute steps give finite-difference estimates of the
feature's derivatives along the sampling trajectory, and a Taylor expansion carries it to the
reuse step. Order 1 extrapolates linearly from the last two recomputes, order 2 quadratically
from the last three; with fewer recomputes so far the order drops (one recompute = reuse).

Deviation: TaylorSeer expands over the step index with the interval between full steps as unit;
here the expansion is the interpolating polynomial through the recompute points over the
sampler's timestep `t` (Newton's divided differences, evaluated as Lagrange weights), which is
the same on a uniform timestep grid and also fits non-uniform grids (shifted flow schedules).
A value that is linear in `t` is forecast exactly by order 1, a quadratic one by order 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from optkit.errors import ConfigError

MAX_ORDER = 2


def check_order(order: int) -> int:
    """`order` if it is a forecast order optkit has (0 = reuse, 1, 2), else a ConfigError."""
    if order not in range(MAX_ORDER + 1) or isinstance(order, bool):
        raise ConfigError(f"forecast must be 0 (plain reuse), 1 or 2 (Taylor order), got {order!r}")
    return int(order)


def forecast_weights(times: Sequence[float], t: float) -> list[float]:
    """Weights `w_i` such that `sum_i w_i v_i` is the polynomial through `(times[i], v_i)`
    evaluated at `t` (Lagrange form). Repeated times are not allowed."""
    if len(set(times)) != len(times):
        raise ConfigError(f"forecasting needs distinct timesteps, got {list(times)}")
    weights = []
    for i, ti in enumerate(times):
        w = 1.0
        for j, tj in enumerate(times):
            if j != i:
                w *= (t - tj) / (ti - tj)
        weights.append(w)
    return weights


def forecast(
    history: Sequence[tuple[float, Sequence[torch.Tensor]]], t: float, order: int
) -> list[torch.Tensor]:
    """The cached tensors extrapolated to timestep `t` from `history`, a list of (timestep,
    tensors) of the last recompute steps, oldest first. Uses the last `order + 1` entries (fewer
    when the history is shorter); with one entry the tensors are returned as they are."""
    if not history:
        raise ConfigError("nothing to forecast from: the block has not been computed yet")
    points = list(history[-(order + 1) :])
    if len(points) == 1:
        return list(points[0][1])
    weights = forecast_weights([p[0] for p in points], t)
    out = []
    for parts in zip(*(p[1] for p in points), strict=True):
        value = weights[0] * parts[0]
        for w, part in zip(weights[1:], parts[1:], strict=True):
            value = value + w * part
        out.append(value)
    return out
