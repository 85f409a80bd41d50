"""First-stage autoencoder of latent diffusion (tiny): images <-> a 2x smaller latent grid.

Paper: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR
2022), section 3.1: a convolutional encoder maps x (C, H, W) to z (c, H/f, W/f) and a decoder
maps it back; a light regularizer keeps the latent space well behaved. Here f = 2 and c = 2,
and the regularizer is the paper's "KL-reg": the encoder outputs a diagonal Gaussian
(mean, log-variance), training samples z from it and adds a small KL penalty towards N(0, I);
`regularizer="none"` trains a plain deterministic autoencoder instead.

Deviations from the paper:
- Reconstruction loss is L1 + MSE on pixels only: no LPIPS perceptual loss and no patch-GAN
  discriminator (no pretrained networks ship; the digits are tiny and smooth).
- The KL weight is 1e-4 per latent element (LDM: 1e-6 on a summed KL), tuned so that the
  latents stay close to unit scale without blurring the digits.
- Encoder and decoder are a few convolutions (no ResBlocks or attention).
- Diffusion models rescale latents by 1 / std over the training set (`latent_std`), as LDM
  does with its `scale_factor`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError

KL_WEIGHT = 1e-4
DOWNSAMPLE = 2  # spatial factor f between images and latents


@dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes of the first stage: `channels` at full resolution, twice that at the latent level."""

    in_channels: int = 1
    latent_channels: int = 2
    channels: int = 16
    regularizer: Literal["kl", "none"] = "kl"

    def __post_init__(self) -> None:
        if self.regularizer not in ("kl", "none"):
            raise ConfigError(f"regularizer must be 'kl' or 'none', got {self.regularizer!r}")
        if min(self.in_channels, self.latent_channels, self.channels) <= 0:
            raise ConfigError(f"channel counts must be positive, got {self}")


class Encoder(nn.Module):
    """(B, C, H, W) -> moments (B, 2c, H/2, W/2) for KL, or latents (B, c, H/2, W/2)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        ch, out = config.channels, config.latent_channels * (2 if config.regularizer == "kl" else 1)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.down = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(2 * ch, 2 * ch, 3, padding=1)
        self.conv_out = nn.Conv2d(2 * ch, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(x))  # (B, ch, H, W)
        h = h + F.silu(self.conv1(h))
        h = F.silu(self.down(h))  # (B, 2ch, H/2, W/2)
        h = h + F.silu(self.conv2(h))
        return self.conv_out(h)


class Decoder(nn.Module):
    """Latents (B, c, H/2, W/2) -> images (B, C, H, W) (unbounded; callers clamp to [-1, 1])."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        ch = config.channels
        self.conv_in = nn.Conv2d(config.latent_channels, 2 * ch, 3, padding=1)
        self.conv1 = nn.Conv2d(2 * ch, 2 * ch, 3, padding=1)
        self.up = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv_out = nn.Conv2d(ch, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(z))  # (B, 2ch, h, w)
        h = h + F.silu(self.conv1(h))
        h = F.silu(self.up(F.interpolate(h, scale_factor=2.0, mode="nearest")))  # (B, ch, 2h, 2w)
        h = h + F.silu(self.conv2(h))
        return self.conv_out(h)  # (B, C, H, W)


class Autoencoder(nn.Module):
    """Encoder + decoder. `encode` returns the posterior mean (deterministic), `decode` images."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z | x), each (B, c, H/2, W/2); logvar is 0 without KL."""
        out = self.encoder(x)
        if self.config.regularizer == "kl":
            mean, logvar = out.chunk(2, dim=1)
            return mean, logvar.clamp(-30.0, 20.0)
        return out, torch.zeros_like(out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.moments(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training loss on images x: L1 + MSE reconstruction of a posterior sample, + KL."""
        mean, logvar = self.moments(x)
        if self.config.regularizer == "kl":
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        else:
            z, kl = mean, mean.new_zeros(())
        recon = self.decode(z)
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + KL_WEIGHT * kl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(x))


def train_autoencoder(
    model: Autoencoder,
    images: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train the autoencoder on `images` (N, C, H, W) in [-1, 1]: Adam, cosine decay, seeded.

    `progress(step, loss)` is called after every step. Returns the final smoothed loss, the
    reconstruction MSE over `images` and the seconds taken.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    model.train()
    start = time.perf_counter()
    ema = None
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        loss = model.loss(images[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if progress:
            progress(step + 1, ema)
    model.eval()
    with torch.no_grad():
        mse = (
            sum(
                F.mse_loss(model(images[i : i + 500]), images[i : i + 500], reduction="sum").item()
                for i in range(0, images.shape[0], 500)
            )
            / images.numel()
        )
    return {"autoencoder_loss": float(ema or 0.0), "recon_mse": mse, "seconds": time.perf_counter() - start}


@torch.no_grad()
def latent_std(model: Autoencoder, images: torch.Tensor, batch: int = 500) -> float:
    """Standard deviation of the posterior means over `images`: LDM's latent scale is 1 / this."""
    z = torch.cat([model.encode(images[i : i + batch]) for i in range(0, images.shape[0], batch)])
    return float(z.std())
