"""Schedule policies: the paper's threshold rule, budgets and baselines, bad input."""

from __future__ import annotations

import pytest

from optkit.caching.schedule import (
    CacheSchedule,
    budget_schedule,
    fewer_steps_schedule,
    first_block_budget_schedule,
    first_block_schedule,
    threshold_schedule,
    uniform_schedule,
)
from optkit.errors import ConfigError

CHANGE = {
    "blocks.0": [0.0, 0.5, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05],
    "blocks.1": [0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
}


def test_threshold_accumulates_change_since_last_recompute():
    s = threshold_schedule(CHANGE, 0.25)
    assert s.recompute["blocks.0"] == (True, True, False, True, False, False, True, False)
    assert s.recompute["blocks.1"] == (True, False, False, True, False, False, True, False)


def test_threshold_zero_recomputes_everything_and_savings_grow_with_threshold():
    assert threshold_schedule(CHANGE, 0.0).evaluation_fraction() == 1.0
    fractions = [threshold_schedule(CHANGE, d).evaluation_fraction() for d in (0.0, 0.1, 0.2, 0.4, 1.0)]
    assert fractions == sorted(fractions, reverse=True)
    assert fractions[-1] < 0.5


def test_budget_meets_fraction():
    for budget in (0.3, 0.5, 0.8):
        s = budget_schedule(CHANGE, budget)
        assert budget <= s.evaluation_fraction() < budget + 0.3


def test_baselines():
    uniform = uniform_schedule(list(CHANGE), 8, 3)
    assert uniform.recompute["blocks.1"] == (True, False, False, True, False, False, True, False)
    fb = first_block_schedule(CHANGE, 0.25)
    assert all(fb.recompute["blocks.0"])
    assert fb.recompute["blocks.1"] == threshold_schedule(CHANGE, 0.25).recompute["blocks.0"]
    assert first_block_budget_schedule(CHANGE, 0.6).evaluation_fraction() >= 0.6
    fewer = fewer_steps_schedule(list(CHANGE), 20, 0.5)
    assert fewer.steps == 10 and fewer.evaluation_fraction(20) == 0.5


def test_annotation_round_trip():
    s = threshold_schedule(CHANGE, 0.25)
    back = CacheSchedule.from_annotation(s.to_annotation())
    assert back.recompute == s.recompute


@pytest.mark.parametrize(
    "make",
    [
        lambda: CacheSchedule(3, {"b": (False, True, True)}),
        lambda: CacheSchedule(3, {"b": (True, True)}),
        lambda: threshold_schedule(CHANGE, -0.1),
        lambda: threshold_schedule(CHANGE, float("nan")),
        lambda: budget_schedule(CHANGE, 0.0),
        lambda: uniform_schedule(["b"], 4, 0),
        lambda: CacheSchedule.from_annotation({}),
    ],
)
def test_bad_schedules_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()
