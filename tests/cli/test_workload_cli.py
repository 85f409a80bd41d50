"""`--workload` and `--calib` on the command line: a user's model with its own sampler and data."""

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from optkit.cli.main import cli
from optkit.ir.serialize import load_program


@pytest.fixture
def user_denoiser(tmp_path, monkeypatch):
    (tmp_path / "userdenoiser.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Denoiser(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
                    self.label = nn.Embedding(11, 8)
                def forward(self, sample, timestep, class_labels, return_dict=True):
                    h = sample + (timestep[:, None] / 1000) + self.label(class_labels)
                    for b in self.blocks:
                        h = h + torch.tanh(b(h))
                    return {"sample": h} if return_dict else (h,)

            def build():
                torch.manual_seed(0)
                inputs = {"sample": torch.randn(2, 8), "timestep": torch.tensor([10, 500]),
                          "class_labels": torch.tensor([3, 7]), "return_dict": False}
                return Denoiser(), inputs
            """
        )
    )
    (tmp_path / "workload.toml").write_text(
        textwrap.dedent(
            """
            inputs = ["sample", "timestep", "class_labels"]
            [diffusion]
            sampler = "ddim"
            steps = 6
            guidance_scale = 2.0
            null_cond = ["fill:10"]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_user_denoiser_with_keyword_inputs_gets_trajectory_calibration_and_caching(user_denoiser):
    result = run(
        "--json", "optimize", "userdenoiser:build", "--workload", "workload.toml",
        "--passes", "ptq,cache", "-o", "out", "--repeats", "2", "--no-onnx",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["figures"]
    assert figures["quality_psnr_db"]["label"] == "samples PSNR vs input (1 seed(s))"
    saved = load_program(user_denoiser / "out" / "model.pt2")
    assert saved.input_names() == ["sample", "timestep", "class_labels"]
    assert saved.workload.diffusion.null_cond == ("fill:10",)
    assert saved.annotations.cache_schedule  # the cache pass ran on the user's sampler
    report = json.loads((user_denoiser / "out" / "report.json").read_text())
    (passes,) = [t for t in report["tables"] if t["title"] == "Passes"]
    ptq_row = next(r for r in passes["rows"] if r[0] == "ptq")
    assert "calibration_batches: 48 batches" in ptq_row[-1]  # 4 seeds x 6 steps x (conditional, null)


def test_calib_file_drives_ptq_and_bad_files_leave_nothing(user_denoiser):
    np.savez(
        "calib.npz",
        sample=np.random.randn(10, 8).astype(np.float32),
        timestep=np.arange(10),
        class_labels=np.arange(10) % 10,
    )
    result = run(
        "--json", "optimize", "userdenoiser:build", "--calib", "calib.npz", "--passes", "ptq",
        "-o", "out", "--repeats", "2", "--no-onnx",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((user_denoiser / "out" / "report.json").read_text())
    (passes,) = [t for t in report["tables"] if t["title"] == "Passes"]
    assert "calibration_batches: 4 batches" in passes["rows"][0][-1]  # 5 batches of 2, capped at 4
    np.savez("wrong.npz", sample=np.zeros((4, 9), np.float32), timestep=np.zeros(4), class_labels=np.zeros(4))
    bad = CliRunner().invoke(
        cli, ["optimize", "userdenoiser:build", "--calib", "wrong.npz", "--passes", "ptq", "-o", "bad"]
    )
    assert bad.exit_code == 2
    assert "input 'sample' has shape (4, 9); the model takes (sample: (N, 8) float32" in bad.output
    assert not (user_denoiser / "bad").exists()
    (user_denoiser / "mismatch.toml").write_text('inputs = ["x", "t"]\n')
    bad = CliRunner().invoke(
        cli, ["optimize", "userdenoiser:build", "--workload", "mismatch.toml", "--passes", "ptq", "-o", "bad"]
    )
    assert bad.exit_code == 2 and "do not match the model's inputs (sample: (2, 8) float32" in bad.output
