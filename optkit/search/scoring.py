"""Scoring a candidate: validation AUC with inherited supernet weights, and the modeled latency
and energy of its placed graph on its device.

The subnet is cut from the trained supernet (`RecSupernet.subnet`), captured once per
architecture at the scoring batch (`torch.export`, as `optkit optimize` does) and costed by the
PIM backend exactly as the `pim` pass costs a Program: `program_table` (this machine's host
model, the device preset with the candidate's knobs), then the candidate's placement rule
(`optimal_placement`, `greedy_placement` or `host_only`, with `co_locate`), then
`CostTable.evaluate`. When the device's numerics are narrower than float32 and ops hold weights
on it, the AUC is measured with those weights rounded to the device format
(`simulate.round_to`, per row for int8); activations stay in float32 (a deviation: the `pim`
pass's SQNR check rounds both).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from optkit.backends.pim.cost import HostModel
from optkit.backends.pim.ops import PimOp, program_ops
from optkit.backends.pim.placement import (
    PIM,
    CostTable,
    co_locate,
    greedy_placement,
    host_only,
    optimal_placement,
    sinks_of,
)
from optkit.backends.pim.presets import PimPreset
from optkit.backends.pim.simulate import round_to
from optkit.ir.capture import capture
from optkit.metrics import log_loss, roc_auc
from optkit.nn.supernet import BlockChoice, RecSupernet
from optkit.search.space import Candidate, hardware_preset
from optkit.search.training import Data, predict

log = logging.getLogger(__name__)


def inherited_scores(
    supernet: RecSupernet, choices: list[tuple[BlockChoice, ...]], validation: Data
) -> list[dict[str, Any]]:
    """Validation AUC and log loss of each subnet with the supernet's weights, in order.

    Each entry: {"choice", "name", "auc", "log_loss", "params"}.
    """
    out = []
    for choice in choices:
        sub = supernet.subnet(choice).eval()
        probs = predict(sub, validation)
        out.append(
            {
                "choice": choice,
                "name": sub.describe(),
                "auc": roc_auc(validation["labels"], probs),
                "log_loss": log_loss(validation["labels"], probs),
                "params": sum(p.numel() for p in sub.parameters()),
            }
        )
    return out


@dataclass
class _Graph:
    ops: list[PimOp]
    inputs: dict[str, int]
    sinks: list[str]


@dataclass
class CandidateScorer:
    """Everything a worker needs to score candidates; picklable, sent once per worker.

    `batch` is the inference batch the cost model prices (rows per call).
    """

    supernet: RecSupernet
    validation: Data
    preset: PimPreset
    host: HostModel
    batch: int = 256
    placement_objective: str = "latency"  # what the `optimal` rule minimizes
    _graphs: dict[tuple[BlockChoice, ...], _Graph] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_graphs"] = {}  # captured graphs are per process
        return state

    def score(self, candidate: Candidate) -> dict[str, Any]:
        """{"auc", "latency_us", "energy_uj", "pim_ops", "pim_bytes", "preset"} of `candidate`."""
        preset = hardware_preset(self.preset, candidate.hardware)
        graph = self._graph(candidate.choice)
        table = CostTable(graph.ops, self.host, preset, graph.inputs)
        rule = candidate.hardware.placement
        if rule == "optimal":
            placement = optimal_placement(table, graph.sinks, self.placement_objective)
        elif rule == "greedy":
            placement = greedy_placement(table, graph.sinks)
        else:
            placement = host_only(table)
        placement = co_locate(table, placement)
        ev = table.evaluate(placement, graph.sinks)
        on_pim = [op for op in graph.ops if placement.get(op.name) == PIM and op.kind != "view"]
        auc = self._auc(candidate.choice, [op.key for op in on_pim if op.weight_bytes], preset.numerics)
        if not (math.isfinite(ev.latency_us) and math.isfinite(ev.energy_uj)):
            raise ValueError(f"candidate {candidate.describe()} has no finite cost on {preset.name}")
        return {
            "auc": auc,
            "latency_us": ev.latency_us,
            "energy_uj": ev.energy_uj,
            "pim_ops": len(on_pim),
            "pim_bytes": ev.pim_bytes,
            "preset": preset.name,
        }

    def _graph(self, choice: tuple[BlockChoice, ...]) -> _Graph:
        if choice not in self._graphs:
            sub = self.supernet.subnet(choice).eval()
            cfg = self.supernet.config
            gen = torch.Generator().manual_seed(0)
            dense = torch.randn(self.batch, cfg.num_dense, generator=gen)
            sparse = torch.stack(
                [torch.randint(0, c, (self.batch,), generator=gen) for c in cfg.cardinalities], dim=1
            )
            program = capture(sub, (dense, sparse), name="candidate")
            placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
            inputs = {
                n.name: int(t.numel()) * t.element_size()
                for n, t in zip(placeholders, program.example_inputs, strict=False)
            }
            if len(self._graphs) > 256:  # a long search visits many architectures
                self._graphs.clear()
            self._graphs[choice] = _Graph(program_ops(program), inputs, sinks_of(program))
        return self._graphs[choice]

    def _auc(self, choice: tuple[BlockChoice, ...], pim_keys: list[str], numerics: str) -> float:
        sub = self.device_subnet(choice, pim_keys, numerics)
        return roc_auc(self.validation["labels"], predict(sub, self.validation))

    def device_subnet(self, choice: tuple[BlockChoice, ...], pim_keys: list[str], numerics: str) -> nn.Module:
        """Subnet `choice` with the weights of the ops `pim_keys` (stable op keys) rounded to
        `numerics`, as the device holds them."""
        sub: nn.Module = self.supernet.subnet(choice).eval()
        if numerics == "fp32" or not pim_keys:
            return sub
        modules = dict(sub.named_modules())
        with torch.no_grad():
            for path in {key.split(":")[0] for key in pim_keys}:
                module = modules.get(path)
                for p in module.parameters(recurse=False) if module is not None else ():
                    p.copy_(round_to(p, numerics, per_row=True))
        return sub
