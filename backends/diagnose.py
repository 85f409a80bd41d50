"""Name the ATen op behind a TVM build failure: compile `main`'s bindings one by one.

TVM reports a failed build from deep inside code generation (`Check failed: (t.MatchesCode(
DLDataTypeCode::kDLFloat)) is false` from LLVM's `CreateAdd`), naming neither a Relax variable
nor a kernel, let alone the PyTorch op. `lowering.lower` calls `first_failing_binding` when
`build` fails: every call binding of the imported `main` becomes a function of its own (its free
variables become parameters, constants stay), and these are compiled with the same steps as the
model, in order, in chunks that double in size (1, 2, 4, ...) until one fails; that chunk is then
halved down to one binding. The cost grows with the position of the first failure, not with the
model. `Imported.origins` maps the binding back to its ATen node, whose op and module path the
`BackendError` names. A failure that needs several ops together (a fused kernel) is not found
this way; then the error keeps TVM's message and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from optkit.backends.tvm_import import NodeOrigin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One binding of `main` as a function of its own: the variable's name, the function's name
    (also its global symbol) and the function."""

    var: str
    name: str
    func: Any  # tvm.relax.Function


def binding_units(mod: Any, entry: str = "main") -> list[Unit]:
    """Each call binding of `mod[entry]`, in order, as a standalone Relax function."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rebind(relax.PyExprMutator):  # type: ignore[misc]
        def __init__(self, by_name: dict[str, Any]) -> None:
            super().__init__()
            self.by_name = by_name

        def visit_var_(self, var: Any) -> Any:
            return self.by_name.get(str(var.name), var)

        def visit_dataflow_var_(self, var: Any) -> Any:
            return self.by_name.get(str(var.name), var)

    units: list[Unit] = []
    for block in mod[entry].body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding) or not isinstance(binding.value, relax.Call):
                continue
            free = relax.analysis.free_vars(binding.value)
            params = [relax.Var(str(v.name), v.ty) for v in free]
            value = _Rebind({str(v.name): p for v, p in zip(free, params, strict=True)}).visit_expr(
                binding.value
            )
            bb = relax.BlockBuilder()
            name = f"unit{len(units)}"
            with bb.function(name, params):
                with bb.dataflow():
                    out = bb.emit_output(value)
                bb.emit_func_output(out)
            units.append(Unit(str(binding.var.name), name, bb.get()[name]))
    return units


def first_failing_binding(units: Sequence[Unit], compiles: Callable[[Any], object]) -> int | None:
    """Index of the first unit that fails `compiles(IRModule)` on its own, or None.

    Chunks of 1, 2, 4, ... units are compiled in order until one fails, then that chunk is
    bisected. Assumes units fail independently of each other, which holds for single bindings.
    """
    import tvm

    def fails(chunk: Sequence[Unit]) -> bool:
        mod = tvm.IRModule({u.name: u.func for u in chunk})
        try:
            compiles(mod)
        except Exception:  # any error counts: TVM's own types and optkit's wrappers
            return True
        return False

    start, size = 0, 1
    while start < len(units):
        chunk = list(units[start : start + size])
        if fails(chunk):
            lo, hi = start, start + len(chunk)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fails(units[lo:mid]):
                    hi = mid
                else:
                    lo = mid
            return lo
        start, size = start + size, size * 2
    return None


def origin_of(var: str, mod: Any, origins: dict[str, NodeOrigin], entry: str = "main") -> NodeOrigin | None:
    """The ATen node that produced Relax variable `var`: its own record, or else that of the
    first recorded variable bound after it (a converter's intermediate bindings precede its result)."""
    if var in origins:
        return origins[var]
    names = [str(b.var.name) for block in mod[entry].body.blocks for b in block.bindings]
    if var not in names:
        return None
    return next((origins[n] for n in names[names.index(var) :] if n in origins), None)


def locate_build_failure(
    mod: Any, origins: dict[str, NodeOrigin], compiles: Callable[[Any], object]
) -> tuple[NodeOrigin, str] | None:
    """(origin, TVM's message) of the first binding of `mod["main"]` that fails to compile alone."""
    units = binding_units(mod)
    index = first_failing_binding(units, compiles)
    if index is None:
        return None
    unit = units[index]
    origin = origin_of(unit.var, mod, origins)
    if origin is None:
        return None
    import tvm

    try:
        compiles(tvm.IRModule({unit.name: unit.func}))
    except Exception as err:  # build() wraps TVM's error; its own last line is the useful one
        return origin, _last_line(err.__cause__ if err.__cause__ is not None else err)
    return None


def _last_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1].rstrip(":")[:300] if lines else type(err).__name__
