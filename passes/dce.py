"""`dce`: dead-code elimination.

Removes pure nodes whose values nobody uses, then the parameter and buffer attributes no node
reads any more. Run last in a pipeline, after passes that orphan nodes (constant folding,
quantization rewrites); it never changes outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from optkit.ir.program import Program, eliminate_dead_code, remove_unused_attributes
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.report import Figure


@dataclass(frozen=True)
class DCEConfig(PassConfig):
    """Dead-code elimination has no settings."""


@register_pass("dce", DCEConfig)
class DeadCodeElimination(Pass):
    """Remove unused nodes and the attributes only they read."""

    shares_weights = True  # registers new tensors; never writes its input's

    def run(self, program: Program) -> PassResult:
        gm = program.graph_module
        removed = eliminate_dead_code(gm)
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
