"""The CLI through click's runner, and once as a real subprocess."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from optkit.cli.main import cli
from optkit.ir.serialize import load_program


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "usermodels.py").write_text(
        textwrap.dedent(
            """
            import math, torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])
                def forward(self, x):
                    pos = torch.arange(16, dtype=torch.float32).sin()  # folded by fold-constants
                    for b in self.blocks:
                        x = torch.relu(b(x + pos))
                    return x

            class Branchy(nn.Module):
                def forward(self, x):
                    return x * 2 if x.sum() > 0 else x

            def net():
                torch.manual_seed(0)
                return Net(), (torch.randn(4, 16),)

            def branchy():
                return Branchy(), (torch.randn(4, 16),)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_optimize_writes_model_onnx_report_and_plot(user_models):
    result = run(
        "--quiet", "optimize", "usermodels:net", "--passes", "cleanup", "-o", "out", "--repeats", "3"
    )
    assert result.exit_code == 0, result.output
    out = user_models / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "flops_per_block.png",
        "model.onnx",
        "model.pt2",
        "model.pt2.json",
        "report.json",
        "report.md",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["figures"]["onnx_max_abs_error"]["value"] < 1e-5
    assert report["figures"]["flops_after"]["unit"] == "FLOPs"
    passes = next(t for t in report["tables"] if t["title"] == "Passes")
    assert [r[0] for r in passes["rows"]] == ["fold-constants", "fold-batchnorm", "dce"]
    program = load_program(out / "model.pt2")
    assert program.annotations.history == ["fold-constants", "fold-batchnorm", "dce"]
    assert "sin" not in program.op_counts()
    shown = run("report", str(out))
    assert shown.exit_code == 0 and "Latency on the example inputs" in shown.output


def test_optimize_with_config_file(user_models):
    (user_models / "run.toml").write_text(
        'passes = ["fold-constants", "dce"]\n[fold-constants]\nmax_growth = 4.0\n'
    )
    result = run(
        "--json",
        "optimize",
        "usermodels:net",
        "--config",
        "run.toml",
        "-o",
        "out",
        "--no-onnx",
        "--repeats",
        "2",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert "onnx_bytes" not in data["figures"]


def test_pass_options_on_the_command_line_override_the_config_file():
    from optkit.cli.options import parse_pass_options

    base = {"cache": {"threshold": 0.3, "seeds": [0, 1]}}
    got = parse_pass_options(["cache.min_psnr=32", "cache.threshold=0.2", "ptq.calibration=all-steps"], base)
    assert got == {
        "cache": {"threshold": 0.2, "seeds": [0, 1], "min_psnr": 32},
        "ptq": {"calibration": "all-steps"},  # not TOML: kept as text
    }
    assert base["cache"]["threshold"] == 0.3  # the config's tables are not modified
    assert parse_pass_options(['cache.sampler="ddim"', "cache.seeds=[3]"], {}) == {
        "cache": {"sampler": "ddim", "seeds": [3]}
    }


def test_analyze_prints_block_table_and_writes_plot(user_models):
    result = run("analyze", "usermodels:net", "-o", "an")
    assert result.exit_code == 0, result.output
    assert "blocks.2" in result.output and "FLOPs per block" in result.output
    assert (user_models / "an" / "flops_per_block.png").stat().st_size > 1000
    as_json = json.loads(run("--json", "analyze", "usermodels:net").output)
    assert as_json["figures"]["blocks"]["value"] == 3


def test_passes_lists_options_and_pipelines():
    result = run("passes")
    assert "fold-constants:" in result.output and "max_growth = 2.0" in result.output
    assert "pipeline cleanup: fold-constants, fold-batchnorm, dce" in result.output
    data = json.loads(run("--json", "passes").output)
    assert data["pipelines"]["cleanup"] == ["fold-constants", "fold-batchnorm", "dce"]


def test_zoo_list_runs():
    result = run("--json", "zoo", "list")
    assert result.exit_code == 0
    assert isinstance(json.loads(result.output), list)


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimize", "missing.pt2", "--passes", "dce", "-o", "o"], "no such file: missing.pt2"),
        (["optimize", "model.h5", "--passes", "dce", "-o", "o"], "unknown model format '.h5'"),
        (["optimize", "usermodels:net", "--passes", "dce,ptqq", "-o", "o"], "unknown pass 'ptqq'; known: "),
        (
            ["optimize", "usermodels:net", "--passes", "fold-constants", "--config", "bad.toml", "-o", "o"],
            "max_growth must be >= 1.0, got 0.1",
        ),
        (
            ["optimize", "usermodels:branchy", "--passes", "dce", "-o", "o"],
            "capture failed in the top-level forward of Branchy: data-dependent",
        ),
        (["optimize", "m.pt", "--passes", "dce", "-o", "o"], "--trust-pickle"),
        (
            ["optimize", "usermodels:net", "--passes", "dce", "-O", "dce", "-o", "o"],
            "-O takes PASS.KEY=VALUE",
        ),
        (
            ["optimize", "usermodels:net", "--passes", "dce", "-O", "cache.min_psnr=3", "-o", "o"],
            "options given for pass(es) not in the run: cache",
        ),
        (["analyze", "zoo:nosuch"], "unknown zoo model 'nosuch'"),
        (["report", "nowhere"], "no report in nowhere"),
    ],
)
def test_bad_input_is_one_clean_line_exit_2_and_no_output(user_models, args, message):
    (user_models / "bad.toml").write_text("[fold-constants]\nmax_growth = 0.1\n")
    torch.save(torch.nn.Linear(2, 2), user_models / "m.pt")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (user_models / "o").exists()
    assert not [p for p in user_models.iterdir() if p.name.startswith(".o.")]


def test_existing_output_needs_overwrite(user_models):
    (user_models / "out").mkdir()
    (user_models / "out" / "keep.txt").write_text("x")
    result = CliRunner().invoke(cli, ["optimize", "usermodels:net", "--passes", "dce", "-o", "out"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (user_models / "out" / "keep.txt").exists()


@pytest.mark.slow
def test_real_subprocess(user_models):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "optkit",
            "--quiet",
            "optimize",
            "usermodels:net",
            "--passes",
            "cleanup",
            "-o",
            "sub",
            "--repeats",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=user_models,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert (user_models / "sub" / "report.md").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "optkit", "optimize", "nothere.pt2", "--passes", "dce", "-o", "sub2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=user_models,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["optkit: error: no such file: nothere.pt2"]


def test_analyze_sensitivity_writes_ranking_and_heatmap(user_models):
    result = run("analyze", "usermodels:net", "--sensitivity", "--wbits", "4", "-o", "sens")
    assert result.exit_code == 0, result.output
    assert "SQNR sensitivity per block at W4A8" in result.output
    assert (user_models / "sens" / "sensitivity_heatmap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("form", ["u8", "s8"])
def test_optimize_with_ptq_reports_weight_bytes(user_models, form):
    result = run(
        "--json", "optimize", "usermodels:net", "--passes", "ptq,dce", "-o", "q", "--repeats", "2",
        "--onnx-int8-weights", form,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    passes = next(t for t in data["tables"] if t["title"] == "Passes")
    assert passes["rows"][0][0] == "ptq" and "weight_bytes_after" in passes["rows"][0][-1]
    stored = any("stores its 3 int8 weights as uint8" in note for note in data["notes"])
    kept = any("keeps its 3 int8 weights as int8" in note for note in data["notes"])
    assert (stored, kept) == (form == "u8", form == "s8")
    if form == "u8":  # ONNX Runtime's U8U8 kernels are exact on every CPU
        assert data["figures"]["onnx_max_abs_error"]["value"] < 1e-4


def test_an_unknown_onnx_int8_weight_form_is_refused_with_the_choices(user_models):
    result = run("optimize", "usermodels:net", "--passes", "ptq", "-o", "q", "--onnx-int8-weights", "s4")
    assert result.exit_code == 2 and "'auto', 's8', 'u8'" in result.output
