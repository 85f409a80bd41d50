"""`fold-constants`: evaluate, once, the parts of the graph that depend only on parameters.

Captured graphs often recompute constants on every call: transposed or reshaped weights,
sinusoidal position embeddings built from `arange`, RoPE tables, masks from `ones`/`triu`.
This pass evaluates every pure node whose inputs are all constants, stores the values that
the rest of the graph reads as buffers (`_folded_N`) and rewires the readers. Random ops are
never folded, and a value much larger than the constants it is computed from is left alone
(folding an `expand` would trade compute for memory). Run early; follow with `dce`.

In-place ops stay in the graph, and so does every value they write into (up through the views
it is one of): folded, such a value would be a buffer that each call adds to again. A T5
encoder's relative position buckets (transformers 5.24: `buckets += where(...)`) indexed past
its bias table on the second call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.ops import op_name
from optkit.ir.program import Program, eliminate_dead_code
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.report import Figure

log = logging.getLogger(__name__)

_RANDOM_OPS = frozenset(
    {
        "rand",
        "randn",
        "randint",
        "rand_like",
        "randn_like",
        "randint_like",
        "bernoulli",
        "dropout",
        "normal",
        "uniform",
        "native_dropout",
        "multinomial",
        "randperm",
        "empty",
        "empty_like",
        "empty_strided",
    }
)


@dataclass(frozen=True)
class FoldConstantsConfig(PassConfig):
    """`max_growth`: fold a value only if it is at most this many times the bytes of its constant
    inputs (or under `min_bytes`)."""

    max_growth: float = 2.0
    min_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_growth < 1.0:
            raise ConfigError(f"max_growth must be >= 1.0, got {self.max_growth}")
        if self.min_bytes < 0:
            raise ConfigError(f"min_bytes must be >= 0, got {self.min_bytes}")


def _is_foldable(node: fx.Node, constant: set[fx.Node], written: set[fx.Node]) -> bool:
    if node.op != "call_function" or op_name(node) in _RANDOM_OPS or node.is_impure():
        return False
    if node in written or _writes(node):
        return False
    return all(arg in constant for arg in node.all_input_nodes)


def _schema_args(node: fx.Node) -> list[tuple[Any, Any]]:
    """(schema argument, the node's value for it) of an ATen op; [] for other targets."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return []
    values = []
    for i, arg in enumerate(schema.arguments):
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        values.append((arg, value))
    return values


def _writes(node: fx.Node) -> list[fx.Node]:
    """The input nodes an in-place (or out=) ATen op writes into."""
    return [
        value
        for arg, value in _schema_args(node)
        if isinstance(value, fx.Node) and arg.alias_info is not None and arg.alias_info.is_write
    ]


def _alias_of(node: fx.Node) -> fx.Node | None:
    """The input a view op's result aliases (`aten.view`, `to` of the same dtype, ...), or None."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.returns or schema.returns[0].alias_info is None:
        return None
    return next(
        (
            value
            for arg, value in _schema_args(node)
            if isinstance(value, fx.Node) and arg.alias_info is not None
        ),
        None,
    )


def _written_values(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose memory an in-place op writes, followed up through the views it is one of."""
    written: set[fx.Node] = set()
    for node in gm.graph.nodes:
        for first in _writes(node) if node.op == "call_function" else []:
            target: fx.Node | None = first
            while target is not None and target.op == "call_function" and target not in written:
                written.add(target)
                target = _alias_of(target)
    return written


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


@register_pass("fold-constants", FoldConstantsConfig)
class FoldConstants(Pass):
    """Replace parameter-only subgraphs by their precomputed values."""

    shares_weights = True  # registers new tensors; never writes its input's

    def run(self, program: Program) -> PassResult:
        gm = program.graph_module
        config: FoldConstantsConfig = self.config  # type: ignore[assignment]
        env: dict[fx.Node, Any] = {}
        constant: set[fx.Node] = set()
        source_bytes: dict[fx.Node, int] = {}
        written = _written_values(gm)
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                env[node] = _fetch(gm, str(node.target))
                constant.add(node)
                source_bytes[node] = _nbytes(env[node])
            elif _is_foldable(node, constant, written):
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
                with torch.no_grad():
                    env[node] = node.target(*args, **kwargs)  # type: ignore[operator]
                constant.add(node)
                source_bytes[node] = sum(source_bytes[a] for a in node.all_input_nodes)
        folded, saved_nodes, index = 0, 0, 0
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node not in constant or not isinstance(env[node], torch.Tensor):
                continue
            if all(u in constant for u in node.users):
                continue  # only values read by non-constant code are materialized
            size = _nbytes(env[node])
            if size > config.min_bytes and size > config.max_growth * max(1, source_bytes[node]):
                log.info("not folding %s: %d bytes from %d", node.name, size, source_bytes[node])
                continue
            while hasattr(gm, f"_folded_{index}"):
                index += 1
            name = f"_folded_{index}"
            gm.register_buffer(name, env[node].detach().clone().contiguous())
            with gm.graph.inserting_before(node):
                new = gm.graph.get_attr(name)
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            folded += 1
        if folded:
            saved_nodes = eliminate_dead_code(gm)
            gm.recompile()
        return PassResult(
            program,
            modified=folded > 0,
            figures={
                "values_folded": Figure(folded, "tensors"),
                "nodes_removed": Figure(saved_nodes, "nodes"),
            },
        )


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
