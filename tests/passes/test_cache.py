"""The `cache` pass: annotations and figures, threshold 0 exactness, baselines, forecasting,
the TeaCache gate, the DeepCache unit, variant FLOPs, bad input."""

from __future__ import annotations

import pytest
import torch
from optkit.passes.cache import BlockCaching, CacheConfig, expected_speedup, unit_flops, variant_speedup

from optkit.caching import (
    CachedSampler,
    cache_units,
    cached_runner,
    cached_sample,
    uncached_sample,
    uniform_schedule,
)
from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.pipeline import PassManager, get_pass
from optkit.workload import Workload
from tests import models
from tests.caching.conftest import _local_sample, capture_tiny_denoiser
from tests.models import conv_net

STEPS = 8


class _NoBlocks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * t[:, None, None, None]


@pytest.fixture(scope="module")
def sample_fn():
    try:
        from optkit.sampling import sample
    except ModuleNotFoundError:
        return _local_sample
    return sample


@pytest.fixture(scope="module")
def program():
    return capture_tiny_denoiser()


def _run(program, sample_fn, **options):
    cache = BlockCaching(CacheConfig.from_dict({"steps": STEPS, **options}))
    cache.sample_fn = sample_fn
    return cache.run(program.clone())


def test_pass_is_registered():
    assert get_pass("cache") is BlockCaching


def test_threshold_pass_records_schedule_profile_and_figures(program, sample_fn):
    result = _run(program, sample_fn, threshold=0.15)
    p = result.program
    assert not result.modified
    assert list(p.annotations.cache_schedule) == [f"blocks.{i}" for i in range(4)]
    assert all(len(f) == STEPS and f[0] for f in p.annotations.cache_schedule.values())
    data = p.annotations.figures["cache"]
    assert set(data["change"]) == set(p.annotations.cache_schedule)
    assert 0 < data["evaluations_saved_pct"] < 100
    assert data["expected_speedup"] > 1.0
    assert result.figures["psnr_vs_uncached"].value == data["psnr_db"] > 15
    # The graph is unchanged: the schedule is an annotation.
    torch.testing.assert_close(p.run(), program.run())
    # cached_sample reads the schedule and alignment back from the annotations.
    out = cached_sample(p, seed=0, sample_fn=sample_fn)
    assert out.shape == program.example_inputs[0].shape


def test_threshold_zero_is_exact(program, sample_fn):
    p = _run(program, sample_fn, threshold=0.0).program
    assert all(all(f) for f in p.annotations.cache_schedule.values())
    ref = uncached_sample(
        program,
        (2, 1, 8, 8),
        sampler="ddim",
        steps=STEPS,
        seed=5,
        cond=(program.example_inputs[2],),
        sample_fn=sample_fn,
    )
    assert torch.equal(cached_sample(p, seed=5, sample_fn=sample_fn), ref)
    assert p.annotations.figures["cache"]["evaluations_saved_pct"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["threshold", "budget"])
def test_quality_floor_relaxes_the_knob_until_the_samples_reach_it(program, sample_fn, policy):
    loose = _run(program, sample_fn, policy=policy, threshold=0.35, budget=0.3)
    floor = max(3.0, loose.figures["psnr_vs_uncached"].value + 3.0)  # beyond the loose schedule
    result = _run(program, sample_fn, policy=policy, threshold=0.35, budget=0.3, min_psnr=floor)
    data = result.program.annotations.figures["cache"]
    tried = data["floor_tries"]
    assert len(tried) >= 2 and tried[0]["psnr_db"] == pytest.approx(loose.figures["psnr_vs_uncached"].value)
    knob = "threshold" if policy == "threshold" else "budget"
    final = result.figures[f"final_{knob}"].value
    assert result.figures["psnr_vs_uncached"].value >= floor
    assert {"knob": final, "psnr_db": result.figures["psnr_vs_uncached"].value} in tried
    # Every more aggressive schedule tried (larger threshold, smaller budget) missed the floor.
    bolder = [t for t in tried if (t["knob"] > final if knob == "threshold" else t["knob"] < final)]
    assert bolder and all(t["psnr_db"] < floor for t in bolder)
    assert data["evaluations_saved_pct"] < loose.program.annotations.figures["cache"]["evaluations_saved_pct"]


@pytest.mark.parametrize(
    ("policy", "options"),
    [
        ("budget", {"budget": 0.5}),
        ("uniform", {"interval": 2}),
        ("first-block", {"threshold": 0.2}),
        ("fewer-steps", {"budget": 0.5}),
    ],
)
def test_baseline_policies(program, sample_fn, policy, options):
    result = _run(program, sample_fn, policy=policy, **options)
    data = result.program.annotations.figures["cache"]
    assert data["policy"] == policy
    if policy in ("budget", "uniform", "fewer-steps"):
        assert data["evaluations_saved_pct"] == pytest.approx(50.0, abs=13)
    if policy == "fewer-steps":
        assert data["schedule_steps"] == STEPS // 2


def test_pass_manager_accepts_the_annotation_pass(program, sample_fn):
    cache = BlockCaching(CacheConfig(steps=STEPS, threshold=0.1, seeds=(0,)))
    cache.sample_fn = sample_fn
    result = PassManager([cache]).run(program)
    assert result.program.annotations.cache_schedule


def test_bad_input(program, sample_fn):
    with pytest.raises(ConfigError, match="threshold"):
        CacheConfig(threshold=-1.0)
    with pytest.raises(ConfigError, match="threshold"):
        CacheConfig(threshold=1e9)
    with pytest.raises(ConfigError, match="sampler"):
        CacheConfig(sampler="euler-a")
    with pytest.raises(ConfigError, match="budget"):
        CacheConfig(budget=1.5)
    with pytest.raises(ConfigError, match="min_psnr"):
        CacheConfig(min_psnr=-3.0)
    with pytest.raises(ConfigError, match="policy"):
        CacheConfig.from_dict({"policy": "random"})
    no_sampler = program.clone()
    no_sampler.workload = Workload()
    with pytest.raises(ConfigError, match="no \\[diffusion\\] sampler"):
        BlockCaching(CacheConfig(steps=STEPS)).run(no_sampler)
    model, inputs = conv_net()
    convs = capture(model, inputs, name="conv")
    convs.workload = models.diffusion_workload()  # set directly: with_workload would refuse it
    with pytest.raises(ConfigError, match="must take"):
        BlockCaching(CacheConfig(steps=STEPS)).run(convs)
    no_blocks = capture(_NoBlocks(), program.example_inputs[:2], name="no-blocks")
    no_blocks.with_workload(models.diffusion_workload("flow-euler"))
    with pytest.raises(ConfigError, match="no blocks"):
        BlockCaching(CacheConfig(steps=STEPS)).run(no_blocks)


def test_schedule_heatmap_png(program, sample_fn, tmp_path):
    from optkit.caching.plots import schedule_heatmap

    assert schedule_heatmap(tmp_path, program) == {}
    p = _run(program, sample_fn, threshold=0.15, seeds=(0,)).program
    written = schedule_heatmap(tmp_path, p)
    (name,) = written.values()
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_is_recorded_and_used_when_sampling_again(program, sample_fn):
    reuse = _run(program, sample_fn, policy="uniform", interval=2, seeds=(0,)).program
    ahead = _run(program, sample_fn, policy="uniform", interval=2, forecast=1, seeds=(0,)).program
    data = ahead.annotations.figures["cache"]
    assert data["forecast"] == 1 and reuse.annotations.figures["cache"]["forecast"] == 0
    assert ahead.annotations.cache_schedule == reuse.annotations.cache_schedule  # same schedule
    assert cached_runner(ahead).forecast == 1 and cached_runner(reuse).forecast == 0
    forecast_out = cached_sample(ahead, seed=3, sample_fn=sample_fn)
    reuse_out = cached_sample(reuse, seed=3, sample_fn=sample_fn)
    assert torch.isfinite(forecast_out).all() and not torch.allclose(forecast_out, reuse_out)


def test_teacache_policy_gates_every_block_with_the_rescaled_input_change(program, sample_fn):
    result = _run(program, sample_fn, policy="teacache", threshold=1.0, seeds=(0,))
    p = result.program
    flags = list(p.annotations.cache_schedule.values())
    assert all(f == flags[0] for f in flags) and not all(flags[0])  # one gate, and it reuses
    data = p.annotations.figures["cache"]
    tea = data["teacache"]
    assert tea["indicator"] in {n.name for n in program.graph.nodes}
    assert len(tea["coefficients"]) == 3 and tea["r2"] <= 1.0
    assert len(tea["gate_change"]) == STEPS and tea["gate_change"][0] == 0.0
    assert data["evaluations_saved_pct"] > 0 and result.figures["expected_speedup"].value > 1.0
    # A larger threshold accumulates longer before recomputing: fewer evaluations.
    bolder = _run(program, sample_fn, policy="teacache", threshold=2.0, seeds=(0,)).program
    assert bolder.annotations.figures["cache"]["evaluations_saved_pct"] > data["evaluations_saved_pct"]


def _tiny_unet():
    from optkit.nn.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=2, out_channels=2, channels=8, attention_levels=(), heads=2, context_dim=8, groups=4
    )
    model = UNet(config).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # zero-initialized: it would predict 0
    inputs = (torch.randn(2, 2, 8, 8), torch.rand(2) * 1000, torch.randn(2, 3, 8))
    return capture(model, inputs, name="tiny-unet").with_workload(models.diffusion_workload())


@pytest.mark.slow
def test_deep_mode_caches_the_deep_branch_of_a_unet(program, sample_fn):
    result = _run(_tiny_unet(), sample_fn, mode="deep", policy="uniform", interval=2, seeds=(0,))
    p = result.program
    assert list(p.annotations.cache_schedule) == ["up.1"]  # ends the half-resolution level
    data = p.annotations.figures["cache"]
    assert data["unit_mode"] == {"up.1": "output"}
    # Reusing it drops the deep down blocks and the middle too: much more than up.1's own FLOPs.
    assert data["block_flops"]["up.1"] > 0.5 * data["total_flops"]
    assert result.figures["expected_speedup"].value > 1.3
    assert torch.isfinite(cached_sample(p, seed=1, sample_fn=sample_fn)).all()
    # `blocks` can name the one block instead; a pattern matching several is refused.
    assert [u.path for u in cache_units(p, r"^up\.0$", "deep")] == ["up.0"]
    with pytest.raises(ConfigError, match="caches one block"):
        cache_units(p, r"^up\.", "deep")
    with pytest.raises(ConfigError, match="needs a UNet"):
        _run(program, sample_fn, mode="deep")


def test_new_options_are_validated():
    with pytest.raises(ConfigError, match="forecast must be 0 \\(plain reuse\\), 1 or 2"):
        CacheConfig(forecast=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="0, 1, 2"):
        CacheConfig.from_dict({"forecast": 4})
    with pytest.raises(ConfigError, match="'teacache'"):
        CacheConfig.from_dict({"policy": "tea-cache"})
    with pytest.raises(ConfigError, match="teacache"):
        CacheConfig(policy="tea-cache")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'deep'"):
        CacheConfig.from_dict({"mode": "deeper"})


def test_variant_flops_count_what_reuse_removes(program):
    # Residual units: a reused block's nodes are what goes; both counts agree (up to the adds).
    units = cache_units(program)
    schedule = uniform_schedule([u.path for u in units], STEPS, 2)
    flops, total = unit_flops(program, units)
    runner = CachedSampler(program, schedule, units)
    assert variant_speedup(runner, total, STEPS) == pytest.approx(
        expected_speedup(schedule, flops, total, STEPS), rel=0.02
    )
    # A UNet's output units: reusing the deep up block also drops the blocks that only feed it.
    unet = _tiny_unet()
    units = cache_units(unet)
    schedule = uniform_schedule([u.path for u in units if u.path.startswith("up.0")], STEPS, 2)
    flops, total = unit_flops(unet, units)
    runner = CachedSampler(unet, schedule, units)
    assert variant_speedup(runner, total, STEPS) > 1.05 * expected_speedup(schedule, flops, total, STEPS)


def _profile(change: dict[str, list[float]]):
    from optkit.caching.profile import ChangeProfile

    steps = len(next(iter(change.values())))
    return ChangeProfile(list(change), steps, "ddim", change, {p: [] for p in change})


@pytest.mark.parametrize(
    ("policy", "options"), [("threshold", {"threshold": 0.3}), ("budget", {"budget": 0.6}), ("uniform", {})]
)
def test_keep_first_recomputes_the_first_block_at_every_step(policy, options):
    from optkit.passes.cache import make_schedule

    # The first block changes least, so without keep_first it is the one reused most.
    change = {"b0": [0.0] + [0.05] * 9, "b1": [0.0] + [0.2] * 9, "b2": [0.0] + [0.3] * 9}
    plain = make_schedule(CacheConfig(policy=policy, **options), _profile(change))
    kept = make_schedule(CacheConfig(policy=policy, keep_first=True, **options), _profile(change))
    assert not all(plain.recompute["b0"]) and all(kept.recompute["b0"])
    assert list(kept.recompute) == ["b0", "b1", "b2"] and kept.policy == plain.policy
    if policy == "budget":  # the budget still counts every block's evaluations
        evaluations = sum(sum(flags) for flags in kept.recompute.values())
        assert 0.6 * 30 <= evaluations < 0.6 * 30 + 10
    else:  # the other blocks are scheduled as before
        assert kept.recompute["b1"] == plain.recompute["b1"] and kept.recompute["b2"] == plain.recompute["b2"]
