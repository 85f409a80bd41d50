"""Group self-attention: one self-attention over a sequence cut into named groups of tokens,
where a static table says which groups each group may attend to.

Paper: Lai et al., "Unleashing In-context Learning of Autoregressive Models for Few-shot Image
Manipulation" (InstaManip, CVPR 2025). Its group self-attention splits the prompt into a
*learning* group (instruction, exemplar images, manipulation tokens Z) and an *applying* group
(Z, query image, generation tokens) so that the generation tokens see the exemplars only
through Z. Here the split is expressed as data: a `GroupLayout` lists the groups in sequence
order with their sizes and, for each group, the groups its tokens attend to. The boolean mask
(True = may attend) is built once from these static sizes and stored as a buffer, so
`torch.export` captures it as a constant and the ONNX export carries it.

Deviation: inside a group attention is bidirectional (the paper's LLM backbone is causal inside
each group); `causal` groups are available for a token-by-token order inside a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError


@dataclass(frozen=True)
class GroupLayout:
    """Named token groups in sequence order and the attention rule between them.

    `groups` is ((name, size), ...) in sequence order; `sees[name]` lists the groups whose
    tokens the tokens of `name` may attend to (a group must list itself to attend within
    itself); `causal` names groups whose tokens attend inside the group only to themselves and
    earlier tokens.
    """

    groups: tuple[tuple[str, int], ...]
    sees: Mapping[str, tuple[str, ...]]
    causal: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [n for n, _ in self.groups]
        if len(set(names)) != len(names):
            raise ConfigError(f"group names must be unique, got {names}")
        bad_sizes = [(n, s) for n, s in self.groups if not isinstance(s, int) or s <= 0]
        if bad_sizes:
            raise ConfigError(f"group sizes must be positive ints, got {bad_sizes}")
        for name, seen in self.sees.items():
            unknown = [g for g in (name, *seen) if g not in names]
            if unknown:
                raise ConfigError(
                    f"attention rule {name!r} -> {seen} names unknown groups {unknown}; known: {names}"
                )
        missing = [n for n in names if n not in self.sees]
        if missing:
            raise ConfigError(f"every group needs an attention rule; missing for {missing}")
        for name in self.causal:
            if name not in names or name not in self.sees[name]:
                raise ConfigError(f"causal group {name!r} must be a group that attends to itself")

    @property
    def length(self) -> int:
        """Total number of tokens."""
        return sum(s for _, s in self.groups)

    def span(self, name: str) -> slice:
        """Token positions of group `name` in the sequence."""
        start = 0
        for n, s in self.groups:
            if n == name:
                return slice(start, start + s)
            start += s
        raise ConfigError(f"no group {name!r}; groups: {[n for n, _ in self.groups]}")


def group_attention_mask(layout: GroupLayout) -> torch.Tensor:
    """Boolean (L, L) mask of `layout`: entry [i, j] is True when token i may attend to token j."""
    n = layout.length
    mask = torch.zeros(n, n, dtype=torch.bool)
    for name, _ in layout.groups:
        rows = layout.span(name)
        for seen in layout.sees[name]:
            mask[rows, layout.span(seen)] = True
        if name in layout.causal:
            size = rows.stop - rows.start
            mask[rows, rows] = torch.ones(size, size, dtype=torch.bool).tril()
    return mask


def check_every_row_attends(mask: torch.Tensor, names: Sequence[str] = ()) -> None:
    """ConfigError if a row of `mask` attends to nothing (softmax over an empty set is NaN)."""
    empty = (~mask.any(dim=-1)).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"tokens {empty[:8]} attend to no token; every group must see at least one group {names}"
        )


class GroupSelfAttention(nn.Module):
    """Multi-head self-attention restricted by a fixed boolean group mask.

    `forward(x (B, L, D)) -> (B, L, D)` where L is the layout's length; the (L, L) mask is a
    non-persistent buffer (not in the state dict, rebuilt from the layout).
    """

    mask: torch.Tensor

    def __init__(self, dim: int, heads: int, layout: GroupLayout) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        mask = group_attention_mask(layout)
        check_every_row_attends(mask, [n for n, _ in layout.groups])
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, L, Dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=self.mask)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, L, D)
