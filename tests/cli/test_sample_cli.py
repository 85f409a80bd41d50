"""`optkit optimize --target` and `optkit sample`: one compiled pipeline from a user's denoiser."""

import json
import textwrap

import numpy as np
import optkit.backends.pipeline as pipeline_mod
import optkit.backends.targets as targets
import pytest
from click.testing import CliRunner

from optkit.caching.runner import cached_sample
from optkit.cli.main import cli
from optkit.ir.serialize import load_program


@pytest.fixture
def user_denoiser(tmp_path, monkeypatch):
    (tmp_path / "tinydenoiser.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Denoiser(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
                    self.label = nn.Embedding(11, 8)
                def forward(self, x, t, label):
                    h = x + t[:, None] / 1000 + self.label(label)
                    for b in self.blocks:
                        h = h + torch.tanh(b(h))
                    return h

            def build():
                torch.manual_seed(0)
                return Denoiser(), (torch.randn(2, 8), torch.tensor([10.0, 500.0]), torch.tensor([3, 7]))
            """
        )
    )
    (tmp_path / "workload.toml").write_text(
        textwrap.dedent(
            """
            [diffusion]
            sampler = "ddim"
            steps = 4
            guidance_scale = 2.0
            null_cond = ["fill:10"]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


OPTIMIZE = ("optimize", "tinydenoiser:build", "--workload", "workload.toml", "--passes", "cache")
OPTIONS = ("--no-onnx", "--repeats", "2")


def test_optimize_with_a_target_lowers_the_pipeline_and_sample_runs_it(user_denoiser):
    (user_denoiser / "run.toml").write_text("[cache]\npolicy = 'uniform'\ninterval = 2\n")
    result = run("--json", *OPTIMIZE, "--config", "run.toml", "--target", "cpu", "-o", "out", *OPTIONS)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["figures"]
    for name in (
        "lowering_time",
        "compiled_libraries",
        "latency_sampling_compiled",
        "latency_compiled_after",
    ):
        assert name in figures
    assert figures["compiled_psnr_db"]["value"] >= 40.0
    report = json.loads((user_denoiser / "out" / "report.json").read_text())
    (table,) = [t for t in report["tables"] if t["title"].startswith("Sampling latency")]
    assert [r[0] for r in table["rows"]][-1] == "TVM cpu, optimized graph (block-cached)"
    assert (user_denoiser / "out" / "artifact" / "pipeline.json").is_file()

    result = run("--json", "sample", "out/artifact", "--seeds", "0,1", "-o", "samples.npz")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["shape"] == [2, 2, 8]
    with np.load(user_denoiser / "samples.npz") as data:
        samples, seeds = data["samples"], data["seeds"]
    assert seeds.tolist() == [0, 1]
    program = load_program(user_denoiser / "out" / "model.pt2")
    for i, seed in enumerate((0, 1)):
        eager = cached_sample(program, seed=seed).numpy()
        np.testing.assert_allclose(samples[i], eager, atol=1e-4)

    for seeds, message in (("0,x", "'x' is not an integer"), ("-1", "in [0, "), ("", "comma-separated")):
        result = run("sample", "out/artifact", "--seeds", seeds, "-o", "bad.npz")
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (user_denoiser / "bad.npz").exists()
    result = run("sample", "out", "-o", "bad.npz")
    assert result.exit_code == 2 and "not an optkit pipeline" in result.output

    # `optkit run` takes the same directory: the model itself, uncached
    np.savez(user_denoiser / "inputs.npz", *(t.numpy() for t in program.example_inputs))
    result = run("--json", "run", "out/artifact", "--inputs", "inputs.npz")
    assert result.exit_code == 0, result.output
    (output,) = json.loads(result.output)["outputs"]
    assert output["shape"] == list(program.run().shape)


def test_bad_targets_fail_before_any_work(user_denoiser, monkeypatch):
    result = run(*OPTIMIZE, "--target", "tpu", "-o", "out", *OPTIONS)
    assert result.exit_code == 2 and "unknown target 'tpu'; known: cpu, cuda" in result.output
    monkeypatch.setattr(targets, "find_nvcc", lambda: "/usr/local/bin/nvcc")
    monkeypatch.setattr(pipeline_mod, "cuda_device_present", lambda: False)
    calls = []
    monkeypatch.setattr("optkit.api.load_program_ref", lambda *a, **k: calls.append(a))
    result = run(*OPTIMIZE, "--target", "cuda", "-o", "out", *OPTIONS)
    assert result.exit_code == 2 and "no CUDA device" in result.output
    assert calls == [] and not (user_denoiser / "out").exists()
