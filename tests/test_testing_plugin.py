"""optkit.testing, the pytest plugin: run from test files of a temporary project with pytester,
and its assertions called directly for their argument checks and messages."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

from optkit.api import optimize
from optkit.errors import ConfigError, UnknownNameError
from optkit.ir.capture import capture
from optkit.report import Report
from optkit.testing import assert_latency_ratio, assert_psnr, assert_report_figure, assert_sqnr

pytest_plugins = ["pytester"]

# A factory the inner test files load as the model reference "mymodels:build".
MODELS = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, (torch.randn(8, 16),)
"""


@pytest.fixture(scope="module", autouse=True)
def _import_capture_modules() -> None:
    # pytester runs the inner tests in this process and afterwards drops the modules they imported;
    # torch.export's lazily imported modules register C++ op libraries, which fail when imported a
    # second time. Capturing and quantizing once here, before any pytester run, imports them for good.
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimize(capture(model, (torch.randn(8, 16),)), ["ptq"])


def test_plugin_is_registered_as_a_pytest_entry_point(pytester: pytest.Pytester) -> None:
    (point,) = [e for e in entry_points(group="pytest11") if e.name == "optkit"]
    assert point.value == "optkit.testing", "reinstall with `pip install -e .` to register the entry point"
    # Nothing in the temporary project names the plugin: pytest finds it through the entry point.
    pytester.makepyfile(
        """
        def test_fixtures_come_from_the_entry_point(request, optkit_capture, optkit_optimize):
            assert request.config.pluginmanager.has_plugin("optkit")
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert "--optkit-threads" in pytester.runpytest("--help").stdout.str()


def test_assert_sqnr_passes_and_fails_with_the_figures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(mymodels=MODELS)
    pytester.makepyfile(
        """
        import pytest
        from optkit.testing import assert_sqnr

        @pytest.fixture(scope="module")
        def programs(optkit_capture, optkit_optimize):
            program = optkit_capture("mymodels:build")
            return program, optkit_optimize(program, "ptq").program

        def test_int8_is_close(programs):
            assert assert_sqnr(*programs, min_db=30) > 30

        def test_int8_is_not_exact(programs):
            assert_sqnr(*programs, min_db=200)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines(
        [
            r".*AssertionError: SQNR \d+\.\d dB < 200\.0 dB required \(reference Program 'build' vs "
            r"candidate Program 'build' on 1 batch of example inputs, output \(8, 4\); max abs error .*\)"
        ]
    )


def test_capture_fixture_captures_once_per_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(mymodels=MODELS)
    pytester.makepyfile(
        """
        import pytest
        import torch
        from optkit.errors import ConfigError
        import mymodels

        MODEL, INPUTS = mymodels.build()
        seen = []

        @pytest.mark.parametrize("call", range(2))
        def test_module_and_reference(optkit_capture, call):
            seen.append((optkit_capture(MODEL, INPUTS), optkit_capture("mymodels:build")))

        def test_same_objects(optkit_capture, optkit_optimize):
            (module_a, ref_a), (module_b, ref_b) = seen
            assert module_a is module_b and ref_a is ref_b and module_a is not ref_a
            assert optkit_capture.loads == 2
            # other input shapes are another capture; a user key names one model
            optkit_capture(MODEL, torch.randn(4, 16))
            assert optkit_capture(MODEL, INPUTS, key="mlp") is optkit_capture(MODEL, INPUTS, key="mlp")
            assert optkit_capture.loads == 4
            with pytest.raises(ConfigError, match="already names another model"):
                optkit_capture(mymodels.build()[0], INPUTS, key="mlp")
            assert optkit_optimize(ref_a, "cleanup") is optkit_optimize(ref_a, ["cleanup"])
            assert optkit_optimize.runs == 1
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)


def test_latency_ratio_on_a_fast_and_a_slow_function(pytester: pytest.Pytester) -> None:
    # 20 ms against nothing: a margin of about 1000x over the 2x asked for, so not flaky.
    pytester.makepyfile(
        """
        import time
        from optkit.testing import assert_latency_ratio

        def slow():
            time.sleep(0.02)

        def fast():
            pass

        def test_fast_candidate():
            measured = assert_latency_ratio(slow, fast, min_speedup=2, repeats=5, warmup=1)
            assert measured.baseline_ms >= 20

        def test_slow_candidate():
            assert_latency_ratio(fast, slow, min_speedup=2, repeats=5, warmup=1)

        def test_slow_candidate_ratio():
            assert_latency_ratio(fast, slow, max_ratio=1.5, repeats=5, warmup=1)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.re_match_lines(
        [
            r".*AssertionError: speed-up \S+x < 2x required: baseline \S+ ms, candidate 2\d\.?\d* ms "
            r"\(medians of 5 interleaved rounds after 1 warm-up\)",
            r".*AssertionError: latency ratio candidate/baseline \S+ > 1\.5 allowed: .*",
        ]
    )


def test_threads_option_pins_torch_for_the_session_and_restores(pytester: pytest.Pytester) -> None:
    before = torch.get_num_threads()
    pinned = before + 1
    pytester.makepyfile(
        f"""
        import torch

        def test_pinned():
            assert torch.get_num_threads() == {pinned}
        """
    )
    result = pytester.runpytest(f"--optkit-threads={pinned}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"optkit: torch threads pinned to {pinned}"])
    assert torch.get_num_threads() == before
    pytester.runpytest("--optkit-threads=0").stderr.fnmatch_lines(["*--optkit-threads must be >= 1, got 0*"])


# -- the assertions called directly ------------------------------------------------------------------
def test_sqnr_and_psnr_on_tensors() -> None:
    ref = torch.linspace(-1, 1, 100)
    assert assert_sqnr(ref, ref, min_db=100) == float("inf")
    noisy = ref + 0.01 * torch.randn(100)
    assert 30 < assert_psnr(ref, noisy, min_db=30, data_range=2.0) < 60
    with pytest.raises(AssertionError, match=r"PSNR \d+\.\d dB < 90\.0 dB required .*data range 2"):
        assert_psnr(ref, noisy, min_db=90, data_range=2.0)
    with pytest.raises(AssertionError, match=r"candidate output has 1 NaN or infinite values of 100"):
        assert_sqnr(ref, torch.where(ref > 0.99, float("nan"), ref), min_db=10)
    with pytest.raises(
        AssertionError, match=r"outputs differ in shape: reference \(100,\) vs candidate \(99,\)"
    ):
        assert_sqnr(ref, ref[1:], min_db=10)


def test_sqnr_runs_modules_on_given_batches() -> None:
    model = torch.nn.Linear(4, 3)
    batches = [(torch.randn(2, 4),), (torch.randn(2, 4),)]
    with pytest.raises(
        AssertionError, match=r"reference Linear vs candidate <lambda> on 2 batches, output \(4, 3\)"
    ):
        assert_sqnr(model, lambda x: model(x) + 1.0, min_db=60, inputs=batches)


def test_bad_arguments_are_optkit_errors() -> None:
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ConfigError, match="give inputs"):
        assert_sqnr(model, model, min_db=30)
    with pytest.raises(ConfigError, match="min_db must be a number"):
        assert_sqnr(torch.ones(3), torch.ones(3), min_db="30")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly one of max_ratio and min_speedup"):
        assert_latency_ratio(lambda: None, lambda: None)
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        assert_latency_ratio(lambda: None, lambda: None, min_speedup=1, repeats=0)


def test_report_figure_is_checked_as_a_budget(tmp_path) -> None:
    report = Report("optkit optimize: mlp with ptq")
    report.add("output SQNR vs input (1 batch(es))", 27.3, "dB", "quality_sqnr_db")
    report.add("model.pt2 size", 3_000_000, "bytes", "model_bytes")
    report.write(tmp_path)
    assert assert_report_figure(tmp_path, "quality_sqnr_db", ">=", 20) == 27.3
    assert assert_report_figure(tmp_path / "report.json", "model_bytes", "<=", 3, unit="MB") == 3_000_000
    with pytest.raises(
        AssertionError,
        match=r"quality_sqnr_db = 27\.3 dB, required >= 30 dB \(output SQNR vs input \(1 batch\(es\)\); .*report\.json\)",
    ):
        assert_report_figure(tmp_path, "quality_sqnr_db", ">=", 30)
    with pytest.raises(
        AssertionError, match=r"model_bytes = 3e\+06 bytes, required <= 2.* \(model.pt2 size; "
    ):
        assert_report_figure(report, "model_bytes<=2MiB")
    with pytest.raises(
        UnknownNameError, match="unknown figure 'speedup'; known: model_bytes, quality_sqnr_db"
    ):
        assert_report_figure(report, "speedup", ">=", 1)
    with pytest.raises(UnknownNameError, match="unknown comparison '=>'; known: "):
        assert_report_figure(report, "quality_sqnr_db", "=>", 1)
