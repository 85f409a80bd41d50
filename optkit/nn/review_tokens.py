"""Review tokens: learned tokens inserted periodically into a scanned sequence.

Paper: Wang et al., "LinGen: Towards High-Resolution Minute-Length Text-to-Video Generation
with Linear Computational Complexity" (CVPR 2025). A Mamba state forgets with distance; LinGen
adds review tokens to the scanned sequence to help the scan recall long-range content.

Here a group of `num_tokens` learned tokens is inserted before every period of `period`
scanned tokens (MATE uses one period per slice of the outermost scan axis, e.g. before every
frame in T-major order). Each group is the learned embedding plus the mean of the whole
sequence (a linear-cost summary of the video), so every period starts with a reminder of the
global content. The tokens are removed again after the scan; their outputs are discarded.

Deviation: the paper's exact construction of review tokens is not reproduced; this is the
"learned tokens inserted periodically" reading, with the added global-mean summary.
"""

from __future__ import annotations

import torch
from torch import nn

from optkit.errors import ConfigError


class ReviewTokens(nn.Module):
    """Insert (`insert`) and remove (`remove`) `num_tokens` review tokens every `period` tokens.

    `insert(x (B, L, D), period) -> (B, L + (L / period) * num_tokens, D)`; `remove` inverts the
    layout. `L` must be a multiple of `period`. With `num_tokens == 0` both are the identity.
    """

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        if num_tokens < 0:
            raise ConfigError(f"num_tokens must be >= 0, got {num_tokens}")
        self.num_tokens = num_tokens
        self.tokens = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.summary = nn.Linear(dim, dim)

    def _periods(self, length: int, period: int) -> int:
        if period <= 0 or length % period:
            raise ConfigError(f"sequence length {length} must be a positive multiple of period {period}")
        return length // period

    def insert(self, x: torch.Tensor, period: int) -> torch.Tensor:
        """Sequence `x` (B, L, D) with a group of review tokens before every `period` tokens."""
        if self.num_tokens == 0:
            return x
        bsz, length, d = x.shape
        groups = self._periods(length, period)
        review = self.tokens + self.summary(x.mean(dim=1, keepdim=True))  # (B, R, D)
        review = review.unsqueeze(1).expand(bsz, groups, self.num_tokens, d)  # (B, G, R, D)
        x = torch.cat([review, x.reshape(bsz, groups, period, d)], dim=2)  # (B, G, R + P, D)
        return x.reshape(bsz, groups * (self.num_tokens + period), d)

    def remove(self, x: torch.Tensor, period: int) -> torch.Tensor:
        """Drop the review tokens `insert` added: (B, L + G*R, D) -> (B, L, D)."""
        if self.num_tokens == 0:
            return x
        bsz, total, d = x.shape
        groups = total // (self.num_tokens + period)
        x = x.reshape(bsz, groups, self.num_tokens + period, d)[:, :, self.num_tokens :]  # (B, G, P, D)
        return x.reshape(bsz, groups * period, d)
