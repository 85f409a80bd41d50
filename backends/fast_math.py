"""Fast transcendental functions for the CPU: softmax, exp, erf (GELU), tanh and sigmoid (SiLU).

On the llvm target TVM lowers `exp`, `erf` and `tanh` to scalar libm calls, one per element even
inside a vectorized loop. In the zoo's attention models that made softmax the most expensive
kernel: on `moviegen:tiny` (1 thread) the masked softmax over 2x4x256x256 scores took 5.7 ms of
an 11.3 ms call, ~11 ns per element. TOPI's `fast_exp` / `fast_erf` / `fast_tanh` are polynomial
versions that vectorize; TVM's own `FastMathTransform` swaps them in for `softmax`, `exp`, `erf`
and `tanh`, and this pass adds the composite ops it misses (`gelu`, `gelu_tanh`, `sigmoid`,
`silu`), written with the same fast functions.

The approximations are not bit-equal to libm: the tests compare a model made of all these ops
with PyTorch at rtol = atol = 1e-5, and `optkit bench` checks every output against eager.
`lower(..., fast_math=False)` (CLI `--exact-math`) keeps libm.

`reciprocal_divisions` turns a float32 division by a scalar constant into a multiply by its
float32 reciprocal. LLVM keeps `x / c` a `vdivps` (the two round differently unless `c` is a
power of two), and every activation a W8A8 model quantizes is divided by its scale in the
write-back of the kernel that computes it. The product is within one ulp of the quotient, so a
quantized value moves by one step only where `x / c` lies within an ulp of a rounding boundary
(1.5 in 10^6 values spread over the int8 range, for 20 random scales). Measured on a W8A8
MobileNetV2 (batch 8, 1 thread, Intel Xeon, compiled artifacts timed in one process): 7.67 ms
dividing, 6.83 ms multiplying. An exact alternative, `y = x * r` corrected by two FMAs
(Markstein's remainder step, bit-identical to the division), ran 2x faster than `vdivps` on a
vector of 8,192 values but gained a quarter as much inside the model (7.81 -> 7.59 ms in another
run), whose write-backs are short of registers; not kept.
"""

from __future__ import annotations

import math
from typing import Any

from optkit.backends.relax_exprs import rewrite_calls, rewrite_functions, scalar_float


def fast_math(mod: Any) -> tuple[Any, int]:
    """Replace float32 softmax, exp, erf, tanh, sigmoid, silu, gelu and gelu_tanh in every Relax
    function of `mod` with fast versions; returns (mod, number replaced)."""
    from tvm import relax, topi

    count = 0

    def sigmoid_te(x: Any) -> Any:
        return topi.divide(1.0, topi.add(1.0, topi.fast_exp(topi.negative(x))))

    def silu_te(x: Any) -> Any:
        return topi.multiply(x, sigmoid_te(x))

    def gelu_te(x: Any) -> Any:
        return topi.multiply(
            topi.multiply(x, 0.5), topi.add(1.0, topi.fast_erf(topi.multiply(x, 1 / math.sqrt(2))))
        )

    def gelu_tanh_te(x: Any) -> Any:
        inner = topi.multiply(
            topi.add(x, topi.multiply(topi.multiply(topi.multiply(x, x), x), 0.044715)),
            math.sqrt(2 / math.pi),
        )
        return topi.multiply(topi.multiply(x, 0.5), topi.add(1.0, topi.fast_tanh(inner)))

    unary = {
        "relax.exp": topi.fast_exp,
        "relax.erf": topi.fast_erf,
        "relax.tanh": topi.fast_tanh,
        "relax.sigmoid": sigmoid_te,
        "relax.nn.silu": silu_te,
        "relax.nn.gelu": gelu_te,
        "relax.nn.gelu_tanh": gelu_tanh_te,
    }

    @relax.expr_functor.mutator
    class _Fast(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            nonlocal count
            call = self.visit_expr_post_order(call)
            name = getattr(call.op, "name", None)
            if not _float32(call):
                return call
            if name == "relax.nn.softmax":
                count += 1
                return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis))
            if name in unary:
                count += 1
                return self.builder_.call_te(
                    unary[name], call.args[0], primfunc_name_hint=name.split(".")[-1]
                )
            return call

    return rewrite_functions(_Fast(mod), mod), count


def _float32(expr: Any) -> bool:
    from tvm import relax

    ty = expr.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"


def reciprocal_divisions(mod: Any) -> tuple[Any, int]:
    """`mod` with every float32 `divide(x, c)`, `c` a scalar constant whose float32 reciprocal
    is a normal number, as `multiply(x, 1 / c)` (module docstring); returns (mod, count)."""
    import numpy as np
    from tvm import relax

    def rewrite(call: Any, builder: Any) -> Any:
        x, divisor = call.args
        c = scalar_float(divisor, builder.lookup_binding) if _float32(call) and _float32(x) else None
        if c is None:
            return None
        with np.errstate(divide="ignore", over="ignore"):
            r = np.float32(1) / np.float32(c)
        if not np.isfinite(r) or abs(r) < np.finfo(np.float32).tiny:
            return None
        return relax.op.multiply(x, relax.const(r, "float32"))

    return rewrite_calls(mod, "relax.divide", rewrite)
