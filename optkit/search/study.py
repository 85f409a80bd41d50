"""The search loop: an Optuna study in a file-backed journal, driven by ask/tell in batches.

Each round asks `batch` trials from the sampler (in this process), has the executor score them
(here, on a pool or on Ray) and tells the results back in trial order. The batch size does not
depend on the number of workers, so a search with the same seed asks the same candidates, and
finds the same front, on one worker or many.

Persistence: the study lives in `OUT/journal.log` (Optuna's `JournalFileBackend`); every
ask, parameter and tell is appended as it happens. A search killed mid-batch leaves its asked
trials RUNNING with their parameters; on resume those are scored first, with the same
parameters and trial numbers, then new trials are asked until `trials` have finished. No
finished trial is scored again and no asked trial is lost. A failed trial is told FAIL with
its error in `user_attrs["error"]`; it counts towards `trials`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optkit.errors import ConfigError, UnknownNameError
from optkit.search.executors import Executor, Failure
from optkit.search.space import Candidate, SearchSpace

log = logging.getLogger(__name__)

# objective name -> (score key, direction)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "auc": ("auc", "maximize"),
    "latency": ("latency_us", "minimize"),
    "energy": ("energy_uj", "minimize"),
}
STUDY = "optkit-search"
JOURNAL = "journal.log"


def parse_objectives(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`auc,latency,energy` -> ("auc", "latency", "energy"); unknown or repeated names fail."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [n.strip() for n in text]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"give at least one objective from {', '.join(OBJECTIVES)}")
    for n in names:
        if n not in OBJECTIVES:
            raise UnknownNameError("objective", n, tuple(OBJECTIVES))
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives must not repeat, got {names}")
    return tuple(names)


@dataclass
class TrialRecord:
    """One finished trial as the search reports it."""

    number: int
    candidate: Candidate
    scores: dict[str, Any] | None  # None: failed
    error: str = ""

    def values(self, objectives: tuple[str, ...]) -> list[float]:
        assert self.scores is not None
        return [float(self.scores[OBJECTIVES[o][0]]) for o in objectives]

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "candidate": self.candidate.to_dict(),
            "name": self.candidate.describe(),
            "scores": self.scores,
            "error": self.error,
        }


def open_study(out: Path, objectives: tuple[str, ...], sampler: Any, settings: dict[str, Any]) -> Any:
    """The study in `out/journal.log`, created or resumed; `settings` must match a resumed one."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    directions: Any = [OBJECTIVES[o][1] for o in objectives]
    study = optuna.create_study(
        study_name=STUDY, storage=storage, directions=directions, sampler=sampler, load_if_exists=True
    )
    old = study.user_attrs.get("settings")
    if old is None:
        study.set_user_attr("settings", settings)
    elif old != settings:
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise ConfigError(
            f"{out / JOURNAL} holds a search with other settings ({diff}: journal vs now); "
            "use another output directory or the same settings to resume it"
        )
    return study


def run_trials(
    study: Any,
    space: SearchSpace,
    executor: Executor,
    objectives: tuple[str, ...],
    trials: int,
    batch: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[TrialRecord]:
    """Run `study` until `trials` trials have finished; return every finished trial, in order."""
    import optuna
    from optuna.trial import TrialState

    if trials < 1 or batch < 1:
        raise ConfigError(f"trials and batch must be >= 1, got {trials}, {batch}")
    finished_states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if stale:
        log.info("resuming %d trial(s) a previous run asked but did not finish", len(stale))
        resumed = [optuna.trial.Trial(study, t._trial_id) for t in stale]
        _score_and_tell(study, space, executor, objectives, resumed)
    while True:
        done = len(study.get_trials(deepcopy=False, states=finished_states))
        if progress:
            progress(done, trials)
        if done >= trials:
            break
        asked = [study.ask() for _ in range(min(batch, trials - done))]
        _score_and_tell(study, space, executor, objectives, asked)
    return records(study)


def _score_and_tell(
    study: Any, space: SearchSpace, executor: Executor, objectives: tuple[str, ...], asked: list[Any]
) -> None:
    from optuna.trial import TrialState

    candidates = [space.suggest(t) for t in asked]
    for trial, cand in zip(asked, candidates, strict=True):
        trial.set_user_attr("candidate", cand.to_dict())
    outcomes = executor.map(candidates)
    for trial, outcome in zip(asked, outcomes, strict=True):
        if isinstance(outcome, Failure):
            trial.set_user_attr("error", outcome.error)
            trial.set_user_attr("attempts", outcome.attempts)
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr("scores", outcome)
        study.tell(trial, [float(outcome[OBJECTIVES[o][0]]) for o in objectives])


def records(study: Any) -> list[TrialRecord]:
    """The finished trials of `study` as `TrialRecord`s, by trial number."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or "candidate" not in t.user_attrs:
            continue
        cand = Candidate.from_dict(t.user_attrs["candidate"])
        scores = t.user_attrs.get("scores") if t.state == TrialState.COMPLETE else None
        out.append(TrialRecord(t.number, cand, scores, str(t.user_attrs.get("error", ""))))
    return sorted(out, key=lambda r: r.number)
