"""The ask/tell loop and its journal: resume without losing or repeating a trial; every searcher
returns valid candidates; failures are recorded."""

import optuna
import pytest
from optkit.backends.pim.presets import resolve_preset

from optkit.errors import ConfigError, UnknownNameError
from optkit.search.executors import Failure
from optkit.search.searchers import SEARCHERS, make_sampler
from optkit.search.space import SearchSpace
from optkit.search.study import open_study, parse_objectives, records, run_trials
from tests.search.conftest import CONFIG

OBJ = ("auc", "latency", "energy")
SPACE = SearchSpace(CONFIG, resolve_preset("hbm-pim"))


def fake_scores(c):
    """A smooth made-up landscape: wider blocks and more sources score better and cost more."""
    width = sum(b.dim * len(b.sources) for b in c.choice)
    hw = c.hardware
    return {
        "auc": 0.5 + width / 200 - (0.01 if hw.numerics == "int8" else 0.0),
        "latency_us": width / (hw.units_scale * hw.clock_scale) + (50 if hw.placement == "host" else 0),
        "energy_uj": width * (0.5 if hw.numerics == "int8" else 1.0),
    }


class FakeExecutor:
    workers = 1

    def __init__(self, interrupt_at=None, fail=lambda c: False):
        self.scored, self.batches, self.interrupt_at, self.fail = [], 0, interrupt_at, fail

    def map(self, candidates):
        self.batches += 1
        if self.batches == self.interrupt_at:
            raise KeyboardInterrupt  # killed after asking, before telling
        self.scored += candidates
        return [Failure("boom") if self.fail(c) else fake_scores(c) for c in candidates]

    def close(self):
        pass


def _study(out, searcher="nsga2", seed=0, settings=None):
    sampler = make_sampler(searcher, seed, population=8)
    return open_study(out, OBJ, sampler, settings or {"searcher": searcher, "seed": seed})


def test_a_killed_search_resumes_with_no_trial_lost_or_run_twice(tmp_path):
    first = FakeExecutor(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_trials(_study(tmp_path), SPACE, first, OBJ, trials=20, batch=4)
    assert len(first.scored) == 8  # two batches told, the third asked and lost with the process
    running = {
        t.number: t.params
        for t in _study(tmp_path).get_trials()
        if t.state == optuna.trial.TrialState.RUNNING
    }
    assert sorted(running) == [8, 9, 10, 11]
    second = FakeExecutor()
    study = _study(tmp_path)
    done = run_trials(study, SPACE, second, OBJ, trials=20, batch=4)
    assert [r.number for r in done] == list(range(20))
    assert len(first.scored) + len(second.scored) == 20
    finished = {t.number: t.params for t in study.get_trials()}
    assert all(finished[n] == params for n, params in running.items())  # asked params kept
    assert second.scored[:4] == [SPACE.suggest(optuna.trial.FixedTrial(running[n])) for n in range(8, 12)]
    again = FakeExecutor()
    assert len(run_trials(_study(tmp_path), SPACE, again, OBJ, trials=20, batch=4)) == 20
    assert again.scored == []  # a finished search scores nothing more


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_trials(_study(tmp_path), SPACE, FakeExecutor(), OBJ, trials=4, batch=4)
    with pytest.raises(ConfigError, match="other settings"):
        _study(tmp_path, searcher="random")


@pytest.mark.parametrize("searcher", SEARCHERS)
def test_every_searcher_returns_valid_candidates(tmp_path, searcher):
    done = run_trials(_study(tmp_path, searcher), SPACE, FakeExecutor(), OBJ, trials=24, batch=4)
    assert len(done) == 24
    for r in done:
        CONFIG.check_choice(r.candidate.choice)
        assert r.scores == fake_scores(r.candidate)


def test_evolution_children_are_one_mutation_from_a_parent(tmp_path):
    study = _study(tmp_path, "evolution")
    run_trials(study, SPACE, FakeExecutor(), OBJ, trials=24, batch=1)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    for child in trials[8:]:
        population = trials[child.number - 8 : child.number]
        diffs = [sum(child.params[k] != p.params[k] for k in child.params) for p in population]
        assert min(diffs) == 1


def test_same_seed_same_candidates_whatever_the_batching_of_workers(tmp_path):
    a = run_trials(_study(tmp_path / "a"), SPACE, FakeExecutor(), OBJ, trials=16, batch=4)
    b = run_trials(_study(tmp_path / "b"), SPACE, FakeExecutor(), OBJ, trials=16, batch=4)
    assert [r.candidate for r in a] == [r.candidate for r in b]


def test_failures_are_recorded_and_count(tmp_path):
    study = _study(tmp_path)
    failing = FakeExecutor(fail=lambda c: c.hardware.placement == "host")
    done = run_trials(study, SPACE, failing, OBJ, trials=12, batch=4)
    failed = [r for r in done if r.scores is None]
    assert len(done) == 12 and failed
    assert all(r.error == "boom" and r.candidate.hardware.placement == "host" for r in failed)
    assert len(records(study)) == 12


def test_bad_objectives_and_searchers():
    assert parse_objectives("auc, latency") == ("auc", "latency")
    with pytest.raises(UnknownNameError, match="known: auc, energy, latency"):
        parse_objectives("auc,throughput")
    with pytest.raises(ConfigError, match="repeat"):
        parse_objectives("auc,auc")
    with pytest.raises(ConfigError, match="at least one"):
        parse_objectives("")
    with pytest.raises(UnknownNameError, match="searcher"):
        make_sampler("annealing", 0)
