"""`run_search` end to end on a tiny problem, resumed; `optkit search` refuses bad input."""

import json

import pytest
from click.testing import CliRunner

from optkit.cli.main import cli
from optkit.errors import ConfigError, UnknownNameError
from optkit.search.api import SearchConfig, run_search
from optkit.search.executors import SerialExecutor

SMALL = dict(
    trials=4,
    batch=2,
    population=4,
    supernet_steps=20,
    batch_size=64,
    cost_batch=16,
    retrain=1,
    retrain_steps=10,
)


@pytest.mark.slow
def test_search_writes_front_and_retrained_models_and_resumes(tiny_problem, pim_host_model, tmp_path):
    cfg = SearchConfig(**SMALL)
    result = run_search(tiny_problem, cfg, tmp_path, host=pim_host_model)
    assert len(result.trials) == 4 and result.front
    for name in ("journal.log", "trials.json", "pareto.json", "pareto.png", "retrained.json", "supernet.pt"):
        assert (tmp_path / name).exists(), name
    front = json.loads((tmp_path / "pareto.json").read_text())["front"]
    scores = [(t["scores"]["auc"], t["scores"]["latency_us"], t["scores"]["energy_uj"]) for t in front]
    for a in scores:  # no front member dominates another
        assert not any(b != a and b[0] >= a[0] and b[1] <= a[1] and b[2] <= a[2] for b in scores)
    labels = [r["label"] for r in result.retrained]
    assert labels[1:] == ["dlrm", "dcn-v2"] and labels[0].startswith("search #")
    assert all(0.0 < r["test_auc"] < 1.0 and r["latency_us"] > 0 for r in result.retrained)
    assert "on the Pareto front" in result.summary()

    supernet_mtime = (tmp_path / "supernet.pt").stat().st_mtime_ns
    more = SearchConfig(**{**SMALL, "trials": 6, "retrain": 0})
    scored = []

    class Counting(SerialExecutor):
        def map(self, candidates):
            scored.extend(candidates)
            return super().map(candidates)

    from optkit.search.api import load_or_train_supernet
    from optkit.search.scoring import CandidateScorer

    supernet = load_or_train_supernet(tiny_problem, more, tmp_path)
    scorer = CandidateScorer(supernet, tiny_problem.splits["validation"], result_preset(), pim_host_model, 16)
    again = run_search(tiny_problem, more, tmp_path, host=pim_host_model, executor=Counting(scorer))
    assert [t.number for t in again.trials] == list(range(6)) and len(scored) == 2
    assert (tmp_path / "supernet.pt").stat().st_mtime_ns == supernet_mtime  # loaded, not retrained
    assert [t.scores for t in again.trials[:4]] == [t.scores for t in result.trials]


def result_preset():
    from optkit.backends.pim.presets import resolve_preset

    return resolve_preset("hbm-pim")


def test_config_rejects_bad_values():
    with pytest.raises(UnknownNameError, match="objective"):
        SearchConfig(objectives=("auc", "throughput"))
    with pytest.raises(UnknownNameError, match="PIM preset"):
        SearchConfig(preset="hbm-3000")
    with pytest.raises(UnknownNameError, match="searcher"):
        SearchConfig(searcher="annealing")
    with pytest.raises(ConfigError, match="trials"):
        SearchConfig(trials=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objectives", "auc,speed"], "unknown objective 'speed'"),
        (["--target", "pim:nope"], "unknown PIM preset 'nope'"),
        (["--target", "cpu"], "needs --target pim:PRESET"),
        (["--searcher", "annealing"], "unknown searcher 'annealing'"),
        (["--calibration", "precise"], "calibration must be auto, quick, full"),
        (["--ray", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    ],
)
def test_cli_bad_input_exits_2(args, message, tmp_path):
    res = CliRunner().invoke(cli, ["search", "zoo:recsys", "-o", str(tmp_path / "out"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_cli_needs_a_supernet_model(tmp_path):
    res = CliRunner().invoke(cli, ["search", "zoo:mlp", "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "zoo:recsys" in res.output


def test_search_host_is_kept_in_out_and_reused(pim_host_model, tmp_path):
    import dataclasses

    from optkit.search.api import HOST_MODEL, search_host

    saved = tmp_path / "saved.json"
    pim_host_model.save(saved)
    out = tmp_path / "out"
    out.mkdir()
    first = search_host(SearchConfig(calibration=str(saved)), out)
    assert first.to_dict() == pim_host_model.to_dict() and (out / HOST_MODEL).exists()
    # a resumed search prices with the kept model, whatever the calibration setting says now
    assert search_host(SearchConfig(calibration="quick"), out).to_dict() == first.to_dict()
    assert search_host(SearchConfig(), out, host=pim_host_model).to_dict() == first.to_dict()
    other = dataclasses.replace(pim_host_model, gather_gbps=9.0)
    with pytest.raises(ConfigError, match="differs"):
        search_host(SearchConfig(), out, host=other)
    with pytest.raises(ConfigError, match="no saved host model"):
        search_host(SearchConfig(calibration=str(tmp_path / "missing.json")), tmp_path / "fresh")
    with pytest.raises(ConfigError, match="calibration must be"):
        SearchConfig(calibration="precise")
