"""Timestep-grouped activation scales for diffusion denoisers (PTQ4DiT's and ViT-Q's remedy for
activation ranges that change along the sampler's trajectory).

One activation scale per layer, calibrated over every sampler step, either clips the steps
with the widest ranges or wastes resolution on the others (docs/papers.md, measured by
bench_papers: the zoo's DiT's Linear
inputs span 2.4x the noisiest step's range over the trajectory at the median, up to 8.7x). Here the
calibration steps are split by their timestep value into G contiguous ranges holding equal
numbers of distinct calibration timesteps, every group gets its own activation statistics, and
each quantized layer stores a (G,) table of scales and one of zero points.

In the graph, with plain tensor ops that export to ONNX and lower through TVM:

1. `index = sum(t[:, None] >= boundaries, 1)`, once per graph: each row's group (B,), from the
   denoiser's timestep input (its second input, `(x, t, *cond)`, as calibration reads it);
2. per layer, `index_select(scale_table, 0, index)` reshaped to (B, 1, ..., 1), the rank of the
   layer's input, and the same for the zero points;
3. the quantized ops take these per-sample scales in place of the per-tensor ones
   (`optkit.quant.ops`: the int8 GEMM quantizes and rescales each row with its own scale).

Rows of one batch may carry different timesteps: every row picks its own group. A 0-d
timestep (one value for the batch) selects one row that broadcasts over the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.quant.activations import act_qparams
from optkit.quant.calibration import Batch
from optkit.quant.observers import ObserverKind
from optkit.quant.rewrite import ActStats, collect_act_stats
from optkit.quant.sites import QuantSite, add_buffer

log = logging.getLogger(__name__)

TIMESTEP_INPUT = 1  # a denoiser's inputs are (x_t, t, *cond)


@dataclass(frozen=True)
class TimestepGroups:
    """G contiguous timestep ranges: row t belongs to group `#(boundaries <= t)`."""

    boundaries: torch.Tensor  # (G - 1,) float32, ascending

    @property
    def count(self) -> int:
        return self.boundaries.numel() + 1

    def group_of(self, t: torch.Tensor) -> torch.Tensor:
        """The group of each element of `t` (int64, flattened): the graph's rule, in eager."""
        return (t.reshape(-1, 1).float() >= self.boundaries.reshape(1, -1)).sum(1)

    def describe(self) -> str:
        return ", ".join(f"{float(b):g}" for b in self.boundaries)


def split_timesteps(batches: Sequence[Batch], groups: int) -> TimestepGroups:
    """Boundaries that split the calibration batches' distinct timesteps into `groups` runs of
    equal count (the last ones longer by one when it does not divide), cut half-way between
    neighbouring timesteps."""
    values = torch.unique(torch.cat([b[TIMESTEP_INPUT].reshape(-1).float() for b in batches]))  # sorted
    if values.numel() < groups:
        raise ConfigError(
            f"timestep_groups={groups} needs at least {groups} distinct calibration timesteps, got "
            f"{values.numel()} ({', '.join(f'{float(v):g}' for v in values)}); use calibration='all-steps' "
            "or fewer groups"
        )
    edges = [round(i * values.numel() / groups) for i in range(1, groups)]
    bounds = torch.stack([(values[e - 1] + values[e]) / 2 for e in edges]) if edges else values[:0]
    return TimestepGroups(bounds.float())


def rows_by_group(batches: Sequence[Batch], groups: TimestepGroups) -> list[list[Batch]]:
    """The calibration rows of each group: every batch split by its rows' timesteps (inputs
    without the batch's leading dimension are passed whole)."""
    out: list[list[Batch]] = [[] for _ in range(groups.count)]
    for batch in batches:
        t = batch[TIMESTEP_INPUT]
        g = groups.group_of(t)
        if t.dim() == 0:
            out[int(g[0])].append(batch)
            continue
        for k in torch.unique(g).tolist():
            mask = g == k
            out[k].append(tuple(x[mask] if x.dim() and x.shape[0] == t.shape[0] else x for x in batch))
    return out


def collect_group_stats(
    program: Program,
    sites: Sequence[QuantSite],
    batches: Sequence[Batch],
    groups: TimestepGroups,
    observer: ObserverKind,
    percentile: float,
) -> dict[str, list[ActStats]]:
    """Each site's input statistics per timestep group, keyed by node name."""
    per_group = [
        collect_act_stats(program, sites, rows, observer, percentile)
        for rows in rows_by_group(batches, groups)
    ]
    return {s.node.name: [stats[s.node.name] for stats in per_group] for s in sites}


class GroupedActScales:
    """Inserts the per-sample activation (scale, zero point) selection into a Program's graph."""

    def __init__(self, program: Program, groups: TimestepGroups, stats: dict[str, list[ActStats]]) -> None:
        self.program, self.groups, self.stats = program, groups, stats
        self._index: fx.Node | None = None

    def tables(self, site: QuantSite) -> tuple[torch.Tensor, torch.Tensor]:
        """The site's (G,) float32 scales and (G,) int8 zero points (int8 grid)."""
        pairs = [act_qparams(st) for st in self.stats[site.node.name]]
        return torch.stack([s for s, _ in pairs]), torch.stack([z for _, z in pairs])

    def index(self) -> fx.Node:
        """The (B,) group index of each row, computed once after the graph's inputs."""
        if self._index is not None:
            return self._index
        gm = self.program.graph_module
        graph = gm.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) <= TIMESTEP_INPUT:
            raise ConfigError(
                f"timestep_groups > 1 needs a denoiser (x_t, t, *cond); {self.program.name} has "
                f"{len(placeholders)} input(s)"
            )
        t = placeholders[TIMESTEP_INPUT]
        aten = torch.ops.aten
        with graph.inserting_after(placeholders[-1]):
            bounds = graph.get_attr(add_buffer(gm, "timestep_groups", "boundaries", self.groups.boundaries))
        with graph.inserting_after(bounds):
            t32 = graph.call_function(aten._to_copy.default, (t,), {"dtype": torch.float32})
        with graph.inserting_after(t32):
            col = graph.call_function(aten.reshape.default, (t32, [-1, 1]))  # (B, 1)
        with graph.inserting_after(col):
            ge = graph.call_function(aten.ge.Tensor, (col, bounds))  # (B, G - 1)
        with graph.inserting_after(ge):
            ge64 = graph.call_function(aten._to_copy.default, (ge,), {"dtype": torch.int64})
        with graph.inserting_after(ge64):
            self._index = graph.call_function(aten.sum.dim_IntList, (ge64, [1]))  # (B,)
        return self._index

    def select(self, site: QuantSite, consumer: fx.Node, rank: int) -> tuple[fx.Node, fx.Node]:
        """Nodes, before `consumer`, holding this site's per-sample (B, 1, ..., 1) scale and zero
        point for an input of `rank` dimensions."""
        gm = self.program.graph_module
        graph = gm.graph
        scales, zeros = self.tables(site)
        index = self.index()
        aten = torch.ops.aten
        shape = [-1] + [1] * (rank - 1)
        out = []
        with graph.inserting_before(consumer):
            for role, table in (("x_scale_table", scales), ("x_zero_table", zeros)):
                read = graph.get_attr(add_buffer(gm, site.path, role, table))
                rows = graph.call_function(aten.index_select.default, (read, 0, index))  # (B,)
                out.append(graph.call_function(aten.reshape.default, (rows, shape)))
        return out[0], out[1]
