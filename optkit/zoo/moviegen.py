"""Movie Gen–style video transformer (tiny): Llama blocks over 3D-patchified video, flow matching.

Paper: Polyak et al., "Movie Gen: A Cast of Media Foundation Models" (Meta, 2024), the Movie
Gen Video model. A (B, C, T, H, W) video is cut into (pt, ph, pw) patches; every block is
RMSNorm -> full spatio-temporal self-attention -> cross-attention to text -> RMSNorm -> SwiGLU
(the Llama 3 layout Movie Gen uses), and the model predicts the flow-matching velocity
`noise - x0` at x_s = (1 - s) x0 + s noise, with t = 1000 s (sampler `flow-euler`).

Deviations from the paper:
- Pixels, not the temporal autoencoder's latents; a tiny learned text encoder (embedding +
  one SwiGLU layer over token ids, 0 = null/padding) instead of UL2/ByT5/MetaCLIP.
- Positions: Movie Gen's factorized learnable (T, H, W) embeddings are added to the patch
  tokens, and attention also applies 3D RoPE (head pairs split over the T, H, W axes, cos/sin
  on real tensors).
- Timestep conditioning is adaLN-style (one shared MLP gives shift/scale/gate for every block,
  plus a learned per-block table, as in PixArt-α's adaLN-single); gates start at zero.
- Text padding is not masked: id 0 has a learned embedding that doubles as the null prompt.

`VideoTransformerConfig.mixer` selects the token mixer of every block: "attention" here, "mate"
for LinGen (optkit/zoo/lingen.py reuses these classes). `video_block(kind, dim, grid)` builds one
stand-alone block for benchmarks of cost against token count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.nn.mate import MATE, MateConfig
from optkit.sampling import SampleFn
from optkit.zoo.digits_metrics import class_accuracy, video_quality
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = "Movie Gen: A Cast of Media Foundation Models (Polyak et al., 2024)"
GUIDANCE_SCALE = 2.0
TRAIN_VIDEOS = 2000


@dataclass(frozen=True)
class VideoTransformerConfig:
    """Sizes of the video transformer; `mixer` is "attention" (Movie Gen) or "mate" (LinGen)."""

    in_channels: int = 1
    frames: int = 8
    resolution: int = 16
    patch: tuple[int, int, int] = (2, 2, 2)
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 8 / 3
    text_len: int = 4
    vocab_size: int = 11
    mixer: Literal["attention", "mate"] = "attention"
    mate: MateConfig = field(default_factory=MateConfig.tiny)

    def __post_init__(self) -> None:
        if self.mixer not in ("attention", "mate"):
            raise ConfigError(f"mixer must be 'attention' or 'mate', got {self.mixer!r}")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ConfigError(f"dim {self.dim} / heads {self.heads} must give an even head size")
        sizes = (self.frames, self.resolution, self.resolution)
        if len(self.patch) != 3 or any(p <= 0 or s % p for s, p in zip(sizes, self.patch, strict=True)):
            raise ConfigError(f"patch {self.patch} must divide (frames, H, W) = {sizes}")
        if self.vocab_size < 2 or self.text_len < 1:
            raise ConfigError(
                f"need vocab_size >= 2 and text_len >= 1, got {self.vocab_size}, {self.text_len}"
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        pt, ph, pw = self.patch
        return (self.frames // pt, self.resolution // ph, self.resolution // pw)

    @classmethod
    def tiny(cls, mixer: Literal["attention", "mate"] = "attention") -> VideoTransformerConfig:
        return cls(dim=64, depth=4, heads=4, mixer=mixer, mate=MateConfig.tiny())

    @classmethod
    def small(cls, mixer: Literal["attention", "mate"] = "attention") -> VideoTransformerConfig:
        return cls(dim=128, depth=8, heads=4, mixer=mixer, mate=MateConfig.small())


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, with an optional learned scale."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * self.weight if self.weight is not None else x


class SwiGLU(nn.Module):
    """Llama feed-forward: w2(silu(w1 x) * w3 x), hidden size a multiple of 8."""

    def __init__(self, dim: int, ratio: float = 8 / 3) -> None:
        super().__init__()
        hidden = 8 * math.ceil(dim * ratio / 8)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rope_3d_angles(grid: tuple[int, int, int], head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles (N, head_dim / 2) of 3D RoPE for a T-major (T, H, W) token grid.

    The head_dim/2 channel pairs are split over the axes (H and W get a third each, T the rest);
    pair k of an axis with K pairs rotates by position * base^(-k/K).
    """
    pairs = head_dim // 2
    per_axis = (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float32) for g in grid), indexing="ij")
    angles = []
    for pos, k in zip(coords, per_axis, strict=True):
        if k:
            freqs = base ** (-torch.arange(k, dtype=torch.float32) / k)  # (K,)
            angles.append(pos.reshape(-1, 1) * freqs)  # (N, K)
    return torch.cat(angles, dim=-1)  # (N, head_dim / 2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2k, 2k+1) of `x` (B, heads, N, Dh) by angles with `cos`/`sin` (N, Dh/2)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)  # (B, heads, N, Dh/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2)  # (B, heads, N, Dh)


class SelfAttention3D(nn.Module):
    """Full spatio-temporal multi-head self-attention with 3D RoPE on a fixed (T, H, W) grid."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, dim: int, heads: int, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        angles = rope_3d_angles(grid, dim // heads)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, n, d = x.shape
        q, k, v = self.qkv(x).reshape(bsz, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = apply_rope(q, self.rope_cos, self.rope_sin)  # (B, heads, N, Dh)
        k = apply_rope(k, self.rope_cos, self.rope_sin)  # (B, heads, N, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(bsz, n, d))


class CrossAttention(nn.Module):
    """Video tokens (queries) attend to text tokens (keys and values)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        bsz, n, d = x.shape
        q = self.q(x).reshape(bsz, n, self.heads, -1).transpose(1, 2)  # (B, heads, N, Dh)
        k, v = self.kv(text).reshape(bsz, text.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(bsz, n, d))


def make_mixer(
    kind: str, dim: int, heads: int, grid: tuple[int, int, int], layer_index: int, mate: MateConfig
) -> nn.Module:
    """The token mixer of block `layer_index`: full 3D attention or a LinGen MATE block."""
    if kind == "attention":
        return SelfAttention3D(dim, heads, grid)
    if kind == "mate":
        return MATE(dim, heads, grid, layer_index, mate)
    raise ConfigError(f"mixer must be 'attention' or 'mate', got {kind!r}")


class VideoBlock(nn.Module):
    """One Llama-style block with adaLN-style timestep modulation.

    `forward(x (B, N, D), mod (B, 6, D), text (B, L, D)) -> (B, N, D)`: `mod` is the shared
    timestep modulation, to which the block adds its own learned table.
    """

    def __init__(self, config: VideoTransformerConfig, layer_index: int) -> None:
        super().__init__()
        dim = config.dim
        self.norm1 = RMSNorm(dim, affine=False)
        self.mixer = make_mixer(config.mixer, dim, config.heads, config.grid, layer_index, config.mate)
        self.norm_cross = RMSNorm(dim)
        self.cross_attn = CrossAttention(dim, config.heads)
        self.norm2 = RMSNorm(dim, affine=False)
        self.mlp = SwiGLU(dim, config.mlp_ratio)
        self.modulation = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        with torch.no_grad():  # adaLN-Zero: the gates start at zero, the block as the identity
            self.modulation[2].zero_()
            self.modulation[5].zero_()

    def forward(self, x: torch.Tensor, mod: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.modulation).chunk(
            6, dim=1
        )  # (B, 1, D) each
        x = x + gate1 * self.mixer(self.norm1(x) * (1 + scale1) + shift1)  # (B, N, D)
        x = x + self.cross_attn(self.norm_cross(x), text)  # (B, N, D)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)  # (B, N, D)


class TextEncoder(nn.Module):
    """Token ids (B, L) -> text features (B, L, D): embedding, learned positions, one SwiGLU layer."""

    def __init__(self, vocab_size: int, length: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.mlp = SwiGLU(dim)
        self.norm = RMSNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos  # (B, L, D)
        return self.norm(h + self.mlp(h))  # (B, L, D)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of float timesteps t (B,) in [0, 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class VideoTransformer(nn.Module):
    """Flow-matching video denoiser: `forward(x (B, C, T, H, W), t (B,), text (B, L) int64) ->
    velocity (B, C, T, H, W)`. Blocks are `self.blocks[i]` (module path `blocks.i`)."""

    def __init__(self, config: VideoTransformerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        pt, ph, pw = cfg.patch
        patch_dim = cfg.in_channels * pt * ph * pw
        self.patch_embed = nn.Linear(patch_dim, cfg.dim)
        gt, gh, gw = cfg.grid
        self.pos_t = nn.Parameter(torch.randn(gt, cfg.dim) * 0.02)
        self.pos_h = nn.Parameter(torch.randn(gh, cfg.dim) * 0.02)
        self.pos_w = nn.Parameter(torch.randn(gw, cfg.dim) * 0.02)
        self.t_embed = nn.Sequential(nn.Linear(256, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        modulation = nn.Linear(cfg.dim, 6 * cfg.dim)
        self.t_modulation = nn.Sequential(nn.SiLU(), modulation)
        self.text_encoder = TextEncoder(cfg.vocab_size, cfg.text_len, cfg.dim)
        self.blocks = nn.ModuleList(VideoBlock(cfg, i) for i in range(cfg.depth))
        self.final_norm = RMSNorm(cfg.dim, affine=False)
        self.final_modulation = nn.Parameter(torch.randn(2, cfg.dim) / cfg.dim**0.5)
        self.head = nn.Linear(cfg.dim, patch_dim)
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for zeroed in (modulation, self.head):
            nn.init.zeros_(zeroed.weight)
            nn.init.zeros_(zeroed.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, C*pt*ph*pw), tokens T-major."""
        bsz, c = x.shape[:2]
        (pt, ph, pw), (gt, gh, gw) = self.config.patch, self.config.grid
        x = x.reshape(bsz, c, gt, pt, gh, ph, gw, pw).permute(
            0, 2, 4, 6, 1, 3, 5, 7
        )  # (B, gt, gh, gw, C, pt, ph, pw)
        return x.reshape(bsz, gt * gh * gw, c * pt * ph * pw)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C*pt*ph*pw) -> (B, C, T, H, W)."""
        bsz, c = x.shape[0], self.config.in_channels
        (pt, ph, pw), (gt, gh, gw) = self.config.patch, self.config.grid
        x = x.reshape(bsz, gt, gh, gw, c, pt, ph, pw).permute(
            0, 4, 1, 5, 2, 6, 3, 7
        )  # (B, C, gt, pt, gh, ph, gw, pw)
        return x.reshape(bsz, c, gt * pt, gh * ph, gw * pw)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # 1. Patch tokens plus factorized positions.
        pos = (
            self.pos_t[:, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]
        )  # (gt, gh, gw, D)
        h = self.patch_embed(self.patchify(x)) + pos.reshape(1, -1, self.config.dim)  # (B, N, D)
        # 2. Conditioning: timestep -> shared modulation; text ids -> text features.
        c = self.t_embed(timestep_embedding(t, 256))  # (B, D)
        mod = self.t_modulation(c).reshape(-1, 6, self.config.dim)  # (B, 6, D)
        text_features = self.text_encoder(text)  # (B, L, D)
        # 3. Blocks.
        for block in self.blocks:
            h = block(h, mod, text_features)  # (B, N, D)
        # 4. Modulated final norm and per-patch velocity.
        shift, scale = (self.final_modulation[None] + c[:, None]).chunk(2, dim=1)  # (B, 1, D) each
        out = self.head(self.final_norm(h) * (1 + scale) + shift)  # (B, N, C*pt*ph*pw)
        return self.unpatchify(out)


class SelfMixerBlock(nn.Module):
    """Stand-alone block for cost benchmarks: x + mixer(norm(x)), then x + SwiGLU(norm(x)).

    Leaves out cross-attention and timestep modulation (linear in N and identical for both
    mixer kinds), so the cost against token count is the mixer's.
    """

    def __init__(self, mixer: nn.Module, dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.mixer = mixer
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))  # (B, N, D)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


def video_block(
    kind: Literal["attention", "mate"],
    dim: int,
    grid: tuple[int, int, int],
    heads: int = 4,
    layer_index: int = 0,
    mate: MateConfig | None = None,
) -> SelfMixerBlock:
    """One block with full 3D attention (`kind="attention"`) or MATE (`"mate"`) on `grid`.

    `forward(x (B, T*H*W, D)) -> (B, T*H*W, D)`; time it as the grid grows to compare the
    quadratic and linear mixers (1K..64K tokens).
    """
    if len(grid) != 3 or min(grid) <= 0:
        raise ConfigError(f"grid must be three positive sizes (T, H, W), got {grid}")
    mixer = make_mixer(kind, dim, heads, (grid[0], grid[1], grid[2]), layer_index, mate or MateConfig.tiny())
    return SelfMixerBlock(mixer, dim)


def digit_prompt(labels: torch.Tensor, text_len: int) -> torch.Tensor:
    """Text token ids (B, text_len) for digit labels: id label+1 first, then padding id 0."""
    tokens = torch.zeros(labels.shape[0], text_len, dtype=torch.int64)
    tokens[:, 0] = labels.long() + 1
    return tokens


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (x, t, text) for `model`: noise video, t in [0, 1000), digit prompts."""
    cfg: VideoTransformerConfig = model.config  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.frames, cfg.resolution, cfg.resolution, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000.0
    labels = torch.randint(0, min(10, cfg.vocab_size - 1), (batch,), generator=gen)
    return x, t, digit_prompt(labels, cfg.text_len)


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train on `moving_digits` with the flow-matching objective; the prompt is the digit label."""
    from optkit.zoo.data import moving_digits
    from optkit.zoo.training import train_denoiser

    cfg: VideoTransformerConfig = model.config  # type: ignore[assignment]
    videos, labels = moving_digits(
        TRAIN_VIDEOS, frames=cfg.frames, resolution=cfg.resolution, seed=settings.seed
    )
    prompts = digit_prompt(labels, cfg.text_len)

    def batches(gen: torch.Generator, batch_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        idx = torch.randint(0, videos.shape[0], (batch_size,), generator=gen)
        return videos[idx], (prompts[idx],)

    def null_cond(cond: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (torch.zeros_like(cond[0]),)

    return train_denoiser(model, batches, settings, objective="flow", null_cond=null_cond)


def evaluate(model: nn.Module, settings: EvalSettings, sample_fn: SampleFn | None = None) -> dict[str, float]:
    """Sample digit videos with flow-euler (classifier-free guidance) and score them:
    `video_quality` against held-out moving digits, plus per-frame digit-class accuracy.

    `sample_fn` (same signature as `optkit.sampling.sample`) replaces the plain sampler, so
    that a cached or quantized runner is scored the same way."""
    from optkit.sampling import sample
    from optkit.zoo.data import moving_digits

    draw = sample_fn or sample

    cfg: VideoTransformerConfig = model.config  # type: ignore[assignment]
    model.eval()
    labels = torch.arange(settings.num_samples) % 10
    shape = (cfg.in_channels, cfg.frames, cfg.resolution, cfg.resolution)
    samples = []
    for start in range(0, settings.num_samples, settings.batch_size):
        lab = labels[start : start + settings.batch_size]
        text = digit_prompt(lab, cfg.text_len)
        with torch.no_grad():
            samples.append(
                draw(
                    model,
                    (lab.shape[0], *shape),
                    sampler="flow-euler",
                    steps=settings.steps,
                    seed=settings.seed + start,
                    cond=(text,),
                    uncond=(torch.zeros_like(text),),
                    guidance_scale=GUIDANCE_SCALE,
                )
            )
    videos = torch.cat(samples).clamp(-1, 1)  # (N, C, T, R, R)
    reference, _ = moving_digits(
        settings.num_samples, frames=cfg.frames, resolution=cfg.resolution, seed=settings.seed, split="test"
    )
    figures = {k: float(v) for k, v in video_quality(videos, reference).items()}
    frames = videos.permute(0, 2, 1, 3, 4).reshape(-1, cfg.in_channels, cfg.resolution, cfg.resolution)
    figures["frame_class_accuracy"] = float(class_accuracy(frames, labels.repeat_interleave(cfg.frames)))
    return figures


register_model(
    ZooModel(
        name="moviegen",
        paper=PAPER,
        task="diffusion-video",
        configs={"tiny": VideoTransformerConfig.tiny(), "small": VideoTransformerConfig.small()},
        build=VideoTransformer,
        example_inputs=example_inputs,
        sampler="flow-euler",
        guidance_scale=GUIDANCE_SCALE,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=1500, batch_size=64),  # the shipped checkpoint's recipe
        extra={"data": "moving_digits"},
    )
)
