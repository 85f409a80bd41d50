"""`cache`: Block Caching schedules for diffusion sampling (Wimbauer et al., CVPR 2024).

1. Profile: run the sampler of the model's Workload (DDIM, DPM-Solver++, flow-matching Euler
   or a diffusers scheduler), with its guidance and null condition, on the calibration seeds
   and record, for every block found by module path, the relative L1 change of its value
   between consecutive steps (`optkit.caching.profile`).
2. Schedule: per block, which steps recompute and which reuse (`optkit.caching.schedule`): the
   paper's accumulated-change threshold (`policy = "threshold"`, or `"budget"` for a fraction of
   block evaluations), or a baseline: `"uniform"` interval reuse (DeepCache-style),
   `"first-block"` change gating (diffusers' FirstBlockCache) or `"fewer-steps"`; or
   `"teacache"`: all blocks gated together by the polynomial-rescaled change of the first
   block's timestep-modulated input (TeaCache, Liu et al., CVPR 2025; static, from calibration).
3. Forecast and alignment: with `forecast` 1 or 2 a reused value is the polynomial
   extrapolation over the timestep of the block's last recompute steps (TaylorSeer, Liu et al.,
   ICCV 2025) instead of the last one. Scale-shift alignment: per block and reuse step, a
   per-channel affine correction of the reused (or forecast) value, fitted by least squares on
   the calibration trajectories.
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
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import torch

from optkit.caching.alignment import alignment_to_data, fit_alignment
from optkit.caching.forecast import check_order
from optkit.caching.profile import ChangeProfile, block_change_profile
from optkit.caching.runner import CachedSampler, SampleFn, check_sampler, uncached_sample
from optkit.caching.schedule import (
    CacheSchedule,
    budget_schedule,
    fewer_steps_schedule,
    first_block_schedule,
    teacache_schedule,
    threshold_schedule,
    uniform_schedule,
)
from optkit.caching.teacache import modulated_input, profile_gate
from optkit.caching.variants import CacheUnit, cache_units, step_variant
from optkit.errors import ConfigError
from optkit.ir.flops import node_costs
from optkit.ir.program import Program
from optkit.metrics import psnr_db
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.report import Figure
from optkit.timing import interleaved_latency_ms

log = logging.getLogger(__name__)

MAX_THRESHOLD = 10.0
MAX_FLOOR_TRIES = 12  # schedules relaxed against a quality floor (threshold 0.7**11 ~ 2% of it)
FLOOR_REFINE = 3  # bisection steps between the last knob that missed the floor and the first that kept it
POLICY_NAMES = ("threshold", "budget", "uniform", "first-block", "fewer-steps", "teacache")
TIMING_ROUNDS = 5  # interleaved uncached / cached sampling rounds behind the measured speed-up


@dataclass(frozen=True)
class CacheConfig(PassConfig):
    """Block-caching settings: the schedule policy and its knob, and the calibration run.

    `threshold` (accumulated relative L1 change, 0 = always recompute) drives the `threshold`,
    `first-block` and `teacache` policies; `budget` (fraction of block evaluations kept, in (0, 1]) drives
    `budget` and `fewer-steps`; `interval` drives `uniform`. `sampler` "",
    `steps` 0 and `guidance_scale` 0 mean the Workload's (`program.workload.diffusion`).
    `blocks` is a regex over module paths ("" = automatic). `mode` is how blocks are cached:
    their residual where they have one, their outputs, or `deep`: one unit, the deep branch of
    a UNet (DeepCache; see `optkit.caching.variants.deep_unit`). `min_psnr` (dB, 0 = off) is a
    quality floor: the policy's knob is relaxed step by step (threshold x0.7, budget +0.1,
    interval -1) until the cached samples on the calibration seeds reach it against uncached
    sampling, then bisected between the last knob that missed and the first that kept it, so
    the schedule is the most aggressive one tried that keeps the floor. `forecast` (0 = plain
    reuse, 1 or 2 = Taylor order) extrapolates reused values from the last recompute steps.
    `keep_first`: the first block recomputes at every step, as FirstBlockCache's does, and the
    `threshold`, `budget` and `uniform` policies schedule the others (`budget` still counts every
    block). An error in the first block's value passes through every later block: on the
    diffusers DiT of `examples/diffusers_digits`, threshold 0.1 kept 34.8 dB PSNR at 69% of the
    block evaluations, with `keep_first` 49.6 dB at 78% (diffusers' FirstBlockCache: 47.1 dB at
    79%; docs/benchmarks.md, bench_cache_peers).
    """

    policy: Literal["threshold", "budget", "uniform", "first-block", "fewer-steps", "teacache"] = "threshold"
    threshold: float = 0.3
    budget: float = 0.5
    interval: int = 2
    sampler: str = ""
    steps: int = 0
    seeds: tuple[int, ...] = (0, 1)
    guidance_scale: float = 0.0
    align: bool = True
    mode: Literal["residual", "output", "deep"] = "residual"
    blocks: str = ""
    min_psnr: float = 0.0
    forecast: Literal[0, 1, 2] = 0
    keep_first: bool = False

    def __post_init__(self) -> None:
        check_order(self.forecast)
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"policy must be one of {', '.join(POLICY_NAMES)}, got {self.policy!r}")
        if not (math.isfinite(self.min_psnr) and 0 <= self.min_psnr <= 100):
            raise ConfigError(f"min_psnr must be in [0, 100] dB (0 = no floor), got {self.min_psnr}")
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
    """The schedule `cfg.policy` derives from `profile` (with `keep_first`, see `CacheConfig`)."""
    if cfg.keep_first and cfg.policy in ("threshold", "budget", "uniform") and len(profile.blocks) > 1:
        first, *rest = profile.blocks
        units = len(profile.blocks)
        # The first block makes 1/units of the evaluations; the others meet the rest of the budget.
        budget = min(1.0, max(1e-3, (cfg.budget * units - 1) / (units - 1)))
        others = make_schedule(
            replace(cfg, keep_first=False, budget=budget),
            replace(profile, blocks=rest, change={p: profile.change[p] for p in rest}),
        )
        flags = {first: tuple(True for _ in range(others.steps)), **others.recompute}
        return CacheSchedule(others.steps, flags, others.policy)
    if cfg.policy == "threshold":
        return threshold_schedule(profile.change, cfg.threshold)
    if cfg.policy == "budget":
        return budget_schedule(profile.change, cfg.budget)
    if cfg.policy == "uniform":
        return uniform_schedule(profile.blocks, profile.steps, cfg.interval)
    if cfg.policy == "first-block":
        return first_block_schedule(profile.change, cfg.threshold)
    if cfg.policy == "teacache":
        return teacache_schedule(profile.blocks, profile_gate(profile)[1], cfg.threshold)
    return fewer_steps_schedule(profile.blocks, profile.steps, cfg.budget)


def relaxed(cfg: CacheConfig) -> CacheConfig | None:
    """`cfg` with its policy's knob one step less aggressive, or None when it cannot relax."""
    if cfg.policy in ("threshold", "first-block", "teacache"):
        return replace(cfg, threshold=0.7 * cfg.threshold) if cfg.threshold > 1e-3 else None
    if cfg.policy in ("budget", "fewer-steps"):
        return replace(cfg, budget=min(1.0, cfg.budget + 0.1)) if cfg.budget < 1.0 else None
    return replace(cfg, interval=cfg.interval - 1) if cfg.interval > 1 else None


def between(missed: CacheConfig, kept: CacheConfig) -> CacheConfig | None:
    """The config halfway between a knob that missed the quality floor and one that kept it
    (None for the integer `interval`, or when the two are already close)."""
    name = _knob_name(kept)
    low, high = _knob(missed), _knob(kept)
    if name == "interval" or abs(high - low) <= 0.02 * max(abs(high), abs(low)):
        return None
    middle = 0.5 * (low + high)
    return replace(kept, threshold=middle) if name == "threshold" else replace(kept, budget=middle)


def unit_flops(
    program: Program, units: list[CacheUnit], by_variant: bool = False
) -> tuple[dict[str, int], int]:
    """FLOPs of one denoiser call per cached block, and in total. With `by_variant`, a unit's
    FLOPs are those its reuse alone removes from the graph (for the `deep` unit: the whole deep
    branch, not only the block itself)."""
    costs = node_costs(program)
    total = sum(c.flops for c in costs)
    if by_variant:
        dropped = {
            u.path: total - sum(c.flops for c in node_costs(step_variant(program, [u], []).program))
            for u in units
        }
        return dropped, total
    per = {
        u.path: sum(c.flops for c in costs if c.module == u.path or c.module.startswith(u.path + "."))
        for u in units
    }
    return per, total


def expected_speedup(schedule: CacheSchedule, flops: dict[str, int], total: int, steps: int) -> float:
    """FLOPs of `steps` uncached denoiser calls over those of the cached schedule."""
    cached = sum(
        total - sum(flops[p] for p, flags in schedule.recompute.items() if not flags[s])
        for s in range(schedule.steps)
    )
    return steps * total / cached if cached else float("inf")


def variant_speedup(runner: CachedSampler, total: int, steps: int) -> float:
    """FLOPs of `steps` uncached denoiser calls (`total` each) over those of the step variants
    `runner` runs, one per step of its schedule. Exact where reusing a block removes more than
    the block's own nodes (a UNet's reused up block takes the blocks that only feed it along),
    which `expected_speedup` does not see; the same as it for residual units."""
    cost: dict[int, int] = {}
    spent = 0
    for step in range(runner.schedule.steps):
        variant = runner.variant(step).program
        if id(variant) not in cost:
            cost[id(variant)] = sum(c.flops for c in node_costs(variant))
        spent += cost[id(variant)]
    return steps * total / spent if spent else float("inf")


def _knob_name(cfg: CacheConfig) -> str:
    return {
        "threshold": "threshold",
        "first-block": "threshold",
        "teacache": "threshold",
        "uniform": "interval",
    }.get(cfg.policy, "budget")


def _knob(cfg: CacheConfig) -> float:
    return float(getattr(cfg, _knob_name(cfg)))


@register_pass("cache", CacheConfig)
class BlockCaching(Pass):
    """Derive a block-caching schedule for a diffusion model and measure it. Annotation only;
    run after the passes that rewrite the graph. `sample_fn` (default: `optkit.sampling.sample`) can
    be set on the instance to drive another sampler with the same signature."""

    shares_weights = True  # registers new tensors; never writes its input's

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
        # 1. Change profile on the calibration seeds (with the TeaCache indicator when gated by it).
        probes = [modulated_input(program, units[0])] if cfg.policy == "teacache" else []
        profile = block_change_profile(
            program,
            units,
            sampler=sampler,
            steps=steps,
            seeds=cfg.seeds,
            shape=tuple(x.shape),
            probes=probes,
            **run_args,
        )
        uncached = {
            seed: partial(
                uncached_sample, program, x.shape, sampler=sampler, steps=steps, seed=seed, **run_args
            )
            for seed in cfg.seeds
        }
        reference = torch.cat([uncached[seed]() for seed in cfg.seeds])

        def cached_samples(schedule: CacheSchedule, alignment: Any) -> tuple[CachedSampler, torch.Tensor]:
            runner = CachedSampler(program, schedule, units, alignment, forecast=cfg.forecast)
            runner.variants()  # graph surgery before any timing
            out = [runner.sample(x.shape, sampler=sampler, seed=seed, **run_args) for seed in cfg.seeds]
            return runner, torch.cat(out)

        # 2. Schedule, 3. alignment, 4. cached samples on the same seeds; with a quality floor,
        # the knob relaxes until the samples reach it.
        tried: list[dict[str, float]] = []

        def attempt(trial: CacheConfig) -> tuple[CacheConfig, CacheSchedule, Any, CachedSampler, float]:
            schedule = make_schedule(trial, profile)
            use_alignment = trial.align and trial.policy != "fewer-steps"
            alignment = (
                fit_alignment(profile.values, schedule, cfg.forecast, profile.timesteps)
                if use_alignment
                else {}
            )
            runner, samples = cached_samples(schedule, alignment)
            psnr = psnr_db(reference, samples)
            tried.append({"knob": _knob(trial), "psnr_db": psnr})
            return trial, schedule, alignment, runner, psnr

        best = attempt(cfg)
        failed: CacheConfig | None = None
        while cfg.min_psnr and best[-1] < cfg.min_psnr and len(tried) < MAX_FLOOR_TRIES:
            looser = relaxed(best[0])
            if looser is None:
                break
            failed, best = best[0], attempt(looser)
        # Between the last knob that missed the floor and the first that kept it, bisect.
        for _ in range(FLOOR_REFINE if best[-1] >= cfg.min_psnr else 0):
            middle = between(failed, best[0]) if failed is not None else None
            if middle is None:
                break
            trial = attempt(middle)
            if trial[-1] >= cfg.min_psnr:
                best = trial
            else:
                failed = middle
        final, schedule, alignment, runner, psnr = best
        plain = CachedSampler(program, schedule, units, forecast=cfg.forecast) if alignment else None
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
            run_ms=0,  # whole sampling runs: each timed alone, no probe run
        )
        measured = timing["uncached"]["median"] / timing["cached"]["median"]
        flops, total = unit_flops(program, units, by_variant=cfg.mode == "deep")
        speedup = variant_speedup(runner, total, steps)
        saved = 100.0 * (1.0 - schedule.evaluation_fraction(steps))
        program.annotations.cache_schedule = schedule.to_annotation()
        program.annotations.figures["cache"] = {
            "policy": cfg.policy,
            "sampler": sampler.label,
            "sampler_spec": sampler.to_dict(),
            "steps": steps,
            "schedule_steps": schedule.steps,
            "threshold": final.threshold,
            "budget": final.budget,
            "interval": final.interval,
            "min_psnr": cfg.min_psnr,
            "forecast": cfg.forecast,
            "keep_first": cfg.keep_first,
            "floor_tries": tried,
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
        if cfg.policy == "teacache":
            rescale, gate = profile_gate(profile)
            program.annotations.figures["cache"]["teacache"] = {
                "indicator": probes[0],
                "coefficients": list(rescale.coefficients),
                "r2": rescale.r2,
                "gate_change": gate,
            }
        figures = {
            "cached_blocks": Figure(len(units), "blocks"),
            "block_evaluations_saved": Figure(saved, "%"),
            "expected_speedup": Figure(speedup, "x"),
            "measured_speedup": Figure(measured, "x"),
            "psnr_vs_uncached": Figure(psnr, "dB"),
            "step_variants": Figure(len(runner.variants()), "programs"),
        }
        if cfg.min_psnr:
            figures["schedules_tried"] = Figure(len(tried), "schedules")
            figures[f"final_{_knob_name(final)}"] = Figure(_knob(final), "")
            if psnr < cfg.min_psnr:
                log.warning(
                    "cache: no schedule within %d tries reached %.1f dB (last %.1f dB)",
                    len(tried),
                    cfg.min_psnr,
                    psnr,
                )
        if unaligned:
            figures["psnr_without_alignment"] = Figure(
                program.annotations.figures["cache"]["psnr_db_unaligned"], "dB"
            )
        log.info(
            "cache: %s schedule saves %.1f%% of block evaluations, PSNR %.1f dB", cfg.policy, saved, psnr
        )
        return PassResult(program, modified=False, figures=figures)
