"""One int8 tensor per quantized activation, read by every user (W8A8 CNNs' residual blocks).

A W8A8 residual block's output `y` feeds the next block twice: its conv quantizes `y` onto the
int8 grid, and its skip connection rounds `y` onto the same grid and back to float32
(`act_qdq`, the same scale and zero point: the same observer). Lowered as written, the GEMM
that computes `y` wrote it in float32, one kernel read it to write the conv's uint8 input and
another read it to write the skip's float32 copy, which the next residual GEMM read again.
`share_quantized` rewrites the Relax module so that there is one int8 tensor:

- the same elementwise call on the same operands is computed once (the two roundings of `y`);
- a value on the int8 grid, centered (`c = clip(round(x / s) + z) - z`), gets its int8 tensor
  `q = astype(c + z, int8)` and its other readers read `astype(q, float32) - z` instead: the
  same float32 numbers, exactly, as every value is a small integer;
- rounding a dequantized value back onto the grid it came from, `round(((q - z) * s) / s)`,
  is `q - z` (the error of the two float32 roundings is far below one half), as after the
  max pool that `pools.py` computes on int8 values.

The GEMM before `y` then writes `q` in its tile write-back (`epilogues.py`), and the next
residual GEMM dequantizes the skip as it adds it (`vnni.Epilogue.loads`).
"""

from __future__ import annotations

import math
from typing import Any

from optkit.backends.relax_exprs import bound_call, rewrite_functions, scalar_float

INT_RANGES = {"int8": (-128.0, 127.0), "uint8": (0.0, 255.0)}
# Integers this small survive float32 arithmetic exactly, and `round(x * s / s)` returns them:
# the two roundings are off by at most 2 ulp, 2**16 * 2**-22 < 0.5.
SMALL = 2.0**16
ELEMENTWISE = frozenset(
    f"relax.{name}"
    for name in ("astype", "round", "add", "subtract", "multiply", "divide", "maximum", "minimum", "nn.relu")
)


def share_quantized(mod: Any) -> tuple[Any, int]:
    """`mod` with each quantized activation's int8 tensor computed once and read by all of its
    users (module docstring); returns (mod, number of calls no longer computed)."""
    from tvm import relax

    count = 0

    @relax.expr_functor.mutator
    class _Share(relax.PyExprMutator):  # type: ignore[misc]
        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.seen: dict[Any, Any] = {}  # call key -> the variable holding its value
            self.ints: dict[Any, tuple[float, float]] = {}  # float32 variable -> range of its integers
            self.dequantized: dict[Any, Any] = {}  # centered grid value -> astype(q, float32) - z

        def visit_call_(self, call: Any) -> Any:
            nonlocal count
            call = self.visit_expr_post_order(call)
            if str(getattr(call.op, "name", "")) not in ELEMENTWISE or not _reads_tensor(call):
                return call
            args = [self._alias_of(a) for a in call.args]
            call = relax.Call(call.op, [self.dequantized.get(a, a) for a in args], call.attrs)
            same = self._simplified(call)
            if same is not None:
                count += 1
                return same
            key = self._key(call)
            if key in self.seen:
                count += 1
                return self.seen[key]
            return self._emit(call)

        def _alias_of(self, expr: Any) -> Any:
            """The variable that `expr` copies (`lv = x`, what this pass leaves for a reuse)."""
            while isinstance(expr, relax.Var) and isinstance(
                bound := self.builder_.lookup_binding(expr), relax.Var
            ):
                expr = bound
            return expr

        def _key(self, call: Any) -> Any:
            """Equal for calls of one op, attributes and operands (scalars by value)."""
            operands = []
            for arg in call.args:
                value = self._scalar(arg)
                operands.append(("scalar", str(arg.ty.dtype), value) if value is not None else arg)
            return (call.op, str(call.attrs) if call.attrs is not None else "", tuple(operands))

        def _emit(self, call: Any) -> Any:
            """The variable holding `call`'s value: an earlier one, or a new binding."""
            key = self._key(call)
            if key not in self.seen:
                self.seen[key] = self.builder_.emit(call)
                self._classify(self.seen[key], call)
            return self.seen[key]

        def _scalar(self, expr: Any) -> float | None:
            return scalar_float(expr, self.builder_.lookup_binding) if _is_scalar(expr) else None

        def _bound(self, expr: Any, op_name: str) -> Any | None:
            return bound_call(expr, self.builder_.lookup_binding, op_name)

        def _simplified(self, call: Any) -> Any | None:
            """An existing expression equal to `call` (exactly, in float32), else None."""
            name = str(call.op.name)
            x = call.args[0]
            other = self._scalar(call.args[1]) if len(call.args) == 2 else None
            span = self.ints.get(x)
            if name == "relax.round":
                if span is not None:
                    return x  # already an integer
                div = self._bound(x, "relax.divide")
                mul = self._bound(div.args[0], "relax.multiply") if div is not None else None
                if (
                    div is None
                    or mul is None
                    or (inner := self.ints.get(mul.args[0])) is None
                    or max(map(abs, inner)) > SMALL
                ):
                    return None
                scale = self._scalar(mul.args[1])
                if scale is None or scale == 0 or not math.isfinite(scale):
                    return None
                return mul.args[0] if scale == self._scalar(div.args[1]) else None
            if name == "relax.add" and other is not None:
                sub = self._bound(x, "relax.subtract")  # (g - z) + z: g, for small integers g
                if sub is not None and sub.args[0] in self.ints and self._scalar(sub.args[1]) == other:
                    return sub.args[0] if max(map(abs, self.ints[sub.args[0]])) <= SMALL else None
            if name == "relax.maximum" and span is not None and other is not None and span[0] >= other:
                return x
            if name == "relax.minimum" and span is not None and other is not None and span[1] <= other:
                return x
            if name == "relax.astype" and str(call.attrs.dtype) in ("int8", "uint8"):
                back = _int_cast(x, self.builder_.lookup_binding)
                return back if back is not None and str(back.ty.dtype) == str(call.attrs.dtype) else None
            return None

        def _classify(self, var: Any, call: Any) -> None:
            """Record the integer range of `var` (bound to `call`) when it holds integers, and,
            for a centered int8 grid value `g - z`, emit its int8 tensor and the dequantization
            that its readers get instead."""
            name = str(call.op.name)
            if str(var.ty.dtype) != "float32":
                return
            x = call.args[0]
            span = self.ints.get(x)
            other = self._scalar(call.args[1]) if len(call.args) == 2 else None
            if name == "relax.astype" and (source := str(x.ty.dtype)) in INT_RANGES:
                self.ints[var] = INT_RANGES[source]
            elif name == "relax.round":
                self.ints[var] = (-math.inf, math.inf)
            elif span is None or other is None or not other.is_integer():
                return
            elif name in ("relax.add", "relax.subtract"):
                shift = other if name == "relax.add" else -other
                self.ints[var] = (span[0] + shift, span[1] + shift)
            elif name == "relax.maximum":
                self.ints[var] = (max(span[0], other), max(span[1], other))
            elif name == "relax.minimum":
                self.ints[var] = (min(span[0], other), min(span[1], other))
            if (
                name != "relax.subtract"
                or span is None
                or var not in self.ints
                or not -128 <= span[0] <= span[1] <= 127
            ):
                return
            if _int_cast(x, self.builder_.lookup_binding) is not None:
                return  # astype(q, float32) - z already
            q = self._emit(relax.op.astype(x, "int8"))
            # `_emit` records the integer range of each new value, the dequantized one's too
            self.dequantized[var] = self._emit(
                relax.op.subtract(self._emit(relax.op.astype(q, "float32")), call.args[1])
            )

    rewritten = rewrite_functions(_Share(mod), mod)
    rewritten = relax.transform.CanonicalizeBindings()(rewritten)  # drops `lv = x` aliases
    return relax.transform.DeadCodeElimination()(rewritten), count


def _is_scalar(expr: Any) -> bool:
    from tvm import relax

    ty = expr.ty
    return isinstance(ty, relax.TensorType) and ty.shape is not None and len(ty.shape) == 0


def _reads_tensor(call: Any) -> bool:
    """Whether `call` has an operand that is a variable of rank > 0 (not a scalar's cast)."""
    from tvm import relax

    return any(
        isinstance(a, relax.Var) and isinstance(a.ty, relax.TensorType) and not _is_scalar(a)
        for a in call.args
    )


def _int_cast(x: Any, lookup: Any) -> Any | None:
    """`q` when `x` is `astype(q, float32)` of an int8 or uint8 `q`, else None."""
    cast = bound_call(x, lookup, "relax.astype")
    if cast is None or str(cast.args[0].ty.dtype) not in INT_RANGES:
        return None
    return cast.args[0]
