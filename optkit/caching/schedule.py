"""Cache schedules: per block, on which sampler steps to recompute and on which to reuse.

Block Caching (Wimbauer et al., CVPR 2024), section "automatic cache schedule": a block is
recomputed at step s when its accumulated relative L1 change since its last recompute reaches a
threshold delta, and reuses its cached output otherwise. Beside this policy (`threshold`, or
`budget`, which bisects delta to meet a fraction of block evaluations), the baselines the
paper and later work compare against are policies here too:

- `uniform`: every block recomputes every `interval` steps and reuses in between (DeepCache-
  style interval reuse, applied to all blocks);
- `first-block`: the first block always runs; every later block recomputes when the first
  block's accumulated change reaches the threshold (the FirstBlockCache heuristic of diffusers).
  Deviation: the gate is decided once on the calibration profile, not per sample at run time,
  so the schedule stays a static annotation like the others;
- `fewer-steps`: no caching, the sampler runs fewer steps at the same compute;
- `teacache`: all blocks recompute together when the accumulated, polynomial-rescaled change of
  the first block's timestep-modulated input reaches the threshold (TeaCache, Liu et al., CVPR
  2025; see `teacache.py`). Static, like `first-block`.

Deviation from the paper: the change profile is the mean over calibration seeds (the paper also
averages over prompts), and step 0 always recomputes (nothing is cached yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from optkit.errors import ConfigError

POLICIES = ("threshold", "budget", "uniform", "first-block", "fewer-steps", "teacache")


@dataclass(frozen=True)
class CacheSchedule:
    """Recompute flags per block path and step (True = recompute, False = reuse the cache).

    `steps` is the sampler's step count for this schedule (smaller than the profile's for the
    `fewer-steps` policy). Raises `ConfigError` when a block would reuse at step 0 or the flag
    lists do not have `steps` entries.
    """

    steps: int
    recompute: Mapping[str, tuple[bool, ...]]
    policy: str = "threshold"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"a schedule needs at least one step, got {self.steps}")
        for path, flags in self.recompute.items():
            if len(flags) != self.steps:
                raise ConfigError(f"schedule of block {path} has {len(flags)} steps, expected {self.steps}")
            if not flags[0]:
                raise ConfigError(
                    f"schedule reuses block {path} at step 0, where nothing is cached yet; step 0 must recompute"
                )

    @property
    def blocks(self) -> list[str]:
        return list(self.recompute)

    def evaluations(self) -> int:
        """Block evaluations the schedule makes (recompute flags set)."""
        return sum(sum(flags) for flags in self.recompute.values())

    def evaluation_fraction(self, reference_steps: int | None = None) -> float:
        """Block evaluations as a fraction of the uncached sampler's at `reference_steps`."""
        total = len(self.recompute) * (reference_steps or self.steps)
        return self.evaluations() / total if total else 1.0

    def to_annotation(self) -> dict[str, list[bool]]:
        """The schedule as `Program.annotations.cache_schedule` stores it."""
        return {path: list(flags) for path, flags in self.recompute.items()}

    @classmethod
    def from_annotation(cls, data: Mapping[str, Sequence[bool]], policy: str = "annotation") -> CacheSchedule:
        """Read a schedule back from `Program.annotations.cache_schedule`."""
        if not data:
            raise ConfigError("the cache schedule is empty; run the `cache` pass first")
        steps = len(next(iter(data.values())))
        return cls(steps, {p: tuple(bool(f) for f in flags) for p, flags in data.items()}, policy)


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(f"threshold must be a finite number >= 0, got {threshold!r}")


def _accumulate(change: Sequence[float], threshold: float) -> tuple[bool, ...]:
    # Recompute when the change accumulated since the last recompute reaches the threshold.
    flags, acc = [True], 0.0
    for value in change[1:]:
        acc += value
        recompute = acc >= threshold
        flags.append(recompute)
        acc = 0.0 if recompute else acc
    return tuple(flags)


def threshold_schedule(change: Mapping[str, Sequence[float]], threshold: float) -> CacheSchedule:
    """The paper's automatic schedule from a change profile (block -> relative L1 change per
    step, as `ChangeProfile.change`); threshold 0 recomputes every step."""
    _check_threshold(threshold)
    steps = len(next(iter(change.values())))
    return CacheSchedule(steps, {p: _accumulate(c, threshold) for p, c in change.items()}, "threshold")


def _bisect(make: Callable[[float], CacheSchedule], budget: float, hi: float) -> float:
    # Largest-saving threshold whose evaluation fraction stays >= budget (fraction falls as delta grows).
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if make(mid).evaluation_fraction() >= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _check_budget(budget: float) -> None:
    if not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise ConfigError(f"budget (fraction of block evaluations) must be in (0, 1], got {budget!r}")


def budget_schedule(change: Mapping[str, Sequence[float]], budget: float) -> CacheSchedule:
    """The threshold schedule whose delta is bisected so that it makes at least `budget` (a
    fraction in (0, 1]) of the uncached block evaluations and saves as many as it can."""
    _check_budget(budget)
    hi = sum(sum(c) for c in change.values()) + 1.0
    delta = _bisect(lambda d: threshold_schedule(change, d), budget, hi)
    schedule = threshold_schedule(change, delta)
    return CacheSchedule(schedule.steps, schedule.recompute, "budget")


def uniform_schedule(blocks: Sequence[str], steps: int, interval: int) -> CacheSchedule:
    """Every block recomputes on steps 0, interval, 2*interval, ... and reuses in between."""
    if interval < 1:
        raise ConfigError(f"interval must be >= 1, got {interval}")
    flags = tuple(s % interval == 0 for s in range(steps))
    return CacheSchedule(steps, {p: flags for p in blocks}, "uniform")


def first_block_schedule(change: Mapping[str, Sequence[float]], threshold: float) -> CacheSchedule:
    """FirstBlockCache: the first block always recomputes; all later blocks recompute together
    when the first block's accumulated change reaches `threshold`, else reuse their residual."""
    _check_threshold(threshold)
    paths = list(change)
    gate = _accumulate(change[paths[0]], threshold)
    flags = {p: (gate if i else tuple(True for _ in gate)) for i, p in enumerate(paths)}
    return CacheSchedule(len(gate), flags, "first-block")


def first_block_budget_schedule(change: Mapping[str, Sequence[float]], budget: float) -> CacheSchedule:
    """The FirstBlockCache schedule with its threshold bisected to meet `budget` (see `budget_schedule`)."""
    _check_budget(budget)
    hi = sum(change[next(iter(change))]) + 1.0
    return first_block_schedule(change, _bisect(lambda d: first_block_schedule(change, d), budget, hi))


def fewer_steps_schedule(blocks: Sequence[str], steps: int, budget: float) -> CacheSchedule:
    """No caching: `round(budget * steps)` sampler steps (at least 1), every block every step."""
    _check_budget(budget)
    fewer = max(1, round(budget * steps))
    return CacheSchedule(fewer, {p: tuple(True for _ in range(fewer)) for p in blocks}, "fewer-steps")


def teacache_schedule(blocks: Sequence[str], gate_change: Sequence[float], threshold: float) -> CacheSchedule:
    """TeaCache: every block recomputes together when the accumulated gate change (the rescaled
    change of the first block's modulated input, `optkit.caching.teacache.rescaled_change`)
    reaches `threshold`, and every block reuses otherwise."""
    _check_threshold(threshold)
    gate = _accumulate(gate_change, threshold)
    return CacheSchedule(len(gate), {p: gate for p in blocks}, "teacache")
