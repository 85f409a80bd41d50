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
"""

from __future__ import annotations

import math
from typing import Any

from optkit.backends.relax_exprs import rewrite_functions


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


def _float32(call: Any) -> bool:
    from tvm import relax

    ty = call.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"
