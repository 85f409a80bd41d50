import numpy as np
import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.quant.calibration import calibration_batches, resolve_mode
from optkit.workload import Calibration, Workload
from optkit.zoo.dit import DiT, DiTConfig
from tests import models


@pytest.fixture(scope="module")
def dit_program():
    torch.manual_seed(0)
    model = DiT(DiTConfig(dim=32, depth=1, heads=2))
    for p in model.parameters():  # leave adaLN-Zero's identity start, so the output is not zero
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 2, 8, 8)  # latents
    program = capture(model, (x, torch.tensor([10.0, 500.0]), torch.tensor([3, 7])), name="dit-test")
    return program.with_workload(models.diffusion_workload(guidance_scale=2.0, null_cond=("fill:10",)))


def test_guided_workload_calibrates_both_branches(dit_program):
    scale, uncond = dit_program.workload.diffusion.guidance(dit_program.example_inputs[2:])
    assert scale == 2.0 and uncond is not None and torch.equal(uncond[0], torch.tensor([10, 10]))
    single = calibration_batches(dit_program, "single-step", num_batches=2, steps=5)
    assert len(single) == 4  # (conditional, null) per batch
    assert torch.equal(single[0][0], single[1][0])  # same noise for both branches
    assert torch.equal(single[0][2], torch.tensor([3, 7])) and torch.equal(
        single[1][2], torch.tensor([10, 10])
    )
    assert float(single[0][1][0]) == 999.0  # the noisiest DDIM step


def test_all_steps_keeps_every_call_split_to_the_captured_batch(dit_program):
    batches = calibration_batches(dit_program, "all-steps", num_batches=1, steps=3)
    assert len(batches) == 6  # 3 steps x (conditional, null)
    assert all(b[0].shape == (2, 2, 8, 8) for b in batches)
    assert [float(b[1][0]) for b in batches[::2]] == [999.0, 666.0, 333.0]
    assert torch.equal(batches[1][2], torch.tensor([10, 10]))
    # steps = 0 takes the workload's (20).
    assert len(calibration_batches(dit_program, "all-steps", num_batches=1)) == 40


def test_auto_mode_follows_the_workload(dit_program):
    assert resolve_mode(dit_program, "auto") == "all-steps"
    plain = dit_program.clone()
    plain.workload = Workload()
    assert resolve_mode(plain, "auto") == "example"
    assert calibration_batches(plain, "auto") == [plain.example_inputs]
    x, t, y = plain.example_inputs
    given = plain.clone().with_workload(Workload(calibration=Calibration.from_batches([(x, t, y)] * 3)))
    assert resolve_mode(given, "auto") == "data"
    assert len(calibration_batches(given, "auto", num_batches=2)) == 2  # capped by num_batches


def test_timestep_keeps_the_captured_dtype():
    from torch import nn

    class IntTime(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x * (t[:, None, None, None] + 1).float() / 1000

    program = capture(IntTime(), (torch.randn(2, 1, 4, 4), torch.tensor([5, 9])), name="int-time")
    program.with_workload(models.diffusion_workload())
    batches = calibration_batches(program, "all-steps", num_batches=1, steps=2)
    assert all(b[1].dtype == torch.int64 for b in batches)


def test_without_a_sampler_trajectory_modes_are_refused(dit_program):
    program = dit_program.clone()
    program.workload = Workload()
    with pytest.raises(ConfigError, match=r"no \[diffusion\] sampler"):
        calibration_batches(program, "single-step")
    with pytest.raises(ConfigError, match="--calib"):
        calibration_batches(program, "data")
    with pytest.raises(ConfigError, match="one of"):
        calibration_batches(program, "random")  # type: ignore[arg-type]


def test_data_mode_reads_a_file(dit_program, tmp_path):
    x, t, y = dit_program.example_inputs
    path = tmp_path / "calib.npz"
    np.savez(
        path,
        x=np.random.randn(7, 2, 8, 8).astype(np.float32),
        t=np.full(7, 500.0, np.float32),
        y=np.arange(7),
    )
    program = dit_program.clone().with_workload(
        dit_program.workload.replace(calibration=Calibration.from_path(path))
    )
    batches = calibration_batches(program, "auto", num_batches=10)
    assert len(batches) == 3  # 7 samples in batches of 2; the odd one is dropped
    assert batches[0][0].shape == x.shape and batches[0][2].dtype == y.dtype
