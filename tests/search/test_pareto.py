"""Pareto fronts and hypervolume on points whose answers are known."""

import random

import pytest

from optkit.errors import ConfigError
from optkit.search.pareto import hypervolume, pareto_front


def test_front_of_known_points():
    # (auc up, latency down)
    pts = [(0.80, 10.0), (0.78, 5.0), (0.79, 12.0), (0.70, 4.0), (0.80, 10.0), (0.60, 20.0)]
    assert pareto_front(pts, ["maximize", "minimize"]) == [0, 1, 3]


def test_hypervolume_known_values():
    mm = ["minimize", "minimize"]
    assert hypervolume([(1, 1)], (2, 2), mm) == 1.0
    assert hypervolume([(0.5, 1.5), (1.5, 0.5)], (2, 2), mm) == pytest.approx(1.25)
    assert hypervolume([(0.5, 1.5), (1.5, 0.5), (1.8, 1.8)], (2, 2), mm) == pytest.approx(1.25)  # dominated
    assert hypervolume([(3, 0)], (2, 2), mm) == 0.0  # beyond the reference
    cube = [(0, 1, 1), (1, 0, 1), (1, 1, 0)]
    assert hypervolume(cube, (2, 2, 2), ["minimize"] * 3) == pytest.approx(4.0)  # 3 x 2 - 3 x 1 + 1
    # maximizing AUC: the point (0.9, 1) against reference (0.5, 3) covers 0.4 x 2
    assert hypervolume([(0.9, 1.0)], (0.5, 3.0), ["maximize", "minimize"]) == pytest.approx(0.8)


def test_hypervolume_matches_monte_carlo_in_3d():
    rng = random.Random(0)
    pts = [tuple(rng.random() for _ in range(3)) for _ in range(25)]
    exact = hypervolume(pts, (1, 1, 1), ["minimize"] * 3)
    samples = [tuple(rng.random() for _ in range(3)) for _ in range(20000)]
    hit = sum(any(all(p[k] <= s[k] for k in range(3)) for p in pts) for s in samples) / len(samples)
    assert exact == pytest.approx(hit, abs=0.015)


def test_bad_directions_and_shapes():
    with pytest.raises(ConfigError, match="maximize or minimize"):
        pareto_front([(1, 2)], ["up", "down"])
    with pytest.raises(ConfigError, match="2 values for 3 objectives"):
        pareto_front([(1, 2)], ["minimize"] * 3)
