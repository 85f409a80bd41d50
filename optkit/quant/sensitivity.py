"""SQNR sensitivity: how much the model's output suffers when one layer or one block is quantized.

Naively, each candidate costs a full forward (a full sampling run, for diffusion models) of the
model with that candidate quantized. Here the float model runs once per calibration batch and
its intermediate values are kept; a candidate then recomputes only from its first layer to the
output (everything before is read from the cache), with its layers computed on fake-quantized
weights and inputs — the same numbers the int8/int4 kernels produce — so no graph is copied or
rewritten. The total is about one "suffix" evaluation per candidate; the measured speed-up
against the naive way is reported.
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
from optkit.quant.activations import ACT_BITS, act_qparams, static_range
from optkit.quant.calibration import Batch
from optkit.quant.numerics import QuantSpec, scale_zero, sqnr_db
from optkit.quant.ops import act_qdq
from optkit.quant.rewrite import ActStats, LayerPlan
from optkit.quant.sites import QuantSite, find_sites
from optkit.quant.weights import quantize_rtn

log = logging.getLogger(__name__)


class _CachedRunner(fx.Interpreter):
    """Runs a graph, reading the values of `cached` node names from a float run instead, and
    computing the nodes in `fake` with fake-quantized inputs and weights."""

    def __init__(
        self, gm: fx.GraphModule, cache: dict[str, Any], cached: set[str], fake: dict[str, _FakeSite]
    ) -> None:
        super().__init__(gm)
        self.cache, self.cached, self.fake = cache, cached, fake

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.cached:
            return self.cache[n.name]
        site = self.fake.get(n.name)
        if site is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        values = list(args)
        if site.act is not None:
            values[0] = site.act(values[0])
        values[1] = site.weight
        return n.target(*values, **kwargs)  # type: ignore[operator]


@dataclass
class _FakeSite:
    weight: torch.Tensor  # dequantized, in the layer's own layout
    act: Callable[[torch.Tensor], torch.Tensor] | None  # the input's grid (calibrated scales)


def _static_act(stats: ActStats | None, bits: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """An input's calibrated grid, as `optkit.quant.activations.insert_act_qdq` applies it."""
    x_scale, x_zero = act_qparams(stats, bits)
    span = static_range(x_scale, x_zero, bits)

    def act(x: torch.Tensor) -> torch.Tensor:
        return act_qdq(x if span is None else x.clamp(*span), x_scale, x_zero)

    return act


def _fake_site(site: QuantSite, plan: LayerPlan, stats: ActStats | None) -> _FakeSite:
    # The same numbers the kernels of `optkit.quant.rewrite` compute with.
    act = _static_act(stats, 8 if site.kind == "conv" else plan.abits) if plan.abits in ACT_BITS else None
    if site.kind == "conv":
        w = site.weight.float()
        amax = w.abs().reshape(w.shape[0], -1).amax(1)
        scale, _ = scale_zero(-amax, amax, QuantSpec(8, True, "channel"))
        scale = scale.reshape(-1, 1, 1, 1)
        return _FakeSite(torch.clamp(torch.round(w / scale), -128, 127) * scale, act)
    w_kn = site.weight.t().float()
    spec = plan.weight
    return _FakeSite(quantize_rtn(w_kn, spec).dequantized().t().contiguous(), act)


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
    naive_probe: int = 3,
) -> SensitivityResult:
    """SQNR of the output when only the sites of each candidate (name -> site node names) are
    quantized with `plan`. Values before a candidate's first site come from one float run; the
    candidate's layers compute with fake-quantized weights and inputs (no graph copy).

    The naive way (a full forward per candidate) is run on up to `naive_probe` candidates and
    extrapolated, so the reported speed-up is measured, not assumed.
    """
    start = time.perf_counter()
    envs, refs = float_run(program, batches)
    order = {n.name: i for i, n in enumerate(program.graph.nodes)}
    by_name = {s.node.name: s for s in find_sites(program)[0]}
    sqnr: dict[str, float] = {}
    per_batch: dict[str, list[float]] = {}

    def evaluate(site_names: list[str], cached_prefix: bool) -> list[float]:
        fake = {n: _fake_site(by_name[n], plan(by_name[n]), stats.get(n)) for n in site_names}
        first = min(order[n] for n in site_names)
        values = []
        with torch.no_grad():
            for batch, env, ref in zip(batches, envs, refs, strict=True):
                cached = {k for k in env if order.get(k, first) < first} if cached_prefix else set()
                cached -= {n.name for n in program.graph.nodes if n.op == "placeholder"}
                out = _CachedRunner(program.graph_module, env, cached, fake).run(*batch)
                values.append(sqnr_db(ref, flat_outputs(out)[0]))
        return values

    for i, (name, site_names) in enumerate(candidates.items()):
        if progress:
            progress(i, len(candidates), name)
        values = evaluate(site_names, cached_prefix=True)
        per_batch[name] = values
        sqnr[name] = min(values)
    seconds = time.perf_counter() - start
    probe = list(candidates.items())[:naive_probe]
    naive_start = time.perf_counter()
    for _name, site_names in probe:
        evaluate(site_names, cached_prefix=False)
    naive = (time.perf_counter() - naive_start) / max(1, len(probe)) * len(candidates)
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
