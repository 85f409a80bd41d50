"""Small readers of Relax expressions shared by the CPU rewrites (packing, reshapes, attention,
epilogues, norms, slices, pads, layout), and `rewrite_calls`, the mutator loop that replaces
calls of one op."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OPAQUE = 8  # TVM's OpPatternKind::kOpaque: FuseOps leaves a kernel with this `op_pattern` alone


def relax_op(name: str) -> Any:
    """The registered Relax operator `name` (`relax.matmul`, ...)."""
    import tvm

    return tvm.ir.Op.get(name)


def static_shape(expr: Any) -> list[int] | None:
    """`expr`'s tensor shape as ints, or None when it is not a tensor of known, static shape."""
    from tvm import relax, tirx

    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = list(ty.shape)
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return [int(d) for d in dims]


def scalar_constant(expr: Any) -> float | None:
    """The value of a constant with one element, else None."""
    import tvm

    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    value = expr.value.numpy()
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def constant_value(
    expr: Any, lookup: Any, max_ops: int = 64, cache: dict[int, tuple[Any, np.ndarray]] | None = None
) -> np.ndarray | None:
    """The value of `expr` when it is computed from constants alone (a causal mask built from
    `arange`, `full` and `where`), by folding a copy of the at most `max_ops` calls it is bound
    through, else None; `cache` keeps values by expression across calls (every layer of a decoder
    builds the same mask). The module itself is not folded: that would copy every transposed
    weight."""
    import tvm
    import tvm_ffi
    from tvm import relax

    calls = 0

    def rebuild(e: Any, bb: Any) -> Any:
        nonlocal calls
        if isinstance(e, relax.Var):
            bound = lookup(e)
            if bound is None:
                raise LookupError(e)  # a parameter: not a constant
            return rebuild(bound, bb)
        if isinstance(e, relax.Tuple):
            return relax.Tuple([rebuild(f, bb) for f in e.fields])
        if not isinstance(e, relax.Call):
            return e  # a constant, a shape, an integer or a dtype argument
        if not isinstance(e.op, tvm.ir.Op) or calls >= max_ops:
            raise LookupError(e)
        calls += 1
        args = [rebuild(a, bb) for a in e.args]
        return bb.emit(relax.Call(e.op, args, e.attrs, list(e.ty_args)))

    while isinstance(expr, relax.Var) and lookup(expr) is not None:
        expr = lookup(expr)
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    bb = relax.BlockBuilder()
    try:
        with bb.function("value", []):
            with bb.dataflow():
                value = bb.emit_output(rebuild(expr, bb))
            bb.emit_func_output(value)
    except Exception:  # a parameter (LookupError), too many calls, or a call that will not rebuild
        return None
    mod = bb.get()
    key = tvm_ffi.structural_hash(mod)
    if cache is not None and key in cache and tvm_ffi.structural_equal(cache[key][0], mod):
        return cache[key][1]
    try:
        folded = relax.transform.FoldConstant()(relax.transform.LegalizeOps()(mod))
        body = folded["value"].body
        if isinstance(body.body, tvm.ir.expr.Constant):
            result = body.body.value.numpy()
        else:  # what FoldConstant leaves (a `full` with no tensor input): compile the copy, run it
            executable = tvm.compile(folded, target="llvm")
            result = relax.VirtualMachine(executable, tvm.cpu())["value"]().numpy()
    except Exception as err:  # an op the copy cannot legalize or compile: no value, no harm
        log.debug("constant_value: %s", err)
        return None
    if cache is not None:
        cache[key] = (mod, result)
    return result


def use_counts(func: Any) -> dict[Any, int]:
    """How many bindings (and the function's result) read each variable of Relax `func`."""
    from tvm import relax

    uses: dict[Any, int] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            for var in relax.analysis.free_vars(binding.value):
                uses[var] = uses.get(var, 0) + 1
    for var in relax.analysis.free_vars(func.body.body):
        uses[var] = uses.get(var, 0) + 1
    return uses


def exact_cast(value: np.ndarray, dtype: str) -> np.ndarray | None:
    """`value` cast to `dtype` as TVM casts it, or None where the cast is not exact (an integer
    out of range, a fraction to an integer)."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        number = float(value)
        info = np.iinfo(target)
        if not number.is_integer() or not info.min <= number <= info.max:
            return None
    return value.astype(target)


def scalar_value(expr: Any, lookup: Any) -> np.ndarray | None:
    """The value of a one-element constant, also through the casts of one (`astype(const)`, which
    FoldConstant has not folded yet when the CPU rewrites run), as a 0-d array of its dtype;
    None for anything else or a cast that is not exact (`exact_cast`)."""
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Var):
        bound = lookup(expr)
        if bound is None:
            return None
        expr = bound
    if isinstance(expr, tvm.ir.expr.Constant):
        array = expr.value.numpy()
        return array.reshape(()) if array.size == 1 else None
    if isinstance(expr, relax.Call) and str(getattr(expr.op, "name", "")) == "relax.astype":
        inner = scalar_value(expr.args[0], lookup)
        return None if inner is None else exact_cast(inner, str(expr.ty.dtype))
    return None


def on_int8_grid(q: Any, lookup: Any) -> bool:
    """Whether `q` is `minimum(maximum(round(.) + integer, lo), hi)` with -128 <= lo, hi <= 127."""
    low = bound_call(q, lookup, "relax.minimum")
    high = bound_call(low.args[0], lookup, "relax.maximum") if low is not None else None
    if low is None or high is None:
        return False
    lo, hi = scalar_float(high.args[1], lookup), scalar_float(low.args[1], lookup)
    shifted = bound_call(high.args[0], lookup, "relax.add")
    if lo is None or hi is None or not -128 <= lo <= hi <= 127 or shifted is None:
        return False
    rounded, integer = shifted.args
    value = scalar_float(integer, lookup)
    return (
        value is not None
        and float(value).is_integer()
        and bound_call(rounded, lookup, "relax.round") is not None
    )


def bound_call(x: Any, lookup: Any, op_name: str) -> Any | None:
    """The call of `op_name` that variable `x` is bound to, else None."""
    from tvm import relax

    value = lookup(x) if isinstance(x, relax.Var) else x
    return value if isinstance(value, relax.Call) and value.op == relax_op(op_name) else None


def scalar_float(x: Any, lookup: Any) -> float | None:
    """`scalar_value` as a Python float."""
    value = scalar_value(x, lookup)
    return None if value is None else float(value)


def reshaped(builder: Any, x: Any, shape: list[int]) -> Any:
    """`x`, or a reshape of it to `shape` emitted into `builder` when its shape differs."""
    from tvm import relax

    return x if static_shape(x) == shape else builder.emit(relax.op.reshape(x, shape))


def rewrite_calls(
    mod: Any, op_name: str | tuple[str, ...], rewrite: Callable[[Any, Any], Any]
) -> tuple[Any, int]:
    """`mod` with every call of the operator `op_name` (or of any of several; its arguments
    rewritten first) replaced by `rewrite(call, builder)`, where that returns an expression; None
    keeps the call. `builder` is the mutator's block builder, for the bindings the replacement
    needs (`builder.lookup_binding(var)` reads one). Returns (mod, number of calls replaced)."""
    from tvm import relax

    ops = [relax_op(name) for name in ((op_name,) if isinstance(op_name, str) else op_name)]
    count = 0

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            nonlocal count
            call = self.visit_expr_post_order(call)
            if not any(call.op == op for op in ops):
                return call
            new = rewrite(call, self.builder_)
            if new is None:
                return call
            count += 1
            return new

    return rewrite_functions(_Rewrite(mod), mod), count


def rewrite_functions(mutator: Any, mod: Any) -> Any:
    """`mod` with every Relax function visited by `mutator` (a `relax.PyExprMutator` built on
    `mod`), as its builder holds them afterwards."""
    from tvm import relax

    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
