"""`optkit lower` and `optkit run` through click's runner."""

import json

import numpy as np
from click.testing import CliRunner

from optkit.cli.main import cli
from tests.backends.conftest import float_matmul_kernels


def _factory_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_lower_model.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))\n"
        "    return m, (torch.randn(2, 8),)\n"
    )
    monkeypatch.chdir(tmp_path)


def test_lower_then_run(tmp_path, monkeypatch):
    _factory_module(tmp_path, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "lower", "tiny_lower_model:make", "--target", "cpu", "-o", "art"])
    assert result.exit_code == 0, result.output
    assert "output output0: [2, 4] float32" in result.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    name = manifest["inputs"][0]["name"]
    np.savez(tmp_path / "x.npz", **{name: np.ones((2, 8), np.float32)})
    result = runner.invoke(cli, ["--json", "run", "art", "--inputs", "x.npz", "-o", "y.npz"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["outputs"] == [{"name": "output0", "shape": [2, 4], "dtype": "float32"}]
    assert np.load(tmp_path / "y.npz")["output0"].shape == (2, 4)


def test_errors_exit_2(tmp_path, monkeypatch):
    _factory_module(tmp_path, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(cli, ["lower", "tiny_lower_model:make", "--target", "tpu", "-o", "art"])
    assert result.exit_code == 2 and "known: cpu, cuda" in result.output
    assert runner.invoke(cli, ["-q", "lower", "tiny_lower_model:make", "-o", "art"]).exit_code == 0
    (tmp_path / "bad.npz").write_text("not a zip")
    result = runner.invoke(cli, ["run", "art", "--inputs", "bad.npz"])
    assert result.exit_code == 2 and "not a readable .npz" in result.output
    np.savez(tmp_path / "wrong.npz", np.ones((3, 8), np.float32))
    result = runner.invoke(cli, ["run", "art", "--inputs", "wrong.npz"])
    assert (
        result.exit_code == 2 and "expected shape (2, 8) float32, got shape (3, 8) float32" in result.output
    )


def test_cuda_without_nvcc_says_so(tmp_path, monkeypatch):
    _factory_module(tmp_path, monkeypatch)
    import optkit.backends.targets as targets

    monkeypatch.setattr(targets, "find_nvcc", lambda: None)
    result = CliRunner().invoke(cli, ["lower", "tiny_lower_model:make", "--target", "cuda", "-o", "art"])
    assert result.exit_code == 2 and "nvcc is missing" in result.output


def test_schedule_and_exact_math_options(tmp_path, monkeypatch):
    _factory_module(tmp_path, monkeypatch)
    runner = CliRunner()
    args = ["-q", "lower", "tiny_lower_model:make", "--schedule", "blas", "--exact-math", "-o", "art"]
    assert runner.invoke(cli, args).exit_code == 0
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["schedule"] == "blas" and manifest["fast_math_ops"] == 0
    assert float_matmul_kernels(manifest) == 1  # the 16-wide layer; the 4-wide one has no panel
    assert manifest["attention_precision"] == "float32"  # a float model, whatever the CPU
    args = ["-q", "lower", "tiny_lower_model:make", "--attention-precision", "bfloat16", "-o", "third"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "'auto', 'float32', 'float16'" in result.output
    result = runner.invoke(cli, ["lower", "tiny_lower_model:make", "--schedule", "tvm", "-o", "other"])
    assert result.exit_code == 2 and "'default', 'blas', 'naive'" in result.output
