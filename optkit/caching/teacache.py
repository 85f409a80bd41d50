"""The TeaCache indicator (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model", CVPR 2025): an input-side gate for reusing the whole block stack.

1. Indicator: the relative L1 change, between consecutive steps, of the first block's
   timestep-modulated input (for an adaLN block `norm(x) * (1 + scale) + shift`; for a UNet
   ResBlock `conv(x) + proj(temb)`), found as the first node of the first cached block that
   depends on both the noisy input and the timestep (`modulated_input`).
2. Rescale: the indicator is cheap but biased; a polynomial fitted on the calibration
   trajectories maps it to the relative L1 change of the model output (`fit_rescale`).
3. Gate: the rescaled change accumulates over steps; when it reaches the threshold every block
   recomputes and the accumulator resets, otherwise every block reuses its cached value.

Deviation: TeaCache decides per sample at run time. optkit's step variants are fixed per step
at calibration (they are what gets lowered), so the gate here is static: the rescaled indicator
is averaged over the calibration lanes (seeds, CFG branches) per step and accumulated once
(`rescaled_change`, `optkit.caching.schedule.teacache_schedule`). The polynomial is fitted here (degree 2 by default) instead of TeaCache's
published per-model coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from optkit.caching.profile import ChangeProfile
from optkit.caching.variants import CacheUnit, reached_from
from optkit.errors import ConfigError
from optkit.ir.program import Program

DEGREE = 2


def modulated_input(program: Program, unit: CacheUnit) -> str:
    """The node name of `unit`'s timestep-modulated input: the first node inside the block that
    depends on the noisy input (first placeholder) and on the timestep (second), followed
    through elementwise adds of the same shape (the `+ shift` of adaLN). ConfigError when the
    block has none (then the model gives TeaCache nothing to read)."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    if len(placeholders) < 2:
        raise ConfigError(f"{program.name} must take (x, t, ...) for the TeaCache indicator")
    on_x = reached_from(program.graph, placeholders[0])
    on_t = reached_from(program.graph, placeholders[1])
    block = next((b for b in program.blocks() if b.path == unit.path), None)
    if block is None:
        raise ConfigError(f"{program.name} has no block {unit.path}")
    node = next((n for n in block.nodes if n in on_x and n in on_t), None)
    if node is None:
        raise ConfigError(
            f"block {unit.path} of {program.name} has no node that sees both the noisy input and the "
            "timestep; the teacache policy needs a timestep-modulated input"
        )
    inside = set(block.nodes)
    while len(node.users) == 1:
        user = next(iter(node.users))
        same = user.meta.get("val") is not None and getattr(user.meta["val"], "shape", None) == getattr(
            node.meta.get("val"), "shape", ()
        )
        if user in inside and user.target is torch.ops.aten.add.Tensor and same:
            node = user
        else:
            break
    return node.name


@dataclass(frozen=True)
class Rescale:
    """The polynomial `sum_k coefficients[k] * x**k` mapping the indicator to the output change,
    and how well it fits the calibration pairs (`r2`, 1 = exact)."""

    coefficients: tuple[float, ...]
    r2: float

    def __call__(self, x: float) -> float:
        return max(0.0, sum(c * x**k for k, c in enumerate(self.coefficients)))


def fit_rescale(indicator: Sequence[float], output: Sequence[float], degree: int = DEGREE) -> Rescale:
    """Least-squares polynomial of `degree` from indicator changes to output changes (pairs of
    the same step and lane)."""
    if len(indicator) != len(output) or len(indicator) <= degree:
        raise ConfigError(
            f"the rescale of degree {degree} needs more than {degree} (indicator, output) pairs, "
            f"got {len(indicator)} and {len(output)}"
        )
    x = torch.tensor(indicator, dtype=torch.float64)
    y = torch.tensor(output, dtype=torch.float64)
    design = torch.stack([x**k for k in range(degree + 1)], dim=1)  # (P, degree + 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]  # (degree + 1,)
    residual = float(((design @ coef - y) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return Rescale(tuple(float(c) for c in coef), 1.0 - residual / total if total > 0 else 1.0)


def rescaled_change(indicator: Sequence[Sequence[float]], rescale: Rescale) -> list[float]:
    """The gate's change per step: the rescaled indicator change (`indicator[lane][step]`, step
    0 = 0) averaged over the calibration lanes; `teacache_schedule` accumulates it."""
    if not indicator:
        raise ConfigError("the TeaCache gate needs the indicator of at least one calibration lane")
    steps = len(indicator[0])
    return [sum(rescale(lane[s]) for lane in indicator) / len(indicator) if s else 0.0 for s in range(steps)]


def profile_gate(profile: ChangeProfile, degree: int = DEGREE) -> tuple[Rescale, list[float]]:
    """The rescale fitted on `profile` (recorded with one probe, the modulated input, see
    `block_change_profile(probes=...)`) and the gate change per step (`rescaled_change`)."""
    if len(profile.probe_change) != 1 or not profile.output_change:
        raise ConfigError(
            "the teacache policy needs a change profile recorded with the modulated-input probe "
            "(block_change_profile(..., probes=[modulated_input(program, units[0])]))"
        )
    lanes = next(iter(profile.probe_change.values()))
    indicator = [lane[s] for lane in lanes for s in range(1, profile.steps)]
    output = [lane[s] for lane in profile.output_change for s in range(1, profile.steps)]
    rescale = fit_rescale(indicator, output, degree)
    return rescale, rescaled_change(lanes, rescale)
