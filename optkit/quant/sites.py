"""Quantizable sites of a Program and the graph rewrites that swap them for quantized kernels.

A site is a Linear or 2-D Conv node whose weight is a parameter read by `get_attr`. Rewrites
store the integer tensors as buffers named after the module path, insert the `torch.ops.optkit`
kernel with the original node's metadata (so module paths, shapes and FLOPs stay known), and
leave the float weight for `dce` to drop.

Tied weights: sites that read one weight tensor (a block applied twice, shared projections)
are quantized to one copy — the later site reuses the first one's buffers when they come out
identical, as they do for round-to-nearest (GPTQ rounds each site for its own inputs). A
language-model output head (`output_head`) is found so that passes can keep it float.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from optkit.ir.flops import tensor_key
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
    tied_to: str | None = None  # path of an earlier site that reads the same weight tensor

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
    first_reader: dict[tuple[Any, ...], tuple[str, str]] = {}  # weight -> (node name, path)
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
        first, first_path = first_reader.setdefault(tensor_key(weight), (node.name, path))
        tied = None if first == node.name else first_path
        bias = None if bias is None else bias.detach()
        if name in _LINEAR:
            sites.append(QuantSite(node, path, "linear", weight.detach(), bias, tied_to=tied))
            continue
        conv = _conv_args(node)
        if conv is None or weight.dim() != 4:
            skipped.append((path, "only 2-D, non-transposed convolutions with numeric padding are quantized"))
            continue
        sites.append(QuantSite(node, path, "conv", weight.detach(), bias, conv, tied_to=tied))
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


# A language-model head maps a narrow hidden state to a wide vocabulary.
HEAD_MIN_OUTPUTS = 1000
HEAD_MIN_RATIO = 4
_PASS_THROUGH = _LAYOUT | {"_to_copy", "to", "type_as", "slice", "select"}


def output_head(program: Program, site: QuantSite) -> str | None:
    """Why `site` is a language model's output head (None when it is not).

    A Linear is the head when its weight is tied to an input embedding (same tensor, or an equal
    copy), or when its output is a graph output — directly or through reshapes, casts, slices —
    and it has at least `HEAD_MIN_OUTPUTS` outputs and `HEAD_MIN_RATIO` times as many outputs as
    inputs (vocabulary logits from a hidden state). The final layers of diffusion models and
    regressors (a few channels per patch) and of small classifiers do not match; a classifier
    with 1000+ classes on a narrow trunk does, and keeping it float costs as little.
    """
    return _head_reason(site, _embedding_tables(program))


def split_output_heads(
    program: Program, sites: list[QuantSite]
) -> tuple[list[QuantSite], list[tuple[str, str]]]:
    """`sites` without the output heads (`output_head`), and (module path, reason) for each."""
    tables = _embedding_tables(program)
    reasons = {s.node.name: _head_reason(s, tables) for s in sites}
    heads = [
        (s.path, f"{reasons[s.node.name]}; quantize_head=True quantizes it")
        for s in sites
        if reasons[s.node.name]
    ]
    return [s for s in sites if not reasons[s.node.name]], heads


def _embedding_tables(program: Program) -> list[tuple[str, torch.Tensor]]:
    gm = program.graph_module
    tables = []
    for node in program.compute_nodes():
        table = _attr(gm, node.args[0]) if op_name(node) == "embedding" else None
        if table is not None:
            tables.append((module_path(node) or node.name, table))
    return tables


def _head_reason(site: QuantSite, tables: list[tuple[str, torch.Tensor]]) -> str | None:
    if site.kind != "linear":
        return None
    for path, table in tables:
        if _same_values(table, site.weight):
            return f"output head tied to the input embedding {path!r}"
    n, k = (int(d) for d in site.weight.shape)
    if n >= HEAD_MIN_OUTPUTS and n >= HEAD_MIN_RATIO * k and feeds_output(site.node):
        return f"output head ({n} outputs from {k} inputs)"
    return None


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Program.clone copies tied Parameters that only shared storage; equal values still tie them.
    return a.shape == b.shape and (tensor_key(a) == tensor_key(b) or bool(torch.equal(a, b)))


def feeds_output(node: fx.Node) -> bool:
    """Whether `node`'s output is a graph output, directly or through reshapes, casts, slices."""
    frontier, seen = [node], set()
    while frontier:
        n = frontier.pop()
        for user in n.users:
            if user.op == "output":
                return True
            if user not in seen and op_name(user) in _PASS_THROUGH:
                seen.add(user)
                frontier.append(user)
    return False


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


def reads_tied_buffer(node: fx.Node, site: QuantSite, role: str) -> bool:
    """Whether `node`, the kernel that replaced `site`, reads the `role` buffer of the site it
    is tied to (stored by that site, so not to be counted again)."""
    name = _buffer_base(site.tied_to, role) if site.tied_to is not None else None
    return any(isinstance(a, fx.Node) and a.op == "get_attr" and a.target == name for a in node.args)


def _buffer_base(path: str, role: str) -> str:
    return re.sub(r"\W", "_", f"q_{path}_{role}")


def add_buffer(gm: fx.GraphModule, path: str, role: str, value: torch.Tensor) -> str:
    """Register `value` as a buffer named after the module path and role; return its name."""
    base = _buffer_base(path, role)
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_buffer(name, value.detach().contiguous())
    return name


def replace_site(
    program: Program, site: QuantSite, op: Any, tensors: dict[str, torch.Tensor], extra: tuple[Any, ...] = ()
) -> fx.Node:
    """Replace `site.node` by `op(x, *buffers(tensors), *extra)`, keeping the node's metadata.

    A site tied to an earlier one reads that site's buffers wherever they hold the same values,
    so a tied weight is stored quantized once.
    """
    gm = program.graph_module
    graph = gm.graph

    def buffer(role: str, t: torch.Tensor) -> str:
        if site.tied_to is not None:
            name = _buffer_base(site.tied_to, role)
            old = getattr(gm, name, None)
            if isinstance(old, torch.Tensor) and old.dtype == t.dtype and torch.equal(old, t):
                return name
        return add_buffer(gm, site.path, role, t)

    with graph.inserting_before(site.node):
        reads = [graph.get_attr(buffer(role, t)) for role, t in tensors.items()]
        new = graph.call_function(op, (site.node.args[0], *reads, *extra))
    new.meta = dict(site.node.meta)
    site.node.replace_all_uses_with(new)
    graph.erase_node(site.node)
    return new
