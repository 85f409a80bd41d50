"""`optkit bench` through click's runner: files written, JSON, errors, one target failing."""

import json
import textwrap

import pytest
from click.testing import CliRunner

from optkit import benchmark as bench
from optkit.cli.main import cli

FAST = ["--repeats", "2", "--warmup", "1"]


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "benchmodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def mlp():
                torch.manual_seed(0)
                return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)), (torch.randn(4, 16),)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_bench_writes_report_and_plot_and_prints_table(user_models):
    result = run("bench", "benchmodels:mlp", "--targets", "eager,ort", *FAST, "--threads", "1", "-o", "out")
    assert result.exit_code == 0, result.output
    assert "eager" in result.output and "ort" in result.output and "GFLOP/s" in result.output
    out = user_models / "out"
    assert sorted(p.name for p in out.iterdir()) == ["bench.png", "report.json", "report.md"]
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    table = report["tables"][0]
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["rows"]}
    assert set(rows) == {"eager", "ort"}
    assert rows["eager"]["status"] == rows["ort"]["status"] == "ok"
    assert rows["ort"]["max abs error"] < 1e-5
    assert rows["ort"]["p10"] <= rows["ort"]["median"] <= rows["ort"]["p90"]
    assert report["figures"]["threads"]["value"] == 1
    assert "![Latency per target](bench.png)" in (out / "report.md").read_text()


def test_bench_json_and_refusal_to_overwrite(user_models):
    args = ["bench", "benchmodels:mlp", "--targets", "eager", *FAST, "-o", "out"]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["figures"]["latency_eager"]["unit"] == "ms"
    again = run(*args)
    assert again.exit_code == 2 and "exists and is not empty; pass --overwrite" in again.output
    quiet = run("--quiet", *args, "--overwrite")
    assert quiet.exit_code == 0 and quiet.output == ""


def test_unknown_target_exits_2_listing_allowed(user_models):
    result = run("bench", "benchmodels:mlp", "--targets", "eager,tpu", "-o", "out")
    assert result.exit_code == 2
    assert "unknown target 'tpu'; known: compile, eager, ort, tvm-cpu, tvm-cuda" in result.output
    assert not (user_models / "out").exists()


def test_one_failing_target_is_reported_while_the_others_run(user_models, monkeypatch):
    def broken(ctx):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setitem(bench._BUILDERS, "compile", broken)
    result = run("bench", "benchmodels:mlp", "--targets", "eager,compile,ort", *FAST, "-o", "out")
    assert result.exit_code == 0, result.output
    assert "compile failed: build failed: RuntimeError: inductor: no C++ compiler" in result.output
    report = json.loads((user_models / "out" / "report.json").read_text())
    statuses = {row[0]: row[1] for row in report["tables"][0]["rows"]}
    assert statuses == {"eager": "ok", "compile": "failed", "ort": "ok"}
    assert any(n.startswith("compile failed: build failed") for n in report["notes"])


def test_tuner_reaches_the_bench_config_and_a_bad_one_is_refused(user_models, monkeypatch):
    seen = {}

    def record(ref, output, config, **_kwargs):
        seen["tuner"], seen["trials"] = config.tuner, config.tune_trials
        raise SystemExit(0)

    monkeypatch.setattr(bench, "bench_file", record)
    args = ["bench", "benchmodels:mlp", "--targets", "tvm-cpu", "--tune-trials", "4", "-o", "out"]
    CliRunner().invoke(cli, [*args, "--tuner", "metaschedule"])
    assert seen == {"tuner": "metaschedule", "trials": 4}
    bad = CliRunner().invoke(cli, [*args, "--tuner", "autotvm"])
    assert bad.exit_code == 2 and "'autotvm' is not one of 'optkit', 'metaschedule'" in bad.output
