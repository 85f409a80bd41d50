"""Max pools over quantized activations run on the int8 values.

A W8A8 CNN's stem ends in a ReLU, a round onto the int8 grid and back (`act_qdq`: `(q - z) * s`)
and a max pool, so the stem's GEMM wrote float32 and the pool read four bytes per value. With
`s > 0` the dequantization is increasing, so it commutes with the maximum:
`max_pool(q * s - z * s) = max_pool(q) * s - z * s`. `int8_max_pools` pools the int8 `q` instead
and dequantizes the pooled values; the cast to int8 joins the GEMM's write-back
(`epilogues.py`), and the dequantization fuses into the pool's readers.
"""

from __future__ import annotations

from typing import Any

from optkit.backends.relax_exprs import bound_call, on_int8_grid, rewrite_calls, scalar_float


def int8_max_pools(mod: Any) -> tuple[Any, int]:
    """`mod` with each max pool over dequantized int8 values pooling the int8 values (module
    docstring); returns (mod, number of pools rewritten)."""
    from tvm import relax

    def rewrite(call: Any, builder: Any) -> Any:
        found = _dequantized(call.args[0], builder.lookup_binding)
        if found is None:
            return None
        q, zero, scale = found
        attrs = call.attrs
        pooled = builder.emit(
            relax.op.nn.max_pool2d(
                builder.emit(relax.op.astype(q, "int8")),
                pool_size=attrs.pool_size,
                strides=attrs.strides,
                padding=attrs.padding,
                dilation=attrs.dilation,
                ceil_mode=bool(attrs.ceil_mode),
                count_include_pad=bool(attrs.count_include_pad),
                layout=str(attrs.layout),
                out_layout=str(attrs.out_layout),
            )
        )
        centered = builder.emit(relax.op.subtract(builder.emit(relax.op.astype(pooled, "float32")), zero))
        return relax.op.multiply(centered, scale)

    return rewrite_calls(mod, "relax.nn.max_pool2d", rewrite)


def _dequantized(x: Any, lookup: Any) -> tuple[Any, Any, Any] | None:
    """(q, zero, scale) when `x` is `(q - zero) * scale` with a positive scalar scale, a scalar
    zero and `q` on the int8 grid (a round, plus an integer, clipped to [-128, 127]), else None."""
    mul = bound_call(x, lookup, "relax.multiply")
    if mul is None:
        return None
    sub, scale = mul.args
    scale_value = scalar_float(scale, lookup)
    sub_call = bound_call(sub, lookup, "relax.subtract")
    if scale_value is None or scale_value <= 0 or sub_call is None:
        return None
    q, zero = sub_call.args
    if scalar_float(zero, lookup) is None or not on_int8_grid(q, lookup):
        return None
    return q, zero, scale
