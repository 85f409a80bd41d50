"""How a quantized layer's input is put on an integer grid: at 8 or 4 bits, with calibrated scales
or with scales the graph computes at run time.

| mode | scale | grid | layers |
|---|---|---|---|
| `static` | calibrated per tensor (an observer), with a zero point | 0 .. 2^b - 1 | Linear, conv |
| `per-token` | `max abs(x_row) / qmax`, in the graph | -qmax .. qmax | Linear |
| `per-group` | `(max - min) / (2^b - 1)` of each `group` input channels of a row, in the graph, with a zero point | 0 .. 2^b - 1 | Linear |

qmax is 127 at 8 bits and 7 at 4 bits. Every kernel reads activations on the int8 grid: an input
on a narrower grid is first clamped to that grid's range, so that the int8 rounding keeps it on
the 2^b steps; a per-token scale needs no clamp, as `max / qmax` leaves every value within
+-qmax steps.

`per-group` is SVDQuant's W4A4 activation recipe (Li et al. 2024: INT4 activations with one scale
per 64 input channels of each token), which keeps a channel outlier from widening the grid of
the whole row. Deviation: each group's grid is asymmetric, spanning the group's own min and max
(and 0), where the paper's is symmetric: the input of an MLP's second Linear comes out of a GELU
and is almost one-signed, so a symmetric 4-bit grid spends half its 15 steps on values that do
not occur (zoo:dit, W4A4 GPTQ g32 with groups of 32, SmoothQuant 0.5, rank-16 branch, output
layer float, 16 samples: final samples 25.4 dB symmetric, 27.4 dB with the zero point). Its scale
changes along K, so one int GEMM with a per-row rescale cannot run it: those layers run
`act_qdq` + `linear_wq` (the W4A8 kernels). A Linear whose input channels the group does not
divide falls back to `per-token` (`layer_mode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.fx as fx

from optkit.ir.program import Program
from optkit.quant.numerics import QuantSpec, fake_quantize
from optkit.quant.observers import Observer, ObserverKind
from optkit.quant.sites import QuantSite, add_buffer

if TYPE_CHECKING:
    from optkit.quant.rewrite import ActStats

ActMode = Literal["static", "per-token", "per-group"]
ACT_MODES: tuple[str, ...] = ("static", "per-token", "per-group")
ACT_BITS = (4, 8)  # activation widths that are quantized (16: float activations)
SCALE_FLOOR = 1e-8  # an all-zero row or group (padding) keeps a finite scale
_ZERO = torch.tensor(0, dtype=torch.int8)


def act_spec(bits: int) -> QuantSpec:
    """The calibrated (static) activation grid: asymmetric, one scale per tensor."""
    return QuantSpec(bits, symmetric=False, granularity="tensor")


ACT_SPEC = act_spec(8)


def dynamic_qmax(bits: int) -> int:
    """The largest step of a dynamic symmetric grid: 127 at 8 bits, 7 at 4 bits."""
    return 2 ** (bits - 1) - 1


def layer_mode(site: QuantSite, mode: str, group: int) -> ActMode:
    """`mode` as it applies to `site`: convs keep calibrated scales (their kernel quantizes
    per tensor), and `per-group` on a Linear whose input channels `group` does not divide is
    `per-token`."""
    if site.kind != "linear":
        return "static"
    if mode == "per-group" and site.in_features % group:
        return "per-token"
    return mode  # type: ignore[return-value]


def act_qparams(stats: ActStats | None, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A static layer's scale and zero point, the zero point on the int8 grid the kernels use."""
    if stats is None:
        raise ValueError("activation quantization needs calibration statistics")
    scale, zero = stats.observer.qparams(act_spec(bits))
    # The kernels use the int8 grid: shift the unsigned zero point by 128.
    return scale.reshape(()).float(), (zero.reshape(()) - 128).to(torch.int8)


def static_range(scale: torch.Tensor, zero: torch.Tensor, bits: int) -> tuple[float, float] | None:
    """The values a `bits`-wide static grid holds, (lo, hi), for a (scale, int8-grid zero)
    pair; None at 8 bits, where the int8 rounding itself clamps."""
    if bits >= 8:
        return None
    unsigned_zero = float(zero) + 128.0
    s = float(scale)
    return -unsigned_zero * s, (2**bits - 1 - unsigned_zero) * s


def insert_act_qdq(
    program: Program, site: QuantSite, scale: torch.Tensor, zero: torch.Tensor, bits: int = 8
) -> fx.Node:
    """Put `act_qdq(x, scale, zero)` before `site.node` on its input. A static grid of fewer than
    8 `bits` clamps the input to its range first (module docstring); a dynamic layer passes
    placeholders and the default 8 (its scales replace them, and need no clamp)."""
    gm = program.graph_module
    graph = gm.graph
    x = site.node.args[0]
    span = static_range(scale, zero, bits)
    with graph.inserting_before(site.node):
        src = x if span is None else graph.call_function(torch.ops.aten.clamp.default, (x, *span))
        s = graph.get_attr(add_buffer(gm, site.path, "x_scale", scale))
        z = graph.get_attr(add_buffer(gm, site.path, "x_zero", zero))
        q = graph.call_function(torch.ops.optkit.act_qdq.default, (src, s, z))
    q.meta = dict(site.node.meta)
    if isinstance(x, fx.Node) and "val" in x.meta:
        q.meta["val"] = x.meta["val"]
        if isinstance(src, fx.Node) and src is not x:
            src.meta["val"] = x.meta["val"]
    site.node.args = (q, *site.node.args[1:])
    return q


def row_scales(program: Program, site: QuantSite, consumer: fx.Node, bits: int) -> tuple[fx.Node, fx.Node]:
    """Nodes, before `consumer`, computing its input's per-row scale `max abs(x_row) / qmax`,
    shaped (..., 1) like the input, and reading a 0-d int8 zero point."""
    gm = program.graph_module
    graph = gm.graph
    aten = torch.ops.aten
    x = consumer.args[0]
    with graph.inserting_before(consumer):
        amax = graph.call_function(
            aten.amax.default, (graph.call_function(aten.abs.default, (x,)), [-1], True)
        )
        floor = graph.call_function(aten.clamp_min.default, (amax, SCALE_FLOOR))
        scale = graph.call_function(aten.div.Tensor, (floor, float(dynamic_qmax(bits))))  # (..., 1)
        zero = graph.get_attr(add_buffer(gm, site.path, "x_zero_token", _ZERO.clone()))
    return scale, zero


def insert_group_qdq(program: Program, site: QuantSite, group: int, bits: int) -> fx.Node:
    """Quantize `site`'s input per `group` input channels of each row with grids computed in the
    graph: x (..., K) is viewed as (..., K / group, group); each group's range [min(lo, 0),
    max(hi, 0)] gets `2^bits - 1` steps and the zero point `round(-lo / scale)`, the group is
    clamped to the grid's range and rounded (`act_qdq` with (..., K / group, 1) scales and
    zero points), and viewed back. Returns the node that feeds the site."""
    gm = program.graph_module
    graph = gm.graph
    aten = torch.ops.aten
    x = site.node.args[0]
    assert isinstance(x, fx.Node)
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise ValueError(f"per-group activations need the input shape of {site.path}, which the graph lacks")
    lead, k = [-1, *val.shape[1:-1]], int(val.shape[-1])
    steps = float(2**bits - 1)

    def call(op, *args):  # type: ignore[no-untyped-def]
        return graph.call_function(op, args)

    with graph.inserting_before(site.node):
        grouped = call(aten.reshape.default, x, [*lead, k // group, group])
        hi = call(aten.clamp_min.default, call(aten.amax.default, grouped, [-1], True), 0.0)
        neg_lo = call(
            aten.clamp_min.default, call(aten.amax.default, call(aten.neg.default, grouped), [-1], True), 0.0
        )
        span = call(aten.clamp_min.default, call(aten.add.Tensor, hi, neg_lo), SCALE_FLOOR)
        scale = call(aten.div.Tensor, span, steps)
        zero_u = call(aten.round.default, call(aten.div.Tensor, neg_lo, scale))  # 0 .. steps
        # The grid's ends, -zero * scale and (steps - zero) * scale: clamping to them keeps the
        # int8 rounding of act_qdq on 2^bits steps.
        lo_end = call(aten.mul.Tensor, call(aten.neg.default, zero_u), scale)
        hi_end = call(aten.mul.Tensor, call(aten.rsub.Scalar, zero_u, steps), scale)
        clamped = call(aten.minimum.default, call(aten.maximum.default, grouped, lo_end), hi_end)
        zero = graph.call_function(
            aten._to_copy.default, (call(aten.sub.Tensor, zero_u, 128.0),), {"dtype": torch.int8}
        )
        q = call(torch.ops.optkit.act_qdq.default, clamped, scale, zero)
        back = call(aten.reshape.default, q, [*lead, k])
    back.meta = dict(site.node.meta)
    back.meta["val"] = val
    site.node.args = (back, *site.node.args[1:])
    return back


def fake_quantize_rows(
    x: torch.Tensor,
    mode: str,
    bits: int = 8,
    group: int = 64,
    observer: ObserverKind = "minmax",
    percentile: float = 99.99,
) -> torch.Tensor:
    """The values a layer of `mode` reads for input rows `x` (R, K), computed in eager; a static
    grid is calibrated on `x` itself."""
    qmax = dynamic_qmax(bits)
    if mode == "per-group" and x.shape[1] % group == 0:
        g = x.reshape(x.shape[0], -1, group)
        hi, neg_lo = g.amax(-1, keepdim=True).clamp(min=0), (-g).amax(-1, keepdim=True).clamp(min=0)
        steps = 2**bits - 1
        scale = (hi + neg_lo).clamp(min=SCALE_FLOOR) / steps
        zero = torch.round(neg_lo / scale)
        q = torch.clamp(torch.round(g / scale) + zero, 0, steps)
        return ((q - zero) * scale).reshape(x.shape)
    if mode in ("per-token", "per-group"):
        scale = x.abs().amax(1, keepdim=True).clamp(min=SCALE_FLOOR) / qmax  # (R, 1), zero point 0
        return torch.round(x / scale).clamp(-qmax, qmax) * scale
    obs = Observer(observer, percentile)
    obs.update(x)
    spec = act_spec(bits)
    scale, zero = obs.qparams(spec)
    return fake_quantize(x, scale, zero, spec)
