"""`fold-constants`: evaluate, once, the parts of the graph that depend only on parameters.

Captured graphs often recompute constants on every call: transposed or reshaped weights,
sinusoidal position embeddings built from `arange`, RoPE tables, masks from `ones`/`triu`.
This pass evaluates every pure node whose inputs are all constants, stores the values that
the rest of the graph reads as buffers (`_folded_N`) and rewires the readers. Random ops are
never folded, and a value much larger than the constants it is computed from is left alone
(folding an `expand` would trade compute for memory). Run early; follow with `dce`.
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


def _is_foldable(node: fx.Node, constant: set[fx.Node]) -> bool:
    if node.op != "call_function" or op_name(node) in _RANDOM_OPS or node.is_impure():
        return False
    return all(arg in constant for arg in node.all_input_nodes)


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
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                env[node] = _fetch(gm, str(node.target))
                constant.add(node)
                source_bytes[node] = _nbytes(env[node])
            elif _is_foldable(node, constant):
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
