"""SVDQuant's low-rank high-precision branch (Li et al. 2024, "SVDQuant: Absorbing Outliers by
Low-Rank Components for 4-Bit Diffusion Models").

For a Linear y = x W^T + b with W (N, K) — after SmoothQuant has moved the activation outliers
into W, if it ran — the paper's steps are:

1. take the rank-R truncated SVD W ~ L1 L2 (L1: N x R, L2: R x K), kept in 16 bits;
2. quantize only the residual W - L1 L2, whose range the few large singular directions no
   longer stretch (the outlier rows and columns live mostly in them);
3. compute y = Q(x) Q(W - L1 L2)^T + b + (x L2^T) L1^T: the branch reads the unquantized input.

Here the branch is two ordinary `aten.linear` nodes and an `add` beside the quantized kernel, so
eager, the ONNX export and TVM lowering run it without a new kernel (the paper fuses the down
projection into the activation quantizer and the up projection into the 4-bit GEMM; that fusion
is not done). Deviations: the singular values are split evenly between the factors
(L1 = U sqrt(S), L2 = sqrt(S) V^T) so that both fit float16's range; the factors are stored in
float16 and cast to the model's dtype in the graph, and the residual is taken against the
float16-rounded factors, so the quantizer also absorbs the factors' rounding.

Which layers get a branch: every quantized Linear not skipped, or the `fraction` of them whose
weight quantization error the branch reduces most (`branch_gain_db`: round-to-nearest error of
W against that of the residual, input channels weighted by calibration abs-max when known).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.quant.numerics import QuantSpec
from optkit.quant.sites import QuantSite, add_buffer
from optkit.quant.weights import quantize_rtn

FACTOR_DTYPE = torch.float16  # the paper's 16-bit branch


@dataclass(frozen=True)
class LowRankSplit:
    """W = up @ down + residual: up (N, R) and down (R, K) in float16, residual (N, K) float32."""

    up: torch.Tensor
    down: torch.Tensor
    residual: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def stored_bytes(self) -> int:
        """Bytes of the two factors (the residual is stored by the quantizer)."""
        return sum(t.numel() * t.element_size() for t in (self.up, self.down))


def lowrank_split(weight: torch.Tensor, rank: int) -> LowRankSplit:
    """Split a (N, K) weight into its rank-`rank` SVD part (float16 factors) and the residual."""
    n, k = (int(d) for d in weight.shape)
    if not 1 <= rank <= min(n, k):
        raise ConfigError(
            f"lowrank must be in [1, min(out, in)] = [1, {min(n, k)}] for a {n} x {k} weight, got {rank}"
        )
    w = weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (N, M), (M,), (M, K)
    root = s[:rank].sqrt()
    up = (u[:, :rank] * root).to(FACTOR_DTYPE)  # (N, R)
    down = (root[:, None] * vh[:rank]).to(FACTOR_DTYPE)  # (R, K)
    residual = w - up.double() @ down.double()  # against the stored factors
    return LowRankSplit(up, down, residual.float())


def branch_gain_db(
    weight: torch.Tensor, split: LowRankSplit, spec: QuantSpec, channel_absmax: torch.Tensor | None = None
) -> float:
    """How much the branch lowers the layer's round-to-nearest weight error under `spec`, in dB:
    10 log10(|(W - Q(W)) diag(a)|^2 / |(R - Q(R)) diag(a)|^2), a = input-channel abs-max (1 if unknown)."""
    a2 = torch.ones(weight.shape[1]) if channel_absmax is None else channel_absmax.float().pow(2)

    def error(w_nk: torch.Tensor) -> float:
        w_kn = w_nk.t().float()
        delta = quantize_rtn(w_kn, spec).dequantized() - w_kn  # (K, N)
        return float((delta.pow(2).sum(1) * a2).sum())

    plain, rest = error(weight), error(split.residual)
    if rest == 0.0:
        return math.inf
    return 10.0 * math.log10(max(plain, 1e-30) / rest)


def lowrank_sites(sites: Sequence[QuantSite], rank: int, skip: Sequence[str]) -> list[QuantSite]:
    """The Linear sites whose path matches no `skip` pattern; a ConfigError names those of them
    that `rank` does not fit (rank > min(out, in))."""
    eligible = [s for s in sites if s.kind == "linear" and not _matches(s.path, skip)]
    narrow = [s for s in eligible if rank > min(int(d) for d in s.weight.shape)]
    if narrow:
        shapes = ", ".join(f"{s.path} ({s.weight.shape[0]} x {s.weight.shape[1]})" for s in narrow)
        smallest = min(min(int(d) for d in s.weight.shape) for s in narrow)
        raise ConfigError(
            f"lowrank={rank} exceeds min(out, in) of {shapes}; use lowrank <= {smallest}, or list "
            "those layers in lowrank_skip"
        )
    return eligible


def choose_branches(
    sites: Sequence[QuantSite],
    rank: int,
    fraction: float,
    skip: Sequence[str],
    spec_of: Callable[[QuantSite], QuantSpec],
    channel_absmax: Callable[[QuantSite], torch.Tensor | None],
) -> tuple[dict[str, LowRankSplit], dict[str, float]]:
    """The low-rank splits to apply, keyed by node name, and each chosen layer's gain (dB).

    Eligible: `lowrank_sites` (a ConfigError names those `rank` does not fit). With `fraction`
    < 1, the ceil(fraction x n) eligible layers of largest `branch_gain_db` are chosen.
    """
    eligible = lowrank_sites(sites, rank, skip)
    splits = {s.node.name: lowrank_split(s.weight, rank) for s in eligible}
    gains = {
        s.node.name: branch_gain_db(s.weight, splits[s.node.name], spec_of(s), channel_absmax(s))
        for s in eligible
    }
    keep = math.ceil(fraction * len(eligible))
    chosen = sorted(eligible, key=lambda s: -gains[s.node.name])[:keep]
    return {s.node.name: splits[s.node.name] for s in chosen}, {s.path: gains[s.node.name] for s in chosen}


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") or fnmatch.fnmatchcase(path, p) for p in patterns)


def insert_lowrank_branch(program: Program, site: QuantSite, split: LowRankSplit) -> int:
    """Rewrite `site` to read the residual weight and add (x L2^T) L1^T to its output; returns
    the bytes of the factors it stores (0 when it reuses those of the site it is tied to).

    The graph computes what it computed before (the residual is taken against the stored
    float16 factors), and `site.weight` becomes the residual, ready for `quantize_site`. The
    new nodes carry the site's metadata, so they count under its module.
    """
    gm = program.graph_module
    graph = gm.graph
    node = site.node
    x = node.args[0]
    dtype = site.weight.dtype
    reads, stored = [], 0
    for role, t in (("lowrank_down", split.down), ("lowrank_up", split.up)):
        name = _tied_buffer(gm, site, role, t)
        if name is None:
            name = add_buffer(gm, site.path, role, t)
            stored += t.numel() * t.element_size()
        reads.append(name)
    with graph.inserting_before(node):
        residual = graph.get_attr(add_buffer(gm, site.path, "lowrank_residual", split.residual.to(dtype)))
        factors = []
        for name in reads:
            read = graph.get_attr(name)
            factors.append(
                read
                if dtype == FACTOR_DTYPE
                else graph.call_function(torch.ops.aten._to_copy.default, (read,), {"dtype": dtype})
            )
    node.args = (x, residual, *node.args[2:])
    aten = torch.ops.aten
    with graph.inserting_after(node):
        down = graph.call_function(aten.linear.default, (x, factors[0]))  # (..., R)
    with graph.inserting_after(down):
        up = graph.call_function(aten.linear.default, (down, factors[1]))  # (..., N)
    with graph.inserting_after(up):
        total = graph.call_function(aten.add.Tensor, (node, up))
    node.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
    for new, width in ((down, split.rank), (up, int(split.up.shape[0])), (total, int(split.up.shape[0]))):
        new.meta = {k: v for k, v in node.meta.items() if k != "val"}
        val = _out_val(x, width)
        if val is not None:
            new.meta["val"] = val
    site.weight = split.residual.to(dtype)
    return stored


def _tied_buffer(gm: fx.GraphModule, site: QuantSite, role: str, t: torch.Tensor) -> str | None:
    # A site tied to an earlier one reads that site's factors when they hold the same values.
    if site.tied_to is None:
        return None
    base = re.escape(re.sub(r"\W", "_", f"q_{site.tied_to}_{role}"))  # `add_buffer`'s naming
    for name, buf in gm.named_buffers():
        if re.fullmatch(base + r"(_\d+)?", name) and buf.dtype == t.dtype and torch.equal(buf, t):
            return name
    return None


def _out_val(x: object, width: int) -> torch.Tensor | None:
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    mode = getattr(val, "fake_mode", None)
    shape = (*val.shape[:-1], width)
    if mode is None:
        return torch.empty(shape, dtype=val.dtype, device="meta")
    with mode:
        return torch.empty(shape, dtype=val.dtype, device=val.device)
