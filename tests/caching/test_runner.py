"""The cached sampler: exactness at threshold 0, bounded reuse error, alignment, CFG lanes."""

from __future__ import annotations

import pytest
import torch

from optkit.caching import (
    CachedSampler,
    block_change_profile,
    cache_units,
    fit_alignment,
    threshold_schedule,
    uncached_sample,
    uniform_schedule,
)
from optkit.errors import ConfigError, OptkitError
from optkit.metrics import psnr_db, sqnr_db

STEPS = 12


@pytest.fixture(scope="module")
def setup(tiny_denoiser_program, sample_fn):
    p = tiny_denoiser_program
    units = cache_units(p)
    profile = block_change_profile(p, units, sampler="ddim", steps=STEPS, seeds=[0, 1], sample_fn=sample_fn)
    return p, units, profile


def _sample(runner, p, sample_fn, seed=0, **kw):
    return runner.sample(
        p.example_inputs[0].shape,
        sampler="ddim",
        seed=seed,
        cond=(p.example_inputs[2],),
        sample_fn=sample_fn,
        **kw,
    )


def _reference(p, sample_fn, seed=0, **kw):
    return uncached_sample(
        p,
        p.example_inputs[0].shape,
        sampler="ddim",
        steps=STEPS,
        seed=seed,
        cond=(p.example_inputs[2],),
        sample_fn=sample_fn,
        **kw,
    )


def test_profile_is_positive_after_step_zero(setup):
    _p, units, profile = setup
    assert profile.blocks == [u.path for u in units]
    for change in profile.change.values():
        assert change[0] == 0.0 and all(c > 0 for c in change[1:])
    assert profile.values["blocks.0"][0][0].shape[0] == 4  # 2 seeds x batch 2


def test_threshold_zero_gives_identical_samples(setup, sample_fn):
    p, units, profile = setup
    runner = CachedSampler(p, threshold_schedule(profile.change, 0.0), units)
    assert torch.equal(_sample(runner, p, sample_fn), _reference(p, sample_fn))
    assert runner.evaluations == STEPS * len(units)


def test_reuse_error_is_bounded_and_grows_with_reuse(setup, sample_fn):
    p, units, profile = setup
    ref = _reference(p, sample_fn)
    psnrs = []
    for delta in (0.1, 0.3):
        schedule = threshold_schedule(profile.change, delta)
        runner = CachedSampler(p, schedule, units)
        out = _sample(runner, p, sample_fn)
        assert runner.evaluations == schedule.evaluations() < STEPS * len(units)
        psnrs.append(psnr_db(ref, out))
    assert psnrs[0] > 20.0
    assert psnrs[0] > psnrs[1]


def test_alignment_reduces_error_on_calibration_seeds(setup, sample_fn):
    p, units, profile = setup
    schedule = uniform_schedule(profile.blocks, STEPS, 2)
    alignment = fit_alignment(profile.values, schedule)
    err_plain = err_aligned = 0.0
    for seed in (0, 1):
        ref = _reference(p, sample_fn, seed)
        err_plain += float(
            (_sample(CachedSampler(p, schedule, units), p, sample_fn, seed) - ref).pow(2).mean()
        )
        aligned = CachedSampler(p, schedule, units, alignment)
        err_aligned += float((_sample(aligned, p, sample_fn, seed) - ref).pow(2).mean())
    assert err_aligned < err_plain


def test_guidance_runs_branches_in_separate_lanes(setup, sample_fn):
    p, units, profile = setup
    null = (torch.full_like(p.example_inputs[2], 10),)
    ref = _reference(p, sample_fn, uncond=null, guidance_scale=3.0)
    runner = CachedSampler(p, threshold_schedule(profile.change, 0.0), units)
    assert torch.equal(_sample(runner, p, sample_fn, uncond=null, guidance_scale=3.0), ref)
    cached = CachedSampler(p, uniform_schedule(profile.blocks, STEPS, 2), units)
    out = _sample(cached, p, sample_fn, uncond=null, guidance_scale=3.0)
    assert torch.isfinite(out).all() and sqnr_db(ref, out) > 15.0  # random weights: large values


def test_two_calls_per_step_and_batch_chunks_get_their_own_lanes(setup):
    p, units, profile = setup
    runner = CachedSampler(p, uniform_schedule(profile.blocks, 3, 2), units)
    x, t, label = p.example_inputs
    big = torch.cat([x, x])
    for step in range(3):
        tt = torch.full((4,), 900.0 - 300 * step)
        runner.denoiser(big, tt, torch.cat([label, label]))  # chunks (0, 0), (0, 1)
        runner.denoiser(big, tt, torch.cat([label, label]))  # second call: lanes (1, 0), (1, 1)
    assert set(runner._cache) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(OptkitError, match="more than"):
        runner.denoiser(big, torch.full((4,), 1.0), torch.cat([label, label]))
    with pytest.raises(ConfigError, match="multiple"):
        runner.denoiser(x[:1], t[:1], label[:1])
