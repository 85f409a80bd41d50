"""`dce`: dead-code elimination.

Removes pure nodes whose values nobody uses, then the parameter and buffer attributes no node
reads any more. Run last in a pipeline, after passes that orphan nodes (constant folding,
quantization rewrites); it never changes outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from optkit.ir.program import Program
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.report import Figure


@dataclass(frozen=True)
class DCEConfig(PassConfig):
    """Dead-code elimination has no settings."""


def remove_unused_attributes(gm: fx.GraphModule) -> int:
    """Delete parameters and buffers that no `get_attr` node reads; return the bytes freed."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    freed = 0
    named = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
        else:
            continue
        freed += tensor.numel() * tensor.element_size()
    return freed


@register_pass("dce", DCEConfig)
class DeadCodeElimination(Pass):
    """Remove unused nodes and the attributes only they read."""

    def run(self, program: Program) -> PassResult:
        gm = program.graph_module
        before = len(gm.graph.nodes)
        gm.graph.eliminate_dead_code()
        removed = before - len(gm.graph.nodes)
        freed = remove_unused_attributes(gm)
        gm.recompile()
        return PassResult(
            program,
            modified=bool(removed or freed),
            figures={
                "nodes_removed": Figure(removed, "nodes"),
                "parameter_bytes_freed": Figure(freed, "bytes"),
            },
        )
