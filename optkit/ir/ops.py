"""Op kinds: which ATen ops count as linear, conv, attention, ... (data, not code).

Passes ask the Program for sites by kind (`program.find(kind="linear")`) instead of naming ATen
overloads themselves, so that one table decides what a "linear layer" is everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

_aten = torch.ops.aten

# kind -> ATen op packet names (the part after `aten.`, without the overload).
OP_KINDS: dict[str, frozenset[str]] = {
    "linear": frozenset({"linear", "addmm", "linear_w8a8", "linear_wq"}),
    "conv": frozenset(
        {"convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv2d_w8a8"}
    ),
    "matmul": frozenset({"mm", "bmm", "matmul", "baddbmm", "einsum"}),
    "attention": frozenset(
        {
            "scaled_dot_product_attention",
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_flash_attention",
        }
    ),
    "embedding": frozenset({"embedding", "embedding_bag", "_embedding_bag"}),
    "norm": frozenset(
        {"layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm", "rms_norm"}
    ),
    "softmax": frozenset({"softmax", "_softmax", "_safe_softmax", "log_softmax"}),
    "activation": frozenset({"gelu", "silu", "relu", "sigmoid", "tanh", "hardswish", "mish", "leaky_relu"}),
    "quantize": frozenset({"act_qdq", "quantize_per_tensor", "dequantize"}),
}

# optkit's quantized kernels (`torch.ops.optkit.*`), by packet name.
QUANTIZED_OPS = frozenset({"linear_w8a8", "linear_wq", "conv2d_w8a8"})

# Kinds whose nodes carry a weight tensor passes may quantize.
WEIGHTED_KINDS = frozenset({"linear", "conv", "embedding"})


def op_name(node: fx.Node) -> str:
    """The ATen packet name of a call_function node (`linear` for `aten.linear.default`), else ''."""
    if node.op != "call_function":
        return ""
    target: Any = node.target
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(getattr(packet, "__name__", packet)).split(".")[-1]
    return str(getattr(target, "__name__", target))


def op_kind(node: fx.Node) -> str:
    """The kind of `node` from `OP_KINDS`, or 'other'."""
    name = op_name(node)
    for kind, names in OP_KINDS.items():
        if name in names:
            return kind
    return "other"


def squeeze_as_view(node: fx.Node) -> list[int] | None:
    """The output shape of a `squeeze.dim` / `squeeze.dims` node that names a dimension whose size
    is not 1, else None. PyTorch leaves such a dimension as it is (a PixArt transformer's
    `squeeze(1)` of its (2, 256, 32) timestep embedding: a no-op); ONNX's `Squeeze` refuses it
    and TVM 0.27's importer fails on it ("Cannot operate on an undefined bijective layout"), so
    both spell the node as a `view` to this shape. None for symbolic shapes."""
    if node.op != "call_function" or node.target not in (_aten.squeeze.dim, _aten.squeeze.dims):
        return None
    x, dims = node.args[0], node.args[1]
    if not isinstance(dims, int | list | tuple):
        return None
    val, out = getattr(x, "meta", {}).get("val"), node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    shape = list(val.shape)
    named = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(s, int) for s in [*shape, *out.shape]) or all(shape[d] == 1 for d in named):
        return None
    return [int(s) for s in out.shape]
