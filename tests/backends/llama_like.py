"""A tiny Llama-style causal LM with the ATen patterns of Hugging Face transformers' Llama export.

Llama (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language Models"): pre-norm
decoder blocks with RMSNorm, rotary position embeddings (RoPE), grouped-query attention (GQA,
Ainslie et al., 2023) and a SwiGLU MLP. Deviations, all on purpose, to reproduce what
`torch.export` captures from `transformers.LlamaForCausalLM` (5.x) without depending on it:

- the causal mask also separates packed sequences, found as in transformers' mask code by a
  `cumsum` over a bool tensor ("does a new sequence start here?"), which PyTorch promotes to int64;
- each attention layer starts from an empty key/value cache of shape `(0,)` (what `DynamicCache`
  holds before its first update) and concatenates the new 4-D keys and values onto it.

No weights ship: `llama_like()` builds it with a fixed seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, Dh)
        return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)
        # DynamicCache's state before its first update: 1-D and empty.
        self.register_buffer("past_keys", torch.empty(0), persistent=False)
        self.register_buffer("past_values", torch.empty(0), persistent=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, Dh)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([self.past_keys, k], dim=-2)  # torch.cat skips the 1-D empty tensor
        v = torch.cat([self.past_values, v], dim=-2)
        group = self.heads // self.kv_heads  # GQA: each key/value head serves `group` query heads
        k = k[:, :, None].expand(b, self.kv_heads, group, t, self.head_dim).reshape(b, self.heads, t, -1)
        v = v[:, :, None].expand(b, self.kv_heads, group, t, self.head_dim).reshape(b, self.heads, t, -1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = MLP(dim, hidden)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_packed_mask(positions: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: key <= query and both in the same packed sequence (positions restart)."""
    starts = torch.cat(
        [torch.ones_like(positions[:, :1], dtype=torch.bool), positions[:, 1:] - positions[:, :-1] != 1],
        dim=-1,
    )  # (B, T) bool
    seq = starts.cumsum(-1)  # (B, T) int64: PyTorch promotes the bool scan
    causal = positions[:, None, :] <= positions[:, :, None]  # (B, T, T)
    same = seq[:, :, None] == seq[:, None, :]
    return (causal & same)[:, None]


class LlamaLike(nn.Module):
    """input_ids (B, T) int64 -> logits (B, T, vocab)."""

    def __init__(
        self, vocab: int = 64, dim: int = 32, layers: int = 1, heads: int = 4, kv_heads: int = 2
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.rotary_emb = Rotary(dim // heads)
        self.layers = nn.ModuleList(Block(dim, heads, kv_heads, 2 * dim) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        x = self.embed_tokens(input_ids)  # (B, T, D)
        positions = torch.arange(t, device=input_ids.device)[None].expand(b, t)  # (B, T)
        mask = causal_packed_mask(positions)  # (B, 1, T, T)
        cos, sin = self.rotary_emb(positions)  # (B, T, Dh) each
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))  # (B, T, vocab)


def llama_like(seed: int = 0, batch: int = 1, tokens: int = 8) -> tuple[LlamaLike, tuple[torch.Tensor]]:
    """The tiny model in eval mode and an int64 (batch, tokens) input of token ids."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LlamaLike().eval()
    return model, (torch.randint(0, 64, (batch, tokens), generator=gen),)
