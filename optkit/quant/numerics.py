"""Quantization numerics shared by the passes: integer grids, scales and zero points, rounding.

Conventions: a weight of a Linear layer is quantized in the (K, N) layout (input channels
first), because that is what both the int8 GEMM (`ops.int8_matmul(x_q (M, K), w_q (K, N))`) and
ONNX Runtime's int4 kernel (`MatMulNBits`, blocks along K) read. Groups run along K; a
"channel" is an output column N. Symmetric grids are signed (int8: -128..127, int4: -8..7)
with zero point 0; asymmetric grids are unsigned (0..255, 0..15) with a zero point.

When the group size does not divide K, the last group is short: the weight is quantized as if
its input channels were zero-padded to a multiple of the group size — exact, because every
range contains 0, so the padding changes no scale — and only the K real rows are stored. Scales
and zero points then have ceil(K / group_size) rows, and input channel k reads group
k // group_size: the layout of ONNX's blocked DequantizeLinear and of `MatMulNBits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from optkit.errors import ConfigError

Granularity = Literal["tensor", "channel", "group"]


# The largest |w| of 7-bit weights (`wbits=7`, stored as int8 on [-64, 63]) that int8 kernels
# rely on: a u8 x s8 pair sum (`vpmaddubsw`, ONNX Runtime's U8S8 on x86 without VNNI) is then at
# most 2 * 255 * 64 = 32640, inside int16
SEVEN_BIT_BOUND = 64


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: bit width, symmetry and granularity (group size along K)."""

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = "channel"
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.bits not in (4, 7, 8):
            raise ConfigError(f"bits must be 4, 7 or 8, got {self.bits}")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ConfigError(f"granularity must be tensor, channel or group, got {self.granularity!r}")
        if self.granularity == "group" and (self.group_size <= 0 or self.group_size % 8):
            raise ConfigError(f"group_size must be a positive multiple of 8, got {self.group_size}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def label(self) -> str:
        grain = {"tensor": "t", "channel": "c", "group": f"g{self.group_size}"}[self.granularity]
        return f"int{self.bits}{'s' if self.symmetric else 'a'}-{grain}"


def scale_zero(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map [lo, hi] (elementwise) onto `spec`'s grid.

    The range always contains 0 so that zero is represented exactly (padding, ReLU outputs).
    """
    lo = torch.minimum(lo, torch.zeros_like(lo)).float()
    hi = torch.maximum(hi, torch.zeros_like(hi)).float()
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        scale = amax / max(spec.qmax, 1)
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        zero = torch.round(spec.qmin - lo / torch.clamp(scale, min=1e-12)).clamp(spec.qmin, spec.qmax)
    scale = torch.clamp(scale, min=1e-8)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round `x / scale + zero` onto the grid (returns integer values in an int16 tensor)."""
    return torch.clamp(torch.round(x / scale) + zero, spec.qmin, spec.qmax).to(torch.int16)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """`(q - zero) * scale` in float32."""
    return (q.float() - zero) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize: the values a quantized kernel sees."""
    return dequantize(quantize(x, scale, zero, spec), scale, zero)


def num_groups(k: int, group_size: int) -> int:
    """Groups along K input channels: ceil(K / group_size) (the last one short when it does not divide)."""
    return -(-k // group_size)


def weight_ranges(w_kn: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of a (K, N) weight per quantization unit, broadcastable to `group_view(w_kn)`.

    tensor: (1, 1); channel: (1, N); group: (G, 1, N) against the weight viewed as
    (G, group_size, N), G = ceil(K / group_size), a short last group zero-padded.
    """
    if spec.granularity == "tensor":
        return w_kn.min().reshape(1, 1), w_kn.max().reshape(1, 1)
    if spec.granularity == "channel":
        return w_kn.amin(0, keepdim=True), w_kn.amax(0, keepdim=True)
    g = group_view(w_kn, spec)
    return g.amin(1, keepdim=True), g.amax(1, keepdim=True)


def group_view(w_kn: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """`w_kn` as (G, group_size, N) for group granularity, zero rows padding a short last
    group (unchanged for tensor and channel granularity)."""
    if spec.granularity != "group":
        return w_kn
    k = w_kn.shape[0]
    pad = num_groups(k, spec.group_size) * spec.group_size - k
    if pad:
        w_kn = torch.cat([w_kn, w_kn.new_zeros(pad, *w_kn.shape[1:])])
    return w_kn.reshape(-1, spec.group_size, *w_kn.shape[1:])


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = reference.double()
    noise = float(((ref - test.double()) ** 2).sum())
    signal = float((ref**2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * torch.log10(torch.tensor(max(signal, 1e-30) / noise)).item()
