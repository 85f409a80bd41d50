"""Cache units and step variants: block caching as a graph transformation.

Block Caching (Wimbauer et al., "Cache Me if You Can", CVPR 2024) reuses a block's output from
an earlier sampler step instead of computing it. Here each block found by `Program.blocks()`
becomes a *cache unit*: the value that is cached, and how it re-enters the graph.

- `residual` units (a block with one output of the same shape as one of its inputs, the
  residual stream): the cached value is the block's residual `out - in`; on a reuse step the
  block's output is rebuilt as `in + cached`, so what earlier blocks computed afresh still flows
  on. The paper caches the branch of a residual block while the skip connection carries the
  fresh input; for a transformer block `x + f(x)` this is the same thing.
- `output` units (any other block, e.g. a UNet block that changes the channel count or has
  skip outputs): the cached values are the block's output nodes themselves.
- the `deep` unit of a UNet (DeepCache, Ma et al., CVPR 2024): one output unit, the last block
  whose input is below the model's full feature resolution (the up block that ends the deep
  branch and feeds the shallow up blocks). Reusing it drops everything that only feeds it: the
  deep down blocks, the middle and the deep up blocks; the shallow down blocks, whose outputs
  feed the skip connections, and the shallow up blocks recompute on every step.

A *step variant* is an ordinary Program built with `with_outputs` / `cut_to_inputs`: the cached
values of the blocks reused at that step become extra inputs (their nodes disappear after
dead-code elimination), and the cached values of the blocks that must fill the cache become
extra outputs. Variants save, export to ONNX and lower like any other Program.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.program import Block, Program, eliminate_dead_code, remove_unused_attributes
from optkit.ir.subgraph import cut_to_inputs, with_outputs

log = logging.getLogger(__name__)

CacheMode = Literal["residual", "output", "deep"]


@dataclass(frozen=True)
class CacheUnit:
    """One cached block: its path, the node names it caches and, for residual units, the stream.

    `outputs` are the block's output nodes; `stream` is the input node the residual is taken
    against (None for output units); `cached` are the node names whose values the cache holds,
    in the residual form of the Program (`residual_form`).
    """

    path: str
    outputs: tuple[str, ...]
    stream: str | None
    cached: tuple[str, ...]

    @property
    def mode(self) -> Literal["residual", "output"]:
        return "residual" if self.stream is not None else "output"


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _stream_input(block: Block, order: dict[fx.Node, int]) -> fx.Node | None:
    # The residual stream: the input with the output's shape produced last before the block.
    if len(block.outputs) != 1:
        return None
    out_shape = _shape(block.outputs[0])
    same = [n for n in block.inputs if out_shape is not None and _shape(n) == out_shape]
    return max(same, key=order.__getitem__) if same else None


def cache_units(
    program: Program, pattern: str | None = None, mode: CacheMode = "residual"
) -> list[CacheUnit]:
    """The cache units of `program`: one per block of `program.blocks(pattern)`, in order.

    With `mode="residual"`, blocks that have a residual stream cache their residual; the others
    (and every block with `mode="output"`) cache their output nodes. Without a `pattern`, blocks
    that do not depend on the first input (the noisy sample), such as timestep-embedding MLPs,
    are left out. With `mode="deep"` there is one unit, the deep branch of a UNet
    (`deep_unit`; `pattern` then names that block). Raises `ConfigError` when no block is left.
    """
    if mode not in ("residual", "output", "deep"):
        raise ConfigError(f"cache mode must be 'residual', 'output' or 'deep', got {mode!r}")
    if mode == "deep":
        return [deep_unit(program, pattern)]
    blocks = program.blocks(pattern)
    if not blocks:
        raise ConfigError(
            f"{program.name} has no blocks to cache (no numbered module-list children such as "
            "`blocks.0` and no `*block` modules); pass a block pattern that matches module paths"
        )
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    on_x = _depends_on_first_input(program)
    units = []
    for block in blocks:
        if not block.outputs:
            log.info("block %s has no outputs used outside it; not cached", block.path)
            continue
        if pattern is None and not any(n in on_x for n in block.outputs):
            # Timestep / condition embedding MLPs (`t_embed.0`) are numbered too but do not see x.
            log.info("block %s does not depend on the noisy input; not cached", block.path)
            continue
        stream = _stream_input(block, order) if mode == "residual" else None
        outputs = tuple(n.name for n in block.outputs)
        if stream is not None:
            units.append(CacheUnit(block.path, outputs, stream.name, (f"{outputs[0]}_cache_residual",)))
        else:
            units.append(CacheUnit(block.path, outputs, None, outputs))
    if not units:
        raise ConfigError(f"{program.name} has no blocks on the path of its first input (the noisy sample)")
    return units


def _pixels(node: fx.Node) -> int:
    shape = _shape(node)
    return shape[-2] * shape[-1] if shape is not None and len(shape) == 4 else 0


def deep_unit(program: Program, pattern: str | None = None) -> CacheUnit:
    """The DeepCache unit: the block `pattern` names (exactly one), or else the last block on
    the noisy input's path whose input feature map is smaller than the largest one any block
    outputs (the end of the UNet's deep branch). Its output nodes are cached. ConfigError for a
    model without such a block (no resolution change, e.g. a transformer)."""
    on_x = _depends_on_first_input(program)
    blocks = [b for b in program.blocks(pattern) if b.outputs and any(n in on_x for n in b.outputs)]
    if pattern is not None:
        if len(blocks) != 1:
            raise ConfigError(
                f"cache mode 'deep' caches one block; pattern {pattern!r} matches "
                f"{[b.path for b in blocks] or 'none'} of {program.name}"
            )
        chosen = blocks[0]
    else:
        full = max((_pixels(n) for b in blocks for n in b.outputs), default=0)
        deep = [b for b in blocks if any(0 < _pixels(n) < full for n in b.inputs if n in on_x)]
        if not deep:
            raise ConfigError(
                f"cache mode 'deep' needs a UNet: no block of {program.name} takes a feature map below "
                "its full resolution; use mode 'residual' or 'output', or name the block in `blocks`"
            )
        chosen = deep[-1]
    outputs = tuple(n.name for n in chosen.outputs)
    return CacheUnit(chosen.path, outputs, None, outputs)


def reached_from(graph: fx.Graph, source: fx.Node) -> set[fx.Node]:
    """`source` and every node of `graph` that depends on it."""
    reached = {source}
    for node in graph.nodes:
        if any(arg in reached for arg in node.all_input_nodes):
            reached.add(node)
    return reached


def _depends_on_first_input(program: Program) -> set[fx.Node]:
    return reached_from(program.graph, next(n for n in program.graph.nodes if n.op == "placeholder"))


def residual_form(program: Program, units: Sequence[CacheUnit]) -> Program:
    """A copy of `program` where each residual unit's output `o` (stream `h`) is rewritten as
    `h + (o - h)`, so that the residual `o - h` is a node that can be cut or returned."""
    new = program.clone(share_weights=True)  # graph edits only
    graph = new.graph
    table = {n.name: n for n in graph.nodes}
    rebuilt_of: dict[fx.Node, fx.Node] = {}
    for unit in sorted(units, key=lambda u: list(table).index(u.outputs[0])):
        if unit.stream is None:
            continue
        # A stream that is an earlier unit's output now reads that unit's rebuilt value.
        out, stream = table[unit.outputs[0]], table[unit.stream]
        stream = rebuilt_of.get(stream, stream)
        with graph.inserting_after(out):
            residual = graph.create_node(
                "call_function", torch.ops.aten.sub.Tensor, (out, stream), name=unit.cached[0]
            )
        with graph.inserting_after(residual):
            rebuilt = graph.create_node(
                "call_function",
                torch.ops.aten.add.Tensor,
                (stream, residual),
                name=f"{unit.outputs[0]}_cache_out",
            )
        if residual.name != unit.cached[0]:
            raise ConfigError(f"node name {unit.cached[0]} is taken in {program.name}")
        for node in (residual, rebuilt):
            node.meta = {k: v for k, v in out.meta.items() if k in ("val", "tensor_meta")}
        out.replace_all_uses_with(rebuilt, delete_user_cb=lambda user, r=residual: user is not r)
        rebuilt_of[out] = rebuilt
    new.lint()
    return new


def cached_example_values(program: Program, names: Sequence[str]) -> list[torch.Tensor]:
    """Zero tensors shaped like the values of nodes `names` (example inputs of cut variants)."""
    table = {n.name: n for n in program.graph.nodes}
    values = []
    for name in names:
        val = table[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ConfigError(f"node {name} of {program.name} has no recorded tensor value to cache")
        values.append(torch.zeros(tuple(val.shape), dtype=val.dtype))
    return values


def _drop_dead_nodes(program: Program) -> None:
    eliminate_dead_code(program.graph_module)
    remove_unused_attributes(program.graph_module)
    program.lint()


@dataclass
class StepVariant:
    """A Program for one kind of step: inputs = original inputs + the reused units' cached values
    (in `reuse` order); outputs = original outputs + the filled units' cached values (in `fill`
    order)."""

    program: Program
    reuse: tuple[CacheUnit, ...]
    fill: tuple[CacheUnit, ...]


def step_variant(
    program: Program,
    reuse: Sequence[CacheUnit],
    fill: Sequence[CacheUnit],
    residual: Program | None = None,
) -> StepVariant:
    """Build the variant that reuses the units `reuse` and fills the cache of the units `fill`.

    1. rewrite the involved residual units into `h + (o - h)` (`residual_form`; pass a prebuilt
       one as `residual` to save time);
    2. return the cached values of `fill` as extra outputs (`with_outputs`);
    3. cut the cached values of `reuse` into extra inputs (`cut_to_inputs`), which drops the
       reused blocks' nodes.

    With nothing to reuse or fill the variant is `program` itself, bit for bit.
    """
    reuse, fill = tuple(reuse), tuple(fill)
    overlap = {u.path for u in reuse} & {u.path for u in fill}
    if overlap:
        raise ConfigError(f"blocks {sorted(overlap)} cannot be both reused and recomputed in one step")
    if not reuse and not fill:
        return StepVariant(program, (), ())
    base = residual if residual is not None else residual_form(program, reuse + fill)
    fill_names = [name for u in fill for name in u.cached]
    reuse_names = [name for u in reuse for name in u.cached]
    variant = with_outputs(base, fill_names) if fill_names else base
    if reuse_names:
        variant = cut_to_inputs(variant, reuse_names, cached_example_values(base, reuse_names))
        _drop_dead_nodes(variant)
    variant.name = f"{program.name}[reuse {len(reuse)}, fill {len(fill)}]"
    return StepVariant(variant, reuse, fill)
