"""Executors: a local process pool scores like this process; a worker that dies mid-trial is
retried once, then the trial is recorded as failed and the others go on."""

import dataclasses
import os
from pathlib import Path

import pytest

from optkit.nn.supernet import BlockChoice
from optkit.search.executors import Failure, PoolExecutor, SerialExecutor
from optkit.search.scoring import CandidateScorer
from optkit.search.space import Candidate, HardwareChoice

CHOICE = (BlockChoice("mlp", 8, (0, 1)), BlockChoice("fm", 4, (2,)))
PLAIN = Candidate(CHOICE, HardwareChoice())
DIES_ONCE = Candidate(CHOICE, HardwareChoice(clock_scale=1.5))
DIES_ALWAYS = Candidate(CHOICE, HardwareChoice(clock_scale=0.5))
RAISES = Candidate(CHOICE, HardwareChoice(units_scale=0.5))
CHEAP = Candidate(CHOICE, HardwareChoice(units_scale=2.0))


@dataclasses.dataclass
class DyingScorer(CandidateScorer):
    """Kills its own worker process on some candidates (a crash, not an exception)."""

    marker_dir: str = ""

    def score(self, candidate):
        marker = Path(self.marker_dir) / "died"
        if candidate == DIES_ALWAYS or (candidate == DIES_ONCE and not marker.exists()):
            marker.touch()
            os._exit(1)
        if candidate == DIES_ONCE:
            return {"auc": self._auc(candidate.choice, [], "fp32"), "retried": True}
        if candidate == RAISES:
            raise ValueError("no cost for this one")
        if candidate == CHEAP:  # skips capture, whose first call in a fresh process takes seconds
            return {"auc": self._auc(candidate.choice, [], "fp32")}
        return super().score(candidate)


def dying(scorer, tmp_path):
    fields = {f.name: getattr(scorer, f.name) for f in dataclasses.fields(CandidateScorer) if f.init}
    return DyingScorer(**fields, marker_dir=str(tmp_path))


def test_serial_executor_records_an_exception_as_a_failure(scorer):
    plain, raised = SerialExecutor(dataclasses.replace(scorer)).map(
        [PLAIN, Candidate((BlockChoice("conv", 8, (0,)), CHOICE[1]), HardwareChoice())]
    )
    assert plain["auc"] > 0 and isinstance(raised, Failure) and raised.attempts == 1
    assert "ConfigError" in raised.error and "conv" in raised.error


@pytest.mark.slow
def test_pool_matches_serial_and_retries_a_dead_worker_once(scorer, tmp_path):
    expected = SerialExecutor(dying(scorer, tmp_path)).map([CHEAP])
    pool = PoolExecutor(dying(scorer, tmp_path), workers=1)
    try:
        got = pool.map([CHEAP, RAISES, DIES_ONCE, DIES_ALWAYS])
    finally:
        pool.close()
    assert got[0] == expected[0]
    assert isinstance(got[1], Failure) and "no cost" in got[1].error and got[1].attempts == 1
    assert got[2] == expected[0] | {"retried": True}  # died once, retried, scored
    assert isinstance(got[3], Failure) and got[3].attempts == 2  # died twice: recorded failed
