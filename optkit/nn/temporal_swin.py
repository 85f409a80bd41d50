"""TEmporal Swin Attention (TESA): LinGen's TE branch.

Paper: Wang et al., "LinGen: Towards High-Resolution Minute-Length Text-to-Video Generation
with Linear Computational Complexity" (CVPR 2025), after Liu et al., "Swin Transformer" (ICCV
2021). Tokens attend only inside local spatio-temporal windows of `window = (wt, wh, ww)`
tokens, which are spatially small but span several frames, so the branch models the
correlations between adjacent tokens and medium-range temporal neighbours that a 1-D Mamba
scan loses. Odd layers shift the windows by half a window along every axis (cyclic shift with
the Swin attention mask, so wrapped-around tokens never attend to each other). The cost is
linear in the number of tokens: each token attends to wt*wh*ww others.

Deviations: no relative position bias (the backbone adds absolute positions); window sizes are
clipped to the grid, and each grid size must be a multiple of its window size.
"""

from __future__ import annotations

import torch
from torch import nn

from optkit.errors import ConfigError

_MASKED = -1e9


def _window_tokens(x: torch.Tensor, grid: tuple[int, int, int], window: tuple[int, int, int]) -> torch.Tensor:
    # (B, T, H, W, D) -> (B, nW, wt*wh*ww, D), windows in T-major order.
    bsz, d = x.shape[0], x.shape[-1]
    (t, h, w), (wt, wh, ww) = grid, window
    x = x.reshape(bsz, t // wt, wt, h // wh, wh, w // ww, ww, d)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T/wt, H/wh, W/ww, wt, wh, ww, D)
    return x.reshape(bsz, -1, wt * wh * ww, d)


def _merge_windows(x: torch.Tensor, grid: tuple[int, int, int], window: tuple[int, int, int]) -> torch.Tensor:
    # Inverse of _window_tokens: (B, nW, wt*wh*ww, D) -> (B, T, H, W, D).
    bsz, d = x.shape[0], x.shape[-1]
    (t, h, w), (wt, wh, ww) = grid, window
    x = x.reshape(bsz, t // wt, h // wh, w // ww, wt, wh, ww, d)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, T/wt, wt, H/wh, wh, W/ww, ww, D)
    return x.reshape(bsz, t, h, w, d)


def shifted_window_mask(
    grid: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]
) -> torch.Tensor:
    """Additive attention mask (nW, Wn, Wn) for cyclically shifted windows: 0 between tokens of
    the same region of the unshifted grid, a large negative value between different regions."""
    labels = torch.zeros(grid, dtype=torch.float32)
    for axis in range(3):
        size, win, s = grid[axis], window[axis], shift[axis]
        region = torch.zeros(size)
        if s:
            region[size - win : size - s] = 1
            region[size - s :] = 2
        labels = labels * 3 + region.reshape([-1 if i == axis else 1 for i in range(3)])
    windows = _window_tokens(labels[None, ..., None], grid, window)[0, :, :, 0]  # (nW, Wn)
    differ = windows[:, :, None] != windows[:, None, :]  # (nW, Wn, Wn)
    return differ.float() * _MASKED


class TemporalSwinAttention(nn.Module):
    """Multi-head attention inside (shifted) spatio-temporal windows of a (T, H, W) token grid.

    `forward(x (B, T*H*W, D)) -> (B, T*H*W, D)`, tokens in T-major order. `shifted` selects the
    half-window cyclic shift (LinGen and Swin use it on every other layer).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int, int],
        window: tuple[int, int, int] = (4, 4, 4),
        shifted: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim {dim} must be a multiple of heads {heads}")
        if len(grid) != 3 or len(window) != 3 or min(grid) <= 0 or min(window) <= 0:
            raise ConfigError(f"grid and window must be three positive sizes, got {grid}, {window}")
        self.grid: tuple[int, int, int] = (int(grid[0]), int(grid[1]), int(grid[2]))
        self.window: tuple[int, int, int] = (
            min(int(window[0]), self.grid[0]),
            min(int(window[1]), self.grid[1]),
            min(int(window[2]), self.grid[2]),
        )
        for g, w in zip(self.grid, self.window, strict=True):
            if g % w:
                raise ConfigError(
                    f"grid {self.grid} must be a multiple of the window {self.window} on every axis"
                )
        self.heads = heads
        half = [w // 2 if shifted and w < g else 0 for w, g in zip(self.window, self.grid, strict=True)]
        self.shift: tuple[int, int, int] = (half[0], half[1], half[2])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if any(self.shift):
            self.register_buffer(
                "mask", shifted_window_mask(self.grid, self.window, self.shift), persistent=False
            )
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, n, d = x.shape
        t, h, w = self.grid
        if n != t * h * w:
            raise ConfigError(f"expected {t * h * w} tokens for grid {self.grid}, got {n}")
        x = x.reshape(bsz, t, h, w, d)  # (B, T, H, W, D)
        # 1. Shift the grid so that odd layers' windows straddle the even layers' borders.
        if any(self.shift):
            x = torch.roll(x, shifts=tuple(-s for s in self.shift), dims=(1, 2, 3))
        # 2. Attention inside each window.
        win = _window_tokens(x, self.grid, self.window)  # (B, nW, Wn, D)
        nw, wn = win.shape[1], win.shape[2]
        qkv = self.qkv(win).reshape(bsz, nw, wn, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # 3 x (B, nW, heads, Wn, Dh)
        scores = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5  # (B, nW, heads, Wn, Wn)
        if self.mask is not None:
            scores = scores + self.mask[:, None]
        out = scores.softmax(dim=-1) @ v  # (B, nW, heads, Wn, Dh)
        out = out.transpose(2, 3).reshape(bsz, nw, wn, d)  # (B, nW, Wn, D)
        # 3. Back to the grid, undo the shift, project.
        x = _merge_windows(out, self.grid, self.window)  # (B, T, H, W, D)
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2, 3))
        return self.proj(x.reshape(bsz, n, d))
