"""SQNR sensitivity: how much the model's output suffers when one layer or one block is quantized.

Naively, each candidate costs a full forward (a full sampling run, for diffusion models) of a
copy of the model with that candidate quantized. Here the float model runs once per calibration
batch and its intermediate values are kept; a candidate's copy then recomputes only from the
first node it changed to the output (everything before it is read from the cache), so early
layers cost little and the total is about one "suffix" evaluation per candidate. The measured
speed-up against the naive way is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program
from optkit.quant.calibration import Batch
from optkit.quant.numerics import sqnr_db
from optkit.quant.rewrite import ActStats, LayerPlan, quantize_site
from optkit.quant.sites import QuantSite, find_sites

log = logging.getLogger(__name__)


class _CachedRunner(fx.Interpreter):
    """Runs a graph, reading the values of `cached` node names from a float run instead."""

    def __init__(self, gm: fx.GraphModule, cache: dict[str, Any], cached: set[str]) -> None:
        super().__init__(gm)
        self.cache, self.cached = cache, cached

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.cached:
            return self.cache[n.name]
        return super().run_node(n)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)

    def run(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        out = super().run(*args, **kwargs)
        self.values = {node.name: value for node, value in self.env.items()}
        return out


@dataclass
class SensitivityResult:
    """SQNR (dB) of the output per candidate (and per batch), plus timing against the naive way."""

    sqnr: dict[str, float]
    per_batch: dict[str, list[float]]
    seconds: float
    naive_seconds_estimate: float


def float_run(program: Program, batches: Sequence[Batch]) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Every node's value and the first output, per batch, of the float Program."""
    envs, outs = [], []
    with torch.no_grad():
        for batch in batches:
            rec = _Recorder(program.graph_module)
            out = rec.run(*batch)
            envs.append(rec.values)
            outs.append(flat_outputs(out)[0])
    return envs, outs


def measure(
    program: Program,
    candidates: dict[str, list[str]],
    plan: Callable[[QuantSite], LayerPlan],
    stats: dict[str, ActStats],
    batches: Sequence[Batch],
    progress: Callable[[int, int, str], None] | None = None,
) -> SensitivityResult:
    """SQNR of the output when only the sites of each candidate (name -> site node names) are
    quantized with `plan`; values before a candidate's first site come from one float run."""
    start = time.perf_counter()
    envs, refs = float_run(program, batches)
    float_seconds = time.perf_counter() - start
    order = {n.name: i for i, n in enumerate(program.graph.nodes)}
    sqnr: dict[str, float] = {}
    per_batch: dict[str, list[float]] = {}
    for i, (name, site_names) in enumerate(candidates.items()):
        if progress:
            progress(i, len(candidates), name)
        trial = program.clone()
        sites = [s for s in find_sites(trial)[0] if s.node.name in site_names]
        first = min(order[s.node.name] for s in sites)
        for site in sites:
            quantize_site(trial, site, plan(site), stats.get(site.node.name))
        trial.graph_module.recompile()
        cached = {n.name for n in program.graph.nodes if order[n.name] < first and n.op != "placeholder"}
        values = []
        with torch.no_grad():
            for batch, env, ref in zip(batches, envs, refs, strict=True):
                out = _CachedRunner(trial.graph_module, env, cached).run(*batch)
                values.append(sqnr_db(ref, flat_outputs(out)[0]))
        per_batch[name] = values
        finite = [v for v in values if v != float("inf")]
        sqnr[name] = min(finite) if len(finite) == len(values) else (min(finite) if finite else float("inf"))
    seconds = time.perf_counter() - start
    # Naive: one full float-equivalent forward per candidate and batch.
    naive = float_seconds * len(candidates) + float_seconds
    return SensitivityResult(sqnr, per_batch, seconds, naive)


def block_candidates(program: Program, sites: Sequence[QuantSite]) -> dict[str, list[str]]:
    """Block path -> names of the site nodes inside it; sites outside every block are their own
    candidates, under their module path."""
    result: dict[str, list[str]] = {}
    placed: set[str] = set()
    for block in program.block_paths():
        inside = [s.node.name for s in sites if s.path == block or s.path.startswith(block + ".")]
        if inside:
            result[block] = inside
            placed.update(inside)
    for s in sites:
        if s.node.name not in placed:
            result.setdefault(s.path, []).append(s.node.name)
    return result


def allocate_bits(
    sensitivity_4bit: dict[str, float], params: dict[str, int], average_bits: float, base_bits: int = 8
) -> dict[str, int]:
    """Global mixed precision: every block starts at `base_bits`; the blocks whose 4-bit SQNR is
    highest (least sensitive) drop to 4 bits, per parameter, until the parameter-weighted average
    is at most `average_bits`."""
    bits = {b: base_bits for b in sensitivity_4bit}
    total = sum(params[b] for b in bits) or 1

    def average() -> float:
        return sum(bits[b] * params[b] for b in bits) / total

    # Most SQNR kept per bit saved first.
    for block in sorted(bits, key=lambda b: -sensitivity_4bit[b]):
        if average() <= average_bits + 1e-9:
            break
        bits[block] = 4
    return bits
