"""Plain ViT image encoder with a SAM-style convolutional neck.

Papers: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021) for the encoder;
Kirillov et al., "Segment Anything" (ICCV 2023) for the neck; Xiong et al., "EfficientSAM:
Leveraged Masked Image Pretraining for Efficient Segment Anything" (CVPR 2024) use exactly this
pairing: a plain (non-windowed) ViT-Tiny/Small with learned absolute positions, followed by
conv1x1 -> LayerNorm2d -> conv3x3 -> LayerNorm2d down to the prompt decoder's width.

An image (B, C, R, R) is cut into p x p patches, embedded by a strided convolution, given a
learned position per patch and run through `depth` pre-norm blocks (LayerNorm -> multi-head
self-attention, LayerNorm -> GELU MLP, both residual). The neck returns a (B, out_dim, G, G)
feature map, G = R / p. Blocks live in `blocks` (an `nn.ModuleList`), so passes find them as
`<owner>.blocks.N`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, with a per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class SelfAttention(nn.Module):
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


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, N, D)


class ViTEncoder(nn.Module):
    """`forward(image (B, C, R, R)) -> features (B, out_dim, R/p, R/p)`.

    Patch embedding, learned absolute positions, `depth` ViT blocks, then the SAM neck.
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        out_dim: int,
    ) -> None:
        super().__init__()
        if patch <= 0 or resolution % patch:
            raise ConfigError(f"resolution {resolution} must be a positive multiple of patch {patch}")
        if dim % heads:
            raise ConfigError(f"encoder dim {dim} must be divisible by heads {heads}")
        self.grid = resolution // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.blocks = nn.ModuleList([ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_dim, kernel_size=1, bias=False),
            LayerNorm2d(out_dim),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_dim),
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2) + self.pos_embed  # (B, G*G, D)
        for block in self.blocks:
            x = block(x)  # (B, G*G, D)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)  # (B, D, G, G)
        return self.neck(x)  # (B, out_dim, G, G)
