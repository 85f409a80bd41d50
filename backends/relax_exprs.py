"""Small readers of Relax expressions shared by the CPU rewrites (packing, reshapes, attention,
epilogues)."""

from __future__ import annotations

from typing import Any


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


def reshaped(builder: Any, x: Any, shape: list[int]) -> Any:
    """`x`, or a reshape of it to `shape` emitted into `builder` when its shape differs."""
    from tvm import relax

    return x if static_shape(x) == shape else builder.emit(relax.op.reshape(x, shape))


def rewrite_functions(mutator: Any, mod: Any) -> Any:
    """`mod` with every Relax function visited by `mutator` (a `relax.PyExprMutator` built on
    `mod`), as its builder holds them afterwards."""
    from tvm import relax

    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
