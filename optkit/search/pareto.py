"""Pareto fronts and hypervolume of a search's results.

Objectives come with a direction (`maximize` / `minimize`); internally every point is turned
into a minimization (maximized values negated). `hypervolume` is exact: the dominated volume
up to a reference point, by slicing along the first objective and recursing (HSO, While et
al., IEEE TEC 2006), which is quick for the few hundred points a search front has in 2-3
dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

from optkit.errors import ConfigError

DIRECTIONS = ("maximize", "minimize")


def _as_min(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[tuple[float, ...]]:
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ConfigError(f"directions must be maximize or minimize, got {bad}")
    out = []
    for p in points:
        if len(p) != len(directions):
            raise ConfigError(f"point {list(p)} has {len(p)} values for {len(directions)} objectives")
        out.append(
            tuple(-float(v) if d == "maximize" else float(v) for v, d in zip(p, directions, strict=True))
        )
    return out


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether minimization point `a` is no worse than `b` everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (duplicates: the first one kept), in order."""
    pts = _as_min(points, directions)
    front = []
    for i, p in enumerate(pts):
        if any(dominates(q, p) for q in pts) or p in pts[:i]:
            continue
        front.append(i)
    return front


def hypervolume(
    points: Sequence[Sequence[float]], reference: Sequence[float], directions: Sequence[str]
) -> float:
    """Volume dominated by `points` and bounded by `reference` (points beyond it add nothing)."""
    (ref,) = _as_min([reference], directions)
    pts = [p for p in _as_min(points, directions) if all(x < r for x, r in zip(p, ref, strict=True))]
    front = [p for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts) and p not in pts[:i]]
    return _hso(front, ref)


def _hso(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    pts = sorted(points)
    if len(ref) == 2:  # sweep with a running minimum: O(n log n)
        area, low = 0.0, ref[1]
        for i, p in enumerate(pts):
            low = min(low, p[1])
            upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
            area += (upper - p[0]) * (ref[1] - low)
        return area
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if upper <= p[0]:
            continue
        # the slab [p0, upper) is dominated by the projections of the points up to i
        volume += (upper - p[0]) * _hso([q[1:] for q in pts[: i + 1]], ref[1:])
    return volume
