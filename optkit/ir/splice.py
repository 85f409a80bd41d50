"""Splice an `nn.Module` into a Program's graph as ATen ops (no `call_module`).

The module is captured on its own (`torch.export`, like any model), its nodes are copied into
the Program's graph reading the given values, and its parameters and buffers become attributes
of the Program's GraphModule under a prefix. The result is an ordinary Program: it saves,
exports to ONNX and lowers through TVM like a captured model, and a pass that replaces a
subgraph (the `mate` pass replacing attention) stays in the IR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.program import Program


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def splice_module(
    program: Program,
    module: nn.Module,
    inputs: Sequence[fx.Node],
    example_inputs: Sequence[torch.Tensor],
    prefix: str,
    before: fx.Node,
    module_stack: dict[str, tuple[str, str]],
) -> fx.Node:
    """Copy `module`'s captured graph into `program` right before node `before`, reading
    `inputs`; return the node of its (single) output. Attributes are named `{prefix}_{name}`;
    copied nodes get `module_stack` (the enclosing module path, e.g. the replaced attention's)
    followed by the module's own submodule paths under `{last path}.{prefix}`."""
    sub = capture(module, tuple(example_inputs), name=prefix)
    gm, graph = program.graph_module, program.graph
    if any(
        hasattr(gm, f"{prefix}_{n.target}".replace(".", "_")) for n in sub.graph.nodes if n.op == "get_attr"
    ):
        raise ConfigError(f"attribute prefix {prefix!r} is already used in {program.name}")
    outer_path = list(module_stack.values())[-1][0] if module_stack else ""
    root = f"{outer_path}.{prefix}" if outer_path else prefix
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ConfigError(f"{type(module).__name__} takes {len(placeholders)} inputs, {len(inputs)} given")
    env.update(zip(placeholders, inputs, strict=True))
    result: Any = None
    with graph.inserting_before(before):
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                result = node.args[0]
                continue
            new = graph.node_copy(node, lambda n: env[n])
            if node.op == "get_attr":
                name = f"{prefix}_{node.target}".replace(".", "_")
                value = _fetch(sub.graph_module, str(node.target))
                if isinstance(value, nn.Parameter):
                    gm.register_parameter(name, nn.Parameter(value.detach().clone()))
                elif isinstance(value, torch.Tensor):
                    gm.register_buffer(name, value.detach().clone())
                else:
                    setattr(gm, name, value)
                new.target = name
            stack = dict(module_stack)
            for key, (path, kind) in (node.meta.get("nn_module_stack") or {}).items():
                stack[f"{prefix}/{key}"] = (f"{root}.{path}" if path else root, kind)
            new.meta["nn_module_stack"] = stack
            env[node] = new
    while isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise ConfigError(f"{type(module).__name__} must return one tensor, returns {len(result)}")
        result = result[0]
    return env[result]
