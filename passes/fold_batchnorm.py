"""`fold-batchnorm`: fold inference-mode BatchNorm into the convolution or Linear before it.

In eval mode a BatchNorm is a per-channel affine map, `y = (x - mean) * g / sqrt(var + eps) + b`,
so after a conv it can be absorbed into the conv's weight (scaled per output channel) and bias.
Captured CNNs (MobileNet, ResNet) keep one `batch_norm` node after every conv; left in place it
costs an extra pass over every activation in eager and TVM, and in a W8A8 export it sits between
the quantized conv and the next quantizer, where ONNX Runtime cannot fuse it (the MobileNetV2-style
row of issue 17: 52 BatchNormalization nodes in the W8A8 ONNX). Folding first also means `ptq`
calibrates and quantizes the weights that actually run.

Folded: `batch_norm` with `training=False` and `_native_batch_norm_legit_no_training`, whose
input is a non-transposed `conv1d/2d/3d` / `convolution`, or a 2-D `linear` output, read by the
BatchNorm only, with every weight, bias and running statistic a constant (`get_attr`). Other
BatchNorms stay. The folded weight and bias are new parameters (`_bn_folded_N_weight`/`_bias`);
the old ones are left for `dce`. Run after capture, before `ptq` (which runs it itself unless
`fold_batchnorm=false`); `cleanup` includes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from optkit.ir.ops import op_name
from optkit.ir.program import Program
from optkit.pipeline import Pass, PassConfig, PassResult, Tolerance, register_pass
from optkit.report import Figure

log = logging.getLogger(__name__)

_CONV = frozenset({"conv1d", "conv2d", "conv3d", "convolution"})
_BATCH_NORM = frozenset({"batch_norm", "_native_batch_norm_legit_no_training"})


@dataclass(frozen=True)
class FoldBatchNormConfig(PassConfig):
    """BatchNorm folding has no settings."""


def _attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


def _bn_parts(node: fx.Node) -> tuple[Any, Any, Any, Any, Any, float] | None:
    """(input, weight, bias, running mean, running var, eps) of an inference BatchNorm node."""
    name = op_name(node)
    if name == "batch_norm":
        args: list[Any] = list(node.args) + [None] * (9 - len(node.args))
        training = node.kwargs.get("training", args[5])
        eps: Any = node.kwargs.get("eps", args[7])
        if training or eps is None:
            return None
        return args[0], args[1], args[2], args[3], args[4], float(eps)
    if name == "_native_batch_norm_legit_no_training":
        x, weight, bias, mean, var = node.args[:5]
        eps = node.args[6] if len(node.args) > 6 else node.kwargs.get("eps", 1e-5)  # type: ignore[assignment]
        # The op returns (out, save_mean, save_invstd); only `out` may be read.
        if any(op_name(u) != "getitem" or u.args[1] != 0 for u in node.users):
            return None
        return x, weight, bias, mean, var, float(eps)
    return None


def _producer_ok(node: Any) -> str | None:
    """'conv' or 'linear' when `node` can absorb a BatchNorm over its dim 1, else None."""
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return None
    name = op_name(node)
    if name in _CONV:
        if name == "convolution" and (len(node.args) < 7 or node.args[6]):
            return None  # transposed: its weight is (in, out / groups, ...)
        return "conv"
    val = node.meta.get("val")
    if name == "linear" and isinstance(val, torch.Tensor) and val.dim() == 2:
        return "linear"  # BatchNorm1d normalizes dim 1: the features only for 2-D outputs
    return None


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every foldable inference BatchNorm of `gm` into its producer (see the module
    docstring); returns how many were folded. Edits `gm` in place and recompiles it."""
    folded = 0
    for node in list(gm.graph.nodes):
        parts = _bn_parts(node) if node.op == "call_function" else None
        if parts is None:
            continue
        x, gamma_n, beta_n, mean_n, var_n, eps = parts
        kind = _producer_ok(x)
        if kind is None:
            continue
        weight = _attr(gm, x.args[1])
        bias_arg = x.args[2] if len(x.args) > 2 else x.kwargs.get("bias")
        bias = _attr(gm, bias_arg)
        mean, var = _attr(gm, mean_n), _attr(gm, var_n)
        gamma, beta = _attr(gm, gamma_n), _attr(gm, beta_n)
        if (
            weight is None
            or mean is None
            or var is None
            or (bias_arg is not None and bias is None)
            or (gamma_n is not None and gamma is None)
            or (beta_n is not None and beta is None)
        ):
            continue
        with torch.no_grad():
            scale = (gamma.double() if gamma is not None else 1.0) / torch.sqrt(var.double() + eps)
            shift = (beta.double() if beta is not None else 0.0) - mean.double() * scale
            old_bias = bias.double() if bias is not None else torch.zeros_like(scale)
            shape = (-1,) + (1,) * (weight.dim() - 1)
            new_weight = (weight.double() * scale.reshape(shape)).to(weight.dtype)
            new_bias = (old_bias * scale + shift).to(weight.dtype)
        index = folded
        while hasattr(gm, f"_bn_folded_{index}_weight"):
            index += 1
        w_name, b_name = f"_bn_folded_{index}_weight", f"_bn_folded_{index}_bias"
        gm.register_parameter(w_name, nn.Parameter(new_weight.contiguous(), requires_grad=False))
        gm.register_parameter(b_name, nn.Parameter(new_bias.contiguous(), requires_grad=False))
        with gm.graph.inserting_before(x):
            w_node = gm.graph.get_attr(w_name)
            b_node = gm.graph.get_attr(b_name)
        for new, old in ((w_node, x.args[1]), (b_node, bias_arg)):
            if isinstance(old, fx.Node):
                new.meta = dict(old.meta)
        args = list(x.args)
        args[1] = w_node
        if len(args) > 2:
            args[2] = b_node
            x.args = tuple(args)
        else:
            x.args = tuple(args)
            x.kwargs = {**x.kwargs, "bias": b_node}
        if op_name(node) == "batch_norm":
            node.replace_all_uses_with(x)
        else:
            for user in list(node.users):
                user.replace_all_uses_with(x)
                gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


@register_pass("fold-batchnorm", FoldBatchNormConfig)
class FoldBatchNorm(Pass):
    """Fold inference BatchNorms into the conv / Linear before them. After capture, before `ptq`."""

    shares_weights = True  # registers new tensors; never writes its input's

    # Folding reassociates the float math: one rounding per output instead of two.
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)

    def run(self, program: Program) -> PassResult:
        folded = fold_batchnorm(program.graph_module)
        left = sum(1 for n in program.compute_nodes() if op_name(n) in _BATCH_NORM)
        if folded:
            log.info("folded %d BatchNorm(s) into their convs / Linears; %d left", folded, left)
        return PassResult(
            program,
            modified=folded > 0,
            figures={
                "batchnorms_folded": Figure(folded, "layers"),
                "batchnorms_left": Figure(left, "layers"),
            },
        )
