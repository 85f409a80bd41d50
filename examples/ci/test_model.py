"""A sample test file for your own model, using optkit's pytest plugin (installed with optkit).

Run it with threads pinned, as the workflow does:

    pytest examples/ci/test_model.py --optkit-threads 2

The model here is the zoo's recommender (`zoo:recsys`, output SQNR is its quality metric); put
yours in its place: `optkit_capture("my_pkg.models:build")` for a factory that returns
`(model, example_inputs)`, or `optkit_capture(MyNet().eval(), (torch.randn(8, 64),))`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

import optkit
from optkit.ir.onnx_io import onnx_session
from optkit.testing import (
    CaptureCache,
    OptimizeCache,
    assert_latency_ratio,
    assert_report_figure,
    assert_sqnr,
)

MODEL = "zoo:recsys"


@pytest.fixture(scope="module")
def model(optkit_capture: CaptureCache) -> optkit.Program:
    """The float model, captured once for the whole session (every test file shares it)."""
    return optkit_capture(MODEL)


@pytest.fixture(scope="module")
def int8(model: optkit.Program, optkit_optimize: OptimizeCache) -> optkit.Program:
    """The model after int8 post-training quantization (`ptq`), run once for the session."""
    return optkit_optimize(model, "ptq").program


@pytest.fixture(scope="module")
def int8_onnx(int8: optkit.Program, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Any]:
    """The int8 model exported to ONNX, as a call of ONNX Runtime on the example inputs."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    optkit.export_onnx(int8, path)
    # As many threads as torch (pinned by --optkit-threads), so neither side has more cores.
    session = onnx_session(path, threads=torch.get_num_threads())
    names = [i.name for i in session.get_inputs()]
    feeds = {n: t.numpy() for n, t in zip(names, int8.example_inputs, strict=True)}
    return lambda: session.run(None, feeds)


def test_int8_output_is_close_to_float(model: optkit.Program, int8: optkit.Program) -> None:
    # Fails with e.g. "SQNR 27.3 dB < 30.0 dB required (reference Program 'recsys-tiny' vs ...)".
    assert_sqnr(model, int8, min_db=30)


def test_int8_onnx_matches_the_int8_graph(int8: optkit.Program, int8_onnx: Callable[[], Any]) -> None:
    assert_sqnr(int8, int8_onnx()[0], min_db=40)  # its first output, a numpy array


def test_int8_onnx_is_faster_than_float_eager(model: optkit.Program, int8_onnx: Callable[[], Any]) -> None:
    # Both are timed in the same interleaved rounds; keep the bound well under what you measure
    # (about 4x here) so that a busy CI runner does not fail it.
    assert_latency_ratio(model, int8_onnx, min_speedup=1.5, repeats=30)


def test_optimize_report_meets_its_budgets() -> None:
    # The report `optkit optimize ... -o out/model` wrote in the step before (see optkit.yml).
    report = os.environ.get("OPTKIT_REPORT")
    if not report:
        pytest.skip("set OPTKIT_REPORT to the output directory of `optkit optimize`")
    assert_report_figure(report, "quality_sqnr_db", ">=", 30)
    assert_report_figure(report, "model_bytes<=1MiB")
