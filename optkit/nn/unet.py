"""A small diffusion UNet: ResBlocks with timestep injection, SpatialTransformers, skip connections.

The layout follows the UNet of latent diffusion (Rombach et al., "High-Resolution Image
Synthesis with Latent Diffusion Models", CVPR 2022; its `openaimodel.py` descends from Dhariwal
& Nichol's ADM): an input convolution, a down path of layers (a ResBlock, optionally followed by
a SpatialTransformer, or a strided-conv downsampler), a middle of ResBlock + SpatialTransformer
+ ResBlock, and an up path whose layers concatenate the matching skip activation before their
ResBlock and end a level with a nearest-neighbour upsampler.

- ResBlock: GroupNorm -> SiLU -> conv3x3, plus a Linear of the timestep embedding added per
  channel, GroupNorm -> SiLU -> conv3x3 (zero-initialized), and a 1x1 skip when channels change.
- SpatialTransformer: GroupNorm -> 1x1 projection to tokens -> [LayerNorm -> self-attention,
  LayerNorm -> cross-attention over the context sequence, LayerNorm -> GEGLU MLP] -> 1x1
  projection back (zero-initialized) -> residual.

Deviations from the LDM UNet: no dropout, no scale-shift norm, no `use_checkpoint`; the middle
has a single SpatialTransformer (as in LDM) but the channel counts are tiny; attention uses
`scaled_dot_product_attention`.

Every layer is a `UNetLayer` in one of three `nn.ModuleList`s, so module paths are stable and
the caching and sensitivity passes find them as blocks: `down.N`, `mid.N`, `up.N`. A layer's
forward is `(h, temb, context) -> h`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of a UNet; level i works at 1/2**i of the input resolution with channels * channel_mult[i].

    `attention_levels` lists the levels whose layers end with a SpatialTransformer (the middle
    always has one); `context_dim` is the width of the cross-attention context tokens.
    """

    in_channels: int = 4
    out_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    heads: int = 4
    context_dim: int = 64
    groups: int = 8
    ff_mult: int = 2

    def __post_init__(self) -> None:
        if min(self.in_channels, self.out_channels, self.channels, self.num_res_blocks, self.ff_mult) <= 0:
            raise ConfigError(f"channel counts, num_res_blocks and ff_mult must be positive, got {self}")
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ConfigError(f"channel_mult must be non-empty positive ints, got {self.channel_mult}")
        for level in self.attention_levels:
            if not 0 <= level < len(self.channel_mult):
                raise ConfigError(
                    f"attention level {level} is out of range; levels are 0..{len(self.channel_mult) - 1}"
                )
        for width in {self.channels * m for m in self.channel_mult}:
            if width % self.groups or width % self.heads:
                raise ConfigError(
                    f"every level width ({width}) must be divisible by groups {self.groups} "
                    f"and heads {self.heads}"
                )
        if self.channels % 2:
            raise ConfigError(f"channels must be even (sinusoidal timestep features), got {self.channels}")

    @property
    def downsample_factor(self) -> int:
        """How many times smaller the coarsest level is than the input (inputs must divide by it)."""
        return 2 ** (len(self.channel_mult) - 1)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero (in place) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of float timesteps t (B,) in [0, 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)  # (dim/2,)
    angles = t.float().reshape(-1, 1) * freqs  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=1)  # (B, dim)


class TimestepMLP(nn.Module):
    """Sinusoidal features of t -> Linear -> SiLU -> Linear (width 4 x channels, as in LDM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(channels, 4 * channels)
        self.fc2 = nn.Linear(4 * channels, 4 * channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(timestep_embedding(t, self.channels))))  # (B, 4C)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-conv3x3 stages with the timestep embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # LDM zero-initializes the last conv: every ResBlock starts as its skip path.
        zero_module(self.conv2)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Co, H, W)
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h  # (B, Co, H, W)


class Attention(nn.Module):
    """Multi-head attention of queries (B, N, D) over a context (B, M, Dc); self-attention when
    no context is given. Bias-free q, k, v projections as in LDM."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        kv_dim = context_dim if context_dim is not None else dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, Dh)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(ctx)), self._split(self.to_v(ctx))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.to_out(out.transpose(1, 2).reshape(x.shape))  # (B, N, D)


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit: (x W1) * GELU(x W2) -> W3."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # 2 x (B, N, mult*D)
        return self.out(value * F.gelu(gate))  # (B, N, D)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention over the context, GEGLU MLP; each residual."""

    def __init__(self, dim: int, heads: int, context_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim, ff_mult)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, N, D)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Feature map (B, C, H, W) -> H*W tokens -> TransformerBlock -> back, added to the input."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int, ff_mult: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer = TransformerBlock(channels, heads, context_dim, ff_mult)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        zero_module(self.proj_out)  # starts as the identity, as in LDM

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H*W, C)
        tokens = self.transformer(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))  # (B, C, H, W)


class Downsample(nn.Module):
    """Strided 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class UNetLayer(nn.Module):
    """One entry of `down`, `mid` or `up`: optional ResBlock, SpatialTransformer and resampler,
    applied in that order (the `TimestepEmbedSequential` of LDM)."""

    def __init__(
        self,
        res: ResBlock | None = None,
        attn: SpatialTransformer | None = None,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res = res
        self.attn = attn
        self.resample = resample

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.res is not None:
            h = self.res(h, temb)
        if self.attn is not None:
            h = self.attn(h, context)
        if self.resample is not None:
            h = self.resample(h)
        return h


class UNet(nn.Module):
    """Diffusion UNet: `forward(x (B, Cin, H, W), t (B,), context (B, M, Dc)) -> (B, Cout, H, W)`.

    `t` is the DDPM timestep index as a float in [0, 1000). H and W must be divisible by
    `unet_config.downsample_factor`. Model wrappers that embed their own conditions (labels, text,
    images) subclass this and call `denoise(x, t, context)`.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.unet_config = config  # subclasses keep their own `config` (the zoo entry's dataclass)
        c = config
        temb_dim = 4 * c.channels

        def transformer(width: int) -> SpatialTransformer:
            return SpatialTransformer(width, c.heads, c.context_dim, c.groups, c.ff_mult)

        self.time_embed = TimestepMLP(c.channels)
        self.conv_in = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        # 1. Down path: remember the width of every activation that becomes a skip.
        self.down = nn.ModuleList()
        skips = [c.channels]
        ch = c.channels
        last = len(c.channel_mult) - 1
        for level, mult in enumerate(c.channel_mult):
            width = c.channels * mult
            for _ in range(c.num_res_blocks):
                attn = transformer(width) if level in c.attention_levels else None
                self.down.append(UNetLayer(ResBlock(ch, width, temb_dim, c.groups), attn))
                ch = width
                skips.append(ch)
            if level != last:
                self.down.append(UNetLayer(resample=Downsample(ch)))
                skips.append(ch)
        # 2. Middle: ResBlock + SpatialTransformer, then ResBlock.
        self.mid = nn.ModuleList(
            [
                UNetLayer(ResBlock(ch, ch, temb_dim, c.groups), transformer(ch)),
                UNetLayer(ResBlock(ch, ch, temb_dim, c.groups)),
            ]
        )
        # 3. Up path: num_res_blocks + 1 layers per level, each eating one skip.
        self.up = nn.ModuleList()
        for level in reversed(range(len(c.channel_mult))):
            width = c.channels * c.channel_mult[level]
            for i in range(c.num_res_blocks + 1):
                res = ResBlock(ch + skips.pop(), width, temb_dim, c.groups)
                attn = transformer(width) if level in c.attention_levels else None
                resample = Upsample(width) if level != 0 and i == c.num_res_blocks else None
                self.up.append(UNetLayer(res, attn, resample))
                ch = width
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)
        zero_module(self.conv_out)  # the untrained model predicts zero, as in LDM

    def denoise(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet proper on an already embedded context (B, M, context_dim)."""
        temb = self.time_embed(t)  # (B, 4C)
        h = self.conv_in(x)  # (B, C, H, W)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb, context)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, temb, context)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), temb, context)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, Cout, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, t, context)
