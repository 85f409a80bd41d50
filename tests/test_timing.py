import pytest

from optkit.errors import ConfigError
from optkit.timing import latency_ms


def test_latency_counts_calls_and_orders_percentiles():
    calls = []
    figures = latency_ms(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
    assert figures["min"] <= figures["p10"] <= figures["median"] <= figures["p90"]
    assert figures["repeats"] == 5


def test_bad_repeats():
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        latency_ms(lambda: None, repeats=0)
