"""Small built-in models for the foundation tests: each exercises one capture shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optkit.sampling import SamplerSpec
from optkit.workload import Diffusion, Workload


class ResidualNet(nn.Module):
    """A stem, two residual blocks (ResNet's basic block without BatchNorm), a strided one whose
    skip is a 1 x 1 conv, and a linear head: each block's output feeds the next block's conv and
    its skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
            for _ in range(2)
        )
        self.down = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)
        )
        self.skip = nn.Conv2d(16, 32, 1, stride=2)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x) + x)
        x = torch.relu(self.down(x) + self.skip(x))
        return self.head(x.mean(dim=(2, 3)))


class ConvNet(nn.Module):
    """Two conv blocks and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
            ]
        )
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """Masked multi-head self-attention written out as matmul + softmax."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, H, N, Dh)
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5  # (B, H, N, N)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ v  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TinyTransformer(nn.Module):
    """Pre-norm transformer blocks around `Attention`, plus one block using fused SDPA."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"norm": nn.LayerNorm(dim), "attn": Attention(dim)}) for _ in range(2)]
        )
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block["attn"](block["norm"](x), mask)
        q = k = v = x[:, None]  # (B, 1, N, D)
        x = x + F.scaled_dot_product_attention(q, k, v)[:, 0]
        return self.out(x)


class BagRecommender(nn.Module):
    """Embedding bags for sparse ids and an MLP over the pooled vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 8, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(8 + 4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.bag(ids), dense], dim=-1))


class DataDependent(nn.Module):
    """Branches in Python on a tensor value: torch.export cannot capture this."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def conv_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return ConvNet(), (torch.randn(2, 3, 8, 8),)


def residual_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return ResidualNet().eval(), (torch.randn(2, 3, 8, 8),)


def transformer() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return TinyTransformer(), (torch.randn(2, 6, 16), mask)


def recommender() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return BagRecommender(), (torch.randint(0, 50, (4, 3)), torch.randn(4, 4))


def data_dependent() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return DataDependent(), (torch.randn(2, 4),)


def outlier_mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Two Linears with weight outliers, as SVDQuant describes them: `fc1` has one input
    column 25x the others (it stretches every group it falls in), `fc2` one output row 25x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64)).eval()
    with torch.no_grad():
        model[0].weight[:, 5] *= 25.0
        model[2].weight[7, :] *= 25.0
    return model, (torch.randn(32, 64),)


def diffusion_workload(
    sampler: str = "ddim", guidance_scale: float = 1.0, null_cond: tuple[str, ...] = (), steps: int = 20
) -> Workload:
    """A Workload sampling a denoiser `(x, t, *cond)` with `sampler` for `steps` steps."""
    return Workload(diffusion=Diffusion(SamplerSpec(sampler), steps, guidance_scale, null_cond))


class SkipConcat(nn.Module):
    """A UNet's up-path join in miniature: an encoder feature (the skip) concatenated on channels
    with a decoder feature of a 50x larger range, and one 1x1 conv reading both."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(4, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 8, 3, padding=1)
        self.fuse = nn.Conv2d(16, 4, 1)
        with torch.no_grad():  # the skip channels count as much in the output as the others
            self.fuse.weight[:, 8:] *= 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)  # (B, 8, H, W)
        h = self.dec(skip) * 50.0  # (B, 8, H, W)
        return self.fuse(torch.cat([h, skip], dim=1))  # (B, 4, H, W)


def skip_concat() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return SkipConcat().eval(), (torch.randn(4, 4, 8, 8),)


class SharpAttention(nn.Module):
    """Self-attention with large query/key weights, so that the softmax is sharp and small errors
    in the scores move its output (the SQNR paper's softmax-input sensitivity)."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        with torch.no_grad():
            self.to_q.weight *= 4.0
            self.to_k.weight *= 4.0

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, Dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(x)), self._split(self.to_v(x))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.to_out(out.transpose(1, 2).reshape(x.shape))  # (B, N, D)


def sharp_attention() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return SharpAttention().eval(), (torch.randn(4, 16, 32),)


def tiny_dit_program():  # -> Program
    """A one-block DiT (dim 32) with random weights, captured, sampled by a CFG DDIM workload."""
    from optkit.ir.capture import capture
    from optkit.zoo.dit import DiT, DiTConfig

    model = DiT(DiTConfig(dim=32, depth=1, heads=2))
    for p in model.parameters():  # leave adaLN-Zero's identity start, so the output is not zero
        torch.nn.init.normal_(p, std=0.05)
    inputs = (torch.randn(2, 2, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([3, 7]))
    program = capture(model, inputs, name="dit-test")
    return program.with_workload(diffusion_workload(guidance_scale=2.0, null_cond=("fill:10",)))
