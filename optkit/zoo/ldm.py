"""LDM: class-conditional latent diffusion with a cross-attention UNet (tiny, on digits).

Paper: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR
2022). Two stages: (1) a first-stage autoencoder (`optkit.nn.autoencoder`, KL-regularized) maps
1 x 16 x 16 digits to 2 x 8 x 8 latents (f = 2, c = 2), rescaled to unit variance by a stored
scale factor; (2) a UNet (`optkit.nn.unet`: ResBlocks with timestep injection,
SpatialTransformers with self-attention and cross-attention) learns eps on those latents. The
class label is embedded as a short context sequence (`context_tokens` tokens) that every
SpatialTransformer cross-attends to, as in the paper's class-conditional ImageNet LDM
(`ClassEmbedder` + cross-attention). Sampling runs DDIM in latent space and decodes once.

The registered module is the denoiser: `forward(z (B, 2, 8, 8), t (B,), y (B,) int64) -> eps`,
which is what capture and the passes see. The autoencoder is its submodule `first_stage`
(saved in the same checkpoint, not called by `forward`); the entry's `extra["encode"]` and
`extra["decode"]` map images to scaled latents and back.

Deviations from the paper:
- First stage: a few convolutions, L1 + MSE + KL (weight 1e-4 per element), no perceptual or
  adversarial loss (see `optkit.nn.autoencoder`); f = 2 rather than 4..8 since the images are
  16 x 16.
- Class conditioning uses a learned table of `context_tokens` tokens per class (LDM uses one
  token); label id `num_classes` is the null class of classifier-free guidance (LDM's ImageNet
  model predates CFG), with 10% label dropout in the shared training loop.
- The UNet is tiny (channels 24, two levels, one ResBlock per level, attention at the 4 x 4
  level and in the middle), and there is no EMA of the weights.
- Both stages are trained in one `train()` call: `steps // 5` autoencoder steps first, then
  `steps` UNet steps on the frozen autoencoder's posterior means.

Blocks by module path: `down.N`, `mid.N`, `up.N` (`nn.ModuleList`s of the UNet).

Shipped checkpoint `ldm_tiny.safetensors` (0.54M parameters, 2.2 MB, first stage included):
`OMP_NUM_THREADS=1 optkit zoo train ldm --steps 2000` (seed 0, batch 64; 400 autoencoder steps,
then 2,000 UNet steps; 3.1 CPU-minutes, final loss 0.049). `optkit zoo eval ldm` (256 samples,
50 DDIM steps, guidance 2): FD-digits 39.95, class accuracy 0.977; test digits through the
autoencoder alone: FD-digits 5.72, class accuracy 0.970.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.nn.autoencoder import DOWNSAMPLE, Autoencoder, AutoencoderConfig, latent_std, train_autoencoder
from optkit.nn.unet import UNet, UNetConfig
from optkit.sampling import SampleFn
from optkit.zoo.digits_metrics import class_accuracy, fd_digits
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = "High-Resolution Image Synthesis with Latent Diffusion Models (Rombach et al., CVPR 2022)"
GUIDANCE_SCALE = 2.0
NULL_COND = ("fill:10",)  # guidance's null label: one past the 10 digit classes (label dropout)
AUTOENCODER_FRACTION = 5  # the first stage trains for steps // 5 before the UNet's steps
AUTOENCODER_LR = 2e-3


@dataclass(frozen=True)
class LDMConfig:
    """Sizes of the latent diffusion model on (1, resolution, resolution) digits."""

    resolution: int = 16
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    channels: int = 24
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    heads: int = 4
    context_dim: int = 48
    context_tokens: int = 4
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.resolution % DOWNSAMPLE or (self.resolution // DOWNSAMPLE) % 2 ** (
            len(self.channel_mult) - 1
        ):
            raise ConfigError(
                f"resolution {self.resolution} must give a latent grid divisible by "
                f"2**{len(self.channel_mult) - 1} (first stage halves it)"
            )
        if min(self.context_tokens, self.num_classes, self.context_dim) <= 0:
            raise ConfigError(f"context_tokens, context_dim and num_classes must be positive, got {self}")
        _ = self.unet  # validates the UNet sizes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // DOWNSAMPLE
        return (self.autoencoder.latent_channels, side, side)

    @property
    def unet(self) -> UNetConfig:
        c = self.autoencoder.latent_channels
        return UNetConfig(
            in_channels=c,
            out_channels=c,
            channels=self.channels,
            channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks,
            attention_levels=self.attention_levels,
            heads=self.heads,
            context_dim=self.context_dim,
        )

    @classmethod
    def tiny(cls) -> LDMConfig:
        return cls(channels=24, context_dim=48)

    @classmethod
    def small(cls) -> LDMConfig:
        return cls(
            autoencoder=AutoencoderConfig(channels=32),
            channels=48,
            num_res_blocks=2,
            attention_levels=(0, 1),
            context_dim=96,
        )


class LatentUNet(UNet):
    """A UNet on first-stage latents with its autoencoder attached as `first_stage` (not called
    by `forward`) and LDM's latent scale factor; the latent zoo models derive from it."""

    latent_scale: torch.Tensor

    def __init__(self, unet: UNetConfig, autoencoder: AutoencoderConfig) -> None:
        super().__init__(unet)
        self.first_stage = Autoencoder(autoencoder)
        # LDM's scale_factor: latents are multiplied by it to reach unit variance (set by train()).
        self.register_buffer("latent_scale", torch.ones(()))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, H/2, W/2)."""
        return self.first_stage.encode(images) * self.latent_scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (B, C, H, W) clamped to [-1, 1]."""
        return self.first_stage.decode(z / self.latent_scale).clamp(-1, 1)


class LatentDiffusion(LatentUNet):
    """Class-conditional latent denoiser `forward(z, t, y) -> eps` with its first stage attached."""

    def __init__(self, config: LDMConfig) -> None:
        super().__init__(config.unet, config.autoencoder)
        self.config = config
        self.label_embed = nn.Embedding(config.num_classes + 1, config.context_tokens * config.context_dim)
        nn.init.normal_(self.label_embed.weight, std=0.5)

    def context(self, y: torch.Tensor) -> torch.Tensor:
        """Label ids (B,) -> context tokens (B, context_tokens, context_dim)."""
        c = self.config
        return self.label_embed(y.long()).reshape(y.shape[0], c.context_tokens, c.context_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, t, self.context(y))  # (B, c, h, w)


def encode(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`extra["encode"]`: the model's first stage, images -> scaled latents."""
    return model.encode(images)  # type: ignore[operator]


def decode(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """`extra["decode"]`: the model's first stage, scaled latents -> images in [-1, 1]."""
    return model.decode(z)  # type: ignore[operator]


def null_labels(cond: tuple[torch.Tensor, ...], num_classes: int = 10) -> tuple[torch.Tensor, ...]:
    """The unconditional input of classifier-free guidance: every label set to the null class."""
    return (torch.full_like(cond[0], num_classes),)


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (z, t, y): Gaussian latents, t in [0, 1000), labels in 0..9."""
    cfg: LDMConfig = model.config  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, *cfg.latent_shape, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen).float()
    y = torch.randint(0, cfg.num_classes, (batch,), generator=gen)
    return z, t, y


def ae_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The first stage's parameters of a latent zoo model."""
    return list(model.get_submodule("first_stage").parameters())


def train_first_stage(
    model: nn.Module, images: torch.Tensor, settings: TrainSettings
) -> tuple[dict[str, float], int]:
    """Train `model.first_stage` on `images` for `settings.steps // AUTOENCODER_FRACTION` steps,
    freeze it and set `model.latent_scale`; returns (figures, steps used). Progress counts these
    steps first, out of these plus the `settings.steps` denoiser steps that follow. Shared by the
    latent zoo models."""
    steps = max(1, settings.steps // AUTOENCODER_FRACTION)
    ae: Autoencoder = model.first_stage  # type: ignore[assignment]

    def progress(step: int, loss: float) -> None:
        if settings.progress:
            settings.progress(step, steps + settings.steps, loss)

    figures = train_autoencoder(
        ae, images, steps, settings.batch_size, AUTOENCODER_LR, settings.seed, progress=progress
    )
    for p in ae_parameters(model):
        p.requires_grad_(False)
    with torch.no_grad():
        model.latent_scale.fill_(1.0 / max(latent_std(ae, images), 1e-6))  # type: ignore[operator]
    return figures, steps


@torch.no_grad()
def encode_all(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Scaled latents of many images, encoded `batch` at a time."""
    return torch.cat([encode(model, images[i : i + batch]) for i in range(0, images.shape[0], batch)])


def train_class_latent(
    model: nn.Module, settings: TrainSettings, resolution: int, num_classes: int
) -> dict[str, float]:
    """Train a class-conditional latent denoiser with its `first_stage`: the autoencoder on the
    4,000 training digits at `resolution` first, then the denoiser on their latents (eps
    objective, 10% label dropout to the null class `num_classes`). Shared by `ldm` and `dit`."""
    from optkit.zoo.data import digits
    from optkit.zoo.training import train_denoiser

    images, labels = digits("train", resolution=resolution, seed=settings.seed)
    torch.manual_seed(settings.seed)
    ae_figures, ae_steps = train_first_stage(model, images, settings)
    latents = encode_all(model, images)  # (N, c, h, w), unit variance

    def batches(gen: torch.Generator, batch_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=gen)
        return latents[idx], (labels[idx],)

    def null_cond(cond: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return null_labels(cond, num_classes)

    def progress(step: int, _total: int, loss: float) -> None:
        if settings.progress:
            settings.progress(ae_steps + step, settings.steps + ae_steps, loss)

    denoiser_settings = dataclasses.replace(settings, progress=progress)
    figures = train_denoiser(model, batches, denoiser_settings, objective="eps", null_cond=null_cond)
    for p in ae_parameters(model):
        p.requires_grad_(True)
    return {
        **figures,
        "seconds": figures["seconds"] + ae_figures["seconds"],
        "autoencoder_steps": float(ae_steps),
        "autoencoder_recon_mse": ae_figures["recon_mse"],
        "latent_scale": float(model.latent_scale),  # type: ignore[arg-type]
    }


def sample_class_digits(
    model: nn.Module,
    settings: EvalSettings,
    latent_shape: tuple[int, ...],
    num_classes: int,
    guidance_scale: float,
    sampler: str = "ddim",
    sample_fn: SampleFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded class-conditional samples (N, 1, R, R) of a latent denoiser and their labels
    (classes in turn, fixed seeds, guided against the null class). `sample_fn` (the signature
    of `optkit.sampling.sample`) replaces the plain sampler, so that a cached or quantized
    runner is scored the same way. Shared by `ldm` and `dit`."""
    from optkit.sampling import sample

    model.eval()
    labels = torch.arange(settings.num_samples) % num_classes
    out = []
    for start in range(0, settings.num_samples, settings.batch_size):
        y = labels[start : start + settings.batch_size]
        z = (sample_fn or sample)(
            model,
            (y.shape[0], *latent_shape),
            sampler=sampler,
            steps=settings.steps,
            seed=settings.seed + start,
            cond=(y,),
            uncond=null_labels((y,), num_classes),
            guidance_scale=guidance_scale,
        )
        out.append(decode(model, z))
    return torch.cat(out), labels


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train the autoencoder on the 4,000 training digits, then the UNet on their latents
    (eps objective, 10% label dropout). Figures of both stages are returned."""
    cfg: LDMConfig = model.config  # type: ignore[assignment]
    return train_class_latent(model, settings, cfg.resolution, cfg.num_classes)


def evaluate(
    model: nn.Module, settings: EvalSettings, sampler: str = "ddim", sample_fn: SampleFn | None = None
) -> dict[str, float]:
    """Sample `num_samples` latents (see `sample_class_digits`; guidance 2), decode them and
    score the digits: FD-digits against the test split and the shipped classifier's accuracy
    on the labels; also the same figures for test digits passed through the autoencoder."""
    from optkit.zoo.data import digits

    cfg: LDMConfig = model.config  # type: ignore[assignment]
    samples, labels = sample_class_digits(
        model, settings, cfg.latent_shape, cfg.num_classes, GUIDANCE_SCALE, sampler, sample_fn
    )
    reference, ref_labels = digits("test", resolution=cfg.resolution)
    recon = decode(model, encode(model, reference))
    return {
        "fd_digits": float(fd_digits(samples, reference)),
        "class_accuracy": float(class_accuracy(samples, labels)),
        "autoencoder_fd_digits": float(fd_digits(recon, reference)),
        "autoencoder_class_accuracy": float(class_accuracy(recon, ref_labels)),
    }


register_model(
    ZooModel(
        name="ldm",
        paper=PAPER,
        task="diffusion-image",
        configs={"tiny": LDMConfig.tiny(), "small": LDMConfig.small()},
        build=LatentDiffusion,
        example_inputs=example_inputs,
        sampler="ddim",
        guidance_scale=GUIDANCE_SCALE,
        null_cond=NULL_COND,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=2000, batch_size=64),  # the shipped checkpoint's recipe
        extra={
            "data": "digits",
            "encode": encode,
            "decode": decode,
            "latent": True,
        },
    )
)
