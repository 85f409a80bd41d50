"""Mamba2 with the SSD (state space duality) chunked algorithm, in pure PyTorch.

Paper: Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (ICML 2024). The selective SSM with scalar-times-identity state
matrix per head is

    h_t = exp(dt_t * A) h_{t-1} + dt_t * B_t x_t^T        y_t = C_t^T h_t + D x_t

`ssd_chunked` computes it for a whole sequence in chunks of `chunk_size` tokens with matmuls
only (the paper's "SSD algorithm", listing 1): (1) the quadratic, attention-like form inside
each chunk, (2) the state each chunk leaves behind, (3) the recurrence that passes states
between chunks, (4) the contribution of the incoming state to each chunk's outputs.
`ssd_sequential` is the token-by-token recurrence, kept as the reference the tests compare with.

Deviations from the paper:
- Step (3) passes states between chunks with the segment-sum matrix only inside blocks of
  SCAN_BLOCK chunks, and recursively between blocks, instead of one (num_chunks x num_chunks)
  matrix: the cost stays linear in the sequence length (times a log of the chunk count) and the
  captured graph has no token-level loop.
- One group of B/C shared by all heads (ngroups = 1), no initial state input, no state output.
- Sequences whose length is not a multiple of the chunk are zero-padded at the end (causal, so
  padding never changes earlier outputs) and cut back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError


@dataclass(frozen=True)
class Mamba2Config:
    """Sizes of one Mamba2 layer: `d_inner = expand * d_model` split in `d_inner / headdim` heads."""

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "chunk_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Mamba2Config.{name} must be positive, got {getattr(self, name)}")
        if (self.expand * self.d_model) % self.headdim:
            raise ConfigError(
                f"expand * d_model = {self.expand * self.d_model} must be a multiple of headdim {self.headdim}"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @classmethod
    def tiny(cls, d_model: int = 64) -> Mamba2Config:
        return cls(d_model=d_model, d_state=16, headdim=32, chunk_size=64)

    @classmethod
    def small(cls, d_model: int = 128) -> Mamba2Config:
        return cls(d_model=d_model, d_state=32, headdim=32, chunk_size=64)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of `a` (..., Q): out[..., i, j] = a[j+1] + ... + a[i] for j <= i, 0 above.

    The entries above the diagonal are 0 (not -inf); `exp(segsum(a))` must be multiplied by the
    lower-triangular mask, which keeps infinities out of the graph.
    """
    q = a.shape[-1]
    strict = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)  # (Q, Q), j < i
    spread = a.unsqueeze(-1).expand(*a.shape, q)  # (..., Q, Q): [i, j] = a[i]
    return torch.cumsum(spread * strict, dim=-2)  # (..., Q, Q): sum over j < k <= i


def ssd_chunked(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """SSD output for `x` (B, L, H, P) (already scaled by dt), log-decays `a` (B, L, H) (= dt * A),
    input projections `b` (B, L, N) and output projections `c` (B, L, N); returns (B, L, H, P).

    Works on chunks of `chunk_size` tokens with einsum / cumsum only; matches `ssd_sequential`.
    """
    if chunk_size <= 0:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
    bsz, length, heads, p = x.shape
    pad = (-length) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
        c = F.pad(c, (0, 0, 0, pad))
    nc, q = (length + pad) // chunk_size, chunk_size
    x = x.reshape(bsz, nc, q, heads, p)  # (B, C, Q, H, P)
    b = b.reshape(bsz, nc, q, -1)  # (B, C, Q, N)
    c = c.reshape(bsz, nc, q, -1)  # (B, C, Q, N)
    a = a.reshape(bsz, nc, q, heads).permute(0, 3, 1, 2)  # (B, H, C, Q)
    a_cum = torch.cumsum(a, dim=-1)  # (B, H, C, Q)
    lower = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()  # (Q, Q)

    # 1. Inside each chunk: masked "attention" C_i^T B_j with decay exp(a_{j+1} + ... + a_i).
    decay = torch.exp(segsum(a)) * lower  # (B, H, C, Q, Q)
    scores = torch.einsum("bcin,bcjn->bcij", c, b)  # (B, C, Q, Q)
    weights = scores.unsqueeze(1) * decay  # (B, H, C, Q, Q)
    y_diag = torch.einsum("bhcij,bcjhp->bcihp", weights, x)  # (B, C, Q, H, P)

    # 2. State each chunk leaves behind, starting from zero: sum_j exp(a_{j+1..end}) x_j B_j^T.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, H, C, Q)
    x_decayed = x * decay_to_end.permute(0, 2, 3, 1).unsqueeze(-1)  # (B, C, Q, H, P)
    states = torch.einsum("bcjn,bcjhp->bchpn", b, x_decayed)  # (B, C, H, P, N)

    # 3. Pass states between chunks: S_k = exp(sum a over chunk k) S_{k-1} + s_k, blocked scan.
    log_gain = a_cum[..., -1].permute(0, 2, 1)  # (B, C, H)
    states = _chunk_scan(states, log_gain)  # (B, C, H, P, N): state after chunk k
    incoming = F.pad(states, (0, 0, 0, 0, 0, 0, 1, 0))[:, :nc]  # (B, C, H, P, N): state before chunk k

    # 4. Incoming state read out at every position, decayed by exp(a_1 + ... + a_i).
    y_off = torch.einsum("bcin,bchpn->bcihp", c, incoming)  # (B, C, Q, H, P)
    y_off = y_off * torch.exp(a_cum).permute(0, 2, 3, 1).unsqueeze(-1)  # (B, C, Q, H, P)

    y = (y_diag + y_off).reshape(bsz, nc * q, heads, p)  # (B, L + pad, H, P)
    return y[:, :length]


# Chunk states are passed on in blocks of this many chunks (see `_chunk_scan`).
SCAN_BLOCK = 16


def _chunk_scan(states: torch.Tensor, log_gain: torch.Tensor) -> torch.Tensor:
    """Inclusive scan S_k = exp(g_k) S_{k-1} + s_k over dim 1 of `states` (B, C, H, P, N) with
    log-gains `log_gain` (B, C, H) <= 0, as SSD itself does it one level up.

    Up to SCAN_BLOCK chunks: one (C x C) decay matrix and a matmul. More: blocks of SCAN_BLOCK
    chunks are scanned that way, the state each block leaves behind is scanned recursively over
    the blocks, and each block's incoming state is added decayed. Cost C * SCAN_BLOCK per state
    entry on each of log_SCAN_BLOCK(C) levels; every level is a few matmuls, so the captured graph
    stays shallow (a doubling scan's chained elementwise steps fuse into one kernel whose inlined
    expression doubles with each step: TVM was still compiling it after 30 minutes at 16K tokens).
    """
    bsz, n = states.shape[:2]
    if n <= SCAN_BLOCK:
        gains = log_gain.transpose(1, 2)  # (B, H, C)
        lower = torch.ones(n, n, dtype=torch.bool, device=states.device).tril()  # (C, C)
        decay = torch.exp(segsum(gains)) * lower  # (B, H, C, C): [i, j] = exp(g_{j+1} + ... + g_i)
        return torch.einsum("bhij,bjhpn->bihpn", decay, states)  # (B, C, H, P, N)
    pad = (-n) % SCAN_BLOCK
    if pad:  # trailing chunks with no input and no decay never change earlier states
        states = F.pad(states, (0, 0, 0, 0, 0, 0, 0, pad))
        log_gain = F.pad(log_gain, (0, 0, 0, pad))
    m, k = (n + pad) // SCAN_BLOCK, SCAN_BLOCK
    blocks = states.reshape(bsz * m, k, *states.shape[2:])  # (B*M, K, H, P, N)
    gains = log_gain.reshape(bsz * m, k, -1)  # (B*M, K, H)
    local = _chunk_scan(blocks, gains).reshape(bsz, m, k, *states.shape[2:])  # (B, M, K, H, P, N)
    gains = gains.reshape(bsz, m, k, -1)  # (B, M, K, H)
    after = _chunk_scan(local[:, :, -1], gains.sum(2))  # (B, M, H, P, N): state after block m
    incoming = F.pad(after, (0, 0, 0, 0, 0, 0, 1, 0))[:, :m]  # (B, M, H, P, N): before block m
    reach = torch.exp(torch.cumsum(gains, dim=2))[..., None, None]  # (B, M, K, H, 1, 1)
    out = local + reach * incoming.unsqueeze(2)  # (B, M, K, H, P, N)
    return out.reshape(bsz, m * k, *states.shape[2:])[:, :n]


def ssd_sequential(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Reference: the SSM recurrence one token at a time (same arguments as `ssd_chunked`).

    A Python loop over tokens: for tests only, never for capture.
    """
    bsz, length, heads, p = x.shape
    h = x.new_zeros(bsz, heads, p, b.shape[-1])  # (B, H, P, N)
    ys = []
    for t in range(length):
        h = torch.exp(a[:, t])[..., None, None] * h + x[:, t, :, :, None] * b[:, t, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", h, c[:, t]))  # (B, H, P)
    return torch.stack(ys, dim=1)  # (B, L, H, P)


class GatedRMSNorm(nn.Module):
    """RMSNorm of `y * silu(z)` (Mamba2's norm before the output projection)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2(nn.Module):
    """One Mamba2 layer: in-projection, causal depthwise conv, selective SSM (SSD), gated norm,
    out-projection. `forward(u (B, L, D)) -> (B, L, D)`, causal in L, cost linear in L."""

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__()
        self.config = cfg = config
        conv_dim = cfg.d_inner + 2 * cfg.d_state
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_inner + conv_dim + cfg.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1)
        # dt initialised log-uniformly in [dt_min, dt_max] through the inverse softplus of its bias.
        dt = torch.exp(torch.rand(cfg.nheads) * math.log(cfg.dt_max / cfg.dt_min) + math.log(cfg.dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, cfg.nheads)))
        self.D = nn.Parameter(torch.ones(cfg.nheads))
        self.norm = GatedRMSNorm(cfg.d_inner)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        bsz, length, _ = u.shape
        # 1. One projection gives the gate z, the conv input (x, B, C) and dt.
        z, xbc, dt = torch.split(
            self.in_proj(u), [cfg.d_inner, cfg.d_inner + 2 * cfg.d_state, cfg.nheads], dim=-1
        )  # (B, L, Di), (B, L, Di + 2N), (B, L, H)
        # 2. Causal depthwise conv over the sequence, then SiLU.
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :length].transpose(1, 2))  # (B, L, Di + 2N)
        x, b, c = torch.split(xbc, [cfg.d_inner, cfg.d_state, cfg.d_state], dim=-1)
        # 3. Discretise: dt > 0 by softplus, A < 0 per head.
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H)
        a = -torch.exp(self.A_log) * dt  # (B, L, H)
        x = x.reshape(bsz, length, cfg.nheads, cfg.headdim)  # (B, L, H, P)
        # 4. SSD, skip connection D, gated norm, projection.
        y = ssd_chunked(x * dt.unsqueeze(-1), a, b, c, cfg.chunk_size)  # (B, L, H, P)
        y = y + x * self.D[:, None]  # (B, L, H, P)
        y = self.norm(y.reshape(bsz, length, cfg.d_inner), z)  # (B, L, Di)
        return self.out_proj(y)  # (B, L, D)


class BidirectionalMamba2(nn.Module):
    """Two Mamba2 layers, one reading the sequence forward and one backward; outputs summed.

    The backward layer runs on the flipped sequence and its output is flipped back, so every
    token sees the whole sequence (as LinGen's MA branch needs for non-causal video tokens).
    """

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__()
        self.forward_scan = Mamba2(config)
        self.backward_scan = Mamba2(config)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        back = self.backward_scan(torch.flip(u, dims=[1])).flip(dims=[1])  # (B, L, D)
        return self.forward_scan(u) + back  # (B, L, D)
