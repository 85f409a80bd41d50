"""Small readers of Relax expressions shared by the CPU rewrites (packing, reshapes, attention)."""

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


def rewrite_functions(mutator: Any, mod: Any) -> Any:
    """`mod` with every Relax function visited by `mutator` (a `relax.PyExprMutator` built on
    `mod`), as its builder holds them afterwards."""
    from tvm import relax

    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
