"""Fixtures for the block-caching tests: a small residual denoiser with blocks, and a sampler.

`TinyDenoiser` is a DiT-like stack of residual MLP-mixer blocks (`blocks.i`) with timestep and
class conditioning; random weights (scaled so that blocks move the stream). `sample_fn` is the
zoo's `sample` when it is installed, else a minimal DDIM / flow-Euler with the same signature.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optkit.ir.capture import capture
from optkit.ir.program import Program
from optkit.workload import Workload
from tests import models


class TinyBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mix = nn.Linear(16, 16)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        y = self.norm(h) * (1 + scale) + shift  # (B, N, D)
        y = y + self.mix(y.transpose(1, 2)).transpose(1, 2)  # (B, N, D)
        return h + 0.5 * self.mlp(y)  # (B, N, D)


class TinyDenoiser(nn.Module):
    """x (B, 1, 8, 8), t (B,), label (B,) int64 -> (B, 1, 8, 8); blocks at `blocks.i`."""

    def __init__(self, dim: int = 32, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(4, dim)
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(classes + 1, dim)
        self.blocks = nn.ModuleList(TinyBlock(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens = x.reshape(b, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 16, 4)  # (B, 16, 4)
        h = self.embed(tokens)  # (B, 16, D)
        freqs = torch.exp(
            -math.log(1000.0) * torch.arange(self.dim // 2, dtype=torch.float32) / (self.dim // 2)
        )
        args = t[:, None] * freqs  # (B, D/2)
        c = self.t_mlp(torch.cat([args.cos(), args.sin()], -1)) + self.label(label)  # (B, D)
        for block in self.blocks:
            h = block(h, c)  # (B, 16, D)
        out = self.head(h)  # (B, 16, 4)
        return out.reshape(b, 4, 4, 1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 1, 8, 8)


def _local_sample(
    denoiser, shape, *, sampler, steps, seed, cond=(), uncond=None, guidance_scale=1.0, observer=None
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)

    def predict(x, t):
        tt = torch.full((x.shape[0],), float(t))
        if uncond is None or guidance_scale == 1.0:
            return denoiser(x, tt, *cond)
        both = denoiser(
            torch.cat([x, x]), torch.cat([tt, tt]), *(torch.cat(p) for p in zip(cond, uncond, strict=True))
        )
        c, u = both.chunk(2)
        return u + guidance_scale * (c - u)

    if sampler == "flow-euler":
        s = torch.linspace(1.0, 0.0, steps + 1)
        for i in range(steps):
            x = x + (s[i + 1] - s[i]) * predict(x, 1000.0 * s[i])
        return x
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    ts = torch.linspace(999, 0, steps).round().long()
    for i, t in enumerate(ts):
        a = alphas[t]
        a_prev = alphas[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0)
        eps = predict(x, t)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.fixture(scope="session")
def sample_fn():
    try:
        from optkit.sampling import sample
    except ModuleNotFoundError:
        return _local_sample
    return sample


def capture_tiny_denoiser(workload: Workload | None = None, dim: int = 32, depth: int = 4) -> Program:
    """A seeded TinyDenoiser captured on (x, t, label) with `workload` (DDIM, 20 steps by default)."""
    torch.manual_seed(0)
    model = TinyDenoiser(dim, depth).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(2, 1, 8, 8, generator=gen),
        torch.rand(2, generator=gen) * 1000,
        torch.tensor([3, 7]),
    )
    program = capture(model, inputs, name="tiny-denoiser")
    return program.with_workload(workload or models.diffusion_workload())


@pytest.fixture(scope="session")
def tiny_denoiser_program():
    return capture_tiny_denoiser()
