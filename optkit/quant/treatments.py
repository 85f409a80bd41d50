"""Local treatments: layers `ptq` keeps in float because their quantization error is out of
proportion to their size (the SQNR-based PTQ of latent diffusion models, Yang et al. 2023, names
the time embedding, the attention softmax inputs and the UNet's skip connections).

Each treatment is a rule that picks quantizable sites from the graph's structure, not from their
names (except `time-embedding`, whose modules are found by the glob patterns `TIME_MODULES`; `ptq`
applies that one through its `keep_float` option, of which they are the default):

- `time-embedding`: the timestep embedding MLPs (`TIME_MODULES`);
- `input-layer`: the layer reading a diffusion model's noisy input x_t (`reads_model_input`);
- `output-layer`: the layer whose output is a diffusion model's output, up to layout changes (a
  denoiser's final projection to the eps / velocity channels: its error goes straight into
  every sampler step's update);
- `softmax-input`: the projections whose outputs become the query or key of a
  `scaled_dot_product_attention` (Q/K, or a fused QKV), so the attention scores and the softmax
  read float inputs; optkit never quantizes the scores themselves (attention runs in float);
- `skip-connections`: the layers reading a channel concatenation of two computed feature maps
  (a UNet's up path, where the skip activation joins the upsampled one), directly or after a
  normalization / activation, whose input mixes two activation ranges in one tensor.

Residual adds are not a treatment here: `ptq` leaves them float for sampled models
(`quantize_residuals = "auto"`, `optkit.quant.residuals`).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
import torch.fx as fx

from optkit.ir.ops import op_name
from optkit.ir.program import Program
from optkit.quant.sites import QuantSite, feeds_output, reads_model_input

TIME_MODULES = ("*t_embedder*", "*time_embed*", "*time_mlp*", "*timestep*", "*t_embed*")

TREATMENTS: dict[str, str] = {
    "time-embedding": "timestep embedding",
    "input-layer": "reads the noisy input x_t",
    "output-layer": "output layer of the model",
    "softmax-input": "projects the query or key of an attention",
    "skip-connections": "reads a skip concatenation",
}
# The measured best (docs/passes.md, "Local treatments"): `output-layer` gained +0.2 to +3.4 dB on
# final samples at +0.2-0.3% size on the zoo's DiT and LDM, W8A8 and W4A8.
DEFAULT_TREATMENTS = ("time-embedding", "input-layer", "output-layer")

_LAYOUT = frozenset(
    {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "flatten", "unflatten"}
    | {"unsqueeze", "squeeze", "clone", "contiguous", "alias", "detach"}
)
_SPLITS = frozenset({"select", "getitem", "chunk", "split", "unbind", "slice", "split_with_sizes"})
_PER_CHANNEL = frozenset({"group_norm", "native_group_norm", "layer_norm", "silu", "gelu", "relu"})
_ATTENTION = frozenset({"scaled_dot_product_attention"})
_MATMUL = frozenset({"matmul", "bmm", "einsum"})
_SOFTMAX = frozenset({"softmax", "_softmax", "_safe_softmax"})
_SCORE_OPS = frozenset({"mul", "div", "add", "masked_fill", "where"})  # scaling and masking


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") or fnmatch.fnmatchcase(path, p) for p in patterns)


def feeds_attention_scores(site: QuantSite) -> bool:
    """Whether `site`'s output reaches, through layout changes and splits (a fused QKV
    projection's `select`s), the query or key of an attention: argument 0 or 1 of
    `scaled_dot_product_attention`, or an operand of a `matmul` whose product reaches a `softmax`
    through scaling and masking (attention written out)."""
    frontier, seen = [site.node], set()
    while frontier:
        node = frontier.pop()
        for user in node.users:
            name = op_name(user)
            if name in _ATTENTION and node in user.args[:2]:
                return True
            if name in _MATMUL and _reaches_softmax(user):
                return True
            if user not in seen and name in _LAYOUT | _SPLITS:
                seen.add(user)
                frontier.append(user)
    return False


def _reaches_softmax(node: fx.Node) -> bool:
    while True:
        users = list(node.users)
        if any(op_name(u) in _SOFTMAX for u in users):
            return True
        nxt = [u for u in users if op_name(u) in _SCORE_OPS]
        if len(nxt) != 1:
            return False
        node = nxt[0]


def reads_skip_concat(site: QuantSite) -> bool:
    """Whether `site` reads a concatenation of two or more computed tensors of rank >= 3 (feature
    maps or token sequences), directly or through layout changes, norms and activations."""
    x: Any = site.node.args[0]
    while isinstance(x, fx.Node) and op_name(x) in _LAYOUT | _PER_CHANNEL:
        x = x.args[0]
    if not (isinstance(x, fx.Node) and op_name(x) == "cat"):
        return False
    val = x.meta.get("val")
    parts = [p for p in x.args[0] if isinstance(p, fx.Node) and p.op not in ("get_attr", "placeholder")]  # type: ignore[union-attr]
    return isinstance(val, torch.Tensor) and val.dim() >= 3 and len(parts) >= 2


def treated_sites(
    program: Program, sites: list[QuantSite], treatments: tuple[str, ...]
) -> tuple[list[QuantSite], list[tuple[str, str]]]:
    """`sites` without those a treatment keeps float, and (module path, reason) for each kept one.
    `input-layer` and `output-layer` apply to models the workload samples (diffusion) only: a
    classifier's or a language model's last layer is quantized like the others (a language
    model's output head has its own switch, `ptq`'s `quantize_head`)."""
    diffusion = program.workload.diffusion is not None
    rules = {
        "time-embedding": lambda s: _matches(s.path, TIME_MODULES),
        "input-layer": lambda s: diffusion and reads_model_input(program, s),
        "output-layer": lambda s: diffusion and feeds_output(s.node),
        "softmax-input": feeds_attention_scores,
        "skip-connections": reads_skip_concat,
    }
    kept: list[QuantSite] = []
    reasons: list[tuple[str, str]] = []
    for site in sites:
        why = next((name for name in treatments if rules[name](site)), None)
        if why is None:
            kept.append(site)
        else:
            reasons.append((site.path, f"{TREATMENTS[why]} (treatment {why})"))
    return kept, reasons
