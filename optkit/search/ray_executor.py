"""Scoring candidates as Ray tasks (`pip install optkit[distributed]`).

The scorer (the trained supernet, its validation data, the preset and host model) is put in
Ray's object store once (`ray.put`); every task gets a reference to it, and a worker process
deserializes it once and keeps it (with the graphs it has captured) for later tasks. One CPU per
trial by default. A task whose worker process dies is retried once by Ray (`max_retries=1`),
then recorded as failed; an exception inside scoring is recorded at once.

Without an address a local Ray runtime with `workers` CPUs is started (and stopped by
`close`); with one, the cluster must answer within `CONNECT_TIMEOUT_S`: an unreachable
address is a `DistributedError` within seconds, not a hang.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from optkit.errors import ConfigError, DistributedError
from optkit.search.executors import RETRIES, Failure, Outcome, score_or_failure
from optkit.search.scoring import CandidateScorer
from optkit.search.space import Candidate

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"ray": 10001, "": 6379}  # Ray Client, GCS

_SCORERS: dict[str, CandidateScorer] = {}  # per worker process: object id -> scorer


def require_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'optkit[distributed]'") from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise DistributedError unless a TCP connection to `address` (host:port, ray://host:port)
    opens within `timeout` seconds (`auto` and `local` are not checked)."""
    if address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    if not host:
        host, port = rest, ""
    try:
        number = int(port) if port else DEFAULT_PORTS.get(scheme, 6379)
    except ValueError:
        raise DistributedError(f"Ray address {address!r} is not host:port") from None
    try:
        with socket.create_connection((host, number), timeout=timeout):
            pass
    except OSError as err:
        raise DistributedError(
            f"cannot reach the Ray cluster at {address!r} ({host}:{number}): {err}; "
            "start one with `ray start --head` or leave out --ray for a local runtime"
        ) from None


def _score_task(scorer_ref: list[Any], candidate: Candidate) -> Outcome:
    import ray
    import torch

    torch.set_num_threads(1)
    key = scorer_ref[0].hex()
    if key not in _SCORERS:
        _SCORERS.clear()
        _SCORERS[key] = ray.get(scorer_ref[0])
    return score_or_failure(_SCORERS[key], candidate)


class RayExecutor:
    """Trials as Ray tasks, on a local runtime of `workers` CPUs or on the cluster at `address`."""

    def __init__(
        self,
        scorer: CandidateScorer,
        workers: int = 2,
        address: str | None = None,
        cpus_per_trial: float = 1.0,
    ) -> None:
        if workers < 1 or cpus_per_trial <= 0:
            raise ConfigError(f"need workers >= 1 and cpus_per_trial > 0, got {workers}, {cpus_per_trial}")
        ray = require_ray()
        self.workers = workers
        self._owns_runtime = False
        if address:
            check_reachable(address)
        if not ray.is_initialized():
            env = {"OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}
            try:
                if address:
                    ray.init(
                        address=address,
                        runtime_env={"env_vars": env},
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                else:
                    ray.init(
                        num_cpus=workers,
                        include_dashboard=False,
                        runtime_env={"env_vars": env},
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                    self._owns_runtime = True
            except DistributedError:
                raise
            except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError...
                raise DistributedError(f"cannot start or join Ray ({address or 'local'}): {err}") from None
        self._ray = ray
        self._ref = ray.put(scorer)
        self._task = ray.remote(num_cpus=cpus_per_trial, max_retries=RETRIES)(_score_task)

    def map(self, candidates: list[Candidate]) -> list[Outcome]:
        ray = self._ray
        refs = [self._task.remote([self._ref], c) for c in candidates]
        out: list[Outcome] = []
        for c, ref in zip(candidates, refs, strict=True):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as err:  # the worker died twice, or the task was lost
                log.warning("trial %s failed on Ray: %s", c.describe(), type(err).__name__)
                out.append(Failure(f"{type(err).__name__}: worker died (retried once)", attempts=1 + RETRIES))
        return out

    def close(self) -> None:
        if self._owns_runtime:
            self._ray.shutdown()
