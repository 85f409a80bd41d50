import time

import pytest

from optkit.errors import ConfigError
from optkit.timing import interleaved_latency_ms, latency_ms, run_length, timed_run_ms


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
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    figures = interleaved_latency_ms(fns, 1, 3, run_ms=0)
    assert order == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert set(figures) == {"a", "b"} and figures["a"]["repeats"] == 3 and figures["a"]["calls"] == 1
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        interleaved_latency_ms({"a": lambda: None}, repeats=0)


def test_settled_rounds_warm_each_callable_before_its_timed_call(monkeypatch):
    import optkit.timing as timing

    order: list[str] = []
    monkeypatch.setattr(timing, "quiesce", lambda: order.append("idle"))
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    figures = interleaved_latency_ms(fns, warmup=0, repeats=2, settle=True, run_ms=0)
    # each timed call follows the wait for idle pools and one untimed call of its own
    assert order == ["idle", "a", "a", "idle", "b", "b"] * 2
    assert figures["a"]["repeats"] == 2


def test_short_calls_are_timed_in_runs_long_ones_alone():
    assert run_length(lambda: None) > 1  # a no-op fills 1 ms only in a run
    assert run_length(lambda: time.sleep(0.002)) == 1  # the fastest of three is still 2 ms
    calls: list[int] = []
    per_call = timed_run_ms(lambda: calls.append(1), 5)
    assert len(calls) == 6 and per_call >= 0  # one untimed call, then five timed together
    order: list[str] = []
    fns = {"fast": lambda: order.append("fast"), "slow": lambda: (order.append("slow"), time.sleep(0.012))}
    figures = interleaved_latency_ms(fns, warmup=0, repeats=2)
    fast = int(figures["fast"]["calls"])
    assert fast > 1 and figures["slow"]["calls"] == 1
    # probes (the fast one three calls; the slow one one, past 10 x 1 ms), then per round an
    # untimed call and a run of the fast one, the slow one alone
    assert order.count("fast") == 3 + 2 * (1 + fast) and order.count("slow") == 1 + 2
    # a warm-up round already showed the slow one slow: no probe call
    order.clear()
    interleaved_latency_ms(fns, warmup=1, repeats=2)
    assert order.count("slow") == 1 + 2
    assert run_length(lambda: order.append("x"), seen_ms=50.0) == 1 and "x" not in order
    # a warm call that looked slow but is not past 10 x 1 ms gets two more chances
    assert run_length(lambda: order.append("y"), seen_ms=2.0) > 1 and order.count("y") == 2
