"""Scale-shift alignment of reused block outputs (Block Caching, Wimbauer et al., CVPR 2024).

A reused value `c_r` (cached at step r) differs from what the block would compute at step s.
The paper corrects it with a per-channel affine map `scale * c_r + shift` for every block and
step. Deviation: the paper trains the scale and shift by distillation through the whole
denoiser; here each (block, step) pair gets a closed-form per-channel least-squares fit of
`c_s` on `c_r`, both taken from the uncached sampling trajectories of the calibration seeds
(so no training loop and no gradients). The slope is shrunk slightly towards 1 so that
channels with (almost) no variance keep the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from optkit.caching.forecast import check_order
from optkit.caching.forecast import forecast as predict
from optkit.caching.schedule import CacheSchedule
from optkit.errors import ConfigError


def channel_axis(value: torch.Tensor) -> int:
    """The channel axis of a block value: last for token tensors (B, N, D), 1 for (B, C, ...)."""
    return -1 if value.dim() <= 3 else 1


@dataclass(frozen=True)
class ScaleShift:
    """Per-channel `scale` and `shift` (C,) applied along `axis` of a cached value."""

    scale: torch.Tensor
    shift: torch.Tensor
    axis: int

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        """`scale * value + shift`, broadcast along the channel axis."""
        shape = [1] * value.dim()
        shape[self.axis] = -1
        return value * self.scale.reshape(shape) + self.shift.reshape(shape)

    def to_lists(self) -> list[list[float]]:
        return [self.scale.tolist(), self.shift.tolist(), [float(self.axis)]]

    @classmethod
    def from_lists(cls, data: Sequence[Sequence[float]]) -> ScaleShift:
        return cls(torch.tensor(data[0]), torch.tensor(data[1]), int(data[2][0]))


def fit_scale_shift(cached: torch.Tensor, target: torch.Tensor, shrink: float = 1e-3) -> ScaleShift:
    """Least-squares per-channel `scale`, `shift` minimizing ||scale * cached + shift - target||^2.

    `cached` and `target` have the same shape; the channel axis is `channel_axis(cached)`.
    `shrink` (relative to the mean channel variance) pulls the slope towards 1.
    """
    axis = channel_axis(cached)
    x = cached.movedim(axis, -1).reshape(-1, cached.shape[axis]).double()  # (M, C)
    y = target.movedim(axis, -1).reshape(-1, cached.shape[axis]).double()  # (M, C)
    mx, my = x.mean(0), y.mean(0)  # (C,)
    var = ((x - mx) ** 2).mean(0)  # (C,)
    cov = ((x - mx) * (y - my)).mean(0)  # (C,)
    lam = shrink * float(var.mean()) + 1e-12
    scale = (cov + lam) / (var + lam)  # (C,)
    shift = my - scale * mx  # (C,)
    return ScaleShift(scale.float(), shift.float(), axis)


def fit_alignment(
    values: Mapping[str, Sequence[Sequence[torch.Tensor]]],
    schedule: CacheSchedule,
    forecast: int = 0,
    timesteps: Sequence[float] | None = None,
) -> dict[tuple[str, int], list[ScaleShift]]:
    """Fit one `ScaleShift` per cached tensor of every (block, reuse step) of `schedule`.

    `values[block][step]` are the block's cached tensors at each step of the uncached sampler
    (as `ChangeProfile.values` holds them, calibration seeds concatenated on the batch axis).
    The fit maps the value at the block's last recompute step to the value at the reuse step;
    with `forecast` 1 or 2 it maps the forecast from the last recompute steps (at the sampler's
    `timesteps`, see `optkit.caching.forecast`) instead, as the runner will feed it.
    """
    check_order(forecast)
    if forecast and (timesteps is None or len(timesteps) < schedule.steps):
        raise ConfigError(f"forecast alignment needs the timestep of each of the {schedule.steps} steps")
    fitted: dict[tuple[str, int], list[ScaleShift]] = {}
    for path, flags in schedule.recompute.items():
        recomputed: list[int] = []
        for step, recompute in enumerate(flags):
            if recompute:
                recomputed.append(step)
                continue
            if forecast:
                assert timesteps is not None  # checked above
                history = [(timesteps[r], values[path][r]) for r in recomputed[-(forecast + 1) :]]
                source = predict(history, timesteps[step], forecast)
            else:
                source = list(values[path][recomputed[-1]])
            fitted[(path, step)] = [
                fit_scale_shift(c, t) for c, t in zip(source, values[path][step], strict=True)
            ]
    return fitted


def alignment_to_data(alignment: Mapping[tuple[str, int], list[ScaleShift]]) -> dict[str, dict[str, list]]:
    """JSON-friendly form {block: {step: [[scale, shift, [axis]], ...]}} for annotations."""
    data: dict[str, dict[str, list]] = {}
    for (path, step), fits in alignment.items():
        data.setdefault(path, {})[str(step)] = [f.to_lists() for f in fits]
    return data


def alignment_from_data(
    data: Mapping[str, Mapping[str, Sequence]],
) -> dict[tuple[str, int], list[ScaleShift]]:
    """Inverse of `alignment_to_data`."""
    return {
        (path, int(step)): [ScaleShift.from_lists(f) for f in fits]
        for path, steps in data.items()
        for step, fits in steps.items()
    }
