"""Weight packing: constant-weight matmuls and convolutions become kernels over a panel layout.

A row-major weight `W[K, N]` read by a register tile of `lanes` output columns strides through
memory by `N` floats per reduction step, so every step touches a new cache line (and, for wide
layers, the same few cache sets). Packing the constant once at compile time into panels
`Wp[N / P, K, P]` makes the tile read `P` contiguous floats per step, and the K loop a single
forward stream. Measured on this repository's 2-core AMD EPYC (AVX-512, 1 thread, TVM kernel
scheduled by `CPUMatmul` with an 8 x 32 tile): 256x512x2048 at 227 GFLOP/s packed against 64
unpacked and 120 for numpy's OpenBLAS.

| Relax call | becomes |
|---|---|
| `matmul(x[..., K], W[K, N])`, W constant, float32 (or int8 -> int32) | `y[M, N] = sum_k x[m, k] * Wp[n / P, k, n % P]` |
| `nn.conv2d(x, W)`, NCHW, W constant, groups 1 | `y[n, h, w, co] = sum x_pad[n, ci, h*s + kh*d, w*s + kw*d] * Wp[co / P, ci, kh, kw, co % P]`, then NHWC -> NCHW |
| `nn.conv2d(x, W)`, NHWC (`layout.py`), float32, groups 1 | `y[n, h, w, co] = sum x_pad[n, h*s + kh*d, w*s + kw*d, ci] * Wp[co / P, kh, kw, ci, co % P]` (input channel innermost: both operands stream); an input that is a transpose of an NCHW tensor is read in place by the NCHW kernel |
| the same, output width not a multiple of the 8-row tile (7 x 7 images) | `rows[n*OH*OW + h*OW + w, co]` over flattened pixels (8-row tiles whatever the width), then the NHWC output, inlined into the tile write-back |
| `nn.conv2d(x, W)`, NHWC, float32, depthwise (groups = channels) | `y[n, h, w, c] = sum x[n, h*s + kh*d - p, w*s + kw*d - p, c] * W[kh, kw, c]`, padding read in place: vectorized over the channels, whatever the image width |
| the same on a W8A8 model's centered int8 values (`x = g - z`, `g` on the int8 grid) | the kernel reads `q = int8(g)` and computes `float32(q) - z` per tap: the same float32 sums, and the kernel before it writes int8 instead of float32 (W8A8 MobileNetV2, batch 8, 1 thread, Intel Xeon: 6.83 -> 6.67 ms) |
| `nn.conv2d_transpose(x, W)`, kernel == stride, no padding | `x[N*H*W, Ci] @ W[Ci, Co*Kh*Kw]` (packed as above), patches put in place |
| int8 `matmul` / `conv2d` (NCHW or NHWC) on a CPU with AVX-512 VNNI | `vnni.py`: convs read the padded NHWC image in place (`vnni.Conv`; `pads.py` sinks the zero-point pad to the conv); the model's NCHW image of fewer than 4 channels interleaved to NHWC, padded to 4 channels and by the conv's padding in one copy and read in place where that widens no kernel row or the taps overlap (ResNet-18's 7 x 7 stem, W7A8, batch 8, AVX2: 3.2 ms of GEMM over 168 columns, 2.1 ms of `im2col_rows` and 0.1 ms of interleave -> 3.7 + 0.26 ms; the model 46.8 -> 45.2 ms, bit-identical), other such images (a ViT's patch embedding) copied by kernel rows (`im2col_rows`); dilated convs through an im2col that writes the padding |
| float32 `matmul(a, b)`, b not constant, output width not a multiple of 4 (attention scores) | `matmul(a, pad(b))` over a multiple of 16 columns, sliced back |

All put the output channel innermost, so `CPUMatmul` vectorizes over it and tiles the next
spatial axis (rows of x, or output pixels of the image) into registers. The conv kernels are
marked output-elementwise-fusable (`_emit_fusable`), so bias, activation and residual add run in
the conv's tile write-back. Measured on a MobileNetV2-style network (batch 8, 112 x 112, Intel
Xeon with AVX-512, 1 thread, BatchNorm folded): 78 ms with NCHW convs and TVM's own depthwise
kernel, 27 ms with the NHWC kernels here (the depthwise convs from 36 ms to ~6 ms). A matmul's elementwise
epilogue (bias, GELU) fuses into its kernel; a conv's transpose back to NCHW and its bias /
residual adds form one fused elementwise kernel after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from optkit.backends.relax_exprs import (
    bound_call,
    on_int8_grid,
    rewrite_functions,
    scalar_float,
    static_shape,
)
from optkit.backends.relax_exprs import relax_op as _op
from optkit.backends.vnni import Arith

log = logging.getLogger(__name__)

PANELS = (32, 16, 8)  # panel width P: the widest that divides N (32 float32 = two AVX-512 registers)
OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind::kOutEWiseFusable
PACKED_DTYPES = {("float32", "float32"): "float32", ("int8", "int8"): "int32"}


def panel_width(n: int) -> int | None:
    """The panel width used for `n` output channels, or None when no panel divides it."""
    return next((p for p in PANELS if n % p == 0), None)


def pack_dense(w: np.ndarray, panel: int) -> np.ndarray:
    """`W[K, N]` -> `Wp[N / panel, K, panel]`."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k, n // panel, panel).transpose(1, 0, 2))


def pack_conv(w: np.ndarray, panel: int) -> np.ndarray:
    """`W[Co, Ci, Kh, Kw]` -> `Wp[Co / panel, Ci, Kh, Kw, panel]`."""
    co, ci, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(co // panel, panel, ci, kh, kw).transpose(0, 2, 3, 4, 1))


def pack_conv_hwio(w: np.ndarray, panel: int) -> np.ndarray:
    """`W[Kh, Kw, Ci, Co]` -> `Wp[Co / panel, Kh, Kw, Ci, panel]` (for NHWC convs)."""
    kh, kw, ci, co = w.shape
    return np.ascontiguousarray(w.reshape(kh, kw, ci, co // panel, panel).transpose(3, 0, 1, 2, 4))


def pack_weights(
    mod: Any,
    vnni: Arith | None = None,
    fma: Arith | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    consumed: Callable[[Any], None] | None = None,
    winograd: bool = False,
    derived: Callable[[Any, Any], None] | None = None,
) -> tuple[Any, dict[str, int]]:
    """Rewrite constant-weight matmuls and convs of `mod["main"]`; returns (mod, counts by kind).

    `vnni`: int8 matmuls and convs go to the int8 tile kernel of that arithmetic (`vnni.py`:
    AVX-512 VNNI, `vnni.U8S8`, or AVX2's `vpmaddwd`, `vnni.U8S16`, and for a weight of 7 bits
    `vpmaddubsw`, `vnni.U8S7`: `vnni.for_weight`) where their shapes fit it,
    instead of the panel kernels here; `fma`: float32 matmuls and 1 x 1 convs go to the same tile
    kernel with FMAs (`vnni.F32` on AVX-512, `vnni.F32_AVX2`); with `winograd` too, float32 3 x 3
    convs that `winograd.applies` to run as Winograd transforms around it where `winograd.choose`
    finds them cheaper than the direct conv (`winograd.py`).
    `progress(done, total, seconds_left)` is called
    at most once a second as matmuls and convs are visited (seconds left extrapolated from the
    time per op so far). `consumed(tensor)` is told each time a use of a constant weight is
    replaced by its packed panels (directly, or through a `permute_dims` no one else reads), so
    that the caller can free the original once no use is left (`weights.WeightReleaser`).
    `derived(tensor, derivation)` is told of each packed weight computed from a smaller array
    that a saved artifact stores instead (Winograd's, `weights.LiftedWeights.derived`).
    """
    import tvm
    from tvm import relax

    matmul = _op("relax.matmul")
    conv2d = _op("relax.nn.conv2d")
    conv2d_transpose = _op("relax.nn.conv2d_transpose")
    counts = {
        "matmul": 0,
        "conv2d": 0,
        "depthwise": 0,
        "int8_depthwise": 0,
        "vnni": 0,
        "fma": 0,
        "padded": 0,
        "winograd": 0,
    }
    kinds = (matmul, conv2d, conv2d_transpose)
    # in order, the first that applies: (enabled, op, rewrite, the count it adds to)
    rules: list[tuple[object, Any, Callable[..., Any], str]] = [
        (True, matmul, _pad_columns, "padded"),
        (vnni, matmul, partial(_vnni_matmul, arith=vnni), "vnni"),
        (vnni, conv2d, partial(_vnni_conv, arith=vnni), "vnni"),
        (fma and winograd, conv2d, partial(_winograd_conv, arith=fma, derived=derived), "winograd"),
        (fma, matmul, partial(_fma_matmul, arith=fma), "fma"),
        (fma, conv2d, partial(_fma_conv, arith=fma), "fma"),
        (True, matmul, _packed_matmul, "matmul"),
        (True, conv2d_transpose, _patch_transpose, "matmul"),
        (True, conv2d, _packed_conv, "conv2d"),
        (True, conv2d, _depthwise_conv, "depthwise"),
    ]
    total = [0]
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda e: total.__setitem__(0, total[0] + (isinstance(e, relax.Call) and e.op in kinds))
            )
    done, start, shown = [0], time.perf_counter(), [0.0]
    readers = _var_readers(mod) if consumed is not None else {}

    def _consume(call: Any, lookup: Any) -> None:
        if consumed is None:
            return
        w = call.args[1]
        if isinstance(w, relax.Var) and readers.get(w, 0) == 1:
            w = lookup(w)
            w = w.args[0] if isinstance(w, relax.Call) and w.op == _op("relax.permute_dims") else None
        if isinstance(w, tvm.ir.expr.GenericConst):
            consumed(w.value)

    @relax.expr_functor.mutator
    class _Pack(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if progress is not None and call.op in kinds:
                done[0] += 1
                elapsed = time.perf_counter() - start
                if elapsed - shown[0] >= 1.0 or done[0] == total[0]:  # at most once a second
                    shown[0] = elapsed
                    progress(done[0], total[0], elapsed / done[0] * max(0, total[0] - done[0]))
            new = self._pack(call)
            if new is not call:
                _consume(call, self.lookup_binding)
            return new

        def _pack(self, call: Any) -> Any:
            try:
                for used, op, rewrite, kind in rules:
                    if not used or call.op != op:
                        continue
                    if (new := rewrite(self.builder_, call, self.lookup_binding)) is not None:
                        counts[kind] += 1
                        if rewrite is _depthwise_conv:
                            counts["int8_depthwise"] += _reads_int8(new)
                        return new
            except _NotPackable:
                pass
            return call

    rewritten = rewrite_functions(_Pack(mod), mod)
    return relax.transform.DeadCodeElimination()(rewritten), counts


class _NotPackable(Exception):
    pass


def _var_readers(mod: Any) -> dict[Any, int]:
    """How many call arguments and tuple fields read each Relax variable of `mod`."""
    from tvm import relax

    readers: dict[Any, int] = {}

    def visit(expr: Any) -> None:
        fields = (
            expr.args
            if isinstance(expr, relax.Call)
            else expr.fields
            if isinstance(expr, relax.Tuple)
            else ()
        )
        for arg in fields:
            if isinstance(arg, relax.Var):
                readers[arg] = readers.get(arg, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return readers


def _static_shape(expr: Any) -> list[int]:
    shape = static_shape(expr)
    if shape is None:
        raise _NotPackable
    return shape


def _constant(expr: Any, lookup: Any = None) -> np.ndarray:
    """A constant weight's value, or the value of `permute_dims` / `astype` bindings of one, as
    a numpy array.

    A transpose is a view, not a copy: the import shares the Program's tensors (DLPack), and a
    Linear's transposed weight is read through its `permute_dims` binding instead of being folded
    into a second copy first, so packing adds only the packed panels to the weights already in
    memory. `astype` (an int8 depthwise weight computed in float32, `quantized.py`) copies.
    """
    import tvm
    from tvm import relax

    if lookup is not None and isinstance(expr, relax.Var):
        bound = lookup(expr)
        if isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.permute_dims"):
            axes = None if bound.attrs.axes is None else [int(a) for a in bound.attrs.axes]
            return _constant(bound.args[0], lookup).transpose(axes)
        if isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.astype"):
            return _constant(bound.args[0], lookup).astype(str(bound.attrs.dtype))
    if not isinstance(expr, tvm.ir.expr.Constant):
        raise _NotPackable
    try:
        return np.from_dlpack(expr.value)
    except (BufferError, RuntimeError, TypeError):  # a dtype numpy's DLPack does not take
        return expr.value.numpy()


def _packed_matmul(bb: Any, call: Any, lookup: Any = None) -> Any | None:
    from tvm import relax

    x = call.args[0]
    w_np = _matmul_weight(call, lookup)
    x_shape = _static_shape(x)
    if w_np is None:
        return None
    out_dtype = PACKED_DTYPES.get((str(x.ty.dtype), str(w_np.dtype)))
    if len(x_shape) < 2 or out_dtype is None or str(call.ty.dtype) != out_dtype:
        return None
    k, n = w_np.shape
    panel = panel_width(n)
    if x_shape[-1] != k or (panel is None and n < PANELS[0]):
        return None
    wide = n
    if panel is None or (panel != PANELS[0] and n > PANELS[0]):
        # A wide layer whose width no 32 divides (SwiGLU's 344): zero columns up to a multiple
        # of 32 keep the full 8 x 32 register tile (a 8 x 8 tile ran ~2x slower per FLOP).
        panel, wide = PANELS[0], -(-n // PANELS[0]) * PANELS[0]
        w_np = np.concatenate([w_np, np.zeros((k, wide - n), w_np.dtype)], axis=1)
    x2 = _as_2d(bb, x, x_shape)
    wp = relax.const(pack_dense(w_np, panel))
    y = bb.emit_te(_dense_te(panel, out_dtype), x2, wp, primfunc_name_hint="packed_matmul")
    if wide > n:
        y = bb.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[n]))
    return _from_2d(y, x_shape, n)


def _matmul_weight(call: Any, lookup: Any = None) -> np.ndarray | None:
    """The constant weight of `matmul(x, W)` as a 2-D array (through `_unbroadcast`, and without
    leading dims of one), or None when it has batch dims that shape the output."""
    x, w = call.args
    w_np = _constant(_unbroadcast(w, lookup), lookup)
    if w_np.ndim > 2 and all(d == 1 for d in w_np.shape[:-2]):
        w_np = w_np.reshape(w_np.shape[-2:])
    if w_np.ndim != 2 or _static_shape(call) != [*_static_shape(x)[:-1], w_np.shape[1]]:
        return None
    return w_np


def _unbroadcast(w: Any, lookup: Any = None) -> Any:
    """A 2-D weight's `broadcast_to` over batch dims, as the export spells a Linear on a
    non-contiguous 3-D input (`bmm(x, expand(W.T))`), read as the 2-D weight: `x @ W` broadcasts
    the same way. On a ViT that product had run as an unpacked batched GEMM over 8 copies of the
    weight, folded into a constant 8x its size."""
    import tvm
    from tvm import relax

    if lookup is None or not isinstance(w, relax.Var):
        return w
    bound = lookup(w)
    if not isinstance(bound, relax.Call) or bound.op != tvm.ir.Op.get("relax.broadcast_to"):
        return w
    src = bound.args[0]
    shape = _static_shape(src)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return src if len(shape) == 2 else w


PAD_COLUMNS = 16  # one AVX-512 register of float32


def _pad_columns(bb: Any, call: Any, lookup: Any = None) -> Any | None:
    """A float32 matmul of two activations (attention scores) whose output width no vector width
    divides (50 or 197 tokens) runs as scalar code: `CPUMatmul` finds no lane count that splits
    it. Zero columns appended to the second operand, up to a multiple of 16, give it the vector
    tile; the extra output columns are sliced off. On a ViT at 50 tokens (batch 8, 3 heads, one
    thread on an AVX-512 Xeon) the six score matmuls took 14.9 ms (3 GFLOP/s) and take 1.4 ms."""
    from tvm import relax

    x, w = call.args
    try:
        _constant(w, lookup)
        return None  # a constant weight: packed instead
    except _NotPackable:
        pass
    w_shape = _static_shape(w)
    n = w_shape[-1]
    if len(w_shape) < 2 or str(call.ty.dtype) != "float32" or str(w.ty.dtype) != "float32":
        return None
    if n % 4 == 0 or n < PAD_COLUMNS:
        return None
    wide = -(-n // PAD_COLUMNS) * PAD_COLUMNS
    padded = bb.emit(relax.op.nn.pad(w, [0, 0] * (len(w_shape) - 1) + [0, wide - n]))
    y = bb.emit(relax.op.matmul(x, padded))
    return relax.op.strided_slice(y, axes=[len(call.ty.shape) - 1], begin=[0], end=[n])


def _dense_te(panel: int, out_dtype: str) -> Any:
    from tvm import te, tirx

    def kernel(x: Any, wp: Any) -> Any:
        m, k = x.shape
        n = wp.shape[0] * panel
        r = te.reduce_axis((0, k), name="k")
        return te.compute(
            (m, n),
            lambda i, j: te.sum(
                tirx.Cast(out_dtype, x[i, r]) * tirx.Cast(out_dtype, wp[j // panel, r, j % panel]), axis=r
            ),
            name="packed_matmul",
        )

    return kernel


def _plain_conv(
    call: Any, lookup: Any = None
) -> tuple[Any, np.ndarray, list[int], list[int], list[int]] | None:
    """(x, constant weight, stride, dilation, padding top/left/bottom/right) of an NCHW / OIHW
    conv with one group and a static 4-D input, or None for any other conv."""
    x, w = call.args
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if int(attrs.groups) != 1 or layouts != ("NCHW", "OIHW", "NCHW"):
        return None
    w_np = _constant(w, lookup)
    if len(_static_shape(x)) != 4:
        return None
    return (
        x,
        w_np,
        [int(s) for s in attrs.strides],
        [int(d) for d in attrs.dilation],
        [int(p) for p in attrs.padding],
    )


def _nhwc_conv(
    call: Any, lookup: Any = None, dtype: str = "float32"
) -> tuple[Any, np.ndarray, list[int], list[int], list[int], int] | None:
    """(x, constant weight `W[Kh, Kw, Ci / groups, Co]`, stride, dilation, padding, groups) of an
    NHWC / OHWI conv (`layout.channels_last`) of `dtype` inputs with a static input, or None."""
    x, w = call.args
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NHWC", "OHWI", "NHWC") or str(x.ty.dtype) != dtype:
        return None
    if dtype == "float32" and str(call.ty.dtype) != "float32":
        return None
    w_np = _constant(w, lookup)
    if len(_static_shape(x)) != 4 or w_np.dtype != np.dtype(dtype):
        return None
    return (
        x,
        np.ascontiguousarray(w_np.transpose(1, 2, 3, 0)),  # OHWI -> HWIO
        [int(s) for s in attrs.strides],
        [int(d) for d in attrs.dilation],
        [int(p) for p in attrs.padding],
        int(attrs.groups),
    )


def _nchw_source(x: Any, lookup: Any) -> Any | None:
    """The NCHW tensor that `x` transposes to NHWC, when `x` is bound to that transpose."""
    import tvm
    from tvm import relax

    bound = lookup(x) if lookup is not None and isinstance(x, relax.Var) else None
    if not isinstance(bound, relax.Call) or bound.op != tvm.ir.Op.get("relax.permute_dims"):
        return None
    axes = bound.attrs.axes
    return bound.args[0] if axes is not None and [int(a) for a in axes] == [0, 2, 3, 1] else None


def _pad_nhwc(bb: Any, x: Any, pad: list[int], value: float = 0.0) -> Any:
    from tvm import relax

    if not any(pad):
        return x
    return bb.emit(relax.op.nn.pad(x, (0, 0, pad[0], pad[2], pad[1], pad[3], 0, 0), pad_value=value))


def _packed_conv(bb: Any, call: Any, lookup: Any = None) -> Any | None:
    from optkit.backends.cpu_schedules import ROW_TILE
    from tvm import relax

    nhwc = _nhwc_conv(call, lookup)
    if nhwc is not None:
        x, w_hwio, stride, dilation, pad, groups = nhwc
        panel = panel_width(w_hwio.shape[3])
        if groups != 1 or panel is None:
            return None
        source = _nchw_source(x, lookup)
        if source is not None:
            # The input is a transpose of an NCHW tensor (the model's image): read that tensor
            # in place with the NCHW kernel, which writes NHWC. A transpose to NHWC of an RGB
            # input, whose innermost axis has 3 elements, took 6 ms of MobileNetV2's 27
            # (batch 8, 112 x 112).
            wp = relax.const(pack_conv(np.ascontiguousarray(w_hwio.transpose(3, 2, 0, 1)), panel))
            kernel = _conv_te(panel, stride, dilation, "float32", pad)
            return _emit_fusable(bb, kernel, source, wp, name="packed_conv2d")
        wp = relax.const(pack_conv_hwio(w_hwio, panel))
        _, h, wd, _ = _static_shape(x)
        kh, kw = w_hwio.shape[:2]
        oh = (h + pad[0] + pad[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wd + pad[1] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        if ow % ROW_TILE:
            # Too narrow an image row for the full register tile: tile the flattened pixels.
            kernel = _conv_rows_te(panel, stride, dilation, oh, ow)
            return _emit_fusable(bb, kernel, _pad_nhwc(bb, x, pad), wp, name="packed_conv2d_rows")
        kernel = _conv_nhwc_te(panel, stride, dilation)
        return _emit_fusable(bb, kernel, _pad_nhwc(bb, x, pad), wp, name="packed_conv2d_nhwc")
    conv = _plain_conv(call, lookup)
    if conv is None:
        return None
    x, w_np, stride, dilation, pad = conv
    out_dtype = PACKED_DTYPES.get((str(x.ty.dtype), str(w_np.dtype)))
    panel = panel_width(w_np.shape[0])
    if out_dtype is None or str(call.ty.dtype) != out_dtype or panel is None:
        return None
    wp = relax.const(pack_conv(w_np, panel))
    # NHWC out; the transpose back cancels against a following conv's (`layout.cancel_transposes`).
    y = bb.emit(
        _emit_fusable(bb, _conv_te(panel, stride, dilation, out_dtype, pad), x, wp, name="packed_conv2d")
    )
    return relax.op.permute_dims(y, (0, 3, 1, 2))


def _depthwise_conv(bb: Any, call: Any, lookup: Any = None) -> Any | None:
    """A float32 NHWC depthwise conv (groups == channels, one filter each) as a kernel that
    vectorizes over the channels: `y[n, h, w, c] = sum x_pad[n, h*s + kh*d, w*s + kw*d, c] * W[kh, kw, c]`."""
    from tvm import relax

    nhwc = _nhwc_conv(call, lookup)
    if nhwc is None:
        return None
    x, w_hwio, stride, dilation, pad, groups = nhwc
    channels = _static_shape(x)[3]
    if groups == 1 or groups != channels or w_hwio.shape[2:] != (1, channels):
        return None
    wp = relax.const(np.ascontiguousarray(w_hwio[:, :, 0, :]))  # (Kh, Kw, C)
    centered = _centered_int8(x, lookup)
    if centered is not None:  # read the int8 tensor; its producer writes a quarter of the bytes
        grid, zero = centered
        kernel = _depthwise_nhwc_te(stride, dilation, pad, zero)
        q = bb.emit(relax.op.astype(grid, "int8"))
        return _emit_fusable(bb, kernel, q, wp, name="depthwise_conv2d_nhwc_int8")
    kernel = _depthwise_nhwc_te(stride, dilation, pad)
    return _emit_fusable(bb, kernel, x, wp, name="depthwise_conv2d_nhwc")


def _reads_int8(call: Any) -> bool:
    """Whether a kernel call's first input is int8 (a depthwise conv on `_centered_int8`)."""
    return str(call.args[1][0].ty.dtype) == "int8"


def _centered_int8(x: Any, lookup: Any) -> tuple[Any, float] | None:
    """(g, z) when `x` is `g - z`: an int8 grid value `g` (`on_int8_grid`) less a scalar zero
    point `z`, the input of a W8A8 depthwise conv (`quantized.py`), else None. `astype(g, int8)`
    holds `g` exactly, so a kernel reading it and subtracting `z` computes the same float32
    numbers from int8 loads."""
    if lookup is None or (sub := bound_call(x, lookup, "relax.subtract")) is None:
        return None
    grid, zero = sub.args
    value = scalar_float(zero, lookup)
    if value is None or not value.is_integer() or not on_int8_grid(grid, lookup):
        return None
    return grid, value


def _emit_fusable(bb: Any, kernel: Any, *args: Any, name: str) -> Any:
    """Emit a TE kernel marked output-elementwise-fusable (TVM's `kOutEWiseFusable`), so that
    FuseOps puts the bias add and activation after it into the same kernel. TVM's own pattern
    analysis calls a conv with strided input indices a plain reduction, which fuses nothing after
    it: every conv then wrote its output, and a separate kernel read it back for the epilogue."""
    import tvm_ffi
    from tvm import relax

    call = bb.call_te(kernel, *args, primfunc_name_hint=name)
    gvar = call.args[0]
    func = bb.get()[gvar].with_attr("op_pattern", OUT_ELEMWISE_FUSABLE)
    for other, existing in bb.get().functions_items():
        # Reuse an identical kernel emitted earlier (the builder's own deduplication compares
        # the function before the attribute is set); the unused copy goes with dead code.
        if (
            other.name_hint.startswith(name)
            and not other.same_as(gvar)
            and tvm_ffi.structural_equal(existing, func)
        ):
            return relax.call_tir(other, call.args[1], list(call.ty_args))
    bb.update_func(gvar, func)
    return call  # bound by the caller: an alias binding (`y = lv`) would stop FuseOps


def _depthwise_nhwc_te(
    stride: list[int], dilation: list[int], pad: list[int], zero: float | None = None
) -> Any:
    """The depthwise conv over a float32 image, or, with `zero`, over an int8 one whose values
    less `zero` are the image (`_centered_int8`), converted in registers: once per input vector
    that a filter row's taps share, as `cpu_schedules` unrolls the row."""
    from tvm import te, tirx

    def kernel(x: Any, w: Any) -> Any:
        n, h, wd, c = (int(d) for d in x.shape)
        kh, kw = (int(d) for d in w.shape[:2])
        oh = (h + pad[0] + pad[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wd + pad[1] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")

        def tap(b: Any, i: Any, j: Any, ch: Any) -> Any:
            # Padding read in place: a separate pad kernel was one more pass over the activations.
            y = i * stride[0] + ry * dilation[0] - pad[0]
            xx = j * stride[1] + rx * dilation[1] - pad[1]
            inside = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
            value = x[b, y, xx, ch]
            if zero is not None:
                value = value.astype("float32") - tirx.const(zero, "float32")
            return tirx.if_then_else(inside, value, tirx.const(0.0, "float32"))

        return te.compute(
            (n, oh, ow, c),
            lambda b, i, j, ch: te.sum(tap(b, i, j, ch) * w[ry, rx, ch], axis=[ry, rx]),
            name="depthwise_conv2d_nhwc",
        )

    return kernel


def _conv_nhwc_te(panel: int, stride: list[int], dilation: list[int]) -> Any:
    from tvm import te

    def kernel(x: Any, wp: Any) -> Any:
        n, hp, wpad, ci = (int(d) for d in x.shape)
        blocks, kh, kw = (int(d) for d in wp.shape[:3])
        oh = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wpad - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")
        rc = te.reduce_axis((0, ci), name="rc")
        # The input channel innermost in the reduction: x and the packed weight both stream.
        return te.compute(
            (n, oh, ow, blocks * panel),
            lambda b, i, j, c: te.sum(
                x[b, i * stride[0] + ry * dilation[0], j * stride[1] + rx * dilation[1], rc]
                * wp[c // panel, ry, rx, rc, c % panel],
                axis=[ry, rx, rc],
            ),
            name="packed_conv2d_nhwc",
        )

    return kernel


def _conv_rows_te(panel: int, stride: list[int], dilation: list[int], oh: int, ow: int) -> Any:
    """The NHWC conv of `_conv_nhwc_te` over flattened output pixels: `rows[B*OH*OW, Co]` (each
    row decodes its image, row and column), then the same NHWC output. `CPUMatmul` tiles the
    pixel axis, so a 7 x 7 image gets 8-row register tiles instead of 1-row ones (an image row
    of 7 pixels splits by no tile height); the NHWC stage inlines into the tile write-back, and
    the epilogue after it, so the kernel stays output-elementwise-fusable. The pixel count is
    rounded up to a multiple of the tile height (batch 1 at 7 x 7: 49 -> 56 rows, the extra
    rows recompute the last pixel and are not stored), else 49 rows would again split into
    1-row tiles: ResNet-18 at batch 1 went from 19.3 to 12.3 ms with it."""
    from optkit.backends.cpu_schedules import ROW_TILE
    from tvm import te, tirx

    def kernel(x: Any, wp: Any) -> Any:
        n = int(x.shape[0])
        ci = int(x.shape[3])
        blocks, kh, kw = (int(d) for d in wp.shape[:3])
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")
        rc = te.reduce_axis((0, ci), name="rc")
        pixels = oh * ow
        total = n * pixels

        def pixel(m: Any) -> Any:  # the rows past the last pixel repeat it (never stored)
            return tirx.min(m, total - 1) if total % ROW_TILE else m

        rows = te.compute(
            (-(-total // ROW_TILE) * ROW_TILE, blocks * panel),
            lambda m, c: te.sum(
                x[
                    pixel(m) // pixels,
                    (pixel(m) % pixels) // ow * stride[0] + ry * dilation[0],
                    pixel(m) % ow * stride[1] + rx * dilation[1],
                    rc,
                ]
                * wp[c // panel, ry, rx, rc, c % panel],
                axis=[ry, rx, rc],
            ),
            name="packed_conv2d_rows",
        )
        return te.compute(
            (n, oh, ow, blocks * panel),
            lambda b, i, j, c: rows[b * pixels + i * ow + j, c],
            name="packed_conv2d_rows_nhwc",
        )

    return kernel


def _conv_te(panel: int, stride: list[int], dilation: list[int], out_dtype: str, pad: list[int]) -> Any:
    from tvm import te, tirx

    def kernel(x: Any, wp: Any) -> Any:
        n, ci, h, wd = (int(d) for d in x.shape)
        blocks, _, kh, kw = (int(d) for d in wp.shape[:4])
        oh = (h + pad[0] + pad[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wd + pad[1] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        rc = te.reduce_axis((0, ci), name="rc")
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")

        def tap(b: Any, i: Any, j: Any) -> Any:
            # Padding read in place: a separate NCHW pad of an RGB input took 3 ms of MobileNetV2's
            # 27 (its rows of 114 floats split into no vector width).
            y = i * stride[0] + ry * dilation[0] - pad[0]
            xx = j * stride[1] + rx * dilation[1] - pad[1]
            value = tirx.Cast(out_dtype, x[b, rc, y, xx])
            if not any(pad):
                return value
            inside = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
            return tirx.if_then_else(inside, value, tirx.const(0, out_dtype))

        return te.compute(
            (n, oh, ow, blocks * panel),
            lambda b, i, j, c: te.sum(
                tap(b, i, j) * tirx.Cast(out_dtype, wp[c // panel, rc, ry, rx, c % panel]),
                axis=[rc, ry, rx],
            ),
            name="packed_conv2d",
        )

    return kernel


def _as_2d(bb: Any, x: Any, shape: list[int]) -> Any:
    from tvm import relax

    return x if len(shape) == 2 else bb.emit(relax.op.reshape(x, (int(np.prod(shape[:-1])), shape[-1])))


def _from_2d(y: Any, x_shape: list[int], n: int) -> Any:
    # No reshape for 2-D inputs: a reshape would stop FuseOps from fusing the epilogue.
    from tvm import relax

    return y if len(x_shape) == 2 else relax.op.reshape(y, (*x_shape[:-1], n))


def _int8_pair(x: Any, w: np.ndarray, call: Any) -> bool:
    return str(x.ty.dtype) == "int8" and str(w.dtype) == "int8" and str(call.ty.dtype) == "int32"


def _vnni_matmul(bb: Any, call: Any, lookup: Any = None, arith: Arith | None = None) -> Any | None:
    from optkit.backends import vnni

    x = call.args[0]
    if str(x.ty.dtype) != "int8":
        return None  # before reading the weight: a float matmul's may not be a constant
    w_np = _matmul_weight(call, lookup)
    x_shape = _static_shape(x)
    if w_np is None or not _int8_pair(x, w_np, call) or len(x_shape) < 2 or x_shape[-1] != w_np.shape[0]:
        return None
    k, n = w_np.shape
    if not vnni.applies(k):
        return None
    x2 = _as_2d(bb, x, x_shape)
    arith = vnni.for_weight(arith, w_np)
    y = bb.emit(vnni.matmul(bb, vnni.to_unsigned(bb, x2, arith), w_np, arith=arith))
    return _from_2d(y, x_shape, n)


def _fma_matmul(bb: Any, call: Any, lookup: Any = None, arith: Arith | None = None) -> Any | None:
    """A float32 matmul with a constant weight through the tile kernel with AVX-512 FMAs
    (`vnni.gemm_func` with `vnni.F32`): up to 24 accumulators where the scheduled panel kernel
    (`_packed_matmul`) keeps 16 under TVM's 1 KiB stack limit, and the next tile column's weights
    prefetched while this column's row tiles run, so that a weight streamed from memory does not
    stall the first of them. Its elementwise consumers join the write-back (`epilogues.py`)."""
    from optkit.backends import vnni

    x = call.args[0]
    if str(x.ty.dtype) != "float32" or str(call.ty.dtype) != "float32":
        return None  # before reading the weight: an activation's matmul has none
    w_np = _matmul_weight(call, lookup)
    x_shape = _static_shape(x)
    if w_np is None or str(w_np.dtype) != "float32" or len(x_shape) < 2 or x_shape[-1] != w_np.shape[0]:
        return None
    if w_np.shape[1] < vnni.LANES:  # narrower than one register: the generic schedule's
        return None
    x2 = _as_2d(bb, x, x_shape)
    y = bb.emit(vnni.matmul(bb, x2, w_np, arith=arith))
    return _from_2d(y, x_shape, w_np.shape[1])


def _winograd_conv(
    bb: Any,
    call: Any,
    lookup: Any = None,
    arith: Arith | None = None,
    derived: Callable[[Any, Any], None] | None = None,
) -> Any | None:
    """A float32 NHWC 3 x 3 conv that `winograd.applies` to, as Winograd F(2 x 2) or F(4 x 4) on
    the FMA tile kernel (`winograd.py`), where `winograd.choose` finds one cheaper than the
    direct conv; its bias, residual and activation fuse into the output transform. `derived`:
    as for `pack_weights`."""
    from optkit.backends import winograd

    nhwc = _nhwc_conv(call, lookup)
    if nhwc is None:
        return None
    x, w_hwio, stride, dilation, pad, groups = nhwc
    kh, kw, ci, co = w_hwio.shape
    if arith is None or not winograd.applies((kh, kw), stride, dilation, pad, groups, (ci, co), arith):
        return None
    if _nchw_source(x, lookup) is not None:  # the model's NCHW image: `_packed_conv` reads it in place
        return None
    batch, height, width, _ = _static_shape(x)  # stride 1, padding 1: the output's size
    variant = winograd.choose(batch, height, width)
    if variant is None:  # too few tiles to pay for the larger weights
        return None
    return winograd.conv(bb, x, w_hwio, _emit_fusable, arith, variant, derived)


def _fma_conv(bb: Any, call: Any, lookup: Any = None, arith: Arith | None = None) -> Any | None:
    """A float32 NHWC conv (one group, dilation 1) on the FMA tile kernel, its bias, ReLU and
    residual in the write-back (`epilogues.py`). A 1 x 1 conv at stride 1 without padding is the
    GEMM `x[B*H*W, Ci] @ W[Ci, Co]` over a view of its input, as `_fma_matmul` runs a Linear;
    on AVX2 (`arith.width` 8) other convs are read in place from their padded image
    (`vnni.Conv`), where the scheduled conv kernel (`_packed_conv`, fitted on AVX-512) keeps its
    accumulators below a third of the FMA peak; an RGB image by kernel-row runs (`Conv.runs`),
    padded while it is interleaved to NHWC. On AVX-512 the scheduled kernel keeps them
    (session 22: ResNet-18's 3 x 3 convs were slower on the tile kernel there)."""
    from optkit.backends import vnni
    from tvm import relax

    nhwc = _nhwc_conv(call, lookup)
    if nhwc is None or arith is None:
        return None
    x, w_hwio, stride, dilation, pad, groups = nhwc
    kh, kw, ci, co = w_hwio.shape
    if groups != 1 or dilation != [1, 1] or co < vnni.LANES:
        return None
    source = _nchw_source(x, lookup)
    b, h, wd, _ = _static_shape(x)
    pointwise = (kh, kw) == (1, 1) and stride == [1, 1] and not any(pad)
    if pointwise and source is None:  # (the model's NCHW image: `_packed_conv` reads it in place)
        rows = bb.emit(relax.op.reshape(x, (b * h * wd, ci)))
        y = bb.emit(vnni.matmul(bb, rows, np.ascontiguousarray(w_hwio.reshape(ci, co)), arith=arith))
        return relax.op.reshape(y, (b, h, wd, co))
    if arith.width == vnni.LANES or pointwise:
        return None
    runs = ci % vnni.GROUP != 0  # an RGB stem: each kernel row's taps read as one run
    if runs and source is not None:  # the model's NCHW image: to NHWC and padded in one copy
        top, left, bottom, right = pad
        rows = vnni.interleave_channels(bb, source, pad=(top, left, bottom, right))
        image = bb.emit(relax.op.reshape(rows, (b, h + top + bottom, wd + left + right, ci)))
    elif source is not None:
        return None
    else:
        image = _pad_nhwc(bb, x, pad)
    _, height, width, _ = _static_shape(image)
    oh, ow = (height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1
    geometry = vnni.Conv(height, width, kh, kw, (stride[0], stride[1]), oh, ow, runs)
    # HWIO rows are (ky, kx, ci): `Conv.runs`' K order; `conv_weight` pads the channels to 4
    weight = np.ascontiguousarray(w_hwio.reshape(kh * kw * ci, co))
    if not runs:
        weight = vnni.conv_weight(np.ascontiguousarray(w_hwio.transpose(3, 2, 0, 1)))
    y = bb.emit(vnni.matmul(bb, image, weight, geometry, arith))
    return relax.op.reshape(y, [int(d) for d in call.ty.shape])


def _vnni_conv(bb: Any, call: Any, lookup: Any = None, arith: Arith | None = None) -> Any | None:
    """int8 conv as NHWC im2col + the VNNI GEMM: `cols[B*OH*OW, KH*KW*C] @ W`, back to NCHW."""
    from optkit.backends import vnni
    from tvm import relax

    nhwc = _nhwc_conv(call, lookup, "int8")
    conv = _plain_conv(call, lookup) if nhwc is None else None
    fill = 0  # int8 0 (uint8 128 once shifted) is what a conv's own padding means
    if nhwc is not None:
        x, w_hwio, stride, dilation, pad, groups = nhwc
        if groups != 1 or not _int8_pair(x, w_hwio, call):
            return None
        w_np = np.ascontiguousarray(w_hwio.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        arith = vnni.for_weight(arith, w_np)
        padded = None if any(pad) else _image_pad(x, lookup)
        if padded is not None:  # the zero-point pad (`pads.py`): written by the conv's own copy
            x, pad, fill = padded
        xu = vnni.to_unsigned(bb, x, arith)
    elif conv is not None and _int8_pair(conv[0], conv[1], call):
        x, w_np, stride, dilation, pad = conv
        arith = vnni.for_weight(arith, w_np)
        # to NHWC, in the kernel that shifts to uint8 (int16 values on AVX2)
        xu = bb.emit(relax.op.permute_dims(vnni.to_unsigned(bb, x, arith), (0, 2, 3, 1)))
    else:
        return None
    co, ci, kh, kw = w_np.shape
    top, left, bottom, right = pad
    c4, run = -(-ci // vnni.GROUP) * vnni.GROUP, -(-kw * ci // vnni.GROUP) * vnni.GROUP
    # read in place where that costs no columns over `im2col_rows` (a kernel row of KW x C
    # values padded to 4) or where the copy would write each pixel over twice (overlapping taps)
    in_place = kw * c4 == run or kh * kw > 2 * stride[0] * stride[1]
    source = _nchw_source(x, lookup) if nhwc is not None and ci % vnni.GROUP else None
    if source is not None and dilation == [1, 1] and in_place:
        # the model's NCHW RGB image: interleaved to NHWC, padded to 4 channels and by the
        # conv's padding, in one copy that the GEMM reads in place
        rows = vnni.interleave_channels(bb, source, arith, (top, left, bottom, right), fill, c4)
        b, _, h, wd = _static_shape(source)
        height, width = h + top + bottom, wd + left + right
        image = bb.emit(relax.op.reshape(rows, (b, height, width, c4)))
        oh, ow = (height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1
        geometry = vnni.Conv(height, width, kh, kw, (stride[0], stride[1]), oh, ow)
        y = bb.emit(vnni.matmul(bb, image, vnni.conv_weight(w_np), geometry, arith))
    elif ci % vnni.GROUP and dilation == [1, 1]:  # an RGB image: a kernel row's bytes in one copy
        if source is not None:  # the model's NCHW image: interleaved without a transpose kernel
            rows = vnni.interleave_channels(bb, source, arith)
        else:
            b, h, wd, _ = _static_shape(xu)
            rows = bb.emit(relax.op.reshape(xu, (b, h, wd * ci)))
        cols = vnni.im2col_rows(bb, rows, ci, kh, kw, stride, (top, left, bottom, right), fill + 128)
        y = bb.emit(vnni.matmul(bb, cols, vnni.conv_weight_rows(w_np), arith=arith))
    elif dilation == [1, 1] and (kh, kw, stride) != (1, 1, [1, 1]):
        # read in place by the GEMM (implicit GEMM): only the padding is written first
        image = _pad_nhwc(bb, xu, pad, fill + 128)
        _, height, width, _ = _static_shape(image)
        oh, ow = (height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1
        geometry = vnni.Conv(height, width, kh, kw, (stride[0], stride[1]), oh, ow)
        y = bb.emit(vnni.matmul(bb, image, vnni.conv_weight(w_np), geometry, arith))
    else:
        cols = vnni.im2col(bb, xu, kh, kw, stride, dilation, (top, left, bottom, right), fill + 128)
        y = bb.emit(vnni.matmul(bb, cols, vnni.conv_weight(w_np), arith=arith))
    if nhwc is not None:
        return relax.op.reshape(y, [int(d) for d in call.ty.shape])
    b, _, oh, ow = (int(d) for d in call.ty.shape)
    return relax.op.permute_dims(bb.emit(relax.op.reshape(y, (b, oh, ow, co))), (0, 3, 1, 2))


def _image_pad(x: Any, lookup: Any) -> tuple[Any, list[int], int] | None:
    """(the unpadded image, padding as (top, left, bottom, right), the int8 fill) when `x` is
    bound to a constant `nn.pad` of an NHWC image's height and width only, else None."""
    import tvm
    from tvm import relax

    bound = lookup(x) if lookup is not None and isinstance(x, relax.Var) else None
    if not isinstance(bound, relax.Call) or bound.op != tvm.ir.Op.get("relax.nn.pad"):
        return None
    width = [int(w) for w in bound.attrs.pad_width]
    fill = float(bound.attrs.pad_value)
    if (
        str(bound.attrs.pad_mode) != "constant"
        or len(width) != 8
        or any(width[i] for i in (0, 1, 6, 7))
        or not fill.is_integer()
        or not -128 <= fill <= 127
    ):
        return None
    return bound.args[0], [width[2], width[4], width[3], width[5]], int(fill)


def _patch_transpose(bb: Any, call: Any, lookup: Any = None) -> Any | None:
    """A transposed conv whose kernel equals its stride (no overlap, no padding; the upsampling
    layers of SAM's mask decoder) is one matmul per input pixel: `x[N*H*W, Ci] @ W[Ci, Co*Kh*Kw]`,
    then each pixel's `Co x Kh x Kw` patch is put in place. The matmul is packed like any other."""
    from tvm import relax

    x, w = call.args
    attrs = call.attrs
    w_np = _constant(w, lookup)
    x_shape = _static_shape(x)
    if (
        str(x.ty.dtype) != "float32"
        or w_np.dtype != np.float32
        or int(attrs.groups) != 1
        or (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
        != ("NCHW", "IOHW", "NCHW")
        or len(x_shape) != 4
    ):
        return None
    ci, co, kh, kw = w_np.shape
    if (
        [int(s) for s in attrs.strides] != [kh, kw]
        or any(int(p) for p in attrs.padding)
        or any(int(p) for p in attrs.output_padding)
        or any(int(d) != 1 for d in attrs.dilation)
    ):
        return None
    n, _, h, wd = x_shape
    op = relax.op
    rows = bb.emit(op.reshape(bb.emit(op.permute_dims(x, (0, 2, 3, 1))), (n * h * wd, ci)))
    weight = relax.const(np.ascontiguousarray(w_np.reshape(ci, co * kh * kw)))
    matmul = bb.normalize(op.matmul(rows, weight))
    patches = _packed_matmul(bb, matmul)
    patches = bb.emit(patches if patches is not None else matmul)
    y = bb.emit(op.reshape(patches, (n, h, wd, co, kh, kw)))
    y = bb.emit(op.permute_dims(y, (0, 3, 1, 4, 2, 5)))  # N, Co, H, Kh, W, Kw
    return op.reshape(y, (n, co, h * kh, wd * kw))
