"""Constant pads moved below the elementwise ops and transposes that follow them.

A W8A8 conv pads its input in the integer domain (`quantized.py`: quantize, pad the centered
values with 0, add the zero point back, cast to int8, and in channels-last a transpose back to
NHWC), so its input is bound to a chain that ends in those ops, not to the pad. `sink_pads`
rewrites `f(pad(x, v))` into `pad(f(x), f(v))` for every such `f` (an elementwise op whose
other operands are scalar constants, a cast, a transpose with the widths permuted), so that the
pad is the last op before the conv. There the VNNI conv takes it into its im2col
(`packing._vnni_conv`), and the ops before it compute on the unpadded image: they fuse into the
previous GEMM's write-back (`epilogues.py`) instead of forming a kernel of their own that reads
the float image and writes a padded uint8 copy. W8A8 ResNet-18 (batch 8, 112 x 112, Intel
Xeon with AVX-512 VNNI, 1 thread): 20.7 -> 19.6 ms, bit-identical (kernel profiles of the two
builds; its RGB stem in int8, `vnni.im2col_rows`, took it to 18.0 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from optkit.backends.relax_exprs import (
    exact_cast,
    relax_op,
    rewrite_calls,
    scalar_value,
    static_shape,
    use_counts,
)

# Elementwise ops with one tensor operand and scalar others, and their value on scalars.
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
}
_FLOAT_ONLY: dict[str, Callable[[Any, Any], Any]] = {
    "relax.divide": np.divide  # integer division rounds differently in TVM and numpy
}


def sink_pads(mod: Any) -> tuple[Any, int]:
    """`mod` with constant pads sunk below the ops that follow them (module docstring); returns
    (mod, number of ops a pad moved below)."""
    from tvm import relax

    pad_op = relax_op("relax.nn.pad")
    uses: dict[Any, int] = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            uses.update(use_counts(func))

    def sink(call: Any, builder: Any) -> Any:
        slot = _tensor_slot(call)
        if slot is None:
            return None
        x = call.args[slot]
        pad = builder.lookup_binding(x) if isinstance(x, relax.Var) else None
        if (
            not isinstance(pad, relax.Call)
            or pad.op != pad_op
            or str(pad.attrs.pad_mode) != "constant"
            or uses.get(x, 0) != 1
        ):
            return None
        sunk = _sunk(call, slot, pad, builder.lookup_binding)
        if sunk is None:
            return None
        inner, widths, value = sunk
        return relax.op.nn.pad(builder.emit(inner), widths, "constant", value)

    ops = ("relax.astype", "relax.round", "relax.permute_dims", *_BINARY, *_FLOAT_ONLY)
    mod, moved = rewrite_calls(mod, ops, sink)
    return relax.transform.DeadCodeElimination()(mod), moved


def _tensor_slot(call: Any) -> int | None:
    """The argument of `call` a pad can sink through: the tensor of a cast, rounding or transpose,
    or the one non-scalar operand of an elementwise op in `_BINARY` / `_FLOAT_ONLY`."""
    from tvm import relax

    name = str(getattr(call.op, "name", ""))
    if name in ("relax.astype", "relax.round", "relax.permute_dims"):
        return 0
    if name not in _BINARY and name not in _FLOAT_ONLY:
        return None
    tensors = [
        i for i, arg in enumerate(call.args) if isinstance(arg.ty, relax.TensorType) and arg.ty.ndim != 0
    ]
    if len(tensors) != 1:
        return None
    return tensors[0]


def _sunk(call: Any, slot: int, pad: Any, lookup: Any) -> tuple[Any, list[int], float] | None:
    """(`call` applied to the pad's input, the widths, the value) for `pad(call(...))`, or None
    when `call` does not commute with the pad."""
    from tvm import relax

    name = str(call.op.name)
    source = pad.args[0]
    widths = [int(w) for w in pad.attrs.pad_width]
    value = np.array(float(pad.attrs.pad_value), dtype=str(source.ty.dtype))
    out_dtype = str(call.ty.dtype)
    if name == "relax.permute_dims":
        if call.attrs.axes is None:
            return None
        axes = [int(a) for a in call.attrs.axes]
        widths = [w for axis in axes for w in widths[2 * axis : 2 * axis + 2]]
        return relax.op.permute_dims(source, axes), widths, float(value)
    if name == "relax.astype":
        result = exact_cast(value, out_dtype)
    elif name == "relax.round":
        result = np.round(value)
    else:
        if static_shape(call) != static_shape(pad):
            return None  # a broadcast operand would widen the pad's input
        if name in _FLOAT_ONLY and not out_dtype.startswith("float"):
            return None
        scalars = [scalar_value(arg, lookup) for i, arg in enumerate(call.args) if i != slot]
        if any(s is None for s in scalars):
            return None
        operands: list[Any] = list(scalars)
        operands.insert(slot, value)
        result = {**_BINARY, **_FLOAT_ONLY}[name](*operands)
        result = exact_cast(np.asarray(result), out_dtype)
    if result is None:
        return None
    args = list(call.args)
    args[slot] = source
    return relax.Call(call.op, args, call.attrs, list(call.ty_args)), widths, float(result)
