"""The Program: optkit's one IR.

A Program is an ATen-level `torch.fx.GraphModule` (captured by `torch.export`, then unlifted so
that parameters are attributes), the example inputs it was captured with, and annotations that
passes read and write. Every node keeps the `nn_module_stack` metadata of capture, so passes find
blocks, attention sites and layers by module path. Annotations are keyed by module path, not by
node name, because node names change when a graph is re-exported; that keeps them valid across
save/load and ONNX export.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.ops import OP_KINDS, op_kind, op_name
from optkit.workload import Workload

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"(^|\.)\d+$")
_BLOCK_NAME = re.compile(r"(^|\.)[A-Za-z_]*block$")


@dataclass
class Annotations:
    """What passes record on a Program, keyed by module path (or block path).

    `precision`: module path -> precision label (`w8a8`, `w4g64`, `fp32`, ...).
    `cache_schedule`: block path -> per-step recompute flags, written by the cache pass.
    `partition`: module path -> partition id (device or PIM bank), written by partitioners.
    `figures`: free-form figures (value + unit) that passes want in the report.
    `history`: names of the passes applied, in order.
    """

    precision: dict[str, str] = field(default_factory=dict)
    cache_schedule: dict[str, list[bool]] = field(default_factory=dict)
    partition: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": dict(self.precision),
            "cache_schedule": {k: list(v) for k, v in self.cache_schedule.items()},
            "partition": dict(self.partition),
            "figures": copy.deepcopy(self.figures),
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Annotations:
        """From `to_dict` output; `ConfigError` names a key or value of the wrong kind."""
        if not isinstance(data, dict):
            raise ConfigError(f"annotations must be a JSON object, got {type(data).__name__}")
        known = {"precision", "cache_schedule", "partition", "figures", "history"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown annotation keys {sorted(unknown)}; allowed: {sorted(known)}")
        for key, value in data.items():
            if not _ANNOTATION_CHECKS[key](value):
                raise ConfigError(f"annotation {key!r} must be {_ANNOTATION_KINDS[key]}, got {value!r:.80}")
        return cls(**{k: copy.deepcopy(v) for k, v in data.items()})


def _dict_of(check: Any) -> Any:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


_ANNOTATION_CHECKS = {
    "precision": _dict_of(lambda x: isinstance(x, str)),
    "cache_schedule": _dict_of(lambda x: isinstance(x, list) and all(isinstance(b, int) for b in x)),
    "partition": _dict_of(lambda x: isinstance(x, int) and not isinstance(x, bool)),
    "figures": lambda v: isinstance(v, dict),
    "history": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
_ANNOTATION_KINDS = {
    "precision": "an object of module path -> precision label",
    "cache_schedule": "an object of block path -> list of true/false per step",
    "partition": "an object of module path -> integer",
    "figures": "an object",
    "history": "a list of pass names",
}


@dataclass(frozen=True)
class Block:
    """A block of the model found by module path: its nodes, the values it reads and writes."""

    path: str
    nodes: tuple[fx.Node, ...]
    inputs: tuple[fx.Node, ...]
    outputs: tuple[fx.Node, ...]


def module_path(node: fx.Node) -> str:
    """Innermost module path of `node` from its `nn_module_stack` ('' for the root module)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, _type = list(stack.values())[-1]
    return _normalize_path(str(path))


def _normalize_path(path: str) -> str:
    # Strict-mode capture writes paths like "L['self'].blocks[0]"; non-strict writes "blocks.0".
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path.strip(".")


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


@dataclass
class Program:
    """A captured model: GraphModule + example inputs + annotations + Workload.

    Passes take a Program and return a new one (`clone()` first); they never reach back into
    the original `nn.Module`. `run(*inputs)` executes the graph. The `workload` says how the
    model is driven and calibrated (sampler, calibration data, metric); passes read it and
    nothing else about the model's use. `meta` records where the model came from
    (`{"zoo": "dit", "size": "tiny", "task": "diffusion-image"}`), for people and reports only.
    """

    graph_module: fx.GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    annotations: Annotations = field(default_factory=Annotations)
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict)
    workload: Workload = field(default_factory=Workload)

    # -- execution -------------------------------------------------------------------------
    def run(self, *inputs: torch.Tensor) -> Any:
        """Run the graph on `inputs` (the example inputs when none are given), without grad."""
        with torch.no_grad():
            return self.graph_module(*(inputs or self.example_inputs))

    __call__ = run

    def run_chunked(self, *inputs: torch.Tensor) -> Any:
        """Run inputs whose batch is a multiple of the captured batch, in chunks of it.

        Captured graphs have static shapes; samplers with classifier-free guidance double the
        batch. Returns the first output of each chunk, concatenated.
        """
        size = self.example_inputs[0].shape[0]
        total = inputs[0].shape[0]
        if total == size:
            out = self.run(*inputs)
            return out[0] if isinstance(out, (tuple, list)) else out
        if total % size:
            raise ConfigError(
                f"{self.name} was captured with batch {size}; got a batch of {total}, not a multiple of it"
            )
        outs = []
        for start in range(0, total, size):
            out = self.run(*(t[start : start + size] for t in inputs))
            outs.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.cat(outs)

    def clone(self, *, share_weights: bool = False) -> Program:
        """A deep copy: graph, parameters, annotations. Passes edit the clone, never the input.

        With `share_weights`, the copy's graph, annotations and modules are new but its
        parameters, buffers and tensor constants are the input's own tensor objects (copy on
        write: a model of 10 GB forks for the cost of its graph). Whoever edits such a copy must
        replace a weight (register a new tensor under the name), never write into it in place;
        `weight_versions` lets a caller check that it did not.
        """
        memo = weight_memo(self.graph_module) if share_weights else {}
        return Program(
            copy.deepcopy(self.graph_module, memo),
            tuple(t.clone() for t in self.example_inputs),
            Annotations.from_dict(self.annotations.to_dict()),
            self.name,
            copy.deepcopy(self.meta),
            self.workload,
        )

    def input_names(self) -> list[str]:
        """The graph's input names, in order (the forward's argument names at capture)."""
        return [str(n.target) for n in self.graph.nodes if n.op == "placeholder"]

    def with_workload(self, workload: Workload) -> Program:
        """Set `workload` after checking it fits this Program's inputs; returns self."""
        workload.check(self.input_names(), self.example_inputs)
        self.workload = workload
        return self

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    def lint(self) -> None:
        """Check graph invariants (fx lint) and regenerate the module's code."""
        self.graph.lint()
        self.graph_module.recompile()

    # -- queries ---------------------------------------------------------------------------
    def compute_nodes(self) -> list[fx.Node]:
        """The call_function nodes, in topological order."""
        return [n for n in self.graph.nodes if n.op == "call_function"]

    def find(
        self,
        kind: str | Iterable[str] | None = None,
        module: str | None = None,
        op: str | None = None,
        skip: Iterable[str] = (),
    ) -> list[fx.Node]:
        """Nodes of the given op `kind` (see `OP_KINDS`), under module path `module` (a prefix or a
        glob such as `blocks.*.attn`), with ATen op name `op`, not under any path in `skip`."""
        kinds: set[str] | None = None
        if kind is not None:
            kinds = {kind} if isinstance(kind, str) else set(kind)
            unknown = kinds - set(OP_KINDS) - {"other"}
            if unknown:
                raise ConfigError(f"unknown op kind {sorted(unknown)}; known: {', '.join(sorted(OP_KINDS))}")
        skip = tuple(skip)
        found = []
        for node in self.compute_nodes():
            path = module_path(node)
            if kinds is not None and op_kind(node) not in kinds:
                continue
            if op is not None and op_name(node) != op:
                continue
            if module is not None and not (_within(path, module) or fnmatch.fnmatchcase(path, module)):
                continue
            if any(_within(path, s) or fnmatch.fnmatchcase(path, s) for s in skip):
                continue
            found.append(node)
        return found

    def module_paths(self) -> list[str]:
        """Every module path that owns at least one node, with all its ancestors, sorted."""
        paths: set[str] = set()
        for node in self.compute_nodes():
            parts = module_path(node).split(".") if module_path(node) else []
            paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(paths)

    def block_paths(self, pattern: str | None = None) -> list[str]:
        """Module paths that form blocks, in execution order.

        With `pattern` (a regex matched against the whole path): the matching paths. Without:
        numbered children of module lists (`blocks.3`, `down_blocks.1`) and modules named
        `*block` (`mid_block`), at the shallowest level where they occur.
        """
        paths = self.module_paths()
        if pattern is not None:
            try:
                rx = re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"block pattern {pattern!r} is not a valid regex: {err}") from err
            chosen = [p for p in paths if rx.fullmatch(p)]
        else:
            candidates = [p for p in paths if _NUMBERED.search(p) or _BLOCK_NAME.search(p)]
            chosen = [p for p in candidates if not any(c != p and _within(p, c) for c in candidates)]
        first_use: dict[str, int] = {}
        for i, node in enumerate(self.compute_nodes()):
            path = module_path(node)
            for c in chosen:
                if c not in first_use and _within(path, c):
                    first_use[c] = i
        return sorted((c for c in chosen if c in first_use), key=first_use.__getitem__)

    def blocks(self, pattern: str | None = None) -> list[Block]:
        """The blocks (see `block_paths`) with their nodes, inputs and outputs."""
        result = []
        users_outside: dict[fx.Node, bool] = {}
        for path in self.block_paths(pattern):
            nodes = tuple(n for n in self.compute_nodes() if _within(module_path(n), path))
            inside = set(nodes)
            inputs: dict[fx.Node, None] = {}
            outputs: dict[fx.Node, None] = {}
            for n in nodes:
                for arg in n.all_input_nodes:
                    if arg not in inside and arg.op != "get_attr":
                        inputs[arg] = None
                users_outside[n] = any(u not in inside for u in n.users)
                if users_outside[n]:
                    outputs[n] = None
            result.append(Block(path, nodes, tuple(inputs), tuple(outputs)))
        return result

    def attention_sites(self) -> list[fx.Node]:
        """Attention nodes: fused SDPA calls, and softmax nodes that sit between two matmuls."""
        sites = self.find(kind="attention")
        for node in self.find(kind="softmax"):
            src = node.all_input_nodes[0] if node.all_input_nodes else None
            feeds_matmul = any(op_kind(u) == "matmul" for u in node.users)
            if src is not None and feeds_matmul and _reaches_matmul(src):
                sites.append(node)
        return sites

    def parameters(self) -> dict[str, torch.Tensor]:
        """Named parameters and buffers of the graph module."""
        named: dict[str, torch.Tensor] = dict(self.graph_module.named_parameters())
        named.update(dict(self.graph_module.named_buffers()))
        return named

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each ATen op the graph has."""
        counts: dict[str, int] = {}
        for node in self.compute_nodes():
            counts[op_name(node)] = counts.get(op_name(node), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_networkx(self) -> nx.DiGraph:
        """A networkx view: one vertex per node (op, kind, module, shape), one edge per use."""
        g = nx.DiGraph()
        for node in self.graph.nodes:
            val = node.meta.get("val")
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
            g.add_node(
                node.name,
                op=node.op,
                aten=op_name(node),
                kind=op_kind(node) if node.op == "call_function" else node.op,
                module=module_path(node),
                shape=shape,
            )
            for arg in node.all_input_nodes:
                g.add_edge(arg.name, node.name)
        return g


def weight_tensors(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor a graph module holds, by dotted name: parameters, buffers and plain tensor
    attributes (the constants torch.export lifts), each tensor object once."""
    found: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for path, module in gm.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        values = [*module._parameters.items(), *module._buffers.items()]
        values += [(k, v) for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
        for name, tensor in values:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                found[prefix + name] = tensor
    return found


def weight_memo(gm: fx.GraphModule) -> dict[int, Any]:
    """A `copy.deepcopy` memo that maps each of `gm`'s tensors to itself, so a deep copy of the
    module shares them instead of copying their storage."""
    return {id(t): t for t in weight_tensors(gm).values()}


def weight_versions(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    """(data pointer, autograd version counter) of each of `gm`'s tensors: an in-place write
    (`w.mul_(2)`, `w.copy_(...)`) bumps the counter, so two snapshots tell whether one happened."""
    return {k: (t.data_ptr(), t._version) for k, t in weight_tensors(gm).items()}


def eliminate_dead_code(gm: fx.GraphModule) -> int:
    """Remove nodes whose values nobody uses; returns how many went.

    In a functional ATen graph only mutating ops have effects. fx's default check also keeps
    ops tagged nondeterministic (SDPA, because of its dropout argument), which would leave a
    cut-out attention block running, so mutation is the only reason to keep a node here.
    """

    def impure(node: fx.Node) -> bool:
        if node.op in ("placeholder", "output"):
            return True
        target = node.target
        return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable

    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code(is_impure_node=impure)
    return before - len(gm.graph.nodes)


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


def _reaches_matmul(node: fx.Node, depth: int = 4) -> bool:
    # Walk a few ops back (scale, mask add, ...) looking for the Q @ K^T product.
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if op_kind(n) == "matmul":
                return True
            nxt.extend(n.all_input_nodes)
        frontier = nxt
    return False
