import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.sampling import SamplerSpec
from optkit.workload import Calibration, Diffusion, Workload, null_value
from tests import models


def test_round_trip_through_dict_and_toml(tmp_path):
    workload = Workload(
        inputs=("x", "t", "y"),
        diffusion=Diffusion(SamplerSpec("dpm++2m", beta_schedule="scaled_linear"), 25, 3.0, ("fill:10",)),
        calibration=Calibration("images", str(tmp_path), mean=(0.5,), std=(0.25,)),
        metric="psnr",
    )
    assert Workload.from_dict(workload.to_dict()) == workload
    (tmp_path / "w.toml").write_text(
        'inputs = ["x", "t", "y"]\nmetric = "psnr"\n'
        '[diffusion]\nsampler = "ddim"\nsteps = 10\nguidance_scale = 2\nnull_cond = ["zeros"]\n'
        '[calibration]\nsource = "file"\npath = "calib.npz"\n'
    )
    read = Workload.from_toml(tmp_path / "w.toml")
    assert read.diffusion == Diffusion(SamplerSpec("ddim"), 10, 2.0, ("zeros",))
    assert read.calibration.path == str(tmp_path / "calib.npz")  # relative to the file


def test_memory_batches_are_not_saved():
    held = Calibration.from_batches([torch.zeros(2, 3)])
    assert held.to_dict() == {"source": "memory", "batches": 1}
    assert Calibration.from_dict(held.to_dict()) == Calibration()


def test_null_condition_forms():
    cond = torch.tensor([3, 4])
    assert torch.equal(null_value("fill:10", cond), torch.tensor([10, 10]))
    assert torch.equal(null_value("zeros", cond), torch.zeros(2, dtype=torch.int64))
    assert torch.equal(null_value("keep", cond), cond)
    diffusion = Diffusion(SamplerSpec("ddim"), guidance_scale=2.0, null_cond=("keep", "zeros"))
    image, action = torch.randn(2, 1, 4, 4), torch.tensor([1, 2])
    null_image, null_action = diffusion.null_condition((image, action))
    assert torch.equal(null_image, image) and not null_action.any()
    assert Diffusion(SamplerSpec("ddim")).guidance((cond,)) == (1.0, None)


def test_bad_values_name_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match="known: ddim"):
        SamplerSpec("euler-a")
    with pytest.raises(ConfigError, match="_class_name"):
        SamplerSpec("diffusers")
    with pytest.raises(ConfigError, match="fill:VALUE"):
        Diffusion(SamplerSpec("ddim"), null_cond=("fill:x",))
    with pytest.raises(ConfigError, match="guidance_scale"):
        Diffusion(SamplerSpec("ddim"), guidance_scale=0.5)
    with pytest.raises(ConfigError, match="unknown key"):
        Workload.from_dict({"sampler": "ddim"})
    with pytest.raises(ConfigError, match="metric"):
        Workload(metric="fid")
    with pytest.raises(ConfigError, match="needs a `path`"):
        Calibration("file")
    with pytest.raises(ConfigError, match="no such calibration"):
        Calibration.from_path(tmp_path / "missing.npz")
    (tmp_path / "c.csv").write_text("1,2")
    with pytest.raises(ConfigError, match=".npz or .safetensors"):
        Calibration.from_path(tmp_path / "c.csv")
    (tmp_path / "bad.toml").write_text("[diffusion\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Workload.from_toml(tmp_path / "bad.toml")


def test_a_workload_must_fit_the_model():
    program = capture(*models.conv_net(), name="conv")
    with pytest.raises(ConfigError, match=r"do not match the model's inputs \(x: \(2, 3, 8, 8\) float32\)"):
        program.with_workload(Workload(inputs=("image",)))
    with pytest.raises(ConfigError, match=r"needs a denoiser taking \(x, t, \*cond\)"):
        program.with_workload(models.diffusion_workload())
    program.with_workload(Workload(inputs=("x",), metric="top1"))
    assert program.workload.metric == "top1"
