"""diffusers save_pretrained folders -> denoiser Programs sampled by their own schedulers.

Tiny models (10k-55k parameters) with random weights, saved into tmp_path: nothing is fetched.
"""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from optkit import Diffusion, SamplerSpec, Workload, load_model, optimize  # noqa: E402
from optkit.errors import ModelRefError  # noqa: E402
from optkit.quant.calibration import denoiser_of  # noqa: E402
from optkit.sampling import sample  # noqa: E402

SMALL_UNET = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=4,
)


def unet():
    return diffusers.UNet2DModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        **SMALL_UNET,
    )


def unet_condition(**extra):
    return diffusers.UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        **SMALL_UNET,
        **extra,
    )


def sdxl_unet():
    return unet_condition(
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4,
    )


def dit():
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # learned sigma: the pipeline keeps the first 4 channels
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )


def pixart():
    return diffusers.PixArtTransformer2DModel(
        sample_size=8,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        caption_channels=16,
        cross_attention_dim=16,
        patch_size=2,
    )


def sd3():
    return diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=16,
    )


def flux():
    return diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )


def _save(model, folder, scheduler=None):
    model.save_pretrained(folder)
    if scheduler is not None:
        scheduler.save_pretrained(folder)
    return str(folder)


def _sample(program, steps=2):
    diffusion = program.workload.diffusion
    x, _t, *cond = program.example_inputs
    scale, uncond = diffusion.guidance(tuple(cond))
    return sample(
        denoiser_of(program),
        x.shape,
        sampler=diffusion.sampler,
        steps=steps,
        seed=0,
        cond=tuple(cond),
        uncond=uncond,
        guidance_scale=scale,
    )


@pytest.mark.slow
def test_pipeline_folder_gives_the_unet_and_its_scheduler(tmp_path):
    model = unet()
    diffusers.DDPMPipeline(unet=model, scheduler=diffusers.DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    program = load_model(str(tmp_path / "pipe"))
    assert program.input_names() == ["sample", "timestep"]
    x, t = program.example_inputs
    assert x.shape == (2, 3, 8, 8) and t.shape == (2,)
    with torch.no_grad():
        expected = model(x, t, return_dict=False)[0]
    torch.testing.assert_close(program.run(), expected)
    workload = program.workload
    assert workload.inputs == ("sample", "timestep") and workload.metric == "psnr"
    assert workload.diffusion.sampler.label == "diffusers:DDIMScheduler"
    assert workload.diffusion.guidance_scale == 1.0 and workload.diffusion.steps == 20
    assert program.meta["pipeline"] == "DDPMPipeline"
    out = _sample(program, steps=3)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # The unet/ folder of a pipeline finds the pipeline's scheduler beside it.
    component = load_model(str(tmp_path / "pipe" / "unet"))
    assert component.workload.diffusion.sampler.label == "diffusers:DDIMScheduler"


@pytest.mark.slow
def test_a_model_folder_needs_a_scheduler_or_a_workload(tmp_path):
    folder = _save(unet(), tmp_path / "unet")
    with pytest.raises(ModelRefError, match="no scheduler to sample it with.*--workload FILE.toml"):
        load_model(folder)
    given = Workload(diffusion=Diffusion(SamplerSpec("ddim")))
    assert load_model(folder, workload=given).workload is given
    diffusers.DPMSolverMultistepScheduler().save_pretrained(
        folder
    )  # scheduler_config.json beside config.json
    program = load_model(folder)
    assert program.workload.diffusion.sampler.label == "diffusers:DPMSolverMultistepScheduler"


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, names, guidance, null_cond",
    [
        (unet_condition, ["sample", "timestep", "encoder_hidden_states"], 7.5, ("zeros",)),
        (
            sdxl_unet,
            ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"],
            5.0,
            ("zeros", "zeros", "keep"),
        ),
        (dit, ["hidden_states", "timestep", "class_labels"], 4.0, ("fill:10",)),
        (pixart, ["hidden_states", "timestep", "encoder_hidden_states"], 4.5, ("zeros",)),
    ],
    ids=["UNet2DConditionModel", "SDXL", "DiTTransformer2DModel", "PixArtTransformer2DModel"],
)
def test_conditional_models_match_eager_and_sample_with_guidance(tmp_path, make, names, guidance, null_cond):
    model = make().eval()
    program = load_model(_save(model, tmp_path / "m", diffusers.DDIMScheduler()))
    assert program.input_names() == names
    inputs = dict(zip(names, program.example_inputs, strict=True))
    with torch.no_grad():
        if "text_embeds" in inputs:
            added = {"text_embeds": inputs.pop("text_embeds"), "time_ids": inputs.pop("time_ids")}
            expected = model(**inputs, added_cond_kwargs=added, return_dict=False)[0]
        elif make is pixart:
            expected = model(
                **inputs, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False
            )[0]
        else:
            expected = model(**inputs, return_dict=False)[0]
    x = program.example_inputs[0]
    # Learned-variance models (DiT, PixArt) return the noise prediction alone, as their pipelines use it.
    torch.testing.assert_close(program.run(), expected[:, : x.shape[1]])
    diffusion = program.workload.diffusion
    assert (diffusion.guidance_scale, diffusion.null_cond) == (guidance, null_cond)
    out = _sample(program)  # guided: one batched call of 2B, run in chunks of the captured B
    assert out.shape == x.shape and torch.isfinite(out).all()


FLOW_EULER = Workload(diffusion=Diffusion(SamplerSpec("flow-euler"), guidance_scale=1.0))


def test_sd3_transformer_matches_eager(tmp_path):
    model = sd3().eval()
    program = load_model(_save(model, tmp_path / "sd3"), workload=FLOW_EULER)
    names = ["hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"]
    assert program.input_names() == names
    with torch.no_grad():
        expected = model(**dict(zip(names, program.example_inputs, strict=True)), return_dict=False)[0]
    torch.testing.assert_close(program.run(), expected)
    assert _sample(program).shape == program.example_inputs[0].shape


@pytest.mark.slow
def test_flux_transformer_takes_scheduler_time_and_fixed_position_ids(tmp_path):
    model = flux().eval()
    program = load_model(_save(model, tmp_path / "flux"), workload=FLOW_EULER)
    x, t, text, pooled, guidance = program.example_inputs
    assert program.input_names() == [
        "hidden_states",
        "timestep",
        "encoder_hidden_states",
        "pooled_projections",
        "guidance",
    ]
    assert x.shape == (2, 64 * 64, 16)  # a 128 x 128 latent packed into 2 x 2 patches
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    with torch.no_grad():
        expected = model(
            hidden_states=x,
            timestep=t / 1000,  # FluxPipeline's convention
            encoder_hidden_states=text,
            pooled_projections=pooled,
            guidance=guidance,
            img_ids=img_ids,
            txt_ids=torch.zeros(text.shape[1], 3),
            return_dict=False,
        )[0]
    torch.testing.assert_close(program.run(), expected)


def test_sd3_pipeline_scheduler_drives_sampling(tmp_path):
    folder = _save(sd3(), tmp_path / "sd3", diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    program = load_model(folder)
    assert program.workload.diffusion.sampler.label == "diffusers:FlowMatchEulerDiscreteScheduler"
    assert program.workload.diffusion.guidance_scale == 7.0
    assert torch.isfinite(_sample(program)).all()


def test_unsupported_config_of_a_known_class(tmp_path):
    # A continuous-input Transformer2DModel (neither DiT nor PixArt) is not a denoiser optkit can drive.
    model = diffusers.Transformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, norm_num_groups=2, num_layers=1
    )
    with pytest.raises(ModelRefError, match="loads as Transformer2DModel, which is not a supported denoiser"):
        load_model(_save(model, tmp_path / "t2d", diffusers.DDIMScheduler()))


@pytest.mark.parametrize(
    "scheduler, match",
    [
        ({"_class_name": "MyOwnScheduler"}, "diffusers has no scheduler class 'MyOwnScheduler'"),
        (
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True},
            "optkit cannot drive diffusers:FlowMatchEulerDiscreteScheduler",
        ),
    ],
)
def test_a_scheduler_optkit_cannot_drive_is_refused_at_load(tmp_path, scheduler, match):
    folder = _save(unet(), tmp_path / "unet")
    (tmp_path / "unet" / "scheduler_config.json").write_text(json.dumps(scheduler))
    with pytest.raises(ModelRefError, match=f"{match}.*--workload FILE.toml"):
        load_model(folder)


def test_pickled_weights_load_only_when_trusted(tmp_path):
    model = unet()
    folder = tmp_path / "unet"
    model.save_pretrained(folder, safe_serialization=False)
    diffusers.DDIMScheduler().save_pretrained(folder)
    with pytest.raises(ModelRefError, match="refusing to load"):
        load_model(str(folder))
    program = load_model(str(folder), trust_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(program.run(), model(*program.example_inputs, return_dict=False)[0])


def test_ptq_calibrates_on_the_scheduler_trajectory(tmp_path):
    diffusers.DDPMPipeline(unet=unet(), scheduler=diffusers.DDIMScheduler()).save_pretrained(
        tmp_path / "pipe"
    )
    program = load_model(str(tmp_path / "pipe"))
    result = optimize(program, ["ptq"], {"ptq": {"calibration_batches": 1}})  # one seed
    figures = result.records[-1].figures
    assert figures["calibration_batches"].value == program.workload.diffusion.steps  # auto: all sampler steps
    assert figures["layers_quantized"].value > 0
    out = _sample(result.program)
    assert out.shape == program.example_inputs[0].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("factory", ["build", "build_dit"])
def test_the_trained_examples_load_through_their_factories(factory):
    # examples/diffusers_digits ships a trained UNet2DModel and DiTTransformer2DModel.
    from examples.diffusers_digits import model as example

    program = load_model(f"examples.diffusers_digits.model:{factory}")
    module, inputs, workload = getattr(example, factory)()
    want = module(**inputs)[0]
    (got,) = program.run()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert program.workload.inputs == workload.inputs and program.workload.diffusion.steps == 20


@pytest.mark.slow
def test_a_pixart_folder_exports_to_onnx_and_lowers_to_tvm(tmp_path):
    """PixArt's `squeeze(1)` of its timestep embedding names a dimension of size > 1 (a no-op in
    PyTorch): ONNX Runtime refused the export and TVM's importer failed on it."""
    from optkit.backends import lower

    from optkit.ir.onnx_io import export_onnx

    program = load_model(_save(pixart().eval(), tmp_path / "pixart", diffusers.DDIMScheduler()))
    figures = export_onnx(program, tmp_path / "pixart.onnx")
    assert figures["max_abs_error"] < 1e-4 * max(figures["output_abs_max"], 1.0)
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["aten_rewrites"].get("noop_squeeze") == 1
    (got,) = artifact.run_torch(*program.example_inputs)
    torch.testing.assert_close(got, program.run(), atol=1e-4, rtol=1e-4)
