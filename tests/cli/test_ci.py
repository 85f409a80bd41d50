"""CI gates through click's runner: --require budgets (exit 0 / 3 / 2), JUnit files, and
`optkit compare` on real runs of a small model."""

import json
import os
import textwrap
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from optkit.cli.main import cli

MODELS = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return x

def net():
    torch.manual_seed(0)
    return Net({width}, {depth}), (torch.randn({batch}, {width}),)
"""
RUN = ["--passes", "ptq", "--no-onnx", "--repeats", "5"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with `cimodels:net` (small) and `cimodels_slow:net` (the same model, grown so that
    it runs far slower), used as the working directory of every test here."""
    path = tmp_path_factory.mktemp("ci")
    (path / "cimodels.py").write_text(textwrap.dedent(MODELS.format(width=32, depth=3, batch=4)))
    # ~6 ms a call against ~0.1 ms: slower beyond any preempted run of the small one.
    (path / "cimodels_slow.py").write_text(textwrap.dedent(MODELS.format(width=1024, depth=3, batch=256)))
    (path / "w4.toml").write_text("[ptq]\nwbits = 4\ngranularity = 'tensor'\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        yield path


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def optimize(out, *extra, model="cimodels:net"):
    return run("--quiet", "optimize", model, *RUN, "-o", str(out), "--overwrite", *extra)


def junit_cases(path):
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {case.get("name"): case.find("failure") for case in root.iter("testcase")}


# -- budgets -----------------------------------------------------------------------------------
def test_budgets_met_exit_0_and_junit_lists_each_budget(workdir):
    result = run(
        "optimize", "cimodels:net", *RUN, "-o", "met", "--junit", "met.xml",
        "--require", "quality_sqnr_db>=20", "--require", "model_bytes <= 1 MiB",
        "--require", "latency_eager_after<10s",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "budgets: 3 of 3 met" in result.output
    cases = junit_cases(workdir / "met.xml")
    assert set(cases) == {"quality_sqnr_db>=20", "model_bytes<=1MiB", "latency_eager_after<10s"}
    assert all(failure is None for failure in cases.values())
    report = json.loads((workdir / "met" / "report.json").read_text())
    assert report["format"] == 2 and report["model"] == "net" and report["kind"] == "optimize"
    assert [b["met"] for b in report["budgets"]] == [True, True, True]


def test_missed_budget_exits_3_after_writing_everything(workdir):
    (workdir / "gate.toml").write_text('passes = ["ptq"]\nrequire = ["quality_sqnr_db>=200"]\n')
    result = run(
        "optimize", "cimodels:net", "--config", "gate.toml", "--no-onnx", "--repeats", "5",
        "-o", "missed", "--require", "parameters_after<=1Mparams", "--junit", "missed.xml",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "budgets: 1 of 2 met" in result.output
    assert "MISSED  quality_sqnr_db>=200" in result.output
    assert "optkit: check failed: 1 of 2 budget(s) missed: quality_sqnr_db = " in result.stderr
    out = workdir / "missed"
    assert {"model.pt2", "report.json", "report.md", "flops_per_block.png"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert [(b["name"], b["met"]) for b in report["budgets"]] == [
        ("quality_sqnr_db", False),
        ("parameters_after", True),
    ]
    assert "### Budgets" in (out / "report.md").read_text()
    cases = junit_cases(workdir / "missed.xml")
    failure = cases["quality_sqnr_db>=200"]
    assert failure is not None and "required >= 200 dB" in failure.get("message")
    assert cases["parameters_after<=1Mparams"] is None


@pytest.mark.parametrize(
    "budget, message",
    [
        ("quality_sqnr_db=>30", "malformed budget 'quality_sqnr_db=>30': expected NAME OP NUMBER[UNIT]"),
        ("quality_snr_db>=30", "unknown figure 'quality_snr_db'; known: capture_time, flops_after"),
        ("latency_eager_after<=2dB", "unit 'dB' does not fit figure latency_eager_after, measured in ms"),
        ("parameters_after<=2MiB", "measured in params; write the bound in params, Kparams"),
    ],
)
def test_bad_budgets_exit_2_and_write_nothing(workdir, budget, message):
    result = run("optimize", "cimodels:net", *RUN, "-o", "bad", "--require", budget, "--junit", "bad.xml")
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (workdir / "bad").exists() and not (workdir / "bad.xml").exists()


def test_analyze_and_bench_take_budgets(workdir):
    ok = run("--quiet", "analyze", "cimodels:net", "--require", "blocks==3", "--require", "flops>1KFLOPs")
    assert ok.exit_code == 0, ok.output
    over = run("--json", "analyze", "cimodels:net", "--require", "parameter_bytes<=1KiB")
    assert over.exit_code == 3
    assert json.loads(over.stdout)["budgets"][0]["met"] is False  # stdout stays JSON
    bench = run(
        "bench", "cimodels:net", "--targets", "eager", "--repeats", "2", "--warmup", "1",
        "-o", "bench", "--require", "latency_eager<=10s", "--junit", "bench.xml",
    )  # fmt: skip
    assert bench.exit_code == 0, bench.output
    assert list(junit_cases(workdir / "bench.xml")) == ["latency_eager<=10s"]


# -- compare -----------------------------------------------------------------------------------
def compare(*args):
    return run("--json", "compare", *args)


def test_compare_of_reruns_of_one_model_finds_no_regression(workdir):
    # Two runs on this shared 2-core machine differ by up to 2.4x throughout (measured), far
    # beyond each run's p10-p90 spread: absolute times need a floor of the machine's drift.
    assert optimize("base").exit_code == 0
    for i in range(5):
        assert optimize(f"rerun{i}").exit_code == 0
        result = compare("base", f"rerun{i}", "--fail-on-regression", "--noise-floor", "200")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["regressions"] == []
        verdicts = {f["name"]: f["verdict"] for f in data["figures"]}
        assert verdicts["quality_sqnr_db"] == verdicts["model_bytes"] == verdicts["flops_after"] == "same"
        assert verdicts["capture_time"] in ("same", "changed")  # timed once: never judged


def test_compare_finds_worse_quality_and_gates_on_it(workdir):
    assert optimize("w8").exit_code == 0
    assert optimize("w4", "--config", "w4.toml").exit_code == 0
    report = compare("w8", "w4")
    assert report.exit_code == 0, report.output  # regressions alone fail only with the flag
    (sqnr,) = [f for f in json.loads(report.stdout)["figures"] if f["name"] == "quality_sqnr_db"]
    assert sqnr["verdict"] == "worse" and sqnr["delta"] < 0 and sqnr["regression"]
    gated = run(
        "compare", "w8", "w4", "--fail-on-regression", "-o", "cmp", "--junit", "cmp.xml",
        "--require", "quality_sqnr_db>=1",
    )  # fmt: skip
    assert gated.exit_code == 3
    assert "regression(s): quality_sqnr_db: " in gated.stderr
    md = (workdir / "cmp" / "compare.md").read_text()
    assert "## optkit compare: net (optimize)" in md and "| **worse** |" in md
    assert json.loads((workdir / "cmp" / "compare.json").read_text())["budgets"][0]["met"] is True
    cases = junit_cases(workdir / "cmp.xml")
    assert cases["quality_sqnr_db>=1"] is None
    assert "worse" in cases["no regression: quality_sqnr_db"].get("message")


@pytest.mark.slow  # two optimize runs end to end (18 s on 2 AVX2 cores); verdicts: tests/test_compare.py
def test_compare_finds_a_slower_model(workdir):
    assert optimize("fast").exit_code == 0
    assert optimize("slow", model="cimodels_slow:net").exit_code == 0
    result = compare("fast", "slow", "--fail-on-regression")
    assert result.exit_code == 3
    verdicts = {f["name"]: f["verdict"] for f in json.loads(result.stdout)["figures"]}
    assert verdicts["latency_eager_after"] == verdicts["latency_eager_before"] == "slower"
    assert verdicts["flops_after"] == "worse"


def test_compare_budget_on_the_new_report(workdir):
    assert optimize("b1").exit_code == 0
    result = run("compare", "b1", "b1", "--require", "quality_sqnr_db>=300")
    assert result.exit_code == 3 and "budget(s) missed: quality_sqnr_db" in result.stderr
    assert "| `quality_sqnr_db>=300` |" in result.stdout


def test_compare_refuses_other_models_commands_and_formats(workdir):
    assert optimize("one").exit_code == 0
    assert run("--quiet", "analyze", "cimodels:net", "-o", "an", "--overwrite").exit_code == 0
    kind = compare("one", "an")
    assert kind.exit_code == 2 and "the baseline is an `optkit optimize` report" in kind.stderr
    other = json.loads((workdir / "one" / "report.json").read_text())
    os.makedirs("other", exist_ok=True)
    (workdir / "other" / "report.json").write_text(json.dumps({**other, "model": "unet"}))
    model = compare("one", "other")
    assert model.exit_code == 2 and "measured model 'net', the new report 'unet'" in model.stderr
    figures = {f["label"]: {"value": f["value"], "unit": f["unit"]} for f in other["figures"].values()}
    os.makedirs("old", exist_ok=True)
    (workdir / "old" / "report.json").write_text(json.dumps({"format": 1, "title": "t", "figures": figures}))
    old = compare("old", "one")
    assert old.exit_code == 2 and "the baseline report is format 1; compare reads format 2" in old.stderr
    assert run("report", "old").exit_code == 0  # format 1 is still read
