"""optkit factories for the example's diffusers models: the model, its inputs, its Workload.

    optkit optimize examples.diffusers_digits.model:build --passes ptq,cache -o out/unet2d
    optkit optimize examples.diffusers_digits.model:build_dit --passes ptq,cache -o out/dit

`build()` loads the `UNet2DModel` that `train.py` saved (`unet/`), `build_dit()` the
`DiTTransformer2DModel` (`dit/`). Each gives example inputs by keyword as diffusers calls the
model (`sample` or `hidden_states`, `timestep`, `class_labels`, `return_dict=False`), and says
how the model is sampled: the diffusers `DDIMScheduler` saved beside it, 20 steps, no guidance,
quality measured as PSNR against the float model's samples. optkit's passes (calibration over
the sampler's steps, block caching) then drive the scheduler exactly as a diffusers pipeline
would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch

from optkit import ArtifactError, Diffusion, SamplerSpec, Workload

HERE = Path(__file__).resolve().parent
UNET, DIT = HERE / "unet", HERE / "dit"
STEPS = 20
NUM_CLASSES = 10
# The noisy input's keyword per model class (the other two are `timestep` and `class_labels`).
SAMPLE_ARG = {"UNet2DModel": "sample", "DiTTransformer2DModel": "hidden_states"}


def load_model(checkpoint: str | Path = UNET) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model (eval mode) and its scheduler config (`scheduler_config.json`, with
    `_class_name`); `ArtifactError` naming the training command when the folder lacks them."""
    folder = Path(checkpoint)
    needed = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        arch = "dit" if folder.name == "dit" else "unet"
        raise ArtifactError(
            f"no trained model in {folder} (missing {', '.join(missing)}); train it first (minutes): "
            f"OMP_NUM_THREADS=2 python examples/diffusers_digits/train.py --arch {arch} -o {folder}"
        )
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in SAMPLE_ARG:
        raise ArtifactError(
            f"{folder}/config.json holds a {name}; this example loads {', '.join(SAMPLE_ARG)}"
        )
    cls = getattr(diffusers, name)
    model = cls.from_pretrained(folder, low_cpu_mem_usage=False).eval()  # no `accelerate` needed
    scheduler = json.loads((folder / "scheduler_config.json").read_text())
    return model, scheduler


def example_inputs(model: torch.nn.Module, batch: int = 10, seed: int = 0) -> dict[str, Any]:
    """Keyword inputs of one denoiser call: noise, a timestep, one class per row (0..9 cycled)."""
    gen = torch.Generator().manual_seed(seed)
    size, channels = model.config.sample_size, model.config.in_channels
    return {
        SAMPLE_ARG[type(model).__name__]: torch.randn(
            (batch, channels, size, size), generator=gen
        ),  # (B, 1, 16, 16)
        "timestep": torch.full((batch,), 500.0),  # (B,) float: samplers pass float timesteps
        "class_labels": torch.arange(batch) % NUM_CLASSES,  # (B,) int64
        "return_dict": False,  # a plain tuple out; bound at capture
    }


def workload(model: torch.nn.Module, scheduler: dict[str, Any], steps: int = STEPS) -> Workload:
    """Sampling with the saved diffusers scheduler, `steps` steps, no guidance; metric PSNR."""
    sampler = SamplerSpec("diffusers", scheduler=scheduler)
    inputs = (SAMPLE_ARG[type(model).__name__], "timestep", "class_labels")
    return Workload(
        inputs=inputs, diffusion=Diffusion(sampler, steps=steps, guidance_scale=1.0), metric="psnr"
    )


def build(
    checkpoint: str | Path = UNET, batch: int = 10, seed: int = 0
) -> tuple[torch.nn.Module, dict[str, Any], Workload]:
    """(model, keyword example inputs, Workload): the form `pkg.module:factory` references take.

    The captured batch is `batch` (10 by default, one row per class, so that calibration and
    the cache pass's measurements see every digit).
    """
    model, scheduler = load_model(checkpoint)
    return model, example_inputs(model, batch, seed), workload(model, scheduler)


def build_dit(batch: int = 10, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any], Workload]:
    """`build` for the trained `DiTTransformer2DModel` in `dit/`."""
    return build(DIT, batch, seed)
