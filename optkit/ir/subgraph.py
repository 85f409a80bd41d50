"""Graph surgery on Programs: expose intermediate values as outputs, or cut them into inputs.

Block caching builds its step variants with these: a "fill" variant that also returns the
outputs of the blocks to cache, and "reuse" variants where a block's output nodes become new
inputs (the cached values), so the block's computation disappears from the graph (after
dead-code elimination). The variants are ordinary Programs with flat tensor inputs and a flat
tuple of outputs; they save, export to ONNX and lower like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.program import Program, eliminate_dead_code, remove_unused_attributes


def _flatten_codegen(gm: fx.GraphModule) -> None:
    # ep.module() wraps inputs/outputs in pytree specs; variants take flat tensors and return a tuple.
    gm.graph._codegen = fx.graph.CodeGen()
    out = next(n for n in gm.graph.nodes if n.op == "output")
    values = out.args[0]
    flat = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    out.args = (flat,)
    gm.recompile()


def _nodes_by_name(program: Program, names: Sequence[str]) -> list[fx.Node]:
    table = {n.name: n for n in program.graph.nodes}
    missing = [n for n in names if n not in table]
    if missing:
        raise ConfigError(f"no node named {', '.join(missing)} in {program.name}")
    return [table[n] for n in names]


def with_outputs(program: Program, names: Sequence[str]) -> Program:
    """A copy of `program` that returns its outputs followed by the values of nodes `names`."""
    new = program.clone(share_weights=True)  # graph edits only
    gm = new.graph_module
    _flatten_codegen(gm)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(out.args[0]) + tuple(_nodes_by_name(new, names)),)
    gm.recompile()
    new.name = f"{program.name}+outputs"
    return new


def cut_to_inputs(program: Program, names: Sequence[str], example_values: Sequence[torch.Tensor]) -> Program:
    """A copy of `program` where the nodes `names` become extra inputs (in that order, after the
    original ones), and whatever only they needed is removed. `example_values` are example
    tensors for the new inputs."""
    if len(names) != len(example_values):
        raise ConfigError(f"{len(names)} nodes to cut but {len(example_values)} example values")
    new = program.clone(share_weights=True)  # graph edits only
    gm = new.graph_module
    _flatten_codegen(gm)
    graph = gm.graph
    last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for node in _nodes_by_name(new, names):
        with graph.inserting_after(last_placeholder):
            ph = graph.placeholder(f"cached_{node.name}")
        ph.meta = {k: v for k, v in node.meta.items() if k in ("val", "tensor_meta")}
        node.replace_all_uses_with(ph)
        last_placeholder = ph
    eliminate_dead_code(gm)
    remove_unused_attributes(gm)
    graph.lint()
    gm.recompile()
    new.example_inputs = tuple(program.example_inputs) + tuple(v.detach().clone() for v in example_values)
    new.name = f"{program.name}-cut"
    return new
