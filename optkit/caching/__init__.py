"""Block caching for diffusion sampling (Wimbauer et al., "Cache Me if You Can", CVPR 2024).

`profile` measures how much each block's output changes between sampler steps, `schedule`
turns that into per-block recompute/reuse flags (the paper's threshold policy and baselines),
`alignment` fits the per-channel scale-shift of reused values, `forecast` extrapolates them
(TaylorSeer), `teacache` gates all blocks by the change of the first block's modulated input,
`variants` builds the step Programs in which reused blocks are cut out, and `runner` drives a
Workload's sampler through them.
"""

from optkit.caching.alignment import ScaleShift, fit_alignment, fit_scale_shift
from optkit.caching.forecast import forecast, forecast_weights
from optkit.caching.profile import ChangeProfile, block_change_profile
from optkit.caching.runner import CachedSampler, cached_runner, cached_sample, uncached_sample
from optkit.caching.schedule import (
    POLICIES,
    CacheSchedule,
    budget_schedule,
    fewer_steps_schedule,
    first_block_budget_schedule,
    first_block_schedule,
    teacache_schedule,
    threshold_schedule,
    uniform_schedule,
)
from optkit.caching.teacache import Rescale, fit_rescale, modulated_input, profile_gate, rescaled_change
from optkit.caching.variants import CacheUnit, StepVariant, cache_units, residual_form, step_variant

__all__ = [
    "POLICIES",
    "Rescale",
    "CacheSchedule",
    "CacheUnit",
    "CachedSampler",
    "ChangeProfile",
    "ScaleShift",
    "StepVariant",
    "block_change_profile",
    "budget_schedule",
    "cache_units",
    "cached_runner",
    "cached_sample",
    "fewer_steps_schedule",
    "first_block_budget_schedule",
    "first_block_schedule",
    "fit_rescale",
    "fit_alignment",
    "fit_scale_shift",
    "forecast",
    "forecast_weights",
    "modulated_input",
    "profile_gate",
    "rescaled_change",
    "residual_form",
    "step_variant",
    "teacache_schedule",
    "threshold_schedule",
    "uncached_sample",
    "uniform_schedule",
]
