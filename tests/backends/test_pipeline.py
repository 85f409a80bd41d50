"""The compiled sampling pipeline: lowered step variants, cached sampling in TVM code against the
eager cached sampler, one saved directory, the errors a broken directory gives, and the report's
note on the int8 kernels a lowering for this CPU takes."""

import json
import shutil

import optkit.backends.pipeline as pipeline_mod
import optkit.backends.targets as targets
import pytest
import torch
from optkit.backends import vnni
from optkit.backends.pipeline import NO_CACHE, Pipeline, check_target, load_pipeline, lower_pipeline

from optkit.api import optimize, seven_bit_note
from optkit.caching.runner import cached_runner, cached_sample, uncached_sample, variant_key
from optkit.errors import ArtifactError, BackendError, ConfigError, UnknownNameError
from optkit.metrics import psnr_db
from optkit.pipeline import PassManager, build_passes
from optkit.sampling import SamplerSpec
from optkit.workload import Diffusion, Workload
from tests.caching.conftest import capture_tiny_denoiser

STEPS = 5  # uniform interval 2: fill, reuse, fill, reuse, recompute all (the `main` variant)


@pytest.fixture(scope="module")
def programs():
    """(captured, cached): a 2-block denoiser sampled with DDIM and guidance 2 (null label 10)."""
    workload = Workload(diffusion=Diffusion(SamplerSpec("ddim"), STEPS, 2.0, ("fill:10",)))
    program = capture_tiny_denoiser(workload, dim=16, depth=2)
    cached = optimize(program, ["cache"], {"cache": {"policy": "uniform", "interval": 2}}).program
    return program, cached


@pytest.fixture(scope="module")
def lowered(programs):
    steps = []
    return lower_pipeline(programs[1], "cpu", progress=steps.append), steps


@pytest.fixture(scope="module")
def saved(lowered, tmp_path_factory):
    return lowered[0].save(tmp_path_factory.mktemp("pipeline") / "artifact")


def test_every_variant_of_the_schedule_is_lowered_once(programs, lowered):
    pipe, steps = lowered
    runner = cached_runner(programs[1])
    keys = {variant_key(*runner.plan(s)) for s in range(STEPS)}
    assert set(pipe.variants) == keys and len(keys) == 3
    assert pipe.variants[NO_CACHE] is pipe.main  # the variant without reuse or fill is the Program
    assert pipe.libraries() == [pipe.main]  # one library: the variants are functions of it
    entries = {a.entry for a in pipe.variants.values()}
    assert entries == {"main", "variant_01", "variant_02"}
    assert all(a.module is pipe.main.module for a in pipe.variants.values())
    assert [s for s in steps if s.startswith("import")] == [f"import into Relax ({i}/3)" for i in (1, 2, 3)]
    assert steps[-1] == "build for cpu"
    reuse_both = pipe.variants[(("blocks.0", "blocks.1"), ())]
    assert [s.shape for s in reuse_both.inputs[3:]] == [(2, 16, 16), (2, 16, 16)]  # the cached residuals


def test_compiled_cached_sampling_matches_the_eager_cached_sampler(programs, lowered):
    pipe, _ = lowered
    for seed in (0, 1):
        eager = cached_sample(programs[1], seed=seed)
        compiled = pipe.sample(seed)
        assert psnr_db(eager, compiled) >= 40.0
        assert (eager - compiled).abs().max() < 1e-3
    assert pipe.runner().evaluations == 2 * 3  # 2 blocks x 3 recompute steps: the cache was used


def test_compiled_cached_sampling_forecasts_like_the_eager_cached_sampler(programs, lowered):
    # Forecasting changes what the runner feeds the step variants, not the variants: with the
    # same schedule the lowered functions are the same, and the compiled pipeline forecasts.
    pipe, _ = lowered
    options = {"cache": {"policy": "uniform", "interval": 2, "forecast": 1, "seeds": [0]}}
    ahead = optimize(programs[0], ["cache"], options).program
    runner = cached_runner(ahead)
    assert runner.forecast == 1
    assert {variant_key(*runner.plan(s)) for s in range(STEPS)} == set(pipe.variants)
    forecasting = Pipeline(ahead, pipe.main, pipe.variants)
    for seed in (0, 1):
        compiled = forecasting.sample(seed)
        assert (cached_sample(ahead, seed=seed) - compiled).abs().max() < 1e-3
        assert (compiled - pipe.sample(seed)).abs().max() > 1e-3  # the forecast changed the samples
    assert forecasting.runner().evaluations == 2 * 3


def test_without_a_schedule_the_compiled_main_is_the_denoiser(programs, lowered):
    program = programs[0]  # the cache pass only annotates: same graph, same library
    pipe = Pipeline(program, lowered[0].main)
    x, _t, label = program.example_inputs
    uncond = program.workload.diffusion.null_condition((label,))
    eager = uncached_sample(
        program,
        x.shape,
        sampler="ddim",
        steps=STEPS,
        seed=0,
        cond=(label,),
        uncond=uncond,
        guidance_scale=2.0,
    )
    assert psnr_db(eager, pipe.sample(0)) >= 40.0


def test_saved_pipeline_is_one_directory_that_loads_and_samples_the_same(lowered, saved):
    manifest = json.loads((saved / "pipeline.json").read_text())
    assert manifest["format"] == "optkit-tvm-pipeline" and manifest["target"] == "cpu"
    functions = {(tuple(v["reuse"]), tuple(v["fill"])): v["function"] for v in manifest["variants"]}
    assert functions[NO_CACHE] == "main" and sorted(functions.values()) == [
        "main",
        "variant_01",
        "variant_02",
    ]
    assert sorted(p.name for p in saved.iterdir()) == ["main", "model.pt2", "model.pt2.json", "pipeline.json"]
    assert manifest["main"]["bytes"] == (saved / "main/model.so").stat().st_size
    weights = (saved / "main/weights.bin").stat().st_size
    assert manifest["library_bytes_total"] == manifest["main"]["bytes"] + weights
    assert "each weight stored once" in manifest["weights"]
    loaded = load_pipeline(saved)
    assert loaded.cached and set(loaded.variants) == set(lowered[0].variants)
    assert torch.allclose(loaded.sample(0), lowered[0].sample(0), atol=1e-6)


def test_the_weights_are_stored_once_for_all_step_variants(programs, lowered, tmp_path):
    """The library of main and its two variants is far smaller than three libraries."""
    from optkit.backends.lowering import lower

    alone = lower(programs[1], "cpu").save(tmp_path / "main-alone")
    single = (alone / "model.so").stat().st_size
    assert lowered[0].save(tmp_path / "pipe").joinpath("main/model.so").stat().st_size < 1.6 * single


def _broken_copy(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    return copy


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "pipeline.json").unlink(), "not an optkit pipeline: pipeline.json is missing"),
        (lambda d: (d / "pipeline.json").write_text("{not json"), "pipeline.json is corrupt"),
        (lambda d: (d / "main/model.so").unlink(), "model.so is missing"),
        (lambda d: (d / "main/model.so").write_bytes(b"garbage"), "does not match the hash in pipeline.json"),
        (lambda d: (d / "model.pt2").unlink(), "model.pt2 is missing"),
    ],
)
def test_a_broken_directory_is_refused_by_name(saved, tmp_path, breakage, message):
    copy = _broken_copy(saved, tmp_path)
    breakage(copy)
    with pytest.raises(ArtifactError, match=message):
        load_pipeline(copy)


def test_a_manifest_naming_a_function_the_library_lacks_is_refused(saved, tmp_path):
    copy = _broken_copy(saved, tmp_path)
    manifest = json.loads((copy / "pipeline.json").read_text())
    manifest["variants"][-1]["function"] = "variant_99"
    (copy / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no function 'variant_99'"):
        load_pipeline(copy)


def test_a_manifest_missing_a_variant_of_the_schedule_is_refused(saved, tmp_path):
    copy = _broken_copy(saved, tmp_path)
    manifest = json.loads((copy / "pipeline.json").read_text())
    manifest["variants"] = [v for v in manifest["variants"] if not v["reuse"]]
    (copy / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="step 1 needs the variant reusing"):
        load_pipeline(copy)


def test_targets_and_seeds_are_checked_before_any_work(monkeypatch, lowered):
    with pytest.raises(UnknownNameError, match="unknown target 'tpu'; known: cpu, cuda"):
        check_target("tpu")
    monkeypatch.setattr(targets, "find_nvcc", lambda: "/usr/local/bin/nvcc")
    monkeypatch.setattr(pipeline_mod, "cuda_device_present", lambda: False)
    with pytest.raises(BackendError, match="no CUDA device"):
        check_target("cuda")
    for seed in (-1, 2**63, 1.5):
        with pytest.raises(ConfigError, match="seed must be an integer"):
            lowered[0].sample(seed)


@pytest.mark.parametrize("arith", ["U8S16", "U8S8"])
def test_the_report_suggests_seven_bit_weights_only_where_vpmaddwd_runs_eight_bit_ones(
    monkeypatch, conv_program, arith
):
    monkeypatch.setattr(vnni, "int8_arith", lambda _target: getattr(vnni, arith))  # AVX2, or VNNI
    eight, seven = (
        PassManager(build_passes(["ptq"], {"ptq": {"wbits": bits}})).run(conv_program).program
        for bits in (8, 7)
    )
    note = seven_bit_note(eight, "cpu")
    if arith == "U8S16":
        assert "3 int8 layer(s) with 8-bit weights run on vpmaddwd" in note and "ptq.wbits=7" in note
    else:
        assert note is None  # VNNI multiplies 8-bit weights as fast
    assert seven_bit_note(seven, "cpu") is None and seven_bit_note(eight, "cuda") is None
