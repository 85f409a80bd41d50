"""Change profile: how much each block's output moves from one sampler step to the next.

Block Caching (Wimbauer et al., CVPR 2024), section "analysis": for block i at step t the
relative absolute change L1rel(i, t) = ||o_i,t - o_i,t-1||_1 / ||o_i,t||_1, averaged over
calibration prompts and seeds. The paper's observations (smooth change, distinct per-block
patterns, small steps) are what makes caching work; the schedule policies read this profile.

Here `o` is the value the cache holds (see `variants.py`): the residual of residual blocks
(what reuse replaces) and the output of other blocks. The profile runs the uncached sampler
once per calibration seed through a variant that returns every block's value, and keeps those
values: scale-shift alignment fits on them. Step 0 has no predecessor; its change is 0.

For the TeaCache indicator (`teacache.py`) the profile also records, per lane, the relative L1
change of the nodes `probes` (the first block's modulated input) and of the model output, and
for forecasting the sampler's timestep of every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from optkit.caching.runner import CachedSampler, SampleFn, check_sampler
from optkit.caching.schedule import uniform_schedule
from optkit.caching.variants import CacheUnit
from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.sampling import SamplerSpec


@dataclass
class ChangeProfile:
    """Per block: relative L1 change per step (`change`) and the values per step (`values`,
    each a list of tensors with the calibration seeds and lanes concatenated on the batch axis).
    `timesteps`: the sampler's timestep per step. Per calibration lane (seed x CFG branch x
    chunk) and step: the relative L1 change of each probe node (`probe_change[name]`) and of the
    model output (`output_change`)."""

    blocks: list[str]
    steps: int
    sampler: str
    change: dict[str, list[float]]
    values: dict[str, list[list[torch.Tensor]]]
    timesteps: list[float] = field(default_factory=list)
    probe_change: dict[str, list[list[float]]] = field(default_factory=dict)
    output_change: list[list[float]] = field(default_factory=list)


def _relative_l1(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> float:
    diff = sum(float((a - b).abs().sum()) for a, b in zip(new, old, strict=True))
    norm = sum(float(a.abs().sum()) for a in new)
    return diff / norm if norm > 0 else 0.0


def block_change_profile(
    program: Program,
    units: Sequence[CacheUnit],
    *,
    sampler: str | SamplerSpec,
    steps: int,
    seeds: Sequence[int],
    shape: Sequence[int] | None = None,
    cond: tuple[torch.Tensor, ...] | None = None,
    uncond: tuple[torch.Tensor, ...] | None = None,
    guidance_scale: float = 1.0,
    sample_fn: SampleFn | None = None,
    probes: Sequence[str] = (),
) -> ChangeProfile:
    """Run the uncached sampler on each of `seeds` and record every unit's value at every step.

    `shape` and `cond` default to the Program's example inputs (`x, t, *cond`). Returns the
    profile with the change averaged over seeds and lanes (CFG branches, batch chunks), and the
    per-lane change of the nodes `probes` and of the output.
    """
    sampler = check_sampler(sampler)
    if steps < 2:
        raise ConfigError(f"a change profile needs at least 2 sampler steps, got {steps}")
    if not seeds:
        raise ConfigError("a change profile needs at least one calibration seed")
    x, _t, *example_cond = program.example_inputs
    shape = tuple(shape) if shape is not None else tuple(x.shape)
    cond = tuple(cond) if cond is not None else tuple(example_cond)
    paths = [u.path for u in units]
    runner = CachedSampler(program, uniform_schedule(paths, steps, 1), units, record=True, probes=probes)
    probe_change: dict[str, list[list[float]]] = {name: [] for name in probes}
    output_change: list[list[float]] = []
    change_sum = {p: [0.0] * steps for p in paths}
    lanes = 0
    values: dict[str, list[list[list[torch.Tensor]]]] = {p: [[] for _ in range(steps)] for p in paths}
    for seed in seeds:
        runner.sample(
            shape,
            sampler=sampler,
            seed=seed,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance_scale,
            sample_fn=sample_fn,
        )
        for lane, per_step in runner.values.items():
            if len(per_step) != steps:
                raise ConfigError(f"the sampler made {len(per_step)} denoiser steps, expected {steps}")
            lanes += 1
            for path in paths:
                for s in range(steps):
                    values[path][s].append(per_step[s][path])
                    if s:
                        change_sum[path][s] += _relative_l1(per_step[s][path], per_step[s - 1][path])
            outs = runner.outputs[lane]
            output_change.append([0.0] + [_relative_l1([outs[s]], [outs[s - 1]]) for s in range(1, steps)])
            for name in probes:
                seen = [step_probes[name] for step_probes in runner.probe_values[lane]]
                probe_change[name].append(
                    [0.0] + [_relative_l1([seen[s]], [seen[s - 1]]) for s in range(1, steps)]
                )
    change = {p: [c / lanes for c in change_sum[p]] for p in paths}
    stacked = {
        p: [[torch.cat(parts) for parts in zip(*values[p][s], strict=True)] for s in range(steps)]
        for p in paths
    }
    return ChangeProfile(
        paths, steps, sampler.label, change, stacked, list(runner.timesteps), probe_change, output_change
    )
