"""Quantized kernels as PyTorch custom ops (`torch.ops.optkit.*`), with ONNX translations.

Quantization passes rewrite the graph to call these ops on integer weights stored in buffers:
the Program really holds int8 / packed int4 tensors, and `torch.export` keeps the ops intact.

| op | eager kernel | ONNX (opset 21) -> what ONNX Runtime runs |
|---|---|---|
| `linear_w8a8` | int8 x int8 -> int32 GEMM (`int8_matmul`: `torch._int_mm`, or float32 GEMMs where those are faster), fused rescale + bias | Q/DQ -> `MatMulIntegerToFloat` (int8) |
| `linear_wq` | unpack int4/int8 groups, dequantize the weight, float GEMM | blocked DQ (int4/uint4/int8) -> MatMul; int4 -> `MatMulNBits` |
| `conv2d_w8a8` | activations and weights rounded to int8 grids, float conv | Q/DQ -> `QLinearConv` (int8) |
| `act_qdq` | activation rounded to the int8 grid (quantize + dequantize) | QuantizeLinear + DequantizeLinear |

Int4 weights leave PyTorch as uint8 bytes; the ONNX translation marks them with an
`optkit.onnx::AsInt4` node that `optkit.ir.onnx_io` replaces by a real INT4/UINT4 initializer
holding the same bytes, so the ONNX file stores 4-bit weights too.

Activation scales and zero points are per tensor (0-d), or per sample: shaped (B, 1, ..., 1),
the rank of x, when `ptq` picks them by timestep group (`optkit.quant.timestep_groups`). The
int8 GEMM then quantizes each row with its sample's scale and rescales the int32 result by the
same; the ONNX translation of a per-sample layer rounds in plain arithmetic (QuantizeLinear
takes only a scalar or per-axis 1-D scale) with a float bias, so ONNX Runtime runs those layers
in float on the int8 grid's values.

The int8 GEMM (`int8_matmul`) is PyTorch's `torch._int_mm` where that is the faster, else
float32 GEMMs over chunks of K: a sum of up to 1024 products of int8 values is an integer of
magnitude at most 2^24, which float32 holds exactly, so both give the integer result bit for
bit. Which is faster depends on the CPU, so it is measured once per process on a 64 x 512 x 256
product (`int_mm_is_fast`). With VNNI oneDNN runs `_int_mm` fast (an Intel Xeon, 1 thread: the
W8A8 MLP of docs/backends.md 2.42 ms in eager against 10.03 ms in float); elsewhere it can be a
reference loop: on an AMD EPYC (znver3, AVX2, 1 thread) 0.9-2.5 GOP/s against 76-92 GFLOP/s for
the float32 GEMM of the same shapes (64 x 512 x 1408 49.6 against 1.2 ms, 512 x 512 x 1408 394
against 8.2 ms, casts included), which made a W8A8 Llama decoder of 512 tokens take 9.7 s in
eager against 0.21 s in float (0.26 s on float32 GEMMs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from optkit.quant.packing import unpack_int4

if TYPE_CHECKING:
    from optkit.ir.program import Program

INT4_DOMAIN = "optkit.onnx"
EXACT_K = 1024  # int8 x int8 products per float32 sum: |sum| <= 1024 * 128 * 128 = 2^24, exact


def is_quantized(program: Program) -> bool:
    """Whether `program` calls any of these ops: a quantization pass rewrote it, and its outputs
    carry that pass's rounding."""
    return any(str(n.target).startswith("optkit.") for n in program.compute_nodes())


def _quantize_act(x: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    # clamp(round(x / scale) + zero, -128, 127), each step after the division in place: the same
    # values, without a fresh activation-sized buffer per step
    return (x / scale).round_().add_(zero.float()).clamp_(-128, 127)


def _dequantize_act(q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """`(q - zero) * scale`, in place on `q` (a float tensor of `_quantize_act`)."""
    return q.sub_(zero.float()).mul_(scale)


_INT_MM_FAST: bool | None = None  # `int_mm_is_fast`'s measurement, once per process


def int_mm_is_fast() -> bool:
    """Whether `torch._int_mm` beats the float32 GEMMs of `int8_matmul` on this CPU: measured once
    per process (3 interleaved rounds on a 64 x 512 x 256 product, medians; about 30 ms where
    `_int_mm` is the slow one)."""
    global _INT_MM_FAST
    if _INT_MM_FAST is None:
        from optkit.timing import interleaved_latency_ms

        a, b = torch.ones(64, 512, dtype=torch.int8), torch.ones(512, 256, dtype=torch.int8)
        try:
            ms = interleaved_latency_ms(
                {"int_mm": lambda: torch._int_mm(a, b), "float": lambda: _float_matmul(a, b)}, repeats=3
            )
            _INT_MM_FAST = ms["int_mm"]["median"] < ms["float"]["median"]
        except RuntimeError:  # no `_int_mm` kernel in this build
            _INT_MM_FAST = False
    return _INT_MM_FAST


def int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """`a (M, K) @ b (K, N)` of int8 tensors in int32, exactly: `torch._int_mm` where it is the
    faster (`int_mm_is_fast`), else float32 GEMMs over `EXACT_K` values of K at a time (the
    module docstring)."""
    return torch._int_mm(a, b) if int_mm_is_fast() else _float_matmul(a, b)


def _float_matmul(a: Tensor, b: Tensor) -> Tensor:
    k = a.shape[-1]
    acc = None
    for start in range(0, k, EXACT_K):
        part = (a[:, start : start + EXACT_K].float() @ b[start : start + EXACT_K].float()).to(torch.int32)
        acc = part if acc is None else acc + part
    return acc if acc is not None else torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32)


def _per_row(v: Tensor, lead: torch.Size) -> Tensor:
    # A per-sample (B, 1, ..., 1) scale or zero point as (M, 1) against x viewed as (M, K).
    return v if v.dim() == 0 else v.expand(*lead, 1).reshape(-1, 1)


@torch.library.custom_op("optkit::linear_w8a8", mutates_args=())
def linear_w8a8(
    x: Tensor,
    x_scale: Tensor,
    x_zero: Tensor,
    w_q: Tensor,
    w_scale: Tensor,
    w_zero: Tensor,
    w_colsum: Tensor,
    bias: Tensor,
) -> Tensor:
    """y = dequant(int8 GEMM(quant(x), w_q)) + bias. x (..., K); w_q int8 (K, N); w_scale (N,);
    x_scale, x_zero scalars or per sample (B, 1, ..., 1) (x_zero on the int8 grid);
    w_colsum = w_q.sum(0) in int32."""
    lead = x.shape[:-1]
    x_scale, x_zero = _per_row(x_scale, lead), _per_row(x_zero, lead)  # scalars or (M, 1)
    xq = _quantize_act(x.reshape(-1, x.shape[-1]).float(), x_scale, x_zero).to(torch.int8)  # (M, K)
    acc = int8_matmul(xq, w_q) - x_zero.to(torch.int32) * w_colsum  # (M, N) int32
    y = acc.float() * (x_scale * w_scale) + bias.float()
    return y.reshape(*lead, w_q.shape[1]).to(x.dtype)  # a half-precision model stays in half


@linear_w8a8.register_fake
def _(x, x_scale, x_zero, w_q, w_scale, w_zero, w_colsum, bias):  # type: ignore[no-untyped-def]
    return x.new_empty(*x.shape[:-1], w_q.shape[1])


def dequantize_weight(
    w_packed: Tensor, w_scale: Tensor, w_zero: Tensor, bits: int, group_size: int, signed: bool
) -> Tensor:
    """The float (K, N) weight that `linear_wq` computes with."""
    q = unpack_int4(w_packed, signed) if bits == 4 else w_packed.to(torch.int16)  # (K, N)
    zero = unpack_int4(w_zero, False) if bits == 4 and not signed else w_zero.to(torch.int16)  # (G, N)
    k = q.shape[0]
    scale = w_scale.repeat_interleave(group_size, dim=0)[:k]  # (K, N)
    zero = zero.repeat_interleave(group_size, dim=0)[:k]
    return (q.float() - zero.float()) * scale


@torch.library.custom_op("optkit::linear_wq", mutates_args=())
def linear_wq(
    x: Tensor,
    w_packed: Tensor,
    w_scale: Tensor,
    w_zero: Tensor,
    bias: Tensor,
    bits: int,
    group_size: int,
    signed: bool,
) -> Tensor:
    """Weight-only quantized linear: group-wise int4 (packed) or int8 weight (K, N), float activations."""
    w = dequantize_weight(w_packed, w_scale, w_zero, bits, group_size, signed)
    # One layer's weight dequantized at a time, in the activations' dtype (bf16 / fp16 stay so).
    return torch.matmul(x, w.to(x.dtype)) + bias.to(x.dtype)


@linear_wq.register_fake
def _(x, w_packed, w_scale, w_zero, bias, bits, group_size, signed):  # type: ignore[no-untyped-def]
    return x.new_empty(*x.shape[:-1], w_scale.shape[1])


@torch.library.custom_op("optkit::conv2d_w8a8", mutates_args=())
def conv2d_w8a8(
    x: Tensor,
    x_scale: Tensor,
    x_zero: Tensor,
    w_q: Tensor,
    w_scale: Tensor,
    w_zero: Tensor,
    bias: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """Conv2d on int8 activations and per-output-channel int8 weights (Cout, Cin/g, kh, kw);
    x_scale, x_zero scalars or per sample (B, 1, 1, 1)."""
    xd = _dequantize_act(_quantize_act(x.float(), x_scale, x_zero), x_scale, x_zero)
    wd = w_q.float() * w_scale.reshape(-1, 1, 1, 1)
    y = F.conv2d(xd, wd, None if bias is None else bias.float(), stride, padding, dilation, groups)
    return y.to(x.dtype)


@conv2d_w8a8.register_fake
def _(x, x_scale, x_zero, w_q, w_scale, w_zero, bias, stride, padding, dilation, groups):  # type: ignore[no-untyped-def]
    return x.new_empty(_conv_out_shape(x.shape, w_q.shape, stride, padding, dilation))


def _conv_out_shape(xs, ws, stride, padding, dilation):  # type: ignore[no-untyped-def]
    n, _, h, w = xs
    cout, _, kh, kw = ws
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, cout, oh, ow)


@torch.library.custom_op("optkit::act_qdq", mutates_args=())
def act_qdq(x: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """Round an activation onto the int8 grid of (scale, zero) and back."""
    return _dequantize_act(_quantize_act(x.float(), scale, zero), scale, zero).to(x.dtype)


@act_qdq.register_fake
def _(x, scale, zero):  # type: ignore[no-untyped-def]
    return torch.empty_like(x)


def _register_int4_schema() -> None:
    # onnxscript builds nodes only for ops with a registered schema; the marker op is removed
    # again by optkit.ir.onnx_io after export.
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("AsInt4", INT4_DOMAIN):
        return
    schema = OpSchema(
        "AsInt4",
        INT4_DOMAIN,
        1,
        inputs=[OpSchema.FormalParameter("packed", "T")],
        outputs=[OpSchema.FormalParameter("values", "T2")],
        type_constraints=[
            ("T", ["tensor(uint8)"], "packed bytes"),
            ("T2", ["tensor(int4)", "tensor(uint4)"], "4-bit values"),
        ],
        attributes=[OpSchema.Attribute("signed", OpSchema.AttrType.INT, "1 for INT4, 0 for UINT4")],
    )
    onnx.defs.register_schema(schema)


def onnx_translations() -> dict:
    """The custom translation table for `torch.onnx.export(..., dynamo=True)` (opset 21)."""
    import onnxscript
    from onnxscript import opset21 as op

    _register_int4_schema()
    int4 = onnxscript.values.Opset(INT4_DOMAIN, 1)

    def act(x, scale, zero):  # type: ignore[no-untyped-def]
        # Activations leave as uint8 (zero point + 128): the grid is the same, and U8S8 is the
        # form ONNX Runtime's QDQ fusions handle everywhere (its int8 path breaks around Gemm).
        # (onnxscript's stubs type Cast/QuantizeLinear outputs too narrowly for mypy.)
        zero_u8 = op.Cast(op.Add(op.Cast(zero, to=1), op.Constant(value_float=128.0)), to=2)  # type: ignore[type-var]
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_u8), scale, zero_u8)  # type: ignore[type-var]

    def per_sample(scale) -> bool:  # type: ignore[no-untyped-def]
        shape = getattr(scale, "shape", None)
        return shape is not None and len(shape) > 0

    def grid_rows(x, scale, zero):  # type: ignore[no-untyped-def]
        # The int8 grid in arithmetic, for per-sample (B, 1, ..., 1) scales; the same rounding
        # (half to even) as QuantizeLinear and as the eager kernels. Returns (q, zero) in float.
        zf = op.Cast(zero, to=1)  # type: ignore[type-var]
        q = op.Clip(
            op.Add(op.Round(op.Div(x, scale)), zf),
            op.Constant(value_float=-128.0),
            op.Constant(value_float=127.0),
        )
        return q, zf

    def act_rows(x, scale, zero):  # type: ignore[no-untyped-def]
        q, zf = grid_rows(x, scale, zero)
        return op.Mul(op.Sub(q, zf), scale)

    def int32_bias(bias, x_scale, w_scale):  # type: ignore[no-untyped-def]
        # The bias as int32 on the accumulator's grid (x_scale * w_scale per output channel), as
        # ONNX Runtime's QDQ form has it: with a float bias its fusions to QLinearConv / QGemm do
        # not match and the layer runs in float between Q/DQ pairs, dequantizing its weight on
        # every call (a MobileNetV2 W8A8 export ran 10x slower than ONNX Runtime's own
        # quantize_static model; issue 17).
        bias_scale = op.Mul(x_scale, w_scale)
        bias_q = op.Cast(op.Round(op.Div(bias, bias_scale)), to=6)  # type: ignore[type-var]
        return op.DequantizeLinear(bias_q, bias_scale, axis=0)  # type: ignore[type-var]

    def t_linear_w8a8(x, x_scale, x_zero, w_q, w_scale, w_zero, w_colsum, bias):  # type: ignore[no-untyped-def]
        if per_sample(x_scale):
            # The eager kernel's integer GEMM, with each row's zero point and scale applied
            # after it. (DequantizeLinear -> MatMul would become ORT's MatMulNBits, which
            # re-quantizes the activations on its own grid: 5e-3 off on a test layer.)
            # The rows go in as uint8 (q + 128, zero point 128), the operand type ONNX Runtime's
            # MatMulInteger is fast for: with int8 rows it ran textlm's per-token W8A8 4x slower
            # than the float model.
            q, _ = grid_rows(x, x_scale, x_zero)
            qu = op.Cast(op.Add(q, op.Constant(value_float=128.0)), to=2)  # type: ignore[type-var]
            zero_u8 = op.Cast(op.Constant(value_int=128), to=2)  # type: ignore[type-var]
            acc = op.MatMulInteger(qu, w_q, zero_u8, None)  # type: ignore[type-var]
            acc = op.Sub(acc, op.Mul(op.Cast(x_zero, to=6), w_colsum))  # type: ignore[type-var]
            return op.Add(op.Mul(op.Cast(acc, to=1), op.Mul(x_scale, w_scale)), bias)  # type: ignore[type-var]
        wd = op.DequantizeLinear(w_q, w_scale, w_zero, axis=1)
        xd = act(x, x_scale, x_zero)
        return op.Add(op.MatMul(xd, wd), int32_bias(bias, x_scale, w_scale))

    def t_linear_wq(x, w_packed, w_scale, w_zero, bias, bits: int, group_size: int, signed: bool):  # type: ignore[no-untyped-def]
        if bits == 4:
            w = int4.AsInt4(w_packed, signed=int(signed))
            if signed:
                wd = op.DequantizeLinear(w, w_scale, axis=0, block_size=group_size)
            else:
                wd = op.DequantizeLinear(
                    w, w_scale, int4.AsInt4(w_zero, signed=0), axis=0, block_size=group_size
                )
        else:
            wd = op.DequantizeLinear(w_packed, w_scale, w_zero, axis=0, block_size=group_size)
        return op.Add(op.MatMul(x, wd), bias)

    def t_conv2d_w8a8(x, x_scale, x_zero, w_q, w_scale, w_zero, bias, stride, padding, dilation, groups: int):  # type: ignore[no-untyped-def]
        rows = per_sample(x_scale)
        xd = act_rows(x, x_scale, x_zero) if rows else act(x, x_scale, x_zero)
        wd = op.DequantizeLinear(w_q, w_scale, w_zero, axis=0)
        pads = list(padding) + list(padding)
        return op.Conv(
            xd,
            wd,
            bias if rows else int32_bias(bias, x_scale, w_scale),
            strides=list(stride),
            pads=pads,
            dilations=list(dilation),
            group=groups,
        )

    def t_act_qdq(x, scale, zero):  # type: ignore[no-untyped-def]
        return act_rows(x, scale, zero) if per_sample(scale) else act(x, scale, zero)

    return {
        torch.ops.optkit.linear_w8a8.default: t_linear_w8a8,
        torch.ops.optkit.linear_wq.default: t_linear_wq,
        torch.ops.optkit.conv2d_w8a8.default: t_conv2d_w8a8,
        torch.ops.optkit.act_qdq.default: t_act_qdq,
    }
