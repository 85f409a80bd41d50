"""`cache`: Block Caching schedules for diffusion sampling (Wimbauer et al., CVPR 2024).

1. Profile: run the sampler of the model's Workload (DDIM, DPM-Solver++, flow-matching Euler
   or a diffusers scheduler), with its guidance and null condition, on the calibration seeds
   and record, for every block found by module path, the relative L1 change of its value
   between consecutive steps (`optkit.caching.profile`).
2. Schedule: per block, which steps recompute and which reuse (`optkit.caching.schedule`): the
   paper's accumulated-change threshold (`policy = "threshold"`, or `"budget"` for a fraction of
   block evaluations), or a baseline: `"uniform"` interval reuse (DeepCache-style),
   `"first-block"` change gating (diffusers' FirstBlockCache) or `"fewer-steps"`.
3. Scale-shift alignment: per block and reuse step, a per-channel affine correction of the
   reused value, fitted by least squares on the calibration trajectories.
4. Measure: sample the calibration seeds with the cached runner (step variants built with
   `with_outputs` / `cut_to_inputs`, before any timing) and without; report block evaluations
   saved, the FLOP-based and the measured speed-up (median of interleaved rounds after a
   warm-up), and the PSNR of cached against uncached samples.

An annotation pass: the graph is unchanged. The schedule goes to
`annotations.cache_schedule` (block path -> recompute flag per step); the profile, the
alignment and the settings needed to sample again go to `annotations.figures["cache"]`, which
`optkit.caching.cached_sample(program, seed=...)` reads. Run it last among the graph passes
(after ptq/mate: it profiles the graph as it is). Deviations from the paper are listed in the
`optkit.caching` modules; classifier-free guidance runs the conditional and unconditional
branches in separate cache lanes (see `optkit.caching.runner`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch

from optkit.caching.alignment import alignment_to_data, fit_alignment
from optkit.caching.profile import ChangeProfile, block_change_profile
from optkit.caching.runner import CachedSampler, SampleFn, check_sampler, uncached_sample
from optkit.caching.schedule import (
    CacheSchedule,
    budget_schedule,
    fewer_steps_schedule,
    first_block_schedule,
    threshold_schedule,
    uniform_schedule,
)
from optkit.caching.variants import CacheUnit, cache_units
from optkit.errors import ConfigError
from optkit.ir.flops import node_costs
from optkit.ir.program import Program
from optkit.metrics import psnr_db
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.report import Figure
from optkit.timing import interleaved_latency_ms

log = logging.getLogger(__name__)

MAX_THRESHOLD = 10.0
TIMING_ROUNDS = 5  # interleaved uncached / cached sampling rounds behind the measured speed-up


@dataclass(frozen=True)
class CacheConfig(PassConfig):
    """Block-caching settings: the schedule policy and its knob, and the calibration run.

    `threshold` (accumulated relative L1 change, 0 = always recompute) drives the `threshold`
    and `first-block` policies; `budget` (fraction of block evaluations kept, in (0, 1]) drives
    `budget` and `fewer-steps`; `interval` drives `uniform`. `sampler` "",
    `steps` 0 and `guidance_scale` 0 mean the Workload's (`program.workload.diffusion`).
    `blocks` is a regex over module paths ("" = automatic).
    """

    policy: Literal["threshold", "budget", "uniform", "first-block", "fewer-steps"] = "threshold"
    threshold: float = 0.3
    budget: float = 0.5
    interval: int = 2
    sampler: str = ""
    steps: int = 0
    seeds: tuple[int, ...] = (0, 1)
    guidance_scale: float = 0.0
    align: bool = True
    mode: Literal["residual", "output"] = "residual"
    blocks: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0 <= self.threshold <= MAX_THRESHOLD):
            raise ConfigError(f"threshold must be in [0, {MAX_THRESHOLD}], got {self.threshold}")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget (fraction of block evaluations) must be in (0, 1], got {self.budget}")
        if self.interval < 1:
            raise ConfigError(f"interval must be >= 1, got {self.interval}")
        if self.steps == 1 or self.steps < 0:
            raise ConfigError(f"steps must be >= 2 (0 = the workload's), got {self.steps}")
        if not self.seeds:
            raise ConfigError("seeds must name at least one calibration seed")
        if not (
            math.isfinite(self.guidance_scale) and (self.guidance_scale >= 1.0 or self.guidance_scale == 0)
        ):
            raise ConfigError(
                f"guidance_scale must be >= 1 (1 = no guidance, 0 = the workload's), got {self.guidance_scale}"
            )
        if self.sampler:
            check_sampler(self.sampler)


def make_schedule(cfg: CacheConfig, profile: ChangeProfile) -> CacheSchedule:
    """The schedule `cfg.policy` derives from `profile`."""
    if cfg.policy == "threshold":
        return threshold_schedule(profile.change, cfg.threshold)
    if cfg.policy == "budget":
        return budget_schedule(profile.change, cfg.budget)
    if cfg.policy == "uniform":
        return uniform_schedule(profile.blocks, profile.steps, cfg.interval)
    if cfg.policy == "first-block":
        return first_block_schedule(profile.change, cfg.threshold)
    return fewer_steps_schedule(profile.blocks, profile.steps, cfg.budget)


def unit_flops(program: Program, units: list[CacheUnit]) -> tuple[dict[str, int], int]:
    """FLOPs of one denoiser call per cached block, and in total."""
    costs = node_costs(program)
    per = {
        u.path: sum(c.flops for c in costs if c.module == u.path or c.module.startswith(u.path + "."))
        for u in units
    }
    return per, sum(c.flops for c in costs)


def expected_speedup(schedule: CacheSchedule, flops: dict[str, int], total: int, steps: int) -> float:
    """FLOPs of `steps` uncached denoiser calls over those of the cached schedule."""
    cached = sum(
        total - sum(flops[p] for p, flags in schedule.recompute.items() if not flags[s])
        for s in range(schedule.steps)
    )
    return steps * total / cached if cached else float("inf")


@register_pass("cache", CacheConfig)
class BlockCaching(Pass):
    """Derive a block-caching schedule for a diffusion model and measure it. Annotation only;
    run after the passes that rewrite the graph. `sample_fn` (default: `optkit.sampling.sample`) can
    be set on the instance to drive another sampler with the same signature."""

    sample_fn: SampleFn | None = None

    def requires(self, program: Program) -> str | None:
        if program.workload.diffusion is None:
            return (
                f"{program.name}'s workload has no [diffusion] sampler: give --workload FILE.toml "
                "(or Program.with_workload) saying how the model is sampled"
            )
        return None

    def run(self, program: Program) -> PassResult:
        cfg: CacheConfig = self.config  # type: ignore[assignment]
        why = self.requires(program)
        if why:
            raise ConfigError(why)
        diffusion = program.workload.diffusion
        assert diffusion is not None  # requires() checked it
        sampler = check_sampler(cfg.sampler or diffusion.sampler)
        steps = cfg.steps or diffusion.steps
        if steps < 2:
            raise ConfigError(f"caching needs at least 2 sampler steps; the workload has {steps}")
        if len(program.example_inputs) < 2:
            raise ConfigError(
                f"{program.name} must take (x, t, *cond) to be sampled; it takes {len(program.example_inputs)} inputs"
            )
        units = cache_units(program, cfg.blocks or None, cfg.mode)
        x, _t, *cond_list = program.example_inputs
        cond = tuple(cond_list)
        guidance, uncond = diffusion.guidance(cond, cfg.guidance_scale or None)
        run_args: dict[str, Any] = {
            "cond": cond,
            "uncond": uncond,
            "guidance_scale": guidance,
            "sample_fn": self.sample_fn,
        }
        # 1. Change profile on the calibration seeds.
        profile = block_change_profile(
            program,
            units,
            sampler=sampler,
            steps=steps,
            seeds=cfg.seeds,
            shape=tuple(x.shape),
            **run_args,
        )
        # 2. Schedule, 3. alignment.
        schedule = make_schedule(cfg, profile)
        alignment = (
            fit_alignment(profile.values, schedule) if cfg.align and cfg.policy != "fewer-steps" else {}
        )
        # 4. Cached vs uncached samples on the same seeds. Step variants are built before any
        # timing (graph surgery is not sampling); then TIMING_ROUNDS interleaved rounds after
        # one warm-up round; the ratio of the median times is the measured speed-up.
        runner = CachedSampler(program, schedule, units, alignment)
        runner.variants()
        plain = CachedSampler(program, schedule, units) if alignment else None
        uncached = {
            seed: partial(
                uncached_sample, program, x.shape, sampler=sampler, steps=steps, seed=seed, **run_args
            )
            for seed in cfg.seeds
        }
        refs = [uncached[seed]() for seed in cfg.seeds]
        outs = [runner.sample(x.shape, sampler=sampler, seed=seed, **run_args) for seed in cfg.seeds]
        unaligned = (
            [plain.sample(x.shape, sampler=sampler, seed=seed, **run_args) for seed in cfg.seeds]
            if plain
            else []
        )
        # The runs above were the warm-up (and built every step variant).
        timing = interleaved_latency_ms(
            {
                "uncached": lambda: [uncached[seed]() for seed in cfg.seeds],
                "cached": lambda: [
                    runner.sample(x.shape, sampler=sampler, seed=seed, **run_args) for seed in cfg.seeds
                ],
            },
            warmup=0,
            repeats=TIMING_ROUNDS,
        )
        measured = timing["uncached"]["median"] / timing["cached"]["median"]
        reference = torch.cat(refs)
        psnr = psnr_db(reference, torch.cat(outs))
        flops, total = unit_flops(program, units)
        speedup = expected_speedup(schedule, flops, total, steps)
        saved = 100.0 * (1.0 - schedule.evaluation_fraction(steps))
        program.annotations.cache_schedule = schedule.to_annotation()
        program.annotations.figures["cache"] = {
            "policy": cfg.policy,
            "sampler": sampler.label,
            "sampler_spec": sampler.to_dict(),
            "steps": steps,
            "schedule_steps": schedule.steps,
            "threshold": cfg.threshold,
            "budget": cfg.budget,
            "guidance_scale": guidance,
            "seeds": list(cfg.seeds),
            "mode": cfg.mode,
            "block_pattern": cfg.blocks,
            "blocks": profile.blocks,
            "unit_mode": {u.path: u.mode for u in units},
            "change": {p: list(c) for p, c in profile.change.items()},
            "block_flops": flops,
            "total_flops": total,
            "evaluations_saved_pct": saved,
            "expected_speedup": speedup,
            "measured_speedup": measured,
            "sampling_ms": {k: {q: v[q] for q in ("median", "p10", "p90")} for k, v in timing.items()},
            "psnr_db": psnr,
            "psnr_db_unaligned": psnr_db(reference, torch.cat(unaligned)) if unaligned else psnr,
            "alignment": alignment_to_data(alignment),
        }
        figures = {
            "cached_blocks": Figure(len(units), "blocks"),
            "block_evaluations_saved": Figure(saved, "%"),
            "expected_speedup": Figure(speedup, "x"),
            "measured_speedup": Figure(measured, "x"),
            "psnr_vs_uncached": Figure(psnr, "dB"),
            "step_variants": Figure(len(runner.variants()), "programs"),
        }
        if unaligned:
            figures["psnr_without_alignment"] = Figure(
                program.annotations.figures["cache"]["psnr_db_unaligned"], "dB"
            )
        log.info(
            "cache: %s schedule saves %.1f%% of block evaluations, PSNR %.1f dB", cfg.policy, saved, psnr
        )
        return PassResult(program, modified=False, figures=figures)
