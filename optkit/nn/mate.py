"""MATE: LinGen's linear-cost replacement for self-attention over video tokens.

Paper: Wang et al., "LinGen: Towards High-Resolution Minute-Length Text-to-Video Generation
with Linear Computational Complexity" (CVPR 2025). MATE has two branches:

- MA branch (short-to-long range): tokens are rearranged into this layer's Rotary Major Scan
  order, review tokens are inserted before every slice of the outermost scan axis, a
  bidirectional Mamba2 (SSD) runs over the sequence, review tokens are dropped and the order
  is undone.
- TE branch (adjacent and medium-range temporal): TEmporal Swin Attention in spatio-temporal
  windows, shifted on odd layers.

Both branches see the same normalised input; their outputs are added. Every piece costs
O(N) in the number of tokens N = T*H*W (the Mamba chunk-state scan adds a log of the chunk
count on a term that is tiny next to the rest).

Deviations: branch outputs are summed without extra gating; the scan orders, review tokens and
window shape are the simplifications documented in `rotary_scan`, `review_tokens` and
`temporal_swin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.nn.mamba2 import BidirectionalMamba2, Mamba2Config
from optkit.nn.review_tokens import ReviewTokens
from optkit.nn.rotary_scan import inverse_rotary_major_scan, major_order, rotary_major_scan, scanned_grid
from optkit.nn.temporal_swin import TemporalSwinAttention


@dataclass(frozen=True)
class MateConfig:
    """Settings of a MATE block besides its width: Mamba2 sizes, review tokens, TESA window."""

    d_state: int = 16
    expand: int = 2
    headdim: int = 32
    chunk_size: int = 64
    review_tokens: int = 2
    window: tuple[int, int, int] = (4, 4, 4)

    def __post_init__(self) -> None:
        if self.review_tokens < 0:
            raise ConfigError(f"review_tokens must be >= 0, got {self.review_tokens}")
        if len(self.window) != 3 or min(self.window) <= 0:
            raise ConfigError(f"window must be three positive sizes (wt, wh, ww), got {self.window}")

    @classmethod
    def tiny(cls) -> MateConfig:
        return cls(d_state=16, headdim=32, chunk_size=64, review_tokens=2, window=(4, 4, 4))

    @classmethod
    def small(cls) -> MateConfig:
        return cls(d_state=32, headdim=32, chunk_size=64, review_tokens=4, window=(4, 4, 4))

    def mamba(self, dim: int) -> Mamba2Config:
        return Mamba2Config(
            d_model=dim,
            d_state=self.d_state,
            expand=self.expand,
            headdim=self.headdim,
            chunk_size=self.chunk_size,
        )


class MATE(nn.Module):
    """MA branch (bidirectional Mamba2 over the Rotary Major Scan order with review tokens) plus
    TE branch (Temporal Swin Attention), replacing self-attention on a (T, H, W) token grid.

    `forward(x (B, N, D)) -> (B, N, D)` with N = T*H*W tokens in T-major order. `layer_index`
    picks the scan order (rotating over layers) and whether TESA windows are shifted (odd).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int, int],
        layer_index: int,
        config: MateConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or MateConfig()
        self.grid: tuple[int, int, int] = (int(grid[0]), int(grid[1]), int(grid[2]))
        self.order = major_order(layer_index)
        # Review tokens go before every slice of the outermost scanned axis.
        self.period = (self.grid[0] * self.grid[1] * self.grid[2]) // scanned_grid(self.grid, self.order)[0]
        self.review = ReviewTokens(dim, config.review_tokens)
        self.mamba = BidirectionalMamba2(config.mamba(dim))
        self.tesa = TemporalSwinAttention(dim, heads, self.grid, config.window, shifted=layer_index % 2 == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MA branch: 1. rearrange, 2. add review tokens, 3. scan both ways, 4. undo 2 and 1.
        s = rotary_major_scan(x, self.grid, self.order)  # (B, N, D)
        s = self.review.insert(s, self.period)  # (B, N + G*R, D)
        s = self.mamba(s)  # (B, N + G*R, D)
        s = self.review.remove(s, self.period)  # (B, N, D)
        ma = inverse_rotary_major_scan(s, self.grid, self.order)  # (B, N, D)
        # TE branch: windowed attention across neighbouring frames.
        te = self.tesa(x)  # (B, N, D)
        return ma + te
