"""SceneTextGen: latent diffusion UNet conditioned by a character-level text encoder (tiny).

Paper: Zhangli et al., "Layout-Agnostic Scene Text Image Synthesis with Diffusion Models"
(SceneTextGen, CVPR 2024). A Stable-Diffusion-style latent UNet generates an image containing
the requested text without a layout stage; besides the CLIP text encoder, a character-level
encoder turns the text into one embedding per character that the UNet cross-attends to.

Here: strings of `length` digits ("characters" 0..9) rendered left to right in a
1 x 16 x 48 canvas (`optkit.zoo.data.scene_text`, glyph positions jittered inside their cells,
so the layout is not given to the model). A first-stage autoencoder (`optkit.nn.autoencoder`,
shared with `ldm`) maps images to 2 x 8 x 24 latents; the character-level encoder
(`optkit.nn.text_encoder`: character embedding + positions + one transformer layer) gives the
context of every SpatialTransformer of the UNet (`optkit.nn.unet`). The UNet predicts eps
(DDPM schedule) and is sampled with DDIM and classifier-free guidance (null prompt: every
character id 0).

Deviations from the paper:
- Only the character-level encoder conditions the UNet (no CLIP text encoder beside it).
- The character-level instance-segmentation loss and the word-level spotting (OCR) loss are
  not used: training is the plain eps MSE. (A recognition loss would also have to be a model
  other than the digits classifier that `evaluate` scores with.)
- The UNet gets one extra input channel holding the horizontal position in [-1, 1]
  (CoordConv-style): the tiny UNet would otherwise only learn where a character cell is from
  border effects of its few convolutions.
- The first stage is tiny (f = 2, see `optkit.nn.autoencoder`) and trained here, for
  `steps // 5` steps before the UNet's `steps`; no EMA.

Blocks by module path: `down.N`, `mid.N`, `up.N`.

Shipped checkpoint `scenetextgen_tiny.safetensors` (0.57M parameters, 2.3 MB, first stage
included): `OMP_NUM_THREADS=1 optkit zoo train scenetextgen --steps 4000 --batch-size 32`
(seed 0; 800 autoencoder steps, then 4,000 UNet steps; 7.4 CPU-minutes, final loss 0.066).
`optkit zoo eval scenetextgen` (256 test strings of 3 digits, 50 DDIM steps, guidance 2):
character accuracy 0.914, whole-string accuracy 0.777, FD-digits of the cells 35.2; real test
canvases through the autoencoder: character accuracy 0.966. The same recipe with 2,000 steps
reached only 0.27 character accuracy: the binding of characters to cells is learned late.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.nn.autoencoder import DOWNSAMPLE, AutoencoderConfig
from optkit.nn.text_encoder import TextEncoder
from optkit.nn.unet import UNetConfig
from optkit.sampling import SampleFn
from optkit.workload import null_condition
from optkit.zoo.digits_metrics import class_accuracy, fd_digits, load_digits_classifier
from optkit.zoo.ldm import LatentUNet, ae_parameters, decode, encode, encode_all, train_first_stage
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = "Layout-Agnostic Scene Text Image Synthesis with Diffusion Models (SceneTextGen, Zhangli et al., CVPR 2024)"
GUIDANCE_SCALE = 2.0
TRAIN_IMAGES = 4000
NULL_CHAR = 0  # character id of padding and of the null prompt; digit d is id d + 1
NULL_COND = (f"fill:{NULL_CHAR}",)  # guidance's null prompt: every character null


@dataclass(frozen=True)
class SceneTextGenConfig:
    """Sizes of the scene text model on (1, height, width) canvases with `length` characters."""

    height: int = 16
    width: int = 48
    length: int = 3
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    channels: int = 24
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    heads: int = 4
    context_dim: int = 48

    def __post_init__(self) -> None:
        step = DOWNSAMPLE * 2 ** (len(self.channel_mult) - 1)
        if self.height % step or self.width % step:
            raise ConfigError(f"height and width ({self.height}, {self.width}) must be multiples of {step}")
        if self.length <= 0 or self.width // self.length < 6:
            raise ConfigError(f"length {self.length} must be positive with cells of at least 6 px")
        _ = self.unet  # validates the UNet sizes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.autoencoder.latent_channels, self.height // DOWNSAMPLE, self.width // DOWNSAMPLE)

    @property
    def unet(self) -> UNetConfig:
        c = self.autoencoder.latent_channels
        return UNetConfig(
            in_channels=c + 1,  # latents + the horizontal-position channel
            out_channels=c,
            channels=self.channels,
            channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks,
            attention_levels=self.attention_levels,
            heads=self.heads,
            context_dim=self.context_dim,
        )

    @classmethod
    def tiny(cls) -> SceneTextGenConfig:
        return cls(channels=24, context_dim=48)

    @classmethod
    def small(cls) -> SceneTextGenConfig:
        return cls(
            autoencoder=AutoencoderConfig(channels=32),
            channels=48,
            num_res_blocks=2,
            attention_levels=(0, 1),
            context_dim=96,
        )


class SceneTextGen(LatentUNet):
    """`forward(z (B, c, h, w), t (B,), chars (B, length) int64 ids) -> eps (B, c, h, w)`."""

    coords: torch.Tensor

    def __init__(self, config: SceneTextGenConfig) -> None:
        super().__init__(config.unet, config.autoencoder)
        self.config = config
        self.char_encoder = TextEncoder(11, config.length, config.context_dim, config.heads)
        _, h, w = config.latent_shape
        coords = torch.linspace(-1.0, 1.0, w).reshape(1, 1, 1, w).expand(1, 1, h, w).contiguous()
        self.register_buffer("coords", coords, persistent=False)  # (1, 1, h, w)

    def forward(self, x: torch.Tensor, t: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        context = self.char_encoder(chars)  # (B, L, D): one token per character
        h = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)  # (B, c+1, h, w)
        return self.denoise(h, t, context)  # (B, c, h, w)


def char_ids(chars: torch.Tensor) -> torch.Tensor:
    """Digit strings (B, L) in 0..9 -> character ids (B, L) in 1..10 (0 is the null id)."""
    return chars.long() + 1


def null_chars(cond: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The unconditional input of classifier-free guidance: every character id set to null."""
    return null_condition(NULL_COND, cond)


def glyph_cells(images: torch.Tensor, length: int) -> torch.Tensor:
    """Cut canvases (N, C, H, W) into their `length` character cells: (N * length, C, H, W // length),
    cells of one image consecutive (the layout of `scene_text`)."""
    n, c, h, w = images.shape
    cell = w // length
    cells = images[..., : cell * length].reshape(n, c, h, length, cell)  # (N, C, H, L, cell)
    return cells.permute(0, 3, 1, 2, 4).reshape(n * length, c, h, cell)


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (z, t, chars): Gaussian latents, t in [0, 1000), random digit strings."""
    cfg: SceneTextGenConfig = model.config  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, *cfg.latent_shape, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen).float()
    chars = torch.randint(0, 10, (batch, cfg.length), generator=gen)
    return z, t, char_ids(chars)


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train the autoencoder on 4,000 generated scene-text canvases, then the UNet and the
    character encoder on their latents (eps objective, 10% null prompts)."""
    from optkit.zoo.data import scene_text
    from optkit.zoo.training import train_denoiser

    cfg: SceneTextGenConfig = model.config  # type: ignore[assignment]
    images, chars = scene_text(TRAIN_IMAGES, cfg.length, (cfg.height, cfg.width), seed=settings.seed)
    ids = char_ids(chars)
    torch.manual_seed(settings.seed)
    ae_figures, ae_steps = train_first_stage(model, images, settings)
    latents = encode_all(model, images)  # (N, c, h, w), unit variance

    def batches(gen: torch.Generator, batch_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=gen)
        return latents[idx], (ids[idx],)

    def progress(step: int, _total: int, loss: float) -> None:
        if settings.progress:
            settings.progress(ae_steps + step, settings.steps + ae_steps, loss)

    figures = train_denoiser(
        model,
        batches,
        dataclasses.replace(settings, progress=progress),
        objective="eps",
        null_cond=null_chars,
    )
    for p in ae_parameters(model):
        p.requires_grad_(True)
    return {
        **figures,
        "seconds": figures["seconds"] + ae_figures["seconds"],
        "autoencoder_steps": float(ae_steps),
        "autoencoder_recon_mse": ae_figures["recon_mse"],
        "latent_scale": float(model.get_buffer("latent_scale")),
    }


def evaluate(
    model: nn.Module, settings: EvalSettings, sampler: str = "ddim", sample_fn: SampleFn | None = None
) -> dict[str, float]:
    """Generate canvases for `num_samples` test-split digit strings (fixed seeds, guidance 2;
    `sample_fn`, the signature of `optkit.sampling.sample`, replaces the plain sampler so that a
    quantized, cached or compiled runner is scored the same way), cut them into character cells
    and score: the shipped digits classifier's per-character and
    whole-string accuracy, FD-digits of the cells against the cells of real test canvases, and
    the character accuracy of real test canvases passed through the autoencoder."""
    from optkit.zoo.data import scene_text

    cfg: SceneTextGenConfig = model.config  # type: ignore[assignment]
    model.eval()
    reference, chars = scene_text(
        settings.num_samples, cfg.length, (cfg.height, cfg.width), seed=settings.seed, split="test"
    )
    samples = generate(model, chars, settings, sampler, sample_fn)
    cells, ref_cells = glyph_cells(samples, cfg.length), glyph_cells(reference, cfg.length)
    truth = chars.reshape(-1)
    with torch.no_grad():
        correct = (load_digits_classifier()(cells).argmax(-1) == truth).reshape(-1, cfg.length)  # (N, L)
    recon_cells = glyph_cells(decode(model, encode(model, reference)), cfg.length)
    return {
        "char_accuracy": float(correct.float().mean()),
        "word_accuracy": float(correct.all(dim=1).float().mean()),
        "fd_digits_cells": float(fd_digits(cells, ref_cells)),
        "autoencoder_char_accuracy": float(class_accuracy(recon_cells, truth)),
    }


def generate(
    model: nn.Module,
    chars: torch.Tensor,
    settings: EvalSettings,
    sampler: str = "ddim",
    sample_fn: SampleFn | None = None,
) -> torch.Tensor:
    """Canvases (N, 1, H, W) in [-1, 1] showing the digit strings `chars` (N, L), sampled in
    batches of `settings.batch_size` with seeds `settings.seed + start` and guidance 2."""
    from optkit.sampling import sample

    cfg: SceneTextGenConfig = model.config  # type: ignore[assignment]
    out = []
    for start in range(0, chars.shape[0], settings.batch_size):
        ids = char_ids(chars[start : start + settings.batch_size])
        z = (sample_fn or sample)(
            model,
            (ids.shape[0], *cfg.latent_shape),
            sampler=sampler,
            steps=settings.steps,
            seed=settings.seed + start,
            cond=(ids,),
            uncond=null_chars((ids,)),
            guidance_scale=GUIDANCE_SCALE,
        )
        out.append(decode(model, z))
    return torch.cat(out)


register_model(
    ZooModel(
        name="scenetextgen",
        paper=PAPER,
        task="diffusion-image",
        configs={"tiny": SceneTextGenConfig.tiny(), "small": SceneTextGenConfig.small()},
        build=SceneTextGen,
        example_inputs=example_inputs,
        sampler="ddim",
        guidance_scale=GUIDANCE_SCALE,
        null_cond=NULL_COND,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=4000, batch_size=32),  # the shipped checkpoint's recipe
        extra={
            "data": "scene_text",
            "encode": encode,
            "decode": decode,
            "latent": True,
        },
    )
)
