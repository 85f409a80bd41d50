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

from optkit.backends.relax_exprs import relax_op, rewrite_calls, scalar_value


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
    mul = _bound(x, lookup, "relax.multiply")
    if mul is None:
        return None
    sub, scale = mul.args
    scale_value = _scalar(scale, lookup)
    sub_call = _bound(sub, lookup, "relax.subtract")
    if scale_value is None or scale_value <= 0 or sub_call is None:
        return None
    q, zero = sub_call.args
    if _scalar(zero, lookup) is None or not _on_int8_grid(q, lookup):
        return None
    return q, zero, scale


def _on_int8_grid(q: Any, lookup: Any) -> bool:
    """Whether `q` is `minimum(maximum(round(.) + integer, lo), hi)` with -128 <= lo, hi <= 127."""
    low = _bound(q, lookup, "relax.minimum")
    high = _bound(low.args[0], lookup, "relax.maximum") if low is not None else None
    if low is None or high is None:
        return False
    lo, hi = _scalar(high.args[1], lookup), _scalar(low.args[1], lookup)
    shifted = _bound(high.args[0], lookup, "relax.add")
    if lo is None or hi is None or not -128 <= lo <= hi <= 127 or shifted is None:
        return False
    rounded, integer = shifted.args
    value = _scalar(integer, lookup)
    return (
        value is not None and float(value).is_integer() and _bound(rounded, lookup, "relax.round") is not None
    )


def _bound(x: Any, lookup: Any, op_name: str) -> Any | None:
    """The call of `op_name` that variable `x` is bound to, else None."""
    from tvm import relax

    value = lookup(x) if isinstance(x, relax.Var) else x
    return value if isinstance(value, relax.Call) and value.op == relax_op(op_name) else None


def _scalar(x: Any, lookup: Any) -> float | None:
    value = scalar_value(x, lookup)
    return None if value is None else float(value)
