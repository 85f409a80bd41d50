"""Linear-cost attention baselines for distilling softmax attention: Hedgehog + sliding window, ReLU.

- `HedgehogSWA`: LoLCATs' recipe (Zhang et al., "LoLCATs: On Low-Rank Linearizing of Large
  Language Models", ICLR 2025), after Hedgehog (Zhang et al., ICLR 2024). Each query attends
  with exact softmax to the keys of its own window of `window` tokens and with a learned
  feature-map linear attention to every other key; both terms share one normaliser. The
  Hedgehog feature map is `phi(x) = [softmax(x W), softmax(-x W)]` per head, W starting at the
  identity.
- `ReLULinearAttention`: SANA's linear attention (Xie et al., "SANA: Efficient High-Resolution
  Image Synthesis with Linear Diffusion Transformers", ICLR 2025): `relu(Q) (relu(K)^T V)`
  over `relu(Q) sum_j relu(K_j)`.

Both take (B, N, D_in) tokens and return (B, N, D_out), own their Q/K/V/O projections (so the
`mate` pass can start them from a trained attention's weights) and cost O(N) in tokens.

Deviations: LoLCATs uses a causal sliding window over a text sequence; video tokens are not
causal, so windows here are non-overlapping blocks of `window` tokens in the stored order (the
token order is T-major, so a window covers neighbouring rows of one frame), and the
linear term covers all tokens outside the query's block. LoLCATs' learned factor between the two terms
is one positive gain per head.
"""

from __future__ import annotations

import torch
from torch import nn

from optkit.errors import ConfigError

_MAX_LOG_REST = 9.0


class _Projected(nn.Module):
    # Q/K/V/O projections shared by the baselines: (B, N, D_in) -> heads and back.
    def __init__(self, dim_in: int, dim_out: int, heads: int, head_dim: int) -> None:
        super().__init__()
        if heads <= 0 or head_dim <= 0:
            raise ConfigError(f"heads and head_dim must be positive, got {heads}, {head_dim}")
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q_proj = nn.Linear(dim_in, inner)
        self.k_proj = nn.Linear(dim_in, inner)
        self.v_proj = nn.Linear(dim_in, inner)
        self.o_proj = nn.Linear(inner, dim_out)

    def _heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        bsz, n, _ = x.shape
        return proj(x).reshape(bsz, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, Dh)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        bsz, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(bsz, n, self.heads * self.head_dim))  # (B, N, D_out)


class HedgehogSWA(_Projected):
    """Softmax attention inside blocks of `window` tokens plus Hedgehog linear attention to the
    rest, one normaliser for both. `forward(x (B, N, D_in)) -> (B, N, D_out)`; N must be a
    multiple of `window`."""

    def __init__(self, dim_in: int, dim_out: int, heads: int, head_dim: int, window: int) -> None:
        super().__init__(dim_in, dim_out, heads, head_dim)
        if window <= 0:
            raise ConfigError(f"window must be positive, got {window}")
        self.window = window
        eye = torch.eye(head_dim).expand(heads, head_dim, head_dim).clone()
        self.q_map = nn.Parameter(eye.clone())  # (h, Dh, Dh)
        self.k_map = nn.Parameter(eye)  # (h, Dh, Dh)
        self.log_gain = nn.Parameter(torch.zeros(heads))

    @staticmethod
    def _feature(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bhnd,hde->bhne", x, weight)  # (B, h, N, Dh)
        return torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1)  # (B, h, N, 2Dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, n, _ = x.shape
        w = self.window
        if n % w:
            raise ConfigError(f"token count {n} must be a multiple of the window {w}")
        q, k, v = (self._heads(p, x) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, h, N, Dh)
        nb, h, dh = n // w, self.heads, self.head_dim
        fq, fk = self._feature(q, self.q_map), self._feature(k, self.k_map)  # (B, h, N, F)
        gain = torch.exp(self.log_gain)[None, :, None, None]  # (1, h, 1, 1)
        # 1. Linear attention over all keys, then the own block's share taken out again.
        kv = torch.einsum("bhnf,bhnd->bhfd", fk, v)  # (B, h, F, Dh)
        lin_num = torch.einsum("bhnf,bhfd->bhnd", fq, kv)  # (B, h, N, Dh)
        lin_den = torch.einsum("bhnf,bhf->bhn", fq, fk.sum(2))  # (B, h, N)
        qb, kb, vb = (t.reshape(bsz, h, nb, w, -1) for t in (q, k, v))  # (B, h, nB, w, Dh)
        fqb, fkb = fq.reshape(bsz, h, nb, w, -1), fk.reshape(bsz, h, nb, w, -1)
        local = fqb @ fkb.transpose(-1, -2)  # (B, h, nB, w, w)
        lin_num = lin_num.reshape(bsz, h, nb, w, dh) - local @ vb  # (B, h, nB, w, Dh)
        lin_den = (lin_den.reshape(bsz, h, nb, w) - local.sum(-1)).clamp_min(0.0)  # (B, h, nB, w)
        # 2. Exact softmax inside the block, on the same scale as the linear term.
        scores = qb @ kb.transpose(-1, -2) * dh**-0.5  # (B, h, nB, w, w)
        # Shifted by the row max, the window term sums to >= 1, so the normaliser never vanishes;
        # the linear term's factor exp(-top) is capped at e^9 so that a row whose scores are all
        # very negative cannot blow up the (cancellation-prone) linear remainder.
        top = scores.max(dim=-1, keepdim=True).values.detach()  # (B, h, nB, w, 1)
        soft = torch.exp(scores - top)  # (B, h, nB, w, w)
        rest = torch.exp((-top).clamp(max=_MAX_LOG_REST)) * gain.unsqueeze(-1)  # (B, h, nB, w, 1)
        num = soft @ vb + rest * lin_num  # (B, h, nB, w, Dh)
        den = soft.sum(-1, keepdim=True) + rest * lin_den.unsqueeze(-1)  # (B, h, nB, w, 1)
        return self._merge((num / den).reshape(bsz, h, n, dh))


class ReLULinearAttention(_Projected):
    """SANA's ReLU linear attention. `forward(x (B, N, D_in)) -> (B, N, D_out)`."""

    def __init__(self, dim_in: int, dim_out: int, heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim_in, dim_out, heads, head_dim)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._heads(p, x) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, h, N, Dh)
        q, k = torch.relu(q), torch.relu(k)
        kv = torch.einsum("bhnd,bhne->bhde", k, v)  # (B, h, Dh, Dh)
        num = torch.einsum("bhnd,bhde->bhne", q, kv)  # (B, h, N, Dh)
        den = torch.einsum("bhnd,bhd->bhn", q, k.sum(2)).unsqueeze(-1)  # (B, h, N, 1)
        return self._merge(num / (den + self.eps))
