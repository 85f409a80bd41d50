"""optkit.benchmark: targets agree with eager, failures and mismatches are reported, not raised.

No test asserts a wall-clock value: only that figures exist and are ordered (p10 <= median <= p90).
"""

import numpy as np
import pytest
import torch
from torch import nn

from optkit import benchmark as bench
from optkit.benchmark import BenchConfig, benchmark, compare_outputs, parse_targets, tensor_peak_bytes
from optkit.errors import BackendError, ConfigError, UnknownNameError
from optkit.ir.capture import capture
from optkit.ir.flops import total_flops
from optkit.ir.onnx_int8 import ort_u8s8_exact
from optkit.pipeline import PassManager, build_passes

FAST = {"repeats": 3, "warmup": 1}


@pytest.fixture
def mlp_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    return capture(model, (torch.randn(4, 16),), name="mlp")


def _tvm_missing() -> str:
    try:
        from optkit.backends import lower  # noqa: F401
    except ImportError as err:
        return f"TVM backend not available: {err}"
    return ""


@pytest.mark.slow
def test_eager_and_ort_agree_with_figures(transformer_program):
    before = torch.get_num_threads()
    result = benchmark(transformer_program, BenchConfig(targets=("eager", "ort"), threads=1, **FAST))
    assert torch.get_num_threads() == before  # set for the run, restored after
    assert [r.target for r in result.targets] == ["eager", "ort"]
    assert result.flops == total_flops(transformer_program) > 0
    for r in result.targets:
        assert r.status == "ok", r.reason
        assert r.latency["p10"] <= r.latency["median"] <= r.latency["p90"]
        assert r.latency["repeats"] == 3
        assert r.gflops_per_s == pytest.approx(result.flops / (r.latency["median"] * 1e6))
        assert r.rss_peak_bytes is not None and r.build_s is not None
    eager, ort = result.targets
    assert eager.max_abs_error == 0.0
    assert ort.max_abs_error < 1e-5 and ort.rel_error < 1e-5
    assert eager.tensor_peak_bytes > 0 and ort.tensor_peak_bytes is None
    assert (
        f"ONNX Runtime {__import__('onnxruntime').__version__} CPU, {result.threads} intra-op" in ort.detail
    )


def test_report_table_and_notes(mlp_program):
    result = benchmark(mlp_program, BenchConfig(targets=("eager",), **FAST))
    report = result.to_report()
    table = report.tables[0]
    assert [row[0] for row in table.rows] == ["eager"]
    assert table.units["median"] == "ms" and table.units["achieved"] == "GFLOP/s"
    assert report.figures["latency_eager"].unit == "ms"
    assert any("Peak RSS growth" in n for n in report.notes)
    assert "| eager | ok |" in report.to_markdown()


def test_failed_build_is_reported_and_others_still_run(mlp_program, monkeypatch):
    def broken(ctx):
        raise RuntimeError("no kernel for op frobnicate")

    monkeypatch.setitem(bench._BUILDERS, "ort", broken)
    result = benchmark(mlp_program, BenchConfig(targets=("ort", "eager"), **FAST))
    ort, eager = result.targets
    assert ort.status == "failed"
    assert ort.reason == "build failed: RuntimeError: no kernel for op frobnicate"
    assert ort.latency == {} and ort.median_ms is None
    assert eager.status == "ok" and eager.median_ms is not None
    report = result.to_report()
    assert "ort failed: build failed: RuntimeError: no kernel for op frobnicate" in report.notes
    assert "latency_ort" not in report.figures


def test_outputs_beyond_tolerance_mark_a_mismatch_with_figures(mlp_program, monkeypatch):
    real = bench._BUILDERS["eager"]

    def off_by_one(ctx):
        runner = real(ctx)
        runner.outputs = lambda value: [t.detach().numpy() + 1.0 for t in bench.flat_outputs(value)]
        return runner

    monkeypatch.setitem(bench._BUILDERS, "compile", off_by_one)
    result = benchmark(mlp_program, BenchConfig(targets=("eager", "compile"), **FAST))
    bad = result.get("compile")
    assert bad.status == "mismatch" and "outputs differ from eager" in bad.reason
    assert bad.max_abs_error == pytest.approx(1.0, abs=1e-6)
    assert bad.median_ms is not None  # measured anyway, shown with its figures
    assert result.get("eager").status == "ok"


def test_run_failure_after_build_is_reported(mlp_program, monkeypatch):
    real = bench._BUILDERS["eager"]

    def crashes(ctx):
        runner = real(ctx)
        runner.call = lambda: (_ for _ in ()).throw(ValueError("shape mismatch in kernel"))
        return runner

    monkeypatch.setitem(bench._BUILDERS, "ort", crashes)
    result = benchmark(mlp_program, BenchConfig(targets=("ort", "eager"), **FAST))
    assert result.get("ort").status == "failed"
    assert result.get("ort").reason == "run failed: ValueError: shape mismatch in kernel"
    assert result.get("eager").status == "ok"


@pytest.mark.slow
def test_quantized_program_gets_the_quantized_tolerance_and_runs_in_ort(transformer_program):
    q = PassManager(build_passes(["ptq", "dce"])).run(transformer_program).program
    result = benchmark(q, BenchConfig(targets=("eager", "ort"), **FAST))
    assert result.rtol == bench.QUANT_RTOL
    assert result.get("ort").status == "ok", result.get("ort").reason
    assert result.get("ort").rel_error < bench.QUANT_RTOL
    # the export's int8 weights: uint8 where ONNX Runtime's int8 kernels would saturate
    assert ("int8 weights as uint8" in result.get("ort").detail) is not ort_u8s8_exact()


def test_original_module_runs_as_eager(mlp_program):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    result = benchmark(mlp_program, BenchConfig(targets=("eager",), **FAST), module=model)
    assert "original module Sequential" in result.get("eager").detail
    assert result.get("eager").status == "ok"


def test_compile_target_agrees_with_eager(mlp_program):
    # The one torch.compile in the suite (inductor, ~10-20 s on 2 cores): a 3-op MLP.
    result = benchmark(mlp_program, BenchConfig(targets=("eager", "compile"), repeats=2, warmup=1))
    compiled = result.get("compile")
    assert compiled.status == "ok", compiled.reason
    assert compiled.max_abs_error < 1e-5
    assert "inductor" in compiled.detail


@pytest.mark.slow
def test_tvm_cpu_target(mlp_program):
    missing = _tvm_missing()
    if missing:
        result = benchmark(mlp_program, BenchConfig(targets=("tvm-cpu", "eager"), **FAST))
        assert result.get("tvm-cpu").status == "failed"
        assert "TVM backend not available" in result.get("tvm-cpu").reason
        assert result.get("eager").status == "ok"
        pytest.skip(missing)
    result = benchmark(mlp_program, BenchConfig(targets=("eager", "tvm-cpu"), **FAST))
    tvm = result.get("tvm-cpu")
    assert tvm.status == "ok", tvm.reason
    assert tvm.max_abs_error < 1e-4 and tvm.median_ms is not None
    assert "TVM" in tvm.detail


def test_tvm_cuda_without_gpu_is_a_clear_failure(mlp_program, monkeypatch):
    if _tvm_missing():
        pytest.skip(_tvm_missing())
    monkeypatch.setattr(bench, "cuda_available", lambda: False)
    result = benchmark(mlp_program, BenchConfig(targets=("tvm-cuda",), **FAST))
    assert result.get("tvm-cuda").status == "failed"
    assert "needs a CUDA GPU" in result.get("tvm-cuda").reason


def test_missing_backend_raises_backend_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_backends(name, *args, **kwargs):
        if name == "optkit.backends":
            raise ImportError("No module named 'tvm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_backends)
    with pytest.raises(BackendError, match="TVM backend not available: No module named 'tvm'"):
        bench._lower()


def test_unknown_target_lists_the_allowed_ones():
    with pytest.raises(UnknownNameError, match="unknown target 'tpu'; known: compile, eager, ort, tvm-cpu"):
        BenchConfig(targets=("eager", "tpu"))
    with pytest.raises(UnknownNameError, match="unknown target 'gpu'"):
        parse_targets("eager, gpu")
    assert parse_targets(" eager,ort,eager ") == ("eager", "ort")
    with pytest.raises(ConfigError, match="no targets given"):
        parse_targets(" , ")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"tune_trials": -5}, "tune_trials must be >= 0"),
        ({"rtol": -1.0}, "tolerances must be >= 0"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BenchConfig(**kwargs)


def test_compare_outputs():
    e = [np.array([1.0, -4.0, 2.0], dtype=np.float32)]
    err, rel, problem = compare_outputs([e[0] + np.array([0, 0.002, 0])], e, rtol=1e-3, atol=0.0)
    assert err == pytest.approx(0.002) and rel == pytest.approx(0.0005) and problem == ""
    _, _, problem = compare_outputs([e[0] + np.array([0, 0.01, 0])], e, rtol=1e-3, atol=0.0)
    assert problem.startswith("output 0: max abs error 0.01 exceeds")
    assert "2 outputs, eager has 1" in compare_outputs(e + e, e, 1e-3, 0.0)[2]
    assert "shape (2,)" in compare_outputs([np.zeros(2)], e, 1e-3, 0.0)[2]
    nan_err, _, problem = compare_outputs([np.array([1.0, np.nan, 2.0])], e, 1e-3, 0.0)
    assert nan_err == float("inf") and problem


def test_tensor_peak_bytes_counts_live_intermediates():
    x = torch.ones(1000)  # 4000 bytes, an input: not counted
    w = torch.ones(1000)
    assert tensor_peak_bytes(lambda t: (t * 2) + w, [x], [w]) == 8000  # t*2 alive while + runs
    assert tensor_peak_bytes(lambda t: t.view(10, 100).sum(), [x], []) == 4


def test_all_zero_reference_is_called_out():
    head = nn.Linear(8, 4)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    program = capture(head, (torch.randn(2, 8),), name="zero-head")
    result = benchmark(program, BenchConfig(targets=("eager",), **FAST))
    assert result.reference_abs_max == 0.0
    assert any("cannot tell a right runtime from a wrong one" in n for n in result.to_report().notes)


def test_targets_are_timed_in_interleaved_rounds(mlp_program, monkeypatch):
    real = bench._BUILDERS["eager"]
    calls = []

    def recording(name):
        def build(ctx):
            runner = real(ctx)
            inner = runner.call
            runner.call = lambda: (calls.append(name), inner())[1]
            return runner

        return build

    monkeypatch.setitem(bench._BUILDERS, "eager", recording("eager"))
    monkeypatch.setitem(bench._BUILDERS, "ort", recording("ort"))
    monkeypatch.setattr(bench, "run_length", lambda fn, **_: 1)  # every call timed alone
    result = benchmark(mlp_program, BenchConfig(targets=("eager", "ort"), repeats=3, warmup=1))
    # check + warm-up of each target, then 3 rounds of one call each.
    assert calls == ["eager", "eager", "ort", "ort"] + ["eager", "ort"] * 3
    assert all(r.latency["repeats"] == 3 and r.calls == 1 for r in result.targets)
    assert not any("back-to-back" in n for n in result.to_report().notes)
    assert BenchConfig(targets=("eager", "ort", "eager")).targets == ("eager", "ort")


def test_short_calls_are_timed_in_runs_and_the_report_says_so(mlp_program, monkeypatch):
    monkeypatch.setattr(bench, "run_length", lambda fn, **_: 4)
    calls = []
    real = bench._BUILDERS["eager"]

    def build(ctx):
        runner = real(ctx)
        inner = runner.call
        runner.call = lambda: (calls.append(1), inner())[1]
        return runner

    monkeypatch.setitem(bench._BUILDERS, "eager", build)
    result = benchmark(mlp_program, BenchConfig(targets=("eager",), repeats=2, warmup=0))
    # the output check, then per round one untimed call and a run of 4
    assert len(calls) == 1 + 2 * (1 + 4)
    assert result.targets[0].calls == 4 and result.targets[0].latency["repeats"] == 2
    assert any("calls per run: eager 4" in n for n in result.to_report().notes)
