"""Denoisers at real sizes, built from configs with random weights (no download), for issue 20.

`unet(width)` is diffusers' `UNet2DConditionModel` with Stable Diffusion 1.5's layout (block
channels `width * (1, 2, 4, 4)`, cross-attention dim 768): `width=320` is SD-1.5's UNet (860M
parameters). `sdxl_unet()` is SDXL's layout (2.6B). `dit(depth, hidden)` is a DiT-style
transformer denoiser (diffusers `DiTTransformer2DModel`, patch 2, class-conditioned). Each
factory returns `(model, example_inputs)` as `optkit optimize pkg.module:factory` expects:
latents 1x4x32x32, text 1x77x768 (2048 for SDXL). `OPTKIT_SCALE_DTYPE=bfloat16|float16` stores
the weights in half precision.

    optkit optimize benchmarks.scale_models:sd15_unet --passes ptq --no-onnx -o /tmp/out
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def _cast(model: nn.Module) -> nn.Module:
    dtype = _dtype()
    return model if dtype == torch.float32 else model.to(dtype)


def _dtype() -> torch.dtype:
    name = os.environ.get("OPTKIT_SCALE_DTYPE", "float32")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class _Bound(nn.Module):
    """Calls a diffusers model positionally with `return_dict=False`, returning the sample."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(*args, return_dict=False)[0]


def unet_model(width: int = 320, cross_dim: int = 768, layers: int = 2, heads: int = 8) -> nn.Module:
    """An SD-1.5-layout UNet2DConditionModel with block channels `width * (1, 2, 4, 4)`."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return _cast(
        UNet2DConditionModel(
            block_out_channels=(width, 2 * width, 4 * width, 4 * width),
            cross_attention_dim=cross_dim,
            layers_per_block=layers,
            attention_head_dim=heads,
            norm_num_groups=32,
        )
    )


def unet_inputs(cross_dim: int = 768, latent: int = 32) -> tuple[torch.Tensor, ...]:
    """Latents (1, 4, latent, latent), timestep (1,), text (1, 77, cross_dim)."""
    g = torch.Generator().manual_seed(0)
    dtype = _dtype()
    return (
        torch.randn(1, 4, latent, latent, generator=g).to(dtype),
        torch.tensor([500.0]).to(dtype),
        torch.randn(1, 77, cross_dim, generator=g).to(dtype),
    )


def unet(width: int = 320) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """SD-1.5-layout UNet at block width `width` (env `OPTKIT_SCALE_WIDTH` overrides)."""
    width = int(os.environ.get("OPTKIT_SCALE_WIDTH", width))
    return _Bound(unet_model(width)), unet_inputs()


def sd15_unet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Stable Diffusion 1.5's UNet layout (860M parameters), random weights."""
    return _Bound(unet_model(320)), unet_inputs()


def sdxl_unet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """SDXL's UNet layout (2.6B parameters) without the added text/time embeddings, random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        layers_per_block=2,
        use_linear_projection=True,
    )
    return _Bound(_cast(model)), unet_inputs(2048)


class _DiT(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, timestep=t, class_labels=y, return_dict=False)[0]


def dit_model(depth: int = 28, hidden: int = 1152, heads: int = 16) -> nn.Module:
    """DiT (Peebles & Xie) as diffusers' DiTTransformer2DModel: `depth` blocks of width `hidden`."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return _cast(
        DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=hidden // heads,
            in_channels=4,
            num_layers=depth,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
    )


def dit(depth: int = 28, hidden: int = 1152) -> tuple[nn.Module, Any]:
    """A DiT denoiser (DiT-XL/2 at the defaults, 675M parameters); env `OPTKIT_SCALE_DEPTH` and
    `OPTKIT_SCALE_HIDDEN` override the size."""
    depth = int(os.environ.get("OPTKIT_SCALE_DEPTH", depth))
    hidden = int(os.environ.get("OPTKIT_SCALE_HIDDEN", hidden))
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, 32, 32, generator=g).to(_dtype()),
        torch.tensor([500]),
        torch.tensor([3]),
    )
    return _DiT(dit_model(depth, hidden, 16)), inputs
