"""Same model, same seed, same passes: byte-identical `model.pt2`, sidecar and `model.onnx`, and
the same report figures except timings (issue 16)."""

import json
import textwrap

import pytest
from click.testing import CliRunner

from optkit.cli.main import cli

TIMING_WORDS = ("latency", "speedup", "time", "peak_rss", "load_average")  # measured, not computed


@pytest.fixture
def tiny_models(tmp_path, monkeypatch):
    (tmp_path / "detmodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def net():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 8))
                return model, (torch.randn(4, 16),)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _optimize(out: str) -> None:
    args = ["--quiet", "optimize", "detmodels:net", "--passes", "ptq", "-o", out, "--repeats", "1"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _figures_without_timings(path) -> dict:
    figures = json.loads(path.read_text())["figures"]
    return {k: v for k, v in figures.items() if not any(w in k for w in TIMING_WORDS)}


@pytest.mark.slow
def test_two_runs_write_identical_files(tiny_models):
    _optimize("a")
    _optimize("b")
    a, b = tiny_models / "a", tiny_models / "b"
    for name in ("model.pt2", "model.pt2.json", "model.onnx"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two runs"
    figures = _figures_without_timings(a / "report.json")
    assert "quality_sqnr_db" in figures or len(figures) >= 5
    assert figures == _figures_without_timings(b / "report.json")
