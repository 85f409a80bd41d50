"""Converters that lower optkit's quantized ops (`optkit.quant.ops`) to integer Relax compute.

`from_exported_program(custom_convert_map=...)` looks ops up by `node.target.__name__`
(`linear_w8a8.default`), and each converter emits Relax into the importer's block builder.

| op | Relax |
|---|---|
| `linear_w8a8` | quantize x to int8 -> `matmul(int8, int8, out_dtype=int32)` -> zero-point correction, rescale and bias as the matmul's epilogue (one fused elementwise kernel after the VNNI GEMM; in the packed int8 kernel's write-back without VNNI) |
| `linear_wq` | one TE kernel: the reduction reads packed int4 (or int8) weights, unpacks the nibble, subtracts the zero point and multiplies by the group scale inside the K loop; no float weight is materialized |
| `conv2d_w8a8` | int8 grid for x; grouped (depthwise) convs, and convs over fewer than 4 input channels (an RGB stem) unless the target's VNNI kernels take them (`narrow_int8_convs`): `conv2d` in float32 on the centered activations and the int8 weights, exact while the sums stay below 2^24; other groups-1 convs: `conv2d(int8, int8, out_dtype=int32)` with zero-point padding and a constant zero x sum(w) correction; the remaining grouped convs in int32; per-channel rescale and bias |
| `act_qdq` | elementwise round onto the int8 grid and back |
| `aten.amax` | `max(x, axis, keepdims)`: per-token activation scales (`max|x_row| / 127`) reduce with it; TVM 0.27's importer has no converter, and PyTorch's decomposition needs `prims.broadcast_in_dim`, which it lacks too |

Activation scales and zero points may be per sample, (B, 1, ..., 1) (timestep groups,
`optkit.quant.timestep_groups`): they broadcast in the elementwise steps, and the int8 matmul's
epilogue reads them as an (M, 1) column.

Rounding: torch rounds half to even; TVM's `round` matches it for the values that occur here,
as the tests check against the Program's own output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Converter = Callable[[Any, Any], Any]


def custom_convert_map(narrow_int8_convs: bool = False) -> dict[str, Converter]:
    """Converter table for `from_exported_program(custom_convert_map=...)`. `narrow_int8_convs`:
    convs over fewer than 4 input channels (an RGB stem) stay int8, for a target whose VNNI
    kernels read such an image in place or copy it by kernel rows (`vnni.im2col_rows`); otherwise they compute in
    float32 (`_in_float32`)."""

    def conv2d_w8a8(node: Any, importer: Any) -> Any:
        return _conv2d_w8a8(node, importer, narrow_int8_convs)

    return {
        "linear_w8a8.default": _linear_w8a8,
        "linear_wq.default": _linear_wq,
        "conv2d_w8a8.default": conv2d_w8a8,
        "act_qdq.default": _act_qdq,
        "amax.default": _amax,
    }


def _args(node: Any, importer: Any) -> list[Any]:
    return [importer.env[a] if hasattr(a, "op") and hasattr(a, "users") else a for a in node.args]


def _quantize(bb: Any, x: Any, scale: Any, zero: Any) -> Any:
    # clamp(round(x / scale) + zero, -128, 127) on the float grid (zero is an int8 scalar).
    from tvm import relax

    op = relax.op
    q = bb.emit(op.add(op.round(op.divide(x, scale)), op.astype(zero, "float32")))
    return bb.emit(op.clip(q, -128.0, 127.0))


def _linear_w8a8(node: Any, importer: Any) -> Any:
    from tvm import relax

    op, bb = relax.op, importer.block_builder
    x, x_scale, x_zero, w_q, w_scale, _w_zero, w_colsum, bias = _args(node, importer)
    shape = [int(d) for d in x.ty.shape]
    n = int(w_q.ty.shape[1])
    if len(shape) != 2:  # 2-D, so that the epilogue below fuses into the GEMM kernel
        x = bb.emit(op.reshape(x, (-1, shape[-1])))
    if len(x_scale.ty.shape) > 0:  # per sample (B, 1, ..., 1) -> (M, 1)
        rows = (*shape[:-1], 1)
        x_scale = bb.emit(op.reshape(bb.emit(op.broadcast_to(x_scale, rows)), (-1, 1)))
        x_zero = bb.emit(op.reshape(bb.emit(op.broadcast_to(x_zero, rows)), (-1, 1)))
    xq = bb.emit(op.astype(_quantize(bb, x, x_scale, x_zero), "int8"))  # (M, K) int8
    acc = bb.emit(op.matmul(xq, w_q, out_dtype="int32"))  # (M, N) int32
    acc = bb.emit(op.subtract(acc, op.multiply(op.astype(x_zero, "int32"), w_colsum)))
    y = bb.emit(op.multiply(op.astype(acc, "float32"), op.multiply(x_scale, w_scale)))
    y = bb.emit(op.add(y, bias))
    return y if len(shape) == 2 else bb.emit(op.reshape(y, (*shape[:-1], n)))


def _amax(node: Any, importer: Any) -> Any:
    from tvm import relax

    x = importer.env[node.args[0]]
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    axis = [int(d) for d in dims] or None  # amax over no dims reduces over all of them
    return importer.block_builder.emit(relax.op.max(x, axis=axis, keepdims=bool(keepdim)))


def _act_qdq(node: Any, importer: Any) -> Any:
    from tvm import relax

    op, bb = relax.op, importer.block_builder
    x, scale, zero = _args(node, importer)
    q = _quantize(bb, x, scale, zero)
    return bb.emit(op.multiply(op.subtract(q, op.astype(zero, "float32")), scale))


def _conv2d_w8a8(node: Any, importer: Any, narrow_int8: bool = False) -> Any:
    from tvm import relax

    op, bb = relax.op, importer.block_builder
    x, x_scale, x_zero, w_q, w_scale, _w_zero, bias, stride, padding, dilation, groups = _args(node, importer)
    xq = _quantize(bb, x, x_scale, x_zero)
    zf = bb.emit(op.astype(x_zero, "float32"))
    if _in_float32(w_q, groups, narrow_int8):
        # Centered values lie in [-255, 255]; padding with 0 then matches the float conv's zero
        # padding. Every partial sum is an integer below 2^24, so float32 computes it exactly, and
        # the conv gets the float kernels (`packing.py`): a depthwise conv the vectorized NHWC
        # one instead of TVM's generic int32 grouped conv, an RGB stem the packed conv that reads
        # the NCHW image in place instead of a 4-channel im2col.
        xc = bb.emit(op.subtract(xq, zf))
        wf = bb.emit(op.astype(w_q, "float32"))  # a constant once the weights are bound
        acc = bb.emit(
            op.nn.conv2d(
                xc, wf, strides=stride, padding=padding, dilation=dilation, groups=groups, out_dtype="float32"
            )
        )
        scale = bb.emit(op.multiply(x_scale, bb.emit(op.reshape(w_scale, (1, -1, 1, 1)))))
        return bb.emit(op.add(bb.emit(op.multiply(acc, scale)), bb.emit(op.reshape(bias, (1, -1, 1, 1)))))
    if groups == 1:
        # int8 x int8 -> int32. Padding must mean 0, so it holds the zero point: pad the centered
        # values with 0 and add the zero point back; then subtract zero * sum(w) per output
        # channel. Weight packing turns this conv into the packed int8 kernel (`packing.py`).
        ph, pw = (int(p) for p in padding)
        if ph or pw:
            centered = bb.emit(op.subtract(xq, zf))
            xq = bb.emit(op.add(bb.emit(op.nn.pad(centered, (0, 0, 0, 0, ph, ph, pw, pw))), zf))
        xi8 = bb.emit(op.astype(xq, "int8"))
        acc = bb.emit(
            op.nn.conv2d(xi8, w_q, strides=stride, padding=0, dilation=dilation, groups=1, out_dtype="int32")
        )
        w_sum = bb.emit(op.sum(bb.emit(op.astype(w_q, "int32")), axis=[1, 2, 3]))  # folded to a constant
        w_sum = bb.emit(op.reshape(w_sum, (1, -1, 1, 1)))
        acc = bb.emit(op.subtract(acc, bb.emit(op.multiply(w_sum, bb.emit(op.astype(x_zero, "int32"))))))
    else:
        # Centered values lie in [-255, 255]; padding with 0 then matches the float conv's zero padding.
        xc = bb.emit(op.astype(op.subtract(xq, zf), "int32"))
        wc = bb.emit(op.astype(w_q, "int32"))
        acc = bb.emit(
            op.nn.conv2d(
                xc, wc, strides=stride, padding=padding, dilation=dilation, groups=groups, out_dtype="int32"
            )
        )  # (N, Cout, H, W) int32
    scale = bb.emit(op.multiply(x_scale, bb.emit(op.reshape(w_scale, (1, -1, 1, 1)))))  # (1 or N, Cout, 1, 1)
    y = bb.emit(op.multiply(bb.emit(op.astype(acc, "float32")), scale))
    return bb.emit(op.add(y, bb.emit(op.reshape(bias, (1, -1, 1, 1)))))


DOT_DEPTH = 4  # channels per int8 dot product (vpdpbusd); fewer input channels compute in float32


def _in_float32(w_q: Any, groups: int, narrow_int8: bool = False) -> bool:
    """Whether an int8 conv computes in float32: it is grouped (depthwise) or, unless
    `narrow_int8`, has fewer input channels than one int8 dot product takes (an RGB stem: a
    per-tap im2col pads 3 channels to 4 and copies its 3-byte pixels one by one, 5.2 ms of a W8A8
    MobileNetV2's 26 at batch 8), and its sums fit float32 exactly ((Cin / groups) x Kh x Kw
    products of at most 255 x 128 each, below 2^24 in all)."""
    _co, ci_per_group, kh, kw = (int(d) for d in w_q.ty.shape)
    narrow = ci_per_group < DOT_DEPTH and not narrow_int8
    return (groups > 1 or narrow) and ci_per_group * kh * kw * 255 * 128 < 2**24


def _linear_wq(node: Any, importer: Any) -> Any:
    from tvm import relax

    op, bb = relax.op, importer.block_builder
    x, w_packed, w_scale, w_zero, bias, bits, group_size, signed = _args(node, importer)
    x_shape = [int(d) for d in x.ty.shape]
    k = x_shape[-1]
    n = int(w_scale.ty.shape[1])
    x2 = bb.emit(op.reshape(x, (-1, k)))  # (M, K)
    kernel = _groupwise_matmul_te(k, n, int(bits), int(group_size), bool(signed), str(w_zero.ty.dtype))
    y = bb.emit_te(kernel, x2, w_packed, w_scale, w_zero, bias, primfunc_name_hint="groupwise_matmul")
    return bb.emit(op.reshape(y, (*x_shape[:-1], n)))


def _groupwise_matmul_te(k: int, n: int, bits: int, group_size: int, signed: bool, zero_dtype: str) -> Any:
    """A TE kernel y = x @ dequant(w) + bias that dequantizes each weight inside the K loop."""
    from tvm import te, tirx

    def nibble(byte: Any, col: Any, is_signed: bool) -> Any:
        v = tirx.Cast("int32", (byte >> tirx.Cast("uint8", (col % 2) * 4)) & tirx.const(15, "uint8"))
        return tirx.Select(v > 7, v - 16, v) if is_signed else v

    def kernel(x: Any, w: Any, scale: Any, zero: Any, bias: Any) -> Any:
        r = te.reduce_axis((0, k), name="k")

        def weight(kk: Any, j: Any) -> Any:
            g = kk // group_size
            if bits == 4:
                q = nibble(w[kk, j // 2], j, signed)
                z = (
                    nibble(zero[g, j // 2], j, False)
                    if zero_dtype == "uint8"
                    else tirx.Cast("int32", zero[g, j])
                )
            else:
                q = tirx.Cast("int32", w[kk, j])
                z = tirx.Cast("int32", zero[g, j])
            return tirx.Cast("float32", q - z) * scale[g, j]

        m = x.shape[0]
        acc = te.compute((m, n), lambda i, j: te.sum(x[i, r] * weight(r, j), axis=r), name="acc")
        return te.compute((m, n), lambda i, j: acc[i, j] + bias[j], name="out")

    return kernel
