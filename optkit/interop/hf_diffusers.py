"""diffusers folders -> a denoiser Program `model(x, t, *cond)` and the Workload its scheduler describes.

Two layouts are read (both as `save_pretrained` writes them):

- a pipeline folder: `model_index.json`, the denoiser in `unet/` or `transformer/`, the scheduler
  in `scheduler/scheduler_config.json`;
- a model folder: `config.json` with `_class_name` and `diffusion_pytorch_model.safetensors`. Its
  scheduler is `scheduler_config.json` in the same folder, or `../scheduler/` when the folder is
  a component of a pipeline folder; without one, loading fails unless the caller brings a
  Workload (`--workload FILE.toml`).

| class (as loaded)          | inputs after (x, t)                                   | guidance, null condition |
|----------------------------|-------------------------------------------------------|--------------------------|
| UNet2DModel                | (class_labels when num_class_embeds)                  | 1 (unconditional)        |
| UNet2DConditionModel       | encoder_hidden_states (B, 77, D); SDXL: + text_embeds, time_ids | 7.5 (SDXL 5.0), zeros |
| DiTTransformer2DModel      | class_labels (B,)                                     | 4.0, the null class      |
| PixArtTransformer2DModel   | encoder_hidden_states (B, 120, caption_channels)      | 4.5, zeros               |
| SD3Transformer2DModel      | encoder_hidden_states (B, 333, D), pooled_projections | 7.0, zeros               |
| FluxTransformer2DModel     | encoder_hidden_states (B, 512, D), pooled_projections (+ guidance) | 1 (distilled) |

A legacy `Transformer2DModel` config loads as DiT or PixArt (diffusers remaps it by norm type).
Example inputs are built from the model's config (latent sample first, timestep second,
conditioning after, as optkit's samplers call a denoiser) and bound to the forward's keyword
names with `return_dict=False`; the Program returns the noise (or velocity) prediction alone.
Guidance follows the pipelines' defaults (7.5 for Stable Diffusion, 4.0 for DiT, ...), with
zeros as the null condition (DiT: the null class). The Workload drives the folder's scheduler
through `optkit.sampling` (`SamplerSpec("diffusers", scheduler=...)`), 20 steps; a scheduler
that optkit cannot drive is refused when the folder is loaded, not in the middle of a pass.

Deviations from the pipelines: the null condition is zeros, not the encoded empty prompt; a
dynamic-shift flow scheduler (SD3.5, Flux) gets the fixed shift its pipeline would compute for
the example's image size; Flux and SDXL UNets are wrapped (position ids and micro-conditioning
are not batch inputs), so their module paths start with `transformer.` / `unet.`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.errors import ModelRefError, OptkitError
from optkit.interop.hf import import_hf, read_json, return_prediction, weight_options
from optkit.ir.capture import capture
from optkit.ir.program import Program
from optkit.sampling import SamplerSpec, sample
from optkit.workload import Diffusion, Workload

log = logging.getLogger(__name__)

STEPS = 20
DENOISER_FOLDERS = ("unet", "transformer")
TIMESTEP = 500.0  # the example's timestep: mid-trajectory, where activations are typical


@dataclass(frozen=True)
class DenoiserCall:
    """How one diffusers model class is called as `model(x, t, *cond)`.

    `inputs` are the example tensors by forward keyword, in the order x, t, *cond; `fixed`
    the non-tensor keywords; `keep_channels` cuts a learned-variance output to the prediction;
    `wrap` turns the model into a module taking `inputs` when the model's own forward cannot
    (conditioning nested in a dict, constant position ids).
    """

    inputs: dict[str, torch.Tensor]
    guidance_scale: float = 1.0
    null_cond: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)
    keep_channels: int = 0
    wrap: Callable[[nn.Module], nn.Module] | None = None


def _hw(size: Any, default: int = 64) -> tuple[int, int]:
    if size is None:
        return default, default
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


def _xt(config: Any, batch: int, gen: torch.Generator, x_name: str) -> dict[str, torch.Tensor]:
    h, w = _hw(config.sample_size)
    return {x_name: _randn(gen, batch, config.in_channels, h, w), "timestep": torch.full((batch,), TIMESTEP)}


def _learned_sigma(config: Any) -> int:
    out = config.out_channels or config.in_channels
    return config.in_channels if out == 2 * config.in_channels else 0


def _unet2d(model: Any, batch: int, gen: torch.Generator) -> DenoiserCall:
    config = model.config
    inputs = _xt(config, batch, gen, "sample")
    if config.class_embed_type is not None:
        raise ModelRefError(f"UNet2DModel with class_embed_type={config.class_embed_type!r} is not supported")
    if config.num_class_embeds:
        inputs["class_labels"] = torch.randint(0, config.num_class_embeds, (batch,), generator=gen)
    return DenoiserCall(inputs)


def _cross_attention_dim(config: Any) -> int:
    dims = config.encoder_hid_dim or config.cross_attention_dim
    if isinstance(dims, (list, tuple)):
        if len(set(dims)) != 1:
            raise ModelRefError(f"per-block cross_attention_dim {list(dims)} is not supported")
        dims = dims[0]
    return int(dims)


class _SDXLUNet(nn.Module):
    """An SDXL UNet with its micro-conditioning (pooled text, size/crop ids) as plain inputs."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        out = self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)
        return out[0]


def _unet2d_condition(model: Any, batch: int, gen: torch.Generator) -> DenoiserCall:
    config = model.config
    unsupported = {
        k: getattr(config, k)
        for k in ("class_embed_type", "num_class_embeds", "encoder_hid_dim_type")
        if getattr(config, k) is not None
    }
    if config.addition_embed_type not in (None, "text_time"):
        unsupported["addition_embed_type"] = config.addition_embed_type
    if unsupported:
        settings = ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
        raise ModelRefError(
            f"UNet2DConditionModel with {settings} is not supported (plain and SDXL-style UNets are)"
        )
    inputs = _xt(config, batch, gen, "sample")
    inputs["encoder_hidden_states"] = _randn(gen, batch, 77, _cross_attention_dim(config))
    if config.addition_embed_type is None:
        return DenoiserCall(inputs, 7.5, ("zeros",))
    # SDXL: pooled text embedding + (original size, crop corner, target size) as time ids.
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    h, w = _hw(config.sample_size)
    inputs["text_embeds"] = _randn(gen, batch, pooled)
    inputs["time_ids"] = torch.tensor([8.0 * h, 8.0 * w, 0.0, 0.0, 8.0 * h, 8.0 * w]).repeat(batch, 1)
    return DenoiserCall(inputs, 5.0, ("zeros", "zeros", "keep"), wrap=_SDXLUNet)


def _dit(model: Any, batch: int, gen: torch.Generator) -> DenoiserCall:
    config = model.config
    classes = int(config.num_embeds_ada_norm)
    inputs = _xt(config, batch, gen, "hidden_states")
    inputs["class_labels"] = torch.randint(0, classes, (batch,), generator=gen)
    # DiT's label embedding keeps one extra row, index `classes`, for the null class.
    return DenoiserCall(inputs, 4.0, (f"fill:{classes}",), keep_channels=_learned_sigma(config))


def _pixart(model: Any, batch: int, gen: torch.Generator) -> DenoiserCall:
    config = model.config
    if config.use_additional_conditions or (
        config.use_additional_conditions is None and config.sample_size == 128
    ):
        raise ModelRefError(
            "PixArt with resolution/aspect-ratio conditions (PixArt-alpha 1024) is not supported"
        )
    inputs = _xt(config, batch, gen, "hidden_states")
    inputs["encoder_hidden_states"] = _randn(gen, batch, 120, config.caption_channels)
    fixed = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    return DenoiserCall(inputs, 4.5, ("zeros",), fixed, keep_channels=_learned_sigma(config))


def _sd3(model: Any, batch: int, gen: torch.Generator) -> DenoiserCall:
    config = model.config
    inputs = _xt(config, batch, gen, "hidden_states")
    # CLIP (77 tokens) and T5 (256 tokens) embeddings, concatenated by the pipeline.
    inputs["encoder_hidden_states"] = _randn(gen, batch, 77 + 256, config.joint_attention_dim)
    inputs["pooled_projections"] = _randn(gen, batch, config.pooled_projection_dim)
    return DenoiserCall(inputs, 7.0, ("zeros", "zeros"))


class _Flux(nn.Module):
    """A Flux transformer called as the scheduler counts time (0..1000; the pipeline divides by
    1000 and the model multiplies back), its rotary position ids fixed by the example's size."""

    def __init__(self, transformer: nn.Module, img_ids: torch.Tensor, txt_ids: torch.Tensor) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("img_ids", img_ids, persistent=False)
        self.register_buffer("txt_ids", txt_ids, persistent=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden_states,
            timestep=timestep / 1000,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            guidance=guidance,
            img_ids=self.img_ids,
            txt_ids=self.txt_ids,
            return_dict=False,
        )[0]


FLUX_LATENT = 128  # FluxPipeline's default: 1024 px, a 128 x 128 latent packed into 2 x 2 patches
FLUX_TEXT = 512


def _flux(model: Any, batch: int, gen: torch.Generator) -> DenoiserCall:
    config = model.config
    side = FLUX_LATENT // 2
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(side * side, 3).float()
    txt_ids = torch.zeros(FLUX_TEXT, 3)
    inputs = {
        "hidden_states": _randn(
            gen, batch, side * side, config.in_channels
        ),  # (B, tokens, 4 C) packed latent
        "timestep": torch.full((batch,), TIMESTEP),
        "encoder_hidden_states": _randn(gen, batch, FLUX_TEXT, config.joint_attention_dim),
        "pooled_projections": _randn(gen, batch, config.pooled_projection_dim),
    }
    if config.guidance_embeds:  # guidance-distilled (dev): the scale is an input, not two branches
        inputs["guidance"] = torch.full((batch,), 3.5)
    return DenoiserCall(inputs, 1.0, wrap=lambda m: _Flux(m, img_ids, txt_ids))


# Model class (as loaded: diffusers maps legacy Transformer2DModel configs to DiT / PixArt) -> call.
DENOISERS: dict[str, Callable[[Any, int, torch.Generator], DenoiserCall]] = {
    "UNet2DModel": _unet2d,
    "UNet2DConditionModel": _unet2d_condition,
    "DiTTransformer2DModel": _dit,
    "PixArtTransformer2DModel": _pixart,
    "SD3Transformer2DModel": _sd3,
    "FluxTransformer2DModel": _flux,
}
# Classes a config may name; Transformer2DModel loads as DiT or PixArt when its norm says so.
CONFIG_CLASSES = (*DENOISERS, "Transformer2DModel")


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a diffusers denoiser and its scheduler live (`pipeline` is "" for a model folder)."""

    model_dir: Path
    class_name: str
    pipeline: str
    scheduler: dict[str, Any] | None


def find_parts(path: Path) -> DiffusersFolder:
    """The denoiser folder, its class and the scheduler config of the diffusers folder `path`."""
    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json")
        found = [
            name for name in DENOISER_FOLDERS if name in index and (path / name / "config.json").is_file()
        ]
        if not found:
            raise ModelRefError(
                f"{path}/model_index.json names no denoiser folder with a config.json: looked for "
                f"{' or '.join(f'{n}/' for n in DENOISER_FOLDERS)} (components: {', '.join(k for k in index if not k.startswith('_'))})"
            )
        model_dir = path / found[0]
        scheduler_json = path / "scheduler" / "scheduler_config.json"
        pipeline = str(index.get("_class_name", "DiffusionPipeline"))
    else:
        model_dir = path
        scheduler_json = path / "scheduler_config.json"
        if not scheduler_json.is_file() and (path.parent / "model_index.json").is_file():
            scheduler_json = path.parent / "scheduler" / "scheduler_config.json"
        pipeline = ""
    config = read_json(model_dir / "config.json")
    class_name = str(config.get("_class_name", ""))
    if class_name not in CONFIG_CLASSES:
        raise ModelRefError(
            f"{model_dir}/config.json: diffusers model class {class_name!r} is not supported as a denoiser; "
            f"supported: {', '.join(CONFIG_CLASSES)}"
        )
    scheduler = read_json(scheduler_json) if scheduler_json.is_file() else None
    return DiffusersFolder(model_dir, class_name, pipeline, scheduler)


# Pipelines that pass `mu` (from the image's token count) to a dynamic-shift flow scheduler.
SHIFTED_BY_TOKENS = ("SD3Transformer2DModel", "FluxTransformer2DModel")


def _fixed_shift(scheduler: dict[str, Any], tokens: int) -> dict[str, Any]:
    # optkit's sampler calls set_timesteps(steps) alone, so bake in the shift the pipeline would
    # pass: exp(mu) as a fixed shift gives the same sigmas as time_shift(mu, 1, sigma).
    if (
        not scheduler.get("use_dynamic_shifting")
        or scheduler.get("time_shift_type", "exponential") != "exponential"
    ):
        return scheduler
    base_len, max_len = scheduler.get("base_image_seq_len", 256), scheduler.get("max_image_seq_len", 4096)
    base, top = scheduler.get("base_shift", 0.5), scheduler.get("max_shift", 1.15)
    mu = base + (top - base) * (tokens - base_len) / (max_len - base_len)
    log.info("dynamic-shift scheduler: fixed shift exp(mu) = %.4f for %d image tokens", math.exp(mu), tokens)
    return {**scheduler, "use_dynamic_shifting": False, "shift": math.exp(mu)}


def _image_tokens(model: Any, call: DenoiserCall) -> int:
    x = next(iter(call.inputs.values()))
    if x.dim() == 3:  # Flux: already packed
        return int(x.shape[1])
    patch = int(getattr(model.config, "patch_size", 1) or 1)
    return (x.shape[-2] // patch) * (x.shape[-1] // patch)


def _check_drivable(spec: SamplerSpec, steps: int, x: torch.Tensor, origin: str) -> None:
    # A dry run with a zero denoiser: fails now, naming the scheduler, rather than inside a pass.
    hint = (
        "give a workload with a sampler optkit can drive (optkit optimize MODEL --workload FILE.toml "
        "with [diffusion] sampler = 'ddim' | 'dpm++2m' | 'flow-euler'; Python: load_model(..., workload=...))"
    )
    try:
        sample(lambda z, _t, *_c: torch.zeros_like(z), (1, *x.shape[1:]), sampler=spec, steps=steps, seed=0)
    except OptkitError as err:
        raise ModelRefError(f"{origin}: {err}; {hint}") from err
    except Exception as err:  # a scheduler's own checks raise anything
        raise ModelRefError(
            f"{origin}: optkit cannot drive {spec.label}: {type(err).__name__}: {err}; {hint}"
        ) from err


def _workload(folder: DiffusersFolder, model: Any, call: DenoiserCall, origin: str) -> Workload:
    if folder.scheduler is None:
        raise ModelRefError(
            f"{origin} holds a diffusers {folder.class_name} but no scheduler to sample it with: load the "
            "pipeline folder (with model_index.json and scheduler/), put the scheduler's scheduler_config.json "
            "beside config.json, or give a workload (optkit optimize MODEL --workload FILE.toml; "
            "Python: load_model(..., workload=Workload(...)))"
        )
    scheduler = folder.scheduler
    if type(model).__name__ in SHIFTED_BY_TOKENS:
        scheduler = _fixed_shift(scheduler, _image_tokens(model, call))
    try:
        spec = SamplerSpec("diffusers", scheduler=scheduler)
    except OptkitError as err:
        raise ModelRefError(f"{origin}: scheduler config: {err}") from err
    _check_drivable(spec, STEPS, next(iter(call.inputs.values())), origin)
    guided = call.guidance_scale > 1.0
    diffusion = Diffusion(spec, STEPS, call.guidance_scale, call.null_cond if guided else ())
    return Workload(inputs=tuple(call.inputs), diffusion=diffusion, metric="psnr")


def load(
    path: Path,
    *,
    trust_pickle: bool = False,
    batch: int | None = None,
    seed: int = 0,
    workload: Workload | None = None,
) -> Program:
    """Load the diffusers folder `path` (pipeline or model) as a denoiser Program with the
    Workload its scheduler describes; with `workload` given, the folder's scheduler is not read
    (the caller applies `workload` instead)."""
    folder = find_parts(path)
    options = weight_options(
        folder.model_dir, "diffusion_pytorch_model", "diffusion_pytorch_model", trust_pickle
    )
    diffusers = import_hf("diffusers")
    cls = getattr(diffusers, folder.class_name, None)
    if cls is None:
        raise ModelRefError(f"diffusers {diffusers.__version__} has no model class {folder.class_name!r}")
    try:
        model = cls.from_pretrained(
            folder.model_dir,
            torch_dtype=torch.float32,
            local_files_only=True,
            low_cpu_mem_usage=False,
            **options,
        )
    except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError ...
        raise ModelRefError(
            f"cannot load {folder.model_dir} as {folder.class_name}: {type(err).__name__}: {err}"
        ) from err
    loaded = type(model).__name__
    if loaded not in DENOISERS:
        raise ModelRefError(
            f"{folder.model_dir}: {folder.class_name} with this config loads as {loaded}, which is not a "
            f"supported denoiser; supported: {', '.join(DENOISERS)}"
        )
    call = DENOISERS[loaded](model, batch or 2, torch.Generator().manual_seed(seed))
    name = path.resolve().name
    module = call.wrap(model) if call.wrap else model
    fixed = {} if call.wrap else {**call.fixed, "return_dict": False}
    program = capture(module, (), name, kwargs={**call.inputs, **fixed})
    return_prediction(program, call.keep_channels)
    program.meta = {"source": "diffusers", "class": loaded, "pipeline": folder.pipeline, "path": str(path)}
    if workload is None:
        program.with_workload(_workload(folder, model, call, str(path)))
    return program
