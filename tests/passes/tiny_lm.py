"""A language model in miniature for the quantization tests (nanoGPT's layout, no attention).

Token embedding (vocab 1024) tied to the output head, two pre-norm MLP blocks of width 96 and
hidden 288: neither a multiple of 64 nor of 128, the widths that leave layers without whole
quantization groups. Deviation from a real LM: no attention (the tests are about Linear weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 3 * dim)
        self.fc2 = nn.Linear(3 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))  # (B, T, D)


class TinyLM(nn.Module):
    """Embedding -> blocks -> norm -> lm_head; `tied`: the head reads the embedding table."""

    def __init__(self, vocab: int = 1024, dim: int = 96, depth: int = 2, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))  # (B, T, vocab)


def tiny_lm(tied: bool = True) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return TinyLM(tied=tied), (torch.randint(0, 1024, (2, 8)),)


def lm_program(tied: bool = True):  # type: ignore[no-untyped-def]
    from optkit.ir.capture import capture

    model, inputs = tiny_lm(tied)
    return capture(model, inputs, name="tiny-lm")
