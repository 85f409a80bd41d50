"""optkit factory for the example's diffusers `UNet2DModel`: the model, its inputs, its Workload.

    optkit optimize examples.diffusers_unet2d.model:build --passes ptq,cache -o out/unet2d

`build()` loads the UNet that `train.py` saved (`checkpoint/`), gives example inputs by keyword
as diffusers calls the model (`sample`, `timestep`, `class_labels`, `return_dict=False`), and
says how the model is sampled: the diffusers `DDIMScheduler` saved beside it, 20 steps, no
guidance (the class embedding has no null class), quality measured as PSNR against the float
model's samples. optkit's passes (calibration over the sampler's steps, block caching) then drive
the scheduler exactly as a diffusers pipeline would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from optkit import ArtifactError, Diffusion, SamplerSpec, Workload

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoint"
INPUTS = ("sample", "timestep", "class_labels")
STEPS = 20


def load_unet(checkpoint: str | Path = CHECKPOINT) -> tuple[UNet2DModel, dict[str, Any]]:
    """The trained UNet (eval mode) and its scheduler config (`scheduler_config.json`, with
    `_class_name`); `ArtifactError` naming the training command when the folder lacks them."""
    folder = Path(checkpoint)
    needed = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(
            f"no trained UNet in {folder} (missing {', '.join(missing)}); train it first (a few minutes): "
            f"OMP_NUM_THREADS=2 python examples/diffusers_unet2d/train.py -o {folder}"
        )
    model = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False).eval()  # no `accelerate` needed
    scheduler = json.loads((folder / "scheduler_config.json").read_text())
    return model, scheduler


def example_inputs(model: UNet2DModel, batch: int = 10, seed: int = 0) -> dict[str, Any]:
    """Keyword inputs of one denoiser call: noise, a timestep, one class per row (0..9 cycled)."""
    gen = torch.Generator().manual_seed(seed)
    size = model.config.sample_size
    return {
        "sample": torch.randn((batch, model.config.in_channels, size, size), generator=gen),  # (B, 1, 16, 16)
        "timestep": torch.full((batch,), 500.0),  # (B,) float: samplers pass float timesteps
        "class_labels": torch.arange(batch) % model.config.num_class_embeds,  # (B,) int64
        "return_dict": False,  # a plain tuple out; bound at capture
    }


def workload(scheduler: dict[str, Any], steps: int = STEPS) -> Workload:
    """Sampling with the saved diffusers scheduler, `steps` steps, no guidance; metric PSNR."""
    sampler = SamplerSpec("diffusers", scheduler=scheduler)
    return Workload(
        inputs=INPUTS, diffusion=Diffusion(sampler, steps=steps, guidance_scale=1.0), metric="psnr"
    )


def build(
    checkpoint: str | Path = CHECKPOINT, batch: int = 10, seed: int = 0
) -> tuple[UNet2DModel, dict[str, Any], Workload]:
    """(model, keyword example inputs, Workload): the form `pkg.module:factory` references take.

    The captured batch is `batch` (10 by default, one row per class, so that calibration and
    the cache pass's measurements see every digit).
    """
    model, scheduler = load_unet(checkpoint)
    return model, example_inputs(model, batch, seed), workload(scheduler)
