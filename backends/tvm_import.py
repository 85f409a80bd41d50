"""Import: Program -> Relax IRModule through `tvm.relax.frontend.torch.from_exported_program`.

Steps: re-export the Program's GraphModule with `torch.export` (non-strict; module paths survive
in `nn_module_stack`), decompose to core ATen, check every op against the importer's converter
table (plus optkit's quantized-op converters), decompose the ops the importer lacks where PyTorch
has a decomposition for them, and fail with a `BackendError` naming the op and its module path
when it still cannot convert. Then `aten_rewrites.py` spells out the PyTorch semantics the
importer reads otherwise (bool `cumsum`, `cat` with empty tensors). Weights become Relax constants,
so the compiled library holds them.

Every converter runs wrapped: an error inside one becomes a `BackendError` naming the ATen op and
module path of its node, and each Relax variable a node produced is recorded in `Imported.origins`,
so that `diagnose.py` can name the node behind a kernel that fails to compile later.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from optkit.backends.aten_rewrites import rewrite_aten
from optkit.backends.quantized import Converter, custom_convert_map

from optkit.errors import BackendError
from optkit.ir.program import Program, module_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one input or output of a lowered model."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class NodeOrigin:
    """The ATen node a Relax variable of `main` came from: op name, module path, node name and
    its tensor arguments (`bool[1, 16]`)."""

    op: str
    module_path: str
    node: str
    args: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.op}({', '.join(self.args)}) in module '{self.module_path or '<top level>'}' (node {self.node})"

    @classmethod
    def of(cls, op: str, node: torch.fx.Node) -> NodeOrigin:
        vals = [a.meta.get("val") for a in node.all_input_nodes]
        args = tuple(_describe(v) for v in vals if isinstance(v, torch.Tensor))
        return cls(op, module_path(node), node.name, args)


@dataclass(frozen=True)
class Imported:
    """The Relax module and the signature of its `main`, the ops that had to be decomposed, the
    ATen rewrites that fired (rule -> count) and the node behind each Relax variable (by name)."""

    mod: Any  # tvm.IRModule
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decomposed: tuple[str, ...]
    rewritten: dict[str, int] = field(default_factory=dict)
    origins: dict[str, NodeOrigin] = field(default_factory=dict)


def import_program(program: Program, narrow_int8_convs: bool = False) -> Imported:
    """Translate `program` to a Relax IRModule with one `main` function returning a tuple.
    `narrow_int8_convs`: W8A8 convs over fewer than 4 channels stay int8 (`quantized.py`)."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    exported = export(program)
    converters = custom_convert_map(narrow_int8_convs)
    exported, decomposed = _decompose_unsupported(exported, converters)
    rewritten = rewrite_aten(exported.graph_module)
    importer = ExportedProgramImporter()
    origins: dict[str, NodeOrigin] = {}
    table = {name: _traced(name, fn, False, origins) for name, fn in importer.convert_map.items()}
    table.update({name: _traced(name, fn, True, origins) for name, fn in converters.items()})
    try:
        # What `from_exported_program(..., run_ep_decomposition=False)` does, with every converter
        # passed as a custom one (called as `fn(node, importer)`) so that each is traced.
        mod = importer.from_exported_program(
            exported,
            keep_params_as_input=False,
            unwrap_unit_return_tuple=False,
            no_bind_return_tuple=False,
            custom_convert_map=table,
        )
    except BackendError:
        raise
    except Exception as err:  # the importer raises assertion/value/type errors outside converters too
        raise BackendError(
            f"TVM's PyTorch importer failed on {program.name}: {type(err).__name__}: {err}"
        ) from err
    inputs = tuple(_spec(n) for n in _user_inputs(exported))
    outputs = tuple(_spec(n, f"output{i}") for i, n in enumerate(_outputs(exported)))
    log.info("imported %s into Relax (%d inputs, %d outputs)", program.name, len(inputs), len(outputs))
    return Imported(mod, inputs, outputs, decomposed, rewritten, origins)


def _traced(name: str, convert: Converter, takes_importer: bool, origins: dict[str, NodeOrigin]) -> Converter:
    def run(node: torch.fx.Node, importer: Any) -> Any:
        origin = NodeOrigin.of(name, node)
        try:
            out = convert(node, importer) if takes_importer else convert(node)  # type: ignore[call-arg]
        except BackendError:
            raise
        except Exception as err:  # converters raise assertion/value/type errors and TVM's own
            raise BackendError(
                f"TVM's PyTorch importer cannot convert {origin.describe()}: {type(err).__name__}: "
                f"{_first_line(err)}"
            ) from err
        for var in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(getattr(var, "name", None), str):
                origins.setdefault(var.name, origin)
        return out

    return run


def _describe(val: torch.Tensor) -> str:
    return f"{str(val.dtype).removeprefix('torch.')}{list(val.shape)}"


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def export(program: Program) -> torch.export.ExportedProgram:
    """Re-export the Program's GraphModule and decompose it to core ATen ops."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(program.graph_module, program.example_inputs, strict=False)
            return exported.run_decompositions()
    except Exception as err:  # torch.export raises many unrelated types
        raise BackendError(
            f"cannot re-export {program.name} for lowering: {type(err).__name__}: {err}"
        ) from err


def supported_ops(converters: dict[str, Any]) -> set[str]:
    """Names (`add.Tensor`, `linear_w8a8.default`, ...) the importer can convert."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    return set(ExportedProgramImporter().convert_map) | set(converters)


def unsupported_nodes(exported: torch.export.ExportedProgram, supported: set[str]) -> list[torch.fx.Node]:
    """call_function nodes whose op has no converter."""
    return [
        n
        for n in exported.graph.nodes
        if n.op == "call_function" and getattr(n.target, "__name__", str(n.target)) not in supported
    ]


def _decompose_unsupported(
    exported: torch.export.ExportedProgram, converters: dict[str, Any]
) -> tuple[torch.export.ExportedProgram, tuple[str, ...]]:
    supported = supported_ops(converters)
    missing = unsupported_nodes(exported, supported)
    if not missing:
        return exported, ()
    from torch._decomp import decomposition_table

    table = {n.target: decomposition_table[n.target] for n in missing if n.target in decomposition_table}
    decomposed = tuple(sorted({_op_name(op) for op in table}))
    if table:
        log.info("decomposing ops TVM cannot import: %s", ", ".join(decomposed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = exported.run_decompositions(table)
        missing = unsupported_nodes(exported, supported)
    if missing:
        where: dict[str, str] = {}
        for n in missing:
            where.setdefault(_op_name(n.target), module_path(n) or "<top level>")
        listed = "; ".join(f"{op} in module '{path}'" for op, path in where.items())
        raise BackendError(
            f"TVM's Relax importer does not support {listed} (and PyTorch has no decomposition for it); "
            "rewrite that module with supported ops or keep it out of the lowered graph"
        )
    return exported, decomposed


def _op_name(target: Any) -> str:
    return str(getattr(target, "__name__", target))


def _user_inputs(exported: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    names = set(exported.graph_signature.user_inputs)
    return [n for n in exported.graph.nodes if n.op == "placeholder" and n.name in names]


def _outputs(exported: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    out = next(n for n in exported.graph.nodes if n.op == "output")
    values = out.args[0]
    flat = values if isinstance(values, (list, tuple)) else (values,)
    return [v for v in flat if isinstance(v, torch.fx.Node)]


def _spec(node: torch.fx.Node, name: str | None = None) -> TensorSpec:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise BackendError(f"lowering needs tensor inputs and outputs; {node.name} is {type(val).__name__}")
    dtype = str(val.dtype).removeprefix("torch.")
    return TensorSpec(name or node.name, tuple(int(d) for d in val.shape), dtype)
