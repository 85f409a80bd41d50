"""DiT: a class-conditional latent diffusion transformer with adaLN-Zero blocks (tiny, on digits).

Paper: Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023). As in the
paper, the transformer works on the latents of a first-stage autoencoder: here the small
KL autoencoder of `optkit.nn.autoencoder` (shared with `ldm`), which maps 1 x 16 x 16 digits to
2 x 8 x 8 latents rescaled to unit variance. A latent (B, C, R, R) is cut into p x p patches, embedded linearly, given fixed 2D sin-cos positions,
and run through `depth` blocks of LayerNorm -> self-attention -> LayerNorm -> MLP whose
LayerNorms are modulated (shift, scale) and whose residual branches are gated, all regressed
from the sum of the timestep and class embeddings (adaLN-Zero: the modulation Linear starts at
zero, so every block starts as the identity). A final adaLN layer maps tokens back to patches.

Deviations from the paper:
- The first stage is a few convolutions trained here (`steps // 5` steps before the DiT's own,
  see `optkit.zoo.ldm.train_first_stage`), not the Stable Diffusion VAE; it rides along as the
  submodule `first_stage`, which `forward` does not call (capture drops its weights).
  A pixel-space DiT of the same size was tried first and was far from converged after 3,000
  steps (class accuracy 0.26); on latents 8,000 steps reach 0.99.
- Learned sigma is off: the model outputs eps only (C channels), trained with the simple MSE
  loss on the DDPM linear schedule; sampled with DDIM (or DPM-Solver++) instead of the
  250-step DDPM sampler.
- Label dropout for classifier-free guidance happens in the shared training loop
  (`optkit.zoo.training.train_denoiser` with `null_cond`), not inside the label embedder; the
  null class id is `num_classes`, as in the paper.
- Sizes are far below DiT-S: `tiny` is DiT/2 with dim 96, depth 6, 4 heads (~1.1M params,
  16 tokens); `small` is DiT/1 with dim 192, depth 8, 6 heads (64 tokens).
- No EMA of the weights.

Shipped checkpoint `dit_tiny.safetensors`: `OMP_NUM_THREADS=1 optkit zoo train dit` (seed 0;
1,600 autoencoder steps, then 8,000 DiT steps at batch 64; 13 CPU-minutes; final loss 0.054).
`optkit zoo eval dit` (256 samples, 50 DDIM steps, guidance 2): FD-digits 89.2, class accuracy
0.992.

Block outputs are found by module path `blocks.N` (an `nn.ModuleList`), which the caching and
sensitivity passes use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.nn.autoencoder import DOWNSAMPLE, Autoencoder, AutoencoderConfig
from optkit.sampling import SampleFn
from optkit.workload import null_condition
from optkit.zoo.digits_metrics import class_accuracy, fd_digits
from optkit.zoo.ldm import decode, encode
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = "Scalable Diffusion Models with Transformers (Peebles & Xie, ICCV 2023)"
GUIDANCE_SCALE = 2.0
NULL_COND = ("fill:10",)  # guidance's null label: one past the 10 digit classes (label dropout)
FREQ_DIM = 256  # sinusoidal timestep features before the embedding MLP, as in the paper


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of a latent DiT on (1, image_resolution, image_resolution) digits with
    `num_classes` labels; the transformer sees the first stage's (in_channels, resolution,
    resolution) latents."""

    image_resolution: int = 16
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    patch: int = 2
    dim: int = 96
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.image_resolution % DOWNSAMPLE:
            raise ConfigError(
                f"image_resolution {self.image_resolution} must be even (the first stage halves it)"
            )
        if self.patch <= 0 or self.resolution % self.patch:
            raise ConfigError(f"latent resolution {self.resolution} must be a multiple of patch {self.patch}")
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.dim % 4:
            raise ConfigError(f"dim {self.dim} must be a multiple of 4 (2D sin-cos positions)")
        if min(self.depth, self.num_classes) <= 0:
            raise ConfigError(f"depth and num_classes must be positive, got {self}")

    @property
    def in_channels(self) -> int:
        """Latent channels: what the transformer reads and predicts."""
        return self.autoencoder.latent_channels

    @property
    def resolution(self) -> int:
        """Latent side."""
        return self.image_resolution // DOWNSAMPLE

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.resolution // self.patch

    @classmethod
    def tiny(cls) -> DiTConfig:
        return cls(dim=96, depth=6, heads=4)

    @classmethod
    def small(cls) -> DiTConfig:
        return cls(dim=192, depth=8, heads=6, patch=1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (grid*grid, dim): half the channels encode the row,
    half the column, each as [sin, cos] of the position times geometric frequencies."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (G, G)

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega  # (G*G, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (G*G, D/2)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()  # (G*G, D)


def timestep_embedding(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of float timesteps t (B,) in [0, 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)  # (dim/2,)
    angles = t.float().reshape(-1, 1) * freqs  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=1)  # (B, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift with per-sample (B, D) shift and scale over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t followed by a two-layer SiLU MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FREQ_DIM, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(timestep_embedding(t))))  # (B, D)


class LabelEmbedder(nn.Module):
    """One learned vector per class plus the null class `num_classes` used for guidance."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y.long())  # (B, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, N, Dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN-Zero block: modulated LayerNorm -> attention, modulated LayerNorm -> MLP, gated."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.adaLN_modulation = nn.Linear(dim, 6 * dim)
        # adaLN-Zero: zero modulation makes every gate 0, so the block starts as the identity.
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.adaLN_modulation(F.silu(c))  # (B, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # 6 x (B, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        h = self.fc2(F.gelu(self.fc1(modulate(self.norm2(x), shift_mlp, scale_mlp)), approximate="tanh"))
        return x + gate_mlp.unsqueeze(1) * h  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialized Linear from tokens to patch pixels."""

    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        for layer in (self.adaLN_modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(F.silu(c)).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*C)


class DiT(nn.Module):
    """Class-conditional latent DiT: `forward(z (B, c, r, r), t (B,), y (B,) int64) -> eps`.

    `t` is the DDPM timestep index as a float in [0, 1000); `y == num_classes` is the null
    class of classifier-free guidance. The first-stage autoencoder rides along as
    `first_stage` (not called by `forward`); `encode`/`decode` map digits to scaled latents and
    back, as in `optkit.zoo.ldm`.
    """

    latent_scale: torch.Tensor

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.x_embedder = nn.Conv2d(c.in_channels, c.dim, kernel_size=c.patch, stride=c.patch)
        self.t_embedder = TimestepEmbedder(c.dim)
        self.y_embedder = LabelEmbedder(c.num_classes, c.dim)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.dim, c.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([DiTBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_layer = FinalLayer(c.dim, c.patch, c.in_channels)
        self._init_weights()
        self.first_stage = Autoencoder(c.autoencoder)
        self.register_buffer("latent_scale", torch.ones(()))  # LDM's scale factor, set by train()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Digits (B, 1, R, R) in [-1, 1] -> scaled latents (B, c, R/2, R/2)."""
        return self.first_stage.encode(images) * self.latent_scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> digits clamped to [-1, 1]."""
        return self.first_stage.decode(z / self.latent_scale).clamp(-1, 1)

    def _init_weights(self) -> None:
        # Paper: xavier-uniform Linears, patch embedding like a Linear, N(0, 0.02) embeddings;
        # the adaLN modulations and the output Linear stay zero (adaLN-Zero).
        for name, module in self.named_modules():
            if (
                isinstance(module, nn.Linear)
                and "adaLN_modulation" not in name
                and name != "final_layer.linear"
            ):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.x_embedder.bias is not None:
            nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.fc1.weight, std=0.02)
        nn.init.normal_(self.t_embedder.fc2.weight, std=0.02)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G*G, p*p*C) tokens -> (B, C, G*p, G*p) image."""
        c, p, g = self.config.in_channels, self.config.patch, self.config.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)  # (B, G, G, p, p, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, g * p, g * p)  # (B, C, R, R)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # 1. Patchify and add the fixed positions.
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        # 2. Conditioning vector: timestep embedding + class embedding.
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        # 3. adaLN-Zero blocks.
        for block in self.blocks:
            h = block(h, c)  # (B, N, D)
        # 4. Final adaLN layer and back to pixels.
        return self.unpatchify(self.final_layer(h, c))  # (B, C, R, R)


def null_labels(cond: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The unconditional input of classifier-free guidance: every label set to the null class."""
    return null_condition(NULL_COND, cond)


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (z, t, y): Gaussian latents, t in [0, 1000), labels in 0..9."""
    cfg: DiTConfig = model.config  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen).float()
    y = torch.randint(0, cfg.num_classes, (batch,), generator=gen)
    return z, t, y


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train the first stage on the 4,000 training digits (`steps // 5` steps, as for `ldm`),
    then the DiT on their latents with the eps objective and 10% label dropout."""
    from optkit.zoo.ldm import train_class_latent

    cfg: DiTConfig = model.config  # type: ignore[assignment]
    return train_class_latent(model, settings, cfg.image_resolution, cfg.num_classes)


def evaluate(
    model: nn.Module, settings: EvalSettings, sampler: str = "ddim", sample_fn: SampleFn | None = None
) -> dict[str, float]:
    """Sample `num_samples` latents (see `optkit.zoo.ldm.sample_class_digits`; guidance 2),
    decode them and score the digits: FD-digits against the test split and the shipped
    classifier's accuracy on the labels. `sample_fn` replaces the plain sampler, so that a
    cached or quantized runner is scored the same way."""
    from optkit.zoo.data import digits
    from optkit.zoo.ldm import sample_class_digits

    cfg: DiTConfig = model.config  # type: ignore[assignment]
    latent_shape = (cfg.in_channels, cfg.resolution, cfg.resolution)
    samples, labels = sample_class_digits(
        model, settings, latent_shape, cfg.num_classes, GUIDANCE_SCALE, sampler, sample_fn
    )
    reference, _ = digits("test", resolution=cfg.image_resolution)
    return {
        "fd_digits": float(fd_digits(samples, reference)),
        "class_accuracy": float(class_accuracy(samples, labels)),
    }


register_model(
    ZooModel(
        name="dit",
        paper=PAPER,
        task="diffusion-image",
        configs={"tiny": DiTConfig.tiny(), "small": DiTConfig.small()},
        build=DiT,
        example_inputs=example_inputs,
        sampler="ddim",
        guidance_scale=GUIDANCE_SCALE,
        null_cond=NULL_COND,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=8000, batch_size=64),  # the shipped checkpoint's recipe
        extra={
            "data": "digits",
            "encode": encode,
            "decode": decode,
        },
    )
)
