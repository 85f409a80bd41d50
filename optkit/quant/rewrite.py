"""Apply a quantization plan to a Program: the shared core of the `ptq` and `sensitivity` passes.

A plan gives each site a `LayerPlan` (weight bits and granularity, activation bits). Activation
statistics and GPTQ Hessians come from calibration runs of the float Program. Kernels:

| weights | activations | kernel |
|---|---|---|
| int8 per-channel / per-tensor | int8 | `linear_w8a8`: int8 x int8 -> int32 GEMM |
| int4 or int8 group-wise | int8 | `act_qdq` + `linear_wq` (activations on the int8 grid, W4A8) |
| any | 4 | `act_qdq` + `linear_wq` (activations on a 4-bit grid, W4A4) |
| any | 16 (float) | `linear_wq` (weight-only, W4A16 / W8A16) |
| conv, int8 per-channel | int8 | `conv2d_w8a8` (int4 conv weights are stored as int8) |

How activations reach their grid (`act_mode`) is `optkit.quant.activations`': calibrated
per-tensor scales, or scales the graph computes per row (`per-token`: `max|x_row| / 127`, the
LLM recipe of LLM.int8() / ZeroQuant, which the int8 GEMM takes as a per-row scale with zero
point 0 and a float bias) or per group of input channels (`per-group`, SVDQuant's W4A4 recipe).
Convolutions keep calibrated per-tensor int8 scales at any `abits` (`effective_plan`).

Every Linear is covered whatever its width: a group size that does not divide the input
channels leaves a short last group (`optkit.quant.numerics`), and a 4-bit layer with an odd
number of outputs is stored as int8 (`effective_plan`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from optkit.ir.program import Program
from optkit.quant.activations import (
    ACT_BITS,
    ActMode,
    act_qparams,
    insert_act_qdq,
    insert_group_qdq,
    row_scales,
)
from optkit.quant.calibration import Batch, watch_inputs
from optkit.quant.numerics import QuantSpec, scale_zero
from optkit.quant.observers import Observer, ObserverKind
from optkit.quant.sites import QuantSite, reads_tied_buffer, replace_site
from optkit.quant.weights import pack_weight, quantize_gptq, quantize_rtn

if TYPE_CHECKING:
    from optkit.quant.timestep_groups import GroupedActScales

log = logging.getLogger(__name__)

GPTQ_ROWS_PER_CHANNEL = 16  # Hessian rows per input channel GPTQ asks the calibration data for


@dataclass(frozen=True)
class LayerPlan:
    """Precision of one layer: weight spec and activation bits (16 = float activations)."""

    weight: QuantSpec
    abits: int = 8

    def label(self) -> str:
        grain = {"tensor": "t", "channel": "c", "group": f"g{self.weight.group_size}"}[
            self.weight.granularity
        ]
        return f"w{self.weight.bits}{grain}a{self.abits}"


@dataclass
class ActStats:
    """What calibration saw at a layer's input: an observer and per-channel abs-max."""

    observer: Observer
    channel_absmax: torch.Tensor | None = None


def collect_act_stats(
    program: Program,
    sites: Sequence[QuantSite],
    batches: Sequence[Batch],
    observer: ObserverKind,
    percentile: float,
) -> dict[str, ActStats]:
    """Run calibration batches and record each site's input statistics, keyed by node name."""
    stats = {s.node.name: ActStats(Observer(observer, percentile, s.path)) for s in sites}
    channel_dim = {s.node.name: (-1 if s.kind == "linear" else 1) for s in sites}

    def watcher(name: str):  # type: ignore[no-untyped-def]
        def fn(x: torch.Tensor) -> None:
            st = stats[name]
            st.observer.update(x)
            dim = channel_dim[name] % x.dim()
            amax = x.detach().abs().transpose(0, dim).reshape(x.shape[dim], -1).amax(1)
            st.channel_absmax = amax if st.channel_absmax is None else torch.maximum(st.channel_absmax, amax)

        return fn

    watch_inputs(program, batches, {name: watcher(name) for name in stats})
    return stats


def collect_hessians(
    program: Program,
    sites: Sequence[QuantSite],
    batches: Sequence[Batch],
    rows: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """H = 2 X^T X of each linear site's inputs, keyed by node name (GPTQ); `rows`, when given,
    receives the number of input rows each Hessian summed."""
    acc = {
        s.node.name: torch.zeros(s.in_features, s.in_features, dtype=torch.float64)
        for s in sites
        if s.kind == "linear"
    }
    counts = rows if rows is not None else {}
    counts.update(dict.fromkeys(acc, 0))

    def add(name: str):  # type: ignore[no-untyped-def]
        def fn(x: torch.Tensor) -> None:
            x2 = x.reshape(-1, x.shape[-1]).double()
            acc[name] += 2.0 * x2.t() @ x2
            counts[name] += x2.shape[0]

        return fn

    watch_inputs(program, batches, {name: add(name) for name in acc})
    return acc


def gptq_hessians(
    program: Program,
    sites: Sequence[QuantSite],
    batches: Sequence[Batch],
    more: Callable[[int], Sequence[Batch]] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """GPTQ's Hessians from at least `GPTQ_ROWS_PER_CHANNEL` input rows per input channel of
    every Linear where the data allows; returns them and the fewest rows any layer summed.

    With fewer rows than input channels X^T X is singular and GPTQ fits its rounding to the few
    rows it saw: calibrated on one 64-token window, GPTQ lost to round-to-nearest on a Llama
    (issue 15). When `batches` fall short, `more(n)` is asked for n batches (the calibration
    data, up to what it holds) and the Hessians are collected again from those.
    """
    rows: dict[str, int] = {}
    hessians = collect_hessians(program, sites, batches, rows)
    linear = [s for s in sites if s.kind == "linear"]
    if not linear:
        return hessians, 0
    short = max(GPTQ_ROWS_PER_CHANNEL * s.in_features / max(rows[s.node.name], 1) for s in linear)
    if short > 1 and more is not None:
        extended = more(math.ceil(len(batches) * short))
        if len(extended) > len(batches):
            rows = {}
            hessians = collect_hessians(program, sites, extended, rows)
    return hessians, min(rows[s.node.name] for s in linear)


def effective_plan(site: QuantSite, plan: LayerPlan) -> LayerPlan:
    """`plan` as it applies to `site`: int4 packing holds two output channels per byte, so a
    Linear with an odd number of outputs (an IoU or score head) is stored as int8 per-channel;
    a conv's kernel (`conv2d_w8a8`) takes int8 weights per channel (7-bit values under `wbits=7`,
    else 8: no int4 conv kernel) and int8 activations."""
    if site.kind == "conv":
        return LayerPlan(QuantSpec(7 if plan.weight.bits == 7 else 8, True, "channel"), 8)
    if site.kind == "linear" and plan.weight.bits == 4 and site.weight.shape[0] % 2:
        return LayerPlan(QuantSpec(8, True, "channel"), plan.abits)
    return plan


def short_group_note(site: QuantSite, plan: LayerPlan) -> str | None:
    """How `plan`'s groups fall on `site`'s input channels when the group size does not divide
    them (the last group is short, quantized as if zero-padded); None when it divides."""
    spec = effective_plan(site, plan).weight
    k = site.in_features
    if site.kind != "linear" or spec.granularity != "group" or k % spec.group_size == 0:
        return None
    full, rest = divmod(k, spec.group_size)
    groups = f"{full} group{'s' if full > 1 else ''} of {spec.group_size} + " if full else ""
    return f"{k} input channels in {groups}a short group of {rest}"


def quantize_site(
    program: Program,
    site: QuantSite,
    plan: LayerPlan,
    stats: ActStats | None,
    hessian: torch.Tensor | None = None,
    weight_kn: torch.Tensor | None = None,
    damp: float = 0.01,
    grouped: GroupedActScales | None = None,
    act_mode: ActMode = "static",
    act_group: int = 64,
) -> int:
    """Rewrite one site to its quantized kernel; returns the bytes of the weight tensors it
    stores (0 when it reads the copy of a site it is tied to).

    `weight_kn` overrides the site's weight (after SmoothQuant rebalancing); with a `hessian`,
    weights are rounded by GPTQ with dampening `damp`. With `grouped`, the activation scale and
    zero point are picked per sample from the site's timestep-group tables
    (`optkit.quant.timestep_groups`), and the bias stays in float: no single accumulator grid.
    With a dynamic `act_mode` (`per-token`, or `per-group` of `act_group` input channels: see
    `optkit.quant.activations`, whose `layer_mode` says what applies to a layer), a Linear's
    activation scales are computed at run time; `stats` may then be None.
    """
    w_kn = (
        weight_kn if weight_kn is not None else (site.weight.t().float() if site.kind == "linear" else None)
    )
    bias = site.bias if site.bias is not None else torch.zeros(site.weight.shape[0])
    if site.kind == "conv":
        return _quantize_conv(program, site, stats, bias, grouped, effective_plan(site, plan).weight.bits)
    assert w_kn is not None
    plan = effective_plan(site, plan)
    spec = plan.weight  # a group size that does not divide K leaves a short last group
    dynamic = act_mode != "static" and plan.abits in ACT_BITS
    use_int_gemm = (
        plan.abits == 8
        and spec.bits in (7, 8)  # 7: int8 values in [-64, 63]
        and spec.symmetric
        and spec.granularity != "group"
        and act_mode != "per-group"  # its scale changes along K: no single int GEMM
    )
    qw = (
        quantize_gptq(w_kn, hessian, spec, damp)
        if hessian is not None and spec.granularity != "tensor"
        else quantize_rtn(w_kn, spec)
    )
    if use_int_gemm:
        x_scale, x_zero = (_UNIT_SCALE, _ZERO) if dynamic else act_qparams(stats)
        w_q = qw.q.to(torch.int8)
        tensors: dict[str, torch.Tensor] = {
            "x_scale": x_scale,
            "x_zero": x_zero,
            "w_q": w_q,
            "w_scale": qw.scale.reshape(-1).float(),
            "w_zero": torch.zeros(w_q.shape[1], dtype=torch.int8),
            "w_colsum": w_q.sum(0, dtype=torch.int32),
            "bias": bias.float()
            if grouped is not None or dynamic
            else on_accumulator_grid(bias, x_scale, qw.scale.reshape(-1).float()),
        }
        rank = _input_rank(site)
        new = replace_site(program, site, torch.ops.optkit.linear_w8a8.default, tensors)
        if dynamic:
            _select_per_sample(program, new, row_scales(program, site, new, 8))
        elif grouped is not None:
            _select_per_sample(program, new, grouped.select(site, new, rank))
        return 0 if reads_tied_buffer(new, site, "w_q") else w_q.numel() + qw.scale.numel() * 4
    if act_mode == "per-group" and plan.abits in ACT_BITS:
        insert_group_qdq(program, site, act_group, plan.abits)
    elif dynamic:
        q = insert_act_qdq(program, site, _UNIT_SCALE, _ZERO)
        _select_per_sample(program, q, row_scales(program, site, q, plan.abits))
    elif plan.abits in ACT_BITS:
        q = insert_act_qdq(program, site, *act_qparams(stats, plan.abits), plan.abits)
        if grouped is not None:
            _select_per_sample(program, q, grouped.select(site, q, _input_rank(site)))
    group = spec.group_size if spec.granularity == "group" else w_kn.shape[0]
    if spec.granularity == "tensor":
        qw.scale, qw.zero = (
            qw.scale.expand(1, w_kn.shape[1]).clone(),
            qw.zero.expand(1, w_kn.shape[1]).clone(),
        )
    buffers = pack_weight(qw)
    new = replace_site(
        program,
        site,
        torch.ops.optkit.linear_wq.default,
        {**buffers, "bias": bias},
        (spec.bits, group, spec.symmetric),
    )
    stored = sum(t.numel() * t.element_size() for t in buffers.values())
    return 0 if reads_tied_buffer(new, site, "w_packed") else stored


def on_accumulator_grid(bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """`bias` rounded to the int32 accumulator's grid (`x_scale * w_scale` per output channel).

    The ONNX export stores the bias of int8 layers as int32 on that grid, the form ONNX Runtime
    fuses into QLinearConv / QGemm; rounding it here as well keeps the Program's outputs equal
    to the export's (a shift of 1e-5 flipped a downstream rounding by one int8 step otherwise).
    """
    step = (x_scale * w_scale).double()
    return (torch.round(bias.double() / step) * step).to(bias.dtype)


_UNIT_SCALE = torch.tensor(1.0)  # placeholders of a dynamic layer, replaced in the graph
_ZERO = torch.tensor(0, dtype=torch.int8)


def _input_rank(site: QuantSite) -> int:
    x = site.node.args[0]
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if isinstance(val, torch.Tensor):
        return val.dim()
    return 4 if site.kind == "conv" else 2


def _select_per_sample(program: Program, node: fx.Node, selected: tuple[fx.Node, fx.Node]) -> None:
    # Swap the per-tensor (scale, zero) reads, args 1 and 2 of every quantized op, for the
    # per-sample selection, and drop the buffers they read.
    gm = program.graph_module
    old = node.args[1:3]
    node.args = (node.args[0], *selected, *node.args[3:])
    for read in old:
        if isinstance(read, fx.Node) and read.op == "get_attr" and not read.users:
            target = str(read.target)
            gm.graph.erase_node(read)
            if hasattr(gm, target) and not any(
                n.op == "get_attr" and n.target == target for n in gm.graph.nodes
            ):
                delattr(gm, target)


def _quantize_conv(
    program: Program,
    site: QuantSite,
    stats: ActStats | None,
    bias: torch.Tensor,
    grouped: GroupedActScales | None = None,
    bits: int = 8,
) -> int:
    w = site.weight.float()  # (Cout, Cin/g, kh, kw)
    amax = w.abs().reshape(w.shape[0], -1).amax(1)
    spec = QuantSpec(bits, True, "channel")
    w_scale, _ = scale_zero(-amax, amax, spec)
    w_q = torch.clamp(torch.round(w / w_scale.reshape(-1, 1, 1, 1)), spec.qmin, spec.qmax).to(torch.int8)
    x_scale, x_zero = act_qparams(stats)
    conv = site.conv_args or {}
    tensors = {
        "x_scale": x_scale,
        "x_zero": x_zero,
        "w_q": w_q,
        "w_scale": w_scale.float(),
        "w_zero": torch.zeros(w.shape[0], dtype=torch.int8),
        "bias": bias.float() if grouped is not None else on_accumulator_grid(bias, x_scale, w_scale.float()),
    }
    extra = (conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
    rank = _input_rank(site)
    new = replace_site(program, site, torch.ops.optkit.conv2d_w8a8.default, tensors, extra)
    if grouped is not None:
        _select_per_sample(program, new, grouped.select(site, new, rank))
    return 0 if reads_tied_buffer(new, site, "w_q") else w_q.numel() + w_scale.numel() * 4
