"""The cached sampler runner: drives a sampler through the step variants of a schedule.

Block Caching (Wimbauer et al., CVPR 2024) at inference: at every sampler step each block either
recomputes (and, when a later step will reuse it, writes its value to the cache) or reuses the
cached value after scale-shift alignment. `CachedSampler.denoiser` is the callable
`optkit.sampling.sample` calls: it finds the step, picks the step variant (a Program, see
`variants.py`), feeds it the cached values and stores the values it returns.

Steps and classifier-free guidance: the captured Program has the static batch B of its example
inputs. The denoiser accepts any batch that is a multiple of B and runs it in chunks of B; the
sampler's step is found from the timestep (a new `t` starts a new step), so a sampler that
doubles the batch for CFG (cond and uncond stacked) and one that calls the denoiser twice per
step both work. Each (call within the step, chunk) is a separate *lane* with its own cache, so
the conditional and unconditional branches never share cached values.

Forecasting (`forecast` 1 or 2, TaylorSeer; see `forecast.py`): each lane keeps the values of a
block's last `forecast + 1` recompute steps with their timesteps, and a reuse step is fed their
polynomial extrapolation to the step's timestep instead of the last value. Units then fill the
cache on every recompute step that a later reuse step follows. The executors' inputs are the
same either way, so compiled step variants forecast too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from optkit.caching.alignment import ScaleShift, alignment_from_data
from optkit.caching.forecast import check_order, forecast
from optkit.caching.schedule import CacheSchedule, uniform_schedule
from optkit.caching.variants import CacheUnit, StepVariant, cache_units, residual_form, step_variant
from optkit.errors import ConfigError, OptkitError
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program
from optkit.ir.subgraph import with_outputs
from optkit.sampling import SampleFn, SamplerSpec, as_spec
from optkit.sampling import sample as plain_sample

log = logging.getLogger(__name__)

Lane = tuple[int, int]
# A step variant's identity: the paths of the units it reuses and of those whose cache it fills.
VariantKey = tuple[tuple[str, ...], tuple[str, ...]]
# Runs one step variant: (x, t, *cond, *cached values) -> [prediction, *filled values].
Executor = Callable[..., list[torch.Tensor]]
# Per block path: (timestep, cached tensors) of its last recompute steps, oldest first.
History = dict[str, list[tuple[float, list[torch.Tensor]]]]


def variant_key(reuse: Sequence[CacheUnit], fill: Sequence[CacheUnit]) -> VariantKey:
    """The key of the step variant that reuses `reuse` and fills `fill`."""
    return tuple(u.path for u in reuse), tuple(u.path for u in fill)


def check_sampler(sampler: str | SamplerSpec) -> SamplerSpec:
    """`sampler` as a SamplerSpec, or a `ConfigError` naming the samplers there are."""
    return as_spec(sampler)


class CachedSampler:
    """Runs a Program as a block-cached denoiser following `schedule`.

    `units` are the cache units (see `cache_units`) named by the schedule; `alignment` maps
    (block path, step) to the scale-shift of each cached tensor. With `record=True` every step
    recomputes and returns every unit's cached value, which `values` keeps per lane and step
    (the change profile uses this), with the prediction per lane and step in `outputs` and the
    values of the nodes `probes` in `probe_values`. `evaluations` counts the block evaluations
    of the last run, `timesteps` the timestep of each step. `forecast` (0, 1, 2) extrapolates
    reused values from the last recompute steps (see the module docstring).
    `executors` maps a variant key (`variant_key`) to a callable that runs that step variant
    instead of its eager graph, e.g. its compiled library (`optkit.backends.pipeline`); the
    variants it covers are then never built.
    """

    def __init__(
        self,
        program: Program,
        schedule: CacheSchedule,
        units: Sequence[CacheUnit],
        alignment: Mapping[tuple[str, int], list[ScaleShift]] | None = None,
        record: bool = False,
        executors: Mapping[VariantKey, Executor] | None = None,
        forecast: int = 0,
        probes: Sequence[str] = (),
    ) -> None:
        by_path = {u.path: u for u in units}
        missing = [p for p in schedule.blocks if p not in by_path]
        if missing:
            raise ConfigError(f"schedule names blocks {missing} that {program.name} does not have")
        self.program = program
        self.schedule = schedule
        self.units = [by_path[p] for p in schedule.blocks]
        self.alignment = dict(alignment or {})
        self.record = record
        self.forecast = check_order(forecast)
        if probes and not record:
            raise ConfigError("probes are recorded only by a recording runner (record=True)")
        self.probes = tuple(probes)
        self.executors = dict(executors or {})
        self.batch = int(program.example_inputs[0].shape[0])
        self._t_dtype = program.example_inputs[1].dtype
        self._residual = residual_form(program, self.units)
        self._variants: dict[VariantKey, StepVariant] = {}
        self.values: dict[Lane, list[dict[str, list[torch.Tensor]]]] = {}
        self.outputs: dict[Lane, list[torch.Tensor]] = {}
        self.probe_values: dict[Lane, list[dict[str, torch.Tensor]]] = {}
        self.timesteps: list[float] = []
        self.reset()

    # -- plan ------------------------------------------------------------------------------
    def plan(self, step: int) -> tuple[list[CacheUnit], list[CacheUnit]]:
        """The units reused at `step` and the units whose cache `step` must fill."""
        if self.record:
            return [], list(self.units)
        flags = self.schedule.recompute
        last = step + 1 >= self.schedule.steps
        reuse = [u for u in self.units if not flags[u.path][step]]
        if self.forecast:
            # Every recompute before a later reuse: the forecast reads the last few of them.
            fill = [u for u in self.units if flags[u.path][step] and not all(flags[u.path][step + 1 :])]
        else:
            fill = [u for u in self.units if flags[u.path][step] and not last and not flags[u.path][step + 1]]
        return reuse, fill

    def variant(self, step: int) -> StepVariant:
        """The step variant for `step` (built once per distinct reuse/fill pattern)."""
        reuse, fill = self.plan(step)
        key = variant_key(reuse, fill)
        if key not in self._variants:
            variant = step_variant(self.program, reuse, fill, residual=self._residual)
            if self.probes:
                variant = StepVariant(with_outputs(variant.program, self.probes), variant.reuse, variant.fill)
            self._variants[key] = variant
        return self._variants[key]

    def variants(self) -> list[StepVariant]:
        """Every variant the schedule uses, in order of first use."""
        for step in range(self.schedule.steps):
            self.variant(step)
        return list(self._variants.values())

    # -- run -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the cache and the step counter (called before every sampling run)."""
        self._step = -1
        self._call = 0
        self._last_t: torch.Tensor | None = None
        self._cache: dict[Lane, History] = {}
        self.values = {}
        self.outputs = {}
        self.probe_values = {}
        self.timesteps = []
        self.evaluations = 0

    def _advance(self, t: torch.Tensor) -> int:
        if self._last_t is not None and torch.equal(t, self._last_t):
            self._call += 1
        else:
            self._step, self._call, self._last_t = self._step + 1, 0, t.clone()
            self.timesteps.append(float(t[0]))
        if self._step >= self.schedule.steps:
            raise OptkitError(
                f"the sampler made more than the schedule's {self.schedule.steps} steps; "
                "sample with steps equal to the schedule's"
            )
        return self._step

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """The denoiser callable for `optkit.sampling.sample`: `(x, t, *cond) -> prediction`."""
        if x.shape[0] % self.batch:
            raise ConfigError(
                f"batch {x.shape[0]} is not a multiple of the captured batch {self.batch} of {self.program.name}"
            )
        step = self._advance(t[: self.batch])
        now = self.timesteps[step]
        t = t.to(self._t_dtype)
        reuse, fill = self.plan(step)
        run = self.executors.get(variant_key(reuse, fill)) or self._eager(step)
        outs = []
        for chunk, start in enumerate(range(0, x.shape[0], self.batch)):
            part = slice(start, start + self.batch)
            lane = (self._call, chunk)
            cache = self._cache.setdefault(lane, {})
            cached: list[torch.Tensor] = []
            for unit in reuse:
                fits = self.alignment.get((unit.path, step))
                values = forecast(cache[unit.path], now, self.forecast)
                if fits:
                    cached.extend(f.apply(v) for f, v in zip(fits, values, strict=True))
                else:
                    cached.extend(values)
            with torch.no_grad():
                result = run(x[part], t[part], *(c[part] for c in cond), *cached)
            outs.append(result[0])
            filled = iter(result[1:])
            for unit in fill:
                history = cache.setdefault(unit.path, [])
                history.append((now, [next(filled) for _ in unit.cached]))
                del history[: -(self.forecast + 1)]
            if self.record:
                self.values.setdefault(lane, []).append({u.path: cache[u.path][-1][1] for u in fill})
                self.outputs.setdefault(lane, []).append(result[0])
                self.probe_values.setdefault(lane, []).append({name: next(filled) for name in self.probes})
        self.evaluations += len(self.units) - len(reuse)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _eager(self, step: int) -> Executor:
        graph_module = self.variant(step).program.graph_module
        return lambda *inputs: flat_outputs(graph_module(*inputs))

    def sample(
        self,
        shape: Sequence[int],
        *,
        sampler: str | SamplerSpec,
        seed: int,
        cond: tuple[torch.Tensor, ...] = (),
        uncond: tuple[torch.Tensor, ...] | None = None,
        guidance_scale: float = 1.0,
        sample_fn: SampleFn | None = None,
    ) -> torch.Tensor:
        """One cached sampling run of `schedule.steps` steps with `sampler`."""
        spec = check_sampler(sampler)
        self.reset()
        fn = sample_fn or plain_sample
        return fn(
            self.denoiser,
            tuple(shape),
            sampler=spec,
            steps=self.schedule.steps,
            seed=seed,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance_scale,
        )


def uncached_sample(
    program: Program,
    shape: Sequence[int],
    *,
    sampler: str | SamplerSpec,
    steps: int,
    seed: int,
    cond: tuple[torch.Tensor, ...] = (),
    uncond: tuple[torch.Tensor, ...] | None = None,
    guidance_scale: float = 1.0,
    sample_fn: SampleFn | None = None,
) -> torch.Tensor:
    """The reference: `sampler` driving `program.run` in chunks of its captured batch."""
    runner = CachedSampler(program, uniform_schedule([], steps, 1), [])
    return runner.sample(
        shape,
        sampler=sampler,
        seed=seed,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        sample_fn=sample_fn,
    )


def cached_runner(
    program: Program,
    schedule: CacheSchedule | None = None,
    alignment: Mapping[tuple[str, int], list[ScaleShift]] | None = None,
    forecast: int | None = None,
) -> CachedSampler:
    """The CachedSampler for `program`: `schedule`, `alignment` and `forecast` order, or those
    the `cache` pass recorded in `program.annotations` (a ConfigError says so when there are
    none). Keep it to sample repeatedly: it builds each step variant once."""
    data = program.annotations.figures.get("cache", {})
    given = schedule is not None
    if schedule is None:
        schedule = CacheSchedule.from_annotation(program.annotations.cache_schedule)
        if alignment is None and data.get("alignment"):
            alignment = alignment_from_data(data["alignment"])
    units = cache_units(program, data.get("block_pattern") or None, data.get("mode", "residual"))
    if forecast is None:  # the pass's order goes with the pass's schedule
        forecast = int(data.get("forecast", 0)) if not given else 0
    return CachedSampler(program, schedule, units, alignment, forecast=forecast)


def cached_sample(
    program: Program,
    schedule: CacheSchedule | None = None,
    *,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    cond: tuple[torch.Tensor, ...] | None = None,
    uncond: tuple[torch.Tensor, ...] | None = None,
    guidance_scale: float | None = None,
    sampler: str | SamplerSpec | None = None,
    alignment: Mapping[tuple[str, int], list[ScaleShift]] | None = None,
    sample_fn: SampleFn | None = None,
    runner: CachedSampler | None = None,
) -> torch.Tensor:
    """Sample from `program` with block caching.

    `runner` (from `cached_runner`, reused across calls) or else `cached_runner(program,
    schedule, alignment)` runs the steps. `shape` and `cond` default to the Program's example
    inputs (`x, t, *cond`); `sampler`, `guidance_scale` and the null condition to those the
    pass used (the workload's).
    """
    data = program.annotations.figures.get("cache", {})
    diffusion = program.workload.diffusion
    if sampler is None:
        if data.get("sampler_spec"):
            sampler = SamplerSpec.from_dict(data["sampler_spec"])
        elif diffusion is not None:
            sampler = diffusion.sampler
        else:
            raise ConfigError(f"{program.name} has no sampler: give `sampler` or a workload with [diffusion]")
    spec = check_sampler(sampler)
    x, _t, *example_cond = program.example_inputs
    cond = tuple(cond) if cond is not None else tuple(example_cond)
    if guidance_scale is None:
        guidance_scale = float(data.get("guidance_scale", diffusion.guidance_scale if diffusion else 1.0))
    if uncond is None and guidance_scale > 1 and cond:
        if diffusion is None:
            raise ConfigError(
                "guidance needs the null condition: give `uncond` or a workload with [diffusion]"
            )
        uncond = diffusion.null_condition(cond)
    runner = runner or cached_runner(program, schedule, alignment)
    return runner.sample(
        tuple(shape) if shape is not None else tuple(x.shape),
        sampler=spec,
        seed=seed,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        sample_fn=sample_fn,
    )
