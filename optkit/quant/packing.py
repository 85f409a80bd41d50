"""Int4 packing: two values per byte, first value in the low nibble.

That is ONNX's INT4/UINT4 layout for a row-major tensor, so a packed (K, N) weight is already the
byte image of an ONNX int4 initializer of shape (K, N).
"""

from __future__ import annotations

import torch

from optkit.errors import ConfigError


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack integer values in [-8, 7] (signed) or [0, 15] (unsigned) along the last axis (even)."""
    if q.shape[-1] % 2:
        raise ConfigError(f"int4 packing needs an even last dimension, got {tuple(q.shape)}")
    if q.min() < -8 or q.max() > 15:
        raise ConfigError(f"int4 values must lie in [-8, 15], got [{int(q.min())}, {int(q.max())}]")
    nibbles = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """Inverse of `pack_int4`: int16 values, the last axis twice as long."""
    low = (packed & 0xF).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    if signed:
        low = torch.where(low > 7, low - 16, low)
        high = torch.where(high > 7, high - 16, high)
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
