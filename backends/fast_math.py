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

`unary_expr` / `gelu_expr` are GELU, GELU-tanh, SiLU and sigmoid as TIR expressions, for
kernels that apply them to values they hold in registers (the tile GEMMs' write-back,
`epilogues.py`) rather than to a tensor: erf and tanh by rational fits made for optkit, whose
float32 error is at most 4e-7.

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


# erf(u) ~ u P(u^2) / Q(u^2) for |u| <= 4 (beyond, |erf| rounds to 1 in float32): a rational
# fit made for optkit (Lawson-reweighted linearized least squares on 20,001 points of [0, 4]
# against scipy.special.erf, in float64). Evaluated in float32 its error is at most 4e-7 over
# [-6, 6] (`tests/backends/test_fast_math.py`).
ERF_P = (
    1.1283789550872574,
    0.19664581019687072,
    0.0535244235886234,
    0.004021891696208253,
    0.00028866235211306686,
    1.9745630666099804e-06,
)
ERF_Q = (
    1.0,
    0.5076038055923616,
    0.11664456686128644,
    0.015480760304176272,
    0.0012211777397177015,
    3.751047118781331e-05,
)
ERF_CLAMP = 4.0
# tanh(u) ~ u P(u^2) / Q(u^2) for |u| <= 9 (beyond, |tanh| rounds to 1 in float32), fitted the
# same way against numpy's tanh on 40,001 points of [0, 9]: at most 3.6e-7 in float32 over
# [-12, 12] (Q > 1, no pole).
TANH_P = (
    0.9999999216393385,
    0.13372907714835072,
    0.0034862361440474885,
    2.046592932555034e-05,
    1.3174934881377074e-08,
)
TANH_Q = (1.0, 0.4670620708724011, 0.02584066505583534, 0.0003270815020421382, 7.699135801110858e-07)
TANH_CLAMP = 9.0
# Relax's unary ops that a tile GEMM's write-back computes (`vnni.Epilogue`) -> their step names
UNARY_EXPRS = {
    "relax.nn.gelu": "gelu",
    "relax.nn.gelu_tanh": "gelu_tanh",
    "relax.nn.silu": "silu",
    "relax.sigmoid": "sigmoid",
}


def gelu_expr(x: Any, lanes: int = 1) -> Any:
    """`x * (1 + erf(x / sqrt(2))) / 2` as a float32 TIR expression of `x` (a scalar, or a vector
    of `lanes`), erf by the rational fit above, Horner steps as FMAs, one division."""
    from tvm import tirx

    half = x * _const(0.5, lanes)
    return tirx.op.fma(
        half, _rational(x * _const(1 / math.sqrt(2), lanes), ERF_P, ERF_Q, ERF_CLAMP, lanes), half
    )


def unary_expr(name: str, x: Any, lanes: int = 1) -> Any:
    """The float32 TIR expression of `UNARY_EXPRS`' step `name` on `x` (a scalar or a vector of
    `lanes`): GELU by erf, the others by tanh (`sigmoid(x) = (1 + tanh(x / 2)) / 2`)."""
    from tvm import tirx

    if name == "gelu":
        return gelu_expr(x, lanes)

    def tanh(u: Any) -> Any:
        return _rational(u, TANH_P, TANH_Q, TANH_CLAMP, lanes)

    half = _const(0.5, lanes)
    if name == "gelu_tanh":
        inner = (
            x
            * tirx.op.fma(x * x, _const(0.044715, lanes), _const(1.0, lanes))
            * _const(math.sqrt(2 / math.pi), lanes)
        )
        return tirx.op.fma(x * half, tanh(inner), x * half)
    sigmoid = tirx.op.fma(tanh(x * half), half, half)
    if name == "sigmoid":
        return sigmoid
    if name == "silu":
        return x * sigmoid
    raise ValueError(f"no expression for {name!r}; known: {sorted(UNARY_EXPRS.values())}")


def _const(value: float, lanes: int) -> Any:
    from tvm import tirx

    c = tirx.const(value, "float32")
    return tirx.Broadcast(c, lanes) if lanes > 1 else c


def _rational(x: Any, p: tuple[float, ...], q: tuple[float, ...], clamp: float, lanes: int) -> Any:
    """`u P(u^2) / Q(u^2)` with `u` = `x` clamped to [-clamp, clamp]; Horner steps as FMAs."""
    from tvm import tirx

    def horner(coefficients: tuple[float, ...], t: Any) -> Any:
        value = _const(coefficients[-1], lanes)
        for c in reversed(coefficients[:-1]):
            value = tirx.op.fma(value, t, _const(c, lanes))
        return value

    u = tirx.min(tirx.max(x, _const(-clamp, lanes)), _const(clamp, lanes))
    t = u * u
    return u * horner(p, t) / horner(q, t)


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
