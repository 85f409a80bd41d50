"""Executors: where candidates are scored. In this process, on a local process pool, or as Ray
tasks (`ray_executor.py`).

Each executor takes a batch of candidates and returns one outcome per candidate, in order: the
scores, or a `Failure`. A candidate whose scoring raises is recorded as failed at once (trying
again would fail the same way). A worker process that dies mid-trial is another matter: the
trial is retried once on a fresh worker, then recorded as failed; the search goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from optkit.errors import ConfigError
from optkit.search.scoring import CandidateScorer
from optkit.search.space import Candidate

log = logging.getLogger(__name__)
RETRIES = 1  # a trial whose worker died is run once more


@dataclass(frozen=True)
class Failure:
    """A trial that produced no scores: why, and how many times it was tried."""

    error: str
    attempts: int = 1


Outcome = dict[str, Any] | Failure


class Executor(Protocol):
    """Scores batches of candidates; `close` releases its workers."""

    workers: int

    def map(self, candidates: list[Candidate]) -> list[Outcome]: ...

    def close(self) -> None: ...


def score_or_failure(scorer: CandidateScorer, candidate: Candidate) -> Outcome:
    """`scorer.score(candidate)`, or a `Failure` naming the exception."""
    try:
        return scorer.score(candidate)
    except Exception as err:  # one bad candidate must not stop the search
        log.warning("candidate %s failed: %s: %s", candidate.describe(), type(err).__name__, err)
        return Failure(f"{type(err).__name__}: {err}")


class SerialExecutor:
    """Scores in this process, one candidate after another."""

    workers = 1

    def __init__(self, scorer: CandidateScorer) -> None:
        self.scorer = scorer

    def map(self, candidates: list[Candidate]) -> list[Outcome]:
        return [score_or_failure(self.scorer, c) for c in candidates]

    def close(self) -> None:
        pass


_WORKER_SCORER: CandidateScorer | None = None


def _init_worker(scorer: CandidateScorer) -> None:
    global _WORKER_SCORER
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    _WORKER_SCORER = scorer


def _score_in_worker(candidate: Candidate) -> Outcome:
    assert _WORKER_SCORER is not None, "worker not initialized"
    return score_or_failure(_WORKER_SCORER, candidate)


class PoolExecutor:
    """A local pool of `workers` processes (spawned, one torch thread each); the scorer goes to
    each worker once, when it starts."""

    def __init__(self, scorer: CandidateScorer, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.scorer = scorer
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _fresh_pool(self) -> ProcessPoolExecutor:
        self._discard()
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.scorer,),
        )
        return self._pool

    def map(self, candidates: list[Candidate]) -> list[Outcome]:
        pool = self._pool or self._fresh_pool()
        futures = [pool.submit(_score_in_worker, c) for c in candidates]
        out: list[Outcome | None] = []
        for fut in futures:
            try:
                out.append(fut.result())
            except BrokenProcessPool:
                out.append(None)
        broken = [i for i, o in enumerate(out) if o is None]
        if broken:
            log.warning("a worker died while scoring %d candidate(s); retrying each once", len(broken))
            self._discard()
        for i in broken:  # one at a time, so one dying candidate cannot take others with it
            out[i] = self._retry(candidates[i])
        return [o if o is not None else Failure("lost") for o in out]

    def _retry(self, candidate: Candidate) -> Outcome:
        for _ in range(RETRIES):
            pool = self._pool or self._fresh_pool()
            try:
                return pool.submit(_score_in_worker, candidate).result()
            except BrokenProcessPool:
                log.warning("worker died again on %s", candidate.describe())
                self._discard()
        return Failure("worker process died (retried once)", attempts=1 + RETRIES)

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
