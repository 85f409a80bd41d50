"""Weight quantizers: round-to-nearest and GPTQ's error-compensating rounding.

Both return a `QuantizedWeight` in the (K, N) layout of `optkit.quant.ops` — integer values,
scales and zero points per (group, output channel) — plus the dequantized float weight the
kernels will effectively compute with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optkit.errors import ConfigError
from optkit.quant.numerics import (
    QuantSpec,
    dequantize,
    group_view,
    num_groups,
    quantize,
    scale_zero,
    weight_ranges,
)
from optkit.quant.packing import pack_int4


@dataclass
class QuantizedWeight:
    """Integer weight (K, N) int16 values, scale and zero (G, N): G = ceil(K / group_size), 1 per-channel."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    spec: QuantSpec

    def dequantized(self) -> torch.Tensor:
        """The float (K, N) weight these integers stand for."""
        k = self.q.shape[0]
        rep = self.spec.group_size if self.spec.granularity == "group" else k
        return dequantize(
            self.q, self.scale.repeat_interleave(rep, 0)[:k], self.zero.repeat_interleave(rep, 0)[:k]
        )


def quantize_rtn(w_kn: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of a (K, N) weight with min-max ranges per unit of `spec`."""
    lo, hi = weight_ranges(w_kn, spec)
    scale, zero = scale_zero(lo, hi, spec)
    k, n = w_kn.shape
    q = quantize(group_view(w_kn, spec), scale, zero, spec).reshape(-1, n)[:k]  # drop padding rows

    def per_column(t: torch.Tensor) -> torch.Tensor:
        # tensor (1, 1), channel (1, N), group (G, 1, N) -> (G, N); a per-tensor value repeats.
        return t.reshape(-1, t.shape[-1]).expand(-1, n).clone()

    return QuantizedWeight(q, per_column(scale), per_column(zero), spec)


def quantize_gptq(
    w_kn: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, damp: float = 0.01
) -> QuantizedWeight:
    """GPTQ (Frantar et al. 2022): quantize input channels one at a time and spread each one's
    rounding error over the channels not yet quantized, weighted by the inverse Hessian
    `H = 2 X^T X` of the layer's calibration inputs (K, K).

    Group scales are fixed when the first channel of a group is reached, from the weights as
    updated so far (the paper's "static groups" off); a short last group (group size not
    dividing K) is handled like the others. Channels never activated in calibration are zeroed
    as in the reference algorithm.
    """
    if spec.granularity == "tensor":
        raise ConfigError("GPTQ needs per-channel or per-group scales, not per-tensor")
    k, n = w_kn.shape
    if hessian.shape != (k, k):
        raise ConfigError(f"Hessian of shape {tuple(hessian.shape)} does not match {k} input channels")
    if not 0.0 < damp < 1.0:
        raise ConfigError(f"damp must be in (0, 1), got {damp}")
    group = spec.group_size if spec.granularity == "group" else k
    block = group * max(1, 128 // group)
    w = w_kn.t().double().clone()  # (N, K): rows are output channels, columns input channels
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype)
    # 1. Upper Cholesky factor of H^-1 gives the update coefficients row by row.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(n, k, dtype=torch.int16)
    scales = torch.zeros(num_groups(k, group), n, dtype=torch.float64)
    zeros = torch.zeros(num_groups(k, group), n, dtype=torch.float64)
    unit = QuantSpec(spec.bits, spec.symmetric, "channel")
    for start in range(0, k, block):
        stop = min(start + block, k)
        w_blk = w[:, start:stop].clone()
        err_blk = torch.zeros_like(w_blk)
        for j in range(stop - start):
            col = start + j
            if col % group == 0:
                # 2. Scales for the group starting here, from the updated weights (a group
                # never crosses a block: blocks are whole numbers of groups; a short last
                # group ends with the block).
                g = w_blk[:, j : j + group]
                s, z = scale_zero(g.amin(1), g.amax(1), unit)
                scales[col // group], zeros[col // group] = s, z
            s, z = scales[col // group], zeros[col // group]
            # 3. Quantize this column and push its error onto the remaining columns of the block.
            qc = quantize(w_blk[:, j], s, z, unit)
            q[:, col] = qc
            err = (w_blk[:, j] - dequantize(qc, s, z).double()) / hinv[col, col]
            w_blk[:, j + 1 :] -= err[:, None] * hinv[col, col + 1 : stop][None, :]
            err_blk[:, j] = err
        # 4. Lazy batch update of the columns after the block.
        w[:, stop:] -= err_blk @ hinv[start:stop, stop:]
    return QuantizedWeight(q.t().contiguous(), scales.float(), zeros.float(), spec)


def pack_weight(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The buffers `optkit::linear_wq` reads: packed weight, scales, zero points."""
    spec = qw.spec
    if spec.bits == 4:
        packed = pack_int4(qw.q)
        zero = (
            torch.zeros_like(qw.scale, dtype=torch.int8)
            if spec.symmetric
            else pack_int4(qw.zero.round().to(torch.int16))
        )
    else:
        packed = qw.q.to(torch.int8) if spec.symmetric else (qw.q - 128).to(torch.int8)
        zero = (qw.zero.round() - (0 if spec.symmetric else 128)).to(torch.int8)
    return {"w_packed": packed, "w_scale": qw.scale.float(), "w_zero": zero}
