"""SmoothQuant-style channel rebalancing (Xiao et al. 2023).

Activation outliers concentrate in a few input channels; dividing those channels of X by
`s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)` and multiplying the matching weight rows by
`s_k` leaves X @ W unchanged while flattening X's range, so per-tensor activation scales lose
less. The division is a `mul` node inserted before the layer (folding it into a preceding norm
is left to a later pass), and the layer reads the rebalanced weight from then on, so the graph
computes what it computed before: activation statistics collected after smoothing see the
model's own activations downstream. (Before the weight was swapped in the graph too, every
layer after a smoothed one was calibrated on inputs shrunk by 1/s: a Llama-style decoder's
perplexity went from 2.66 to 10.0 at W8A8 with every layer smoothed at alpha 0.5.)

One alpha does not suit every layer: PTQ4DiT balances each layer's channels by its own salience.
`search_alpha` picks a layer's migration strength from a list by the SQNR of that layer's output
when its smoothed input and weight are both quantized as the layer will be (activation grid from
the same observer over the sampled rows, or per row for per-token scales; weights by
round-to-nearest with the layer's spec), on rows sampled from its calibration inputs
(`sample_input_rows`). Alpha 0 (no smoothing) always competes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.quant.activations import fake_quantize_rows
from optkit.quant.calibration import Batch, watch_inputs
from optkit.quant.numerics import QuantSpec, sqnr_db
from optkit.quant.observers import ObserverKind
from optkit.quant.sites import QuantSite, add_buffer
from optkit.quant.weights import quantize_rtn

SEARCH_ROWS = 2048  # calibration rows per layer the alpha search scores on


def smoothing_factors(act_absmax: torch.Tensor, w_kn: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel factors s (K,) from activation abs-max (K,) and the (K, N) weight."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"smoothquant alpha must be in [0, 1], got {alpha}")
    w_absmax = w_kn.abs().amax(1).clamp(min=1e-5)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.pow(1.0 - alpha)
    return s.clamp(min=1e-3, max=1e3)


def outlier_ratio(act_absmax: torch.Tensor) -> float:
    """max / median of per-channel activation abs-max: large when a few channels dominate."""
    med = float(act_absmax.median().clamp(min=1e-8))
    return float(act_absmax.max()) / med


def insert_smoothing(program_gm: torch.fx.GraphModule, site: QuantSite, s: torch.Tensor) -> torch.Tensor:
    """Insert x * (1/s) before the Linear `site`, make it read the rebalanced weight s * W, and
    return that weight as (K, N)."""
    graph = program_gm.graph
    name = add_buffer(program_gm, site.path, "smooth_inv", (1.0 / s).float())
    w_kn = site.weight.t().float() * s[:, None]
    w_name = add_buffer(program_gm, site.path, "smooth_weight", w_kn.t().to(site.weight.dtype))
    x = site.node.args[0]
    with graph.inserting_before(site.node):
        inv = graph.get_attr(name)
        scaled = graph.call_function(torch.ops.aten.mul.Tensor, (x, inv))
        weight = graph.get_attr(w_name)
    scaled.meta = dict(site.node.meta)
    if isinstance(x, torch.fx.Node) and "val" in x.meta:
        scaled.meta["val"] = x.meta["val"]
    site.node.args = (scaled, weight, *site.node.args[2:])
    return w_kn


def sample_input_rows(
    program: Program,
    sites: Sequence[QuantSite],
    batches: Sequence[Batch],
    rows: int = SEARCH_ROWS,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Up to `rows` input rows (tokens, (R, K)) of each Linear site over the calibration batches,
    drawn evenly from every batch (seeded), keyed by node name."""
    per_batch = max(1, rows // max(1, len(batches)))
    gen = torch.Generator().manual_seed(seed)
    held: dict[str, list[torch.Tensor]] = {s.node.name: [] for s in sites if s.kind == "linear"}

    def keep(name: str):  # type: ignore[no-untyped-def]
        def fn(x: torch.Tensor) -> None:
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            pick = torch.randperm(flat.shape[0], generator=gen)[:per_batch]
            held[name].append(flat[pick])

        return fn

    watch_inputs(program, batches, {name: keep(name) for name in held})
    return {name: torch.cat(parts)[:rows] for name, parts in held.items() if parts}


def search_alpha(
    site: QuantSite,
    rows: torch.Tensor,
    act_absmax: torch.Tensor,
    weight_spec: QuantSpec,
    alphas: Sequence[float],
    act_mode: str = "static",
    observer: ObserverKind = "minmax",
    percentile: float = 99.99,
    abits: int = 8,
    act_group: int = 64,
) -> tuple[float, dict[float, float]]:
    """The alpha of `alphas` (0 included) whose smoothing gives `site`'s output the highest SQNR
    on `rows` (R, K) with input and weight quantized (the input as `act_mode` at `abits` puts
    it on its grid: `optkit.quant.activations`), and every alpha's SQNR in dB."""
    w_kn = site.weight.t().float()  # (K, N)
    reference = rows @ w_kn
    scores: dict[float, float] = {}
    for alpha in dict.fromkeys((0.0, *alphas)):
        s = smoothing_factors(act_absmax, w_kn, alpha) if alpha else torch.ones(w_kn.shape[0])
        x_q = fake_quantize_rows(rows / s, act_mode, abits, act_group, observer, percentile)
        w_q = quantize_rtn(w_kn * s[:, None], weight_spec).dequantized()
        scores[alpha] = sqnr_db(reference, x_q @ w_q)
    best = max(scores, key=lambda a: scores[a])
    return best, scores
