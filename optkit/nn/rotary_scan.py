"""Rotary Major Scan: the token orders LinGen's MA branch scans a video in.

Paper: Wang et al., "LinGen: Towards High-Resolution Minute-Length Text-to-Video Generation
with Linear Computational Complexity" (CVPR 2025). A Mamba scan is one-dimensional, so tokens
that are neighbours in the (T, H, W) grid can end up far apart in the scanned sequence. Rotary
Major Scan changes the scan order from layer to layer so that, over a few layers, every axis of
the grid is the innermost (adjacent-in-sequence) axis once; the rearrangement is a transpose,
almost free next to the scan itself.

The orders used here are the three cyclic rotations of (T, H, W), read outermost first:
`thw` (T-major: frame after frame, rows inside), `hwt` (H-major: each pixel's time series is
contiguous) and `wth` (W-major: columns contiguous). Layer `i` uses order `i mod 3`.

Deviation: the paper rotates among its own set of major orders (spatial row/column majors for
images, plus temporal majors for video); this module rotates among the three cyclic axis
orders, which gives every axis one layer in which it is innermost.
"""

from __future__ import annotations

import torch

from optkit.errors import ConfigError

AXES = "thw"
MAJOR_ORDERS: tuple[str, ...] = ("thw", "hwt", "wth")


def major_order(layer_index: int) -> str:
    """The scan order layer `layer_index` uses: rotates through `MAJOR_ORDERS`."""
    if layer_index < 0:
        raise ConfigError(f"layer_index must be >= 0, got {layer_index}")
    return MAJOR_ORDERS[layer_index % len(MAJOR_ORDERS)]


def _axes(order: str) -> tuple[int, int, int]:
    if sorted(order) != sorted(AXES):
        raise ConfigError(f"scan order must be a permutation of 'thw', got {order!r}")
    return tuple(AXES.index(ch) for ch in order)  # type: ignore[return-value]


def _check(x: torch.Tensor, grid: tuple[int, int, int]) -> None:
    if len(grid) != 3 or min(grid) <= 0:
        raise ConfigError(f"grid must be three positive sizes (T, H, W), got {grid}")
    if x.dim() != 3 or x.shape[1] != grid[0] * grid[1] * grid[2]:
        raise ConfigError(
            f"expected tokens (B, {grid[0] * grid[1] * grid[2]}, D) for grid {grid}, got {tuple(x.shape)}"
        )


def scanned_grid(grid: tuple[int, int, int], order: str) -> tuple[int, int, int]:
    """Sizes of the grid axes in scan order (outermost first)."""
    return tuple(grid[i] for i in _axes(order))  # type: ignore[return-value]


def rotary_major_scan(x: torch.Tensor, grid: tuple[int, int, int], order: str) -> torch.Tensor:
    """Rearrange tokens `x` (B, T*H*W, D), stored T-major, into the scan order `order`.

    `order` names the grid axes outermost first (`"hwt"`: H outermost, T innermost). The result
    is (B, N, D) with the same tokens, permuted; `inverse_rotary_major_scan` undoes it.
    """
    _check(x, grid)
    bsz, n, d = x.shape
    perm = _axes(order)
    x = x.reshape(bsz, *grid, d).permute(0, perm[0] + 1, perm[1] + 1, perm[2] + 1, 4)  # (B, A0, A1, A2, D)
    return x.reshape(bsz, n, d)


def inverse_rotary_major_scan(x: torch.Tensor, grid: tuple[int, int, int], order: str) -> torch.Tensor:
    """Undo `rotary_major_scan`: tokens in scan order `order` (B, N, D) back to T-major order."""
    _check(x, grid)
    bsz, n, d = x.shape
    perm = _axes(order)
    inverse = [perm.index(i) for i in range(3)]
    x = x.reshape(bsz, *scanned_grid(grid, order), d)  # (B, A0, A1, A2, D)
    x = x.permute(0, inverse[0] + 1, inverse[1] + 1, inverse[2] + 1, 4)  # (B, T, H, W, D)
    return x.reshape(bsz, n, d)


def scan_permutation(grid: tuple[int, int, int], order: str) -> torch.Tensor:
    """Index tensor `p` (N,) with `rotary_major_scan(x)[:, k] == x[:, p[k]]` (for analysis/tests)."""
    index = torch.arange(grid[0] * grid[1] * grid[2], dtype=torch.float32).reshape(1, -1, 1)
    return rotary_major_scan(index, grid, order).reshape(-1).long()
