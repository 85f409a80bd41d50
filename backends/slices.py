"""Constant-index selections as slices, so that they fuse into the kernel that reads them.

PyTorch's `x[..., i]` (`aten.select`) imports as `take(x, i, axis)` with `i` a 0-d constant.
TOPI's `take` reads its index from memory at run time, so `FuseOps` treats it as opaque: every
selection is a kernel of its own that gathers its elements and writes a copy for the next kernel
to read. Interleaved rotary embeddings select each channel pair's two halves this way
(`x.reshape(..., -1, 2)[..., 0]`, as `zoo:moviegen` spells them): 32 `take`
kernels in `zoo:moviegen` at small size (0.63 of 14.4 ms in W8A8, Intel Xeon with AVX-512,
1 thread).

`constant_takes_as_slices` rewrites such a `take` as `strided_slice` + `reshape`, both injective,
which fuse into the elementwise kernel after them. `zoo:moviegen` at small size, compiled before
and after, timed in one process: 13.73 -> 13.16 ms in W8A8, 22.50 -> 21.80 ms in float,
bit-identical. The rotation kernel itself still reads each pair through `k // 2`, a per-lane
load in every vector lane (1.4 ms of the 13 before `cpu_schedules` tiled its transposed form).
"""

from __future__ import annotations

from typing import Any

from optkit.backends.relax_exprs import rewrite_calls, scalar_constant, static_shape


def constant_takes_as_slices(mod: Any) -> tuple[Any, int]:
    """`mod` with every `take` of one constant index along an axis replaced by a slice of that
    index, the axis dropped; returns (mod, number replaced)."""
    return rewrite_calls(mod, "relax.take", _as_slice)


def _as_slice(call: Any, builder: Any) -> Any:
    """`call` (a `take`) as `strided_slice` + `reshape`; None unless its index is one in-range
    constant along one axis (`take`'s mode decides the rest, left to it)."""
    import tvm
    from tvm import relax

    data, index = call.args
    shape, out_shape = static_shape(data), static_shape(call)
    value = scalar_constant(index)
    if (
        shape is None
        or out_shape is None
        or value is None
        or not isinstance(index, tvm.ir.expr.Constant)
        or len(index.value.shape) != 0
        or call.attrs.axis is None
    ):
        return None
    axis = int(call.attrs.axis) % len(shape)
    i = int(value)
    if not 0 <= i < shape[axis]:
        return None
    piece = builder.emit(relax.op.strided_slice(data, axes=[axis], begin=[i], end=[i + 1]))
    return relax.op.reshape(piece, out_shape)
