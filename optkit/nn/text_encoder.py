"""A tiny learned text encoder: token ids -> context tokens for a UNet's cross-attention.

Token embedding + learned absolute positions, one pre-norm transformer layer (self-attention
over the whole sequence, GELU MLP) and a final LayerNorm, in the manner of the CLIP / BERT
text encoders that latent diffusion models cross-attend to, shrunk to one layer. The zoo uses
it at character level (SceneTextGen: one token per glyph) and at word level (LEGO: action
descriptions). Id 0 is reserved by the callers for padding / the null prompt of classifier-free
guidance; it has a learned embedding like any other id and is not masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.nn.unet import Attention


class TextEncoder(nn.Module):
    """`forward(ids (B, L) int64) -> (B, L, dim)`; L must not exceed `max_length`."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if min(vocab_size, max_length, dim, heads, mlp_ratio) <= 0 or dim % heads:
            raise ConfigError(
                f"text encoder needs positive sizes and dim divisible by heads, got vocab {vocab_size}, "
                f"length {max_length}, dim {dim}, heads {heads}"
            )
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embed(ids.long()) + self.pos_embed[:, : ids.shape[1]]  # (B, L, D)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.norm_out(x)  # (B, L, D)
