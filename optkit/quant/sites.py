"""Quantizable sites of a Program and the graph rewrites that swap them for quantized kernels.

A site is a Linear or 2-D Conv node whose weight is a parameter read by `get_attr`. Rewrites
store the integer tensors as buffers named after the module path, insert the `torch.ops.optkit`
kernel with the original node's metadata (so module paths, shapes and FLOPs stay known), and
leave the float weight for `dce` to drop.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from optkit.ir.ops import op_name
from optkit.ir.program import Program, module_path
from optkit.quant import ops as qops  # noqa: F401  (registers torch.ops.optkit.*)

_LINEAR = {"linear"}
_CONV = {"conv2d", "convolution"}


@dataclass
class QuantSite:
    """One quantizable layer: the node, its module path, kind and the attributes it reads."""

    node: fx.Node
    path: str
    kind: str  # "linear" | "conv"
    weight: torch.Tensor
    bias: torch.Tensor | None
    conv_args: dict[str, Any] | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1]) if self.kind == "linear" else int(self.weight[0].numel())


def _attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


def find_sites(program: Program, skip: tuple[str, ...] = ()) -> tuple[list[QuantSite], list[tuple[str, str]]]:
    """Quantizable sites, and (module path, reason) for linear/conv layers that cannot be quantized."""
    gm = program.graph_module
    sites: list[QuantSite] = []
    skipped: list[tuple[str, str]] = []
    for node in program.compute_nodes():
        name = op_name(node)
        if name not in _LINEAR | _CONV:
            continue
        path = module_path(node) or node.name
        if any(path == s or path.startswith(s + ".") or fnmatch.fnmatchcase(path, s) for s in skip):
            skipped.append((path, "skipped by configuration"))
            continue
        weight = _attr(gm, node.args[1])
        bias_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = _attr(gm, bias_arg) if bias_arg is not None else None
        if weight is None or (bias_arg is not None and bias is None):
            skipped.append((path, "weight or bias is computed in the graph, not a parameter"))
            continue
        if name in _LINEAR:
            sites.append(
                QuantSite(node, path, "linear", weight.detach(), None if bias is None else bias.detach())
            )
            continue
        conv = _conv_args(node)
        if conv is None or weight.dim() != 4:
            skipped.append((path, "only 2-D, non-transposed convolutions with numeric padding are quantized"))
            continue
        sites.append(
            QuantSite(node, path, "conv", weight.detach(), None if bias is None else bias.detach(), conv)
        )
    return sites, skipped


_LAYOUT = {
    "view",
    "_unsafe_view",
    "reshape",
    "permute",
    "transpose",
    "t",
    "flatten",
    "unflatten",
    "unsqueeze",
    "squeeze",
    "clone",
    "contiguous",
    "alias",
    "detach",
}


def reads_model_input(program: Program, site: QuantSite) -> bool:
    """Whether `site`'s input is the Program's first input up to layout changes (reshape,
    permute, ...): the patch embedding that reads a diffusion model's noisy x_t."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    x: Any = site.node.args[0]
    while isinstance(x, fx.Node) and op_name(x) in _LAYOUT:
        x = x.args[0]
    return bool(placeholders) and x is placeholders[0]


def _conv_args(node: fx.Node) -> dict[str, Any] | None:
    args = list(node.args) + [None] * 9
    if op_name(node) == "convolution":
        stride, padding, dilation, transposed, _out_pad, groups = args[3:9]
        if transposed:
            return None
    else:
        stride, padding, dilation, groups = (
            args[3] or [1, 1],
            args[4] or [0, 0],
            args[5] or [1, 1],
            args[6] or 1,
        )
    if isinstance(padding, str):
        return None

    def pair(v: Any) -> list[int]:
        return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]

    return {
        "stride": pair(stride),
        "padding": pair(padding),
        "dilation": pair(dilation),
        "groups": int(groups or 1),  # type: ignore[arg-type]
    }


def add_buffer(gm: fx.GraphModule, path: str, role: str, value: torch.Tensor) -> str:
    """Register `value` as a buffer named after the module path and role; return its name."""
    base = re.sub(r"\W", "_", f"q_{path}_{role}")
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_buffer(name, value.detach().contiguous())
    return name


def replace_site(
    program: Program, site: QuantSite, op: Any, tensors: dict[str, torch.Tensor], extra: tuple[Any, ...] = ()
) -> fx.Node:
    """Replace `site.node` by `op(x, *buffers(tensors), *extra)`, keeping the node's metadata."""
    gm = program.graph_module
    graph = gm.graph
    with graph.inserting_before(site.node):
        reads = [graph.get_attr(add_buffer(gm, site.path, role, t)) for role, t in tensors.items()]
        new = graph.call_function(op, (site.node.args[0], *reads, *extra))
    new.meta = dict(site.node.meta)
    site.node.replace_all_uses_with(new)
    graph.erase_node(site.node)
    return new
