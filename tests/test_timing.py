import pytest

from optkit.errors import ConfigError
from optkit.timing import interleaved_latency_ms, latency_ms


def test_latency_counts_calls_and_orders_percentiles():
    calls = []
    figures = latency_ms(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
    assert figures["min"] <= figures["p10"] <= figures["median"] <= figures["p90"]
    assert figures["repeats"] == 5


def test_bad_repeats():
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        latency_ms(lambda: None, repeats=0)


def test_interleaved_runs_each_callable_in_turn():
    order: list[str] = []
    figures = interleaved_latency_ms({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 1, 3)
    assert order == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert set(figures) == {"a", "b"} and figures["a"]["repeats"] == 3
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        interleaved_latency_ms({"a": lambda: None}, repeats=0)


def test_settled_rounds_warm_each_callable_before_its_timed_call(monkeypatch):
    import optkit.timing as timing

    order: list[str] = []
    monkeypatch.setattr(timing, "quiesce", lambda: order.append("idle"))
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    figures = interleaved_latency_ms(fns, warmup=0, repeats=2, settle=True)
    # each timed call follows the wait for idle pools and one untimed call of its own
    assert order == ["idle", "a", "a", "idle", "b", "b"] * 2
    assert figures["a"]["repeats"] == 2
