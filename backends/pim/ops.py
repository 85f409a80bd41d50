"""The ops of a Program as the PIM cost model sees them: kind, work and bytes, from shapes only.

Each call_function node becomes a `PimOp`: `gather` (embedding lookups: a table and the rows
read), `gemm` (linear, matmul, convolution: FLOPs and weight bytes), `elementwise`,
`reduction` (sum / mean: pooling after a gather), `view` (no data moves: free on either side,
it follows its input), `layout` (cat, transpose, copies: bytes moved, host only) or `other`
(host only). Only shapes are read (`meta["val"]`), so a model captured on the `meta` device --
a Criteo-sized recommender whose tables would not fit in memory -- is costed like a real one.

Keys are stable across save and load: `module path:op:k`, the k-th node of that op in that
module in graph order, because node names are not.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from optkit.ir.flops import node_flops
from optkit.ir.ops import op_kind, op_name
from optkit.ir.program import Program, module_path

VIEW_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "unsqueeze",
        "squeeze",
        "flatten",
        "expand",
        "alias",
        "slice",
        "select",
        "detach",
        "t",
        "unflatten",
        "split",
        "split_with_sizes",
        "getitem",
        "lift_fresh_copy",
        "_to_copy",
    }
)
LAYOUT_OPS = frozenset(
    {"cat", "stack", "transpose", "permute", "clone", "contiguous", "copy", "index", "remainder"}
)
REDUCTION_OPS = frozenset({"sum", "mean", "amax", "max", "min", "prod"})
ELEMENTWISE_OPS = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "relu",
        "sigmoid",
        "tanh",
        "gelu",
        "silu",
        "neg",
        "exp",
        "pow",
        "rsub",
        "where",
        "clamp",
        "hardtanh",
        "maximum",
        "minimum",
        "sqrt",
        "rsqrt",
        "square",
        "abs",
    }
)


@dataclass
class PimOp:
    """One node, costed: what it is and how much data and work it takes."""

    name: str  # the fx node name (valid in this graph only)
    key: str  # stable: `module:op:k`
    op: str
    kind: str  # gather | gemm | elementwise | reduction | view | layout | other
    flops: int
    in_bytes: int  # activations read
    out_bytes: int
    weight_bytes: int = 0  # parameters read (tables, weight matrices), fp32
    rows: int = 0  # gather: table rows
    row_bytes: int = 0  # gather: bytes of one row
    lookups: int = 0  # gather: rows read per call
    batch: int = 1  # gemm: rows of the activation (vectors per weight read)
    cache_share: float = 1.0  # gather: share of the host's last-level cache its table gets
    inputs: list[str] = field(default_factory=list)  # producer node names (activations)


def _tensor(node: object) -> torch.Tensor | None:
    if isinstance(node, fx.Node):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val
        if isinstance(val, (list, tuple)) and val and isinstance(val[0], torch.Tensor):
            return val[0]
    return None


def _bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.numel()) * t.element_size()


def _is_param(node: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _kind(node: fx.Node) -> str:
    name = op_name(node)
    kind = op_kind(node)
    if kind == "embedding":
        return "gather"
    if kind in ("linear", "matmul", "conv"):
        return "gemm"
    if name in VIEW_OPS:
        return "view"
    if name in REDUCTION_OPS:
        return "reduction"
    if name in ELEMENTWISE_OPS or kind == "activation":
        return "elementwise"
    if name in LAYOUT_OPS:
        return "layout"
    return "other"


def program_ops(program: Program) -> list[PimOp]:
    """The call_function nodes of `program`, in graph order, as `PimOp`s."""
    seen: Counter[tuple[str, str]] = Counter()
    ops = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name, path = op_name(node), module_path(node)
        key = f"{path}:{name}:{seen[(path, name)]}"
        seen[(path, name)] += 1
        args = list(node.all_input_nodes)
        params = [a for a in args if _is_param(a)]
        acts = [a for a in args if not _is_param(a)]
        out = _tensor(node)
        kind = _kind(node)
        op = PimOp(
            name=node.name,
            key=key,
            op=name,
            kind=kind,
            flops=node_flops(node) if kind != "view" else 0,
            in_bytes=sum(_bytes(_tensor(a)) for a in acts),
            out_bytes=_bytes(out),
            weight_bytes=sum(_bytes(_tensor(a)) for a in params),
            inputs=[a.name for a in acts],
        )
        if kind == "gather":
            table = _tensor(node.args[0])
            ids = _tensor(node.args[1])
            if table is not None and ids is not None and table.dim() == 2:
                op.rows, op.row_bytes = int(table.shape[0]), int(table.shape[1]) * table.element_size()
                op.lookups = int(ids.numel())
                op.weight_bytes = _bytes(table)
                op.in_bytes = _bytes(ids)
        elif kind == "gemm" and out is not None and out.dim() >= 1:
            op.batch = int(math.prod(out.shape[:-1])) if op.weight_bytes else 1
            if not op.weight_bytes:  # activation x activation (attention, dot interactions)
                op.batch = max(1, int(out.shape[0]) if out.dim() else 1)
        ops.append(op)
    _share_cache(ops)
    return ops


def _share_cache(ops: list[PimOp]) -> None:
    # Tables compete for the host's last-level cache in proportion to their lookups.
    gathers = [op for op in ops if op.kind == "gather"]
    total = sum(op.lookups for op in gathers)
    for op in gathers:
        op.cache_share = op.lookups / total if total else 1.0


def by_name(ops: list[PimOp]) -> dict[str, PimOp]:
    return {op.name: op for op in ops}
