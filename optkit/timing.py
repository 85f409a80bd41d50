"""Wall-clock latency: median and spread of repeated runs after warm-up."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from optkit.errors import ConfigError


def latency_ms(fn: Callable[..., Any], *args: Any, warmup: int = 3, repeats: int = 20) -> dict[str, float]:
    """Time `fn(*args)`: `warmup` untimed calls, then `repeats` timed ones.

    Returns milliseconds: median, p10, p90, min and the number of repeats. Callers compare a
    median against a peer measured in the same run, never against a remembered figure.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


RUN_MS = 1.0  # calls shorter than this are timed in runs of back-to-back calls
MAX_RUN_CALLS = 100
SURELY_SLOW = 10  # one call this many times `RUN_MS` decides alone (`run_length`)


def run_length(fn: Callable[[], Any], run_ms: float = RUN_MS, seen_ms: float | None = None) -> int:
    """Calls of `fn` per timed run: 1 when a call takes `run_ms` or more, otherwise enough
    back-to-back calls to fill `run_ms`, at most `MAX_RUN_CALLS`. The fastest of three calls
    decides (a preempted call on a busy machine looks slow), except that one call of
    `SURELY_SLOW` x `run_ms` or more decides alone, so that a sampling loop of seconds is not run
    again to learn that it is slow. `seen_ms`: a warm call already timed, counted as the first."""
    fastest = seen_ms if seen_ms is not None else _call_ms(fn)
    if fastest < SURELY_SLOW * run_ms:
        fastest = min(fastest, _call_ms(fn), _call_ms(fn))
    if fastest >= run_ms:
        return 1
    return min(MAX_RUN_CALLS, math.ceil(run_ms / max(fastest, 1e-3)))


def timed_run_ms(fn: Callable[[], Any], calls: int = 1) -> float:
    """Milliseconds per call of `fn`: one call timed alone, or, with `calls` > 1, one untimed
    call and then `calls` back-to-back calls timed together (their mean).

    Why runs: timed alone right after other runtimes, a sub-millisecond call pays for caches
    and branch predictors those runtimes left cold, and that cost, not the model, is what the
    figure measures: `zoo:recsys:small` (2.6 MFLOPs) in one process on a Zen 4 EPYC, 1 thread,
    took 0.48 ms in TVM and 0.47 ms in ONNX Runtime timed alone after each other, against
    0.12 ms for TVM's `Artifact.run` called back to back (2026-12-03)."""
    if calls <= 1:
        return _call_ms(fn)
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1e3 / calls


def _call_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved_latency_ms(
    fns: dict[str, Callable[[], Any]],
    warmup: int = 1,
    repeats: int = 10,
    settle: bool = False,
    run_ms: float = RUN_MS,
) -> dict[str, dict[str, float]]:
    """Time several callables against each other: `warmup` untimed rounds, then `repeats`
    rounds in which each is timed once, in turn, so that a slow spell of the machine falls
    on all of them alike. A callable faster than `run_ms` is timed per round as a run of
    back-to-back calls (`run_length`, `timed_run_ms`; 0 times every call alone). With `settle`
    (runtimes on more than one thread), each timed call starts once the previous one's thread
    pool has gone idle and after one untimed call of its own (`settle_before`). Returns
    `latency_ms`'s figures per name, plus `calls`: the calls per round."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    seen: dict[str, float] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            seen[name] = min(seen.get(name, math.inf), _call_ms(fn))
    calls = {name: run_length(fn, run_ms, seen.get(name)) if run_ms > 0 else 1 for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                settle_before(fn)
            times[name].append(timed_run_ms(fn, calls[name]))
    return {name: {**summarize(t), "calls": float(calls[name])} for name, t in times.items()}


def settle_before(fn: Callable[[], Any]) -> None:
    """Prepare a timed call of `fn` among other runtimes: wait until this process's thread
    pools are idle (`quiesce`), then call `fn` once, untimed, so that the timed call finds its
    own pool awake and its data in cache, as in a run of calls, and no other pool spinning.

    Timed straight after the wait, a call paid for waking from it, in TVM as in ONNX Runtime, on
    one thread as on two, which hid the runtimes' difference under a cost common to both: on 2
    threads of a shared AMD EPYC VM, TVM's `zoo:recsys:small` took 0.95 ms right after the wait,
    0.38 ms after one untimed call, 0.30 ms after two, 0.25 ms after eight (medians of 40)."""
    quiesce()
    fn()


QUIESCE_WINDOW_S = 0.005
QUIESCE_MAX_S = 0.25


def quiesce(window_s: float = QUIESCE_WINDOW_S, max_s: float = QUIESCE_MAX_S) -> float:
    """Wait until this process's thread pools are idle: its CPU time over a `window_s` sleep
    stays under 10% of the window (at most `max_s`); returns the seconds waited.

    The runtimes' pools spin for a while after a call (PyTorch's OpenMP threads, ONNX Runtime's
    intra-op threads, TVM's workers); a runtime timed right after another would share the cores
    with those spinning threads.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < max_s:
        cpu = time.process_time()
        time.sleep(window_s)
        if time.process_time() - cpu < 0.1 * window_s:
            break
    return time.perf_counter() - start


def summarize(times: list[float]) -> dict[str, float]:
    """Median, p10, p90, min and count of `times` (ms): the figures every timing here reports."""
    times = sorted(times)

    def pct(q: float) -> float:
        return times[min(len(times) - 1, round(q * (len(times) - 1)))]

    return {
        "median": statistics.median(times),
        "p10": pct(0.1),
        "p90": pct(0.9),
        "min": times[0],
        "repeats": float(len(times)),
    }


def speedup(base: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    """How many times faster `new` runs than `base` (both `latency_ms` results): the ratio of
    the medians, with the widest ratios the two spreads allow as p10 (base p10 / new p90) and
    p90 (base p90 / new p10), so that a comparison can judge a change of speed-up as noise."""
    return {
        "median": base["median"] / new["median"],
        "p10": base["p10"] / new["p90"],
        "p90": base["p90"] / new["p10"],
        "repeats": min(base["repeats"], new["repeats"]),
    }
