"""Fuzzed graphs (issue 16), a small seeded subset of `benchmarks/bench_reliability.py`: random
small models through capture -> ptq (checked against eager by the PassManager), and one through
ONNX Runtime. Each either agrees or fails with a clean `OptkitError`; none may crash."""

import pytest
from hypothesis import HealthCheck, given, seed, settings

from optkit.testing.fuzz import FuzzSpec, check_graph, fuzz_specs


@seed(16)
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=fuzz_specs())
def test_fuzzed_graph_agrees_or_fails_cleanly(spec):
    outcome = check_graph(spec, onnx=False)
    assert outcome.status in ("agreed", "clean_error"), outcome.to_dict()
    if outcome.status == "clean_error":
        assert outcome.message


@pytest.mark.parametrize(
    "spec",
    [
        FuzzSpec("conv", ("attention_mask", "layernorm", "slice_tokens", "residual"), tokens=4, dim=8),
    ],
    ids=lambda s: s.describe(),
)
def test_fuzzed_graph_agrees_in_onnx_runtime(spec):
    outcome = check_graph(spec, onnx=True)
    assert outcome.status == "agreed", outcome.to_dict()
    assert outcome.figures["onnx_sqnr_db"] >= 30
