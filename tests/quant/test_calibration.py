import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.quant.calibration import calibration_batches, guidance_of
from optkit.zoo.dit import DiT, DiTConfig


@pytest.fixture(scope="module")
def dit_program():
    torch.manual_seed(0)
    model = DiT(DiTConfig(dim=32, depth=1, heads=2))
    for p in model.parameters():  # leave adaLN-Zero's identity start, so the output is not zero
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 2, 8, 8)  # latents
    program = capture(model, (x, torch.tensor([10.0, 500.0]), torch.tensor([3, 7])), name="dit-test")
    program.meta = {"zoo": "dit", "size": "test", "task": "diffusion-image", "sampler": "ddim"}
    return program


def test_guided_zoo_model_calibrates_both_branches(dit_program):
    scale, uncond = guidance_of(dit_program, dit_program.example_inputs[2:])
    assert scale > 1.0 and uncond is not None and torch.equal(uncond[0], torch.tensor([10, 10]))
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


def test_unguided_program_has_no_null_branch(dit_program):
    program = dit_program.clone()
    program.meta = {}
    assert guidance_of(program, program.example_inputs[2:]) == (1.0, None)
    with pytest.raises(ConfigError, match="zoo sampler"):
        calibration_batches(program, "single-step")
