"""FLOPs, bytes and memory of a Program, per node, per block and in total.

Counts are read from the shapes that capture recorded on every node (`node.meta["val"]`). A
multiply-add is two FLOPs. Bytes are what a node reads and writes (inputs + outputs), the
figure a roofline or a PIM cost model needs. Element-wise ops count one FLOP per output element
(a few for norms and softmax); view and copy ops count none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from optkit.ir.ops import op_name
from optkit.ir.program import Program, module_path

# FLOPs per output element of element-wise families, by ATen packet name.
_PER_ELEMENT: dict[str, int] = {
    "layer_norm": 5,
    "native_layer_norm": 5,
    "group_norm": 5,
    "native_group_norm": 5,
    "rms_norm": 4,
    "batch_norm": 2,
    "softmax": 5,
    "_softmax": 5,
    "_safe_softmax": 5,
    "log_softmax": 5,
    "gelu": 8,
    "silu": 4,
    "sigmoid": 4,
    "tanh": 4,
    "mish": 6,
    "exp": 1,
    "log": 1,
    "rsqrt": 1,
    "sqrt": 1,
    "add": 1,
    "sub": 1,
    "mul": 1,
    "div": 1,
    "relu": 1,
    "pow": 1,
    "neg": 1,
    "where": 1,
    "clamp": 1,
    "mean": 1,
    "sum": 1,
    "amax": 1,
    "cos": 1,
    "sin": 1,
    "abs": 1,
    "hardswish": 3,
    "leaky_relu": 1,
    "cumsum": 1,
    "minimum": 1,
    "maximum": 1,
    "reciprocal": 1,
    "square": 1,
}


@dataclass(frozen=True)
class NodeCost:
    """FLOPs and bytes moved by one node."""

    name: str
    op: str
    module: str
    flops: int
    bytes: int


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _val(node: Any) -> list[torch.Tensor]:
    if not isinstance(node, fx.Node):
        return []
    if "val" not in node.meta and node.op == "get_attr" and node.graph.owning_module is not None:
        # Weights a pass added (packed int8/int4) carry no traced metadata; read the tensor.
        owner = node.graph.owning_module
        try:
            return _tensors(owner.get_parameter(str(node.target)))
        except AttributeError:
            try:
                return _tensors(owner.get_buffer(str(node.target)))
            except AttributeError:
                return _tensors(getattr(owner, str(node.target), None))
    return _tensors(node.meta.get("val"))


def _numel(shape: Any) -> int:
    return int(math.prod(int(s) for s in shape))


def node_flops(node: fx.Node) -> int:
    """FLOPs of one call_function node (0 for views, copies and unknown ops)."""
    name = op_name(node)
    outs = _val(node)
    if not outs:
        return 0
    out = outs[0]
    args = node.args
    if name in ("linear_w8a8", "linear_wq"):
        x = _val(args[0])
        return 2 * _numel(out.shape) * int(x[0].shape[-1]) + _numel(out.shape) if x else 0
    if name == "conv2d_w8a8":
        w = _val(args[3])
        return 2 * _numel(out.shape) * _numel(w[0].shape[1:]) if w else 0
    if name in ("linear", "mm", "addmm", "bmm", "matmul", "baddbmm"):
        a = _val(args[1] if name in ("addmm", "baddbmm") else args[0])
        if not a:
            return 0
        k = int(a[0].shape[-1])
        extra = (
            _numel(out.shape)
            if name in ("addmm", "baddbmm") or (name == "linear" and len(args) > 2 and args[2] is not None)
            else 0
        )
        return 2 * _numel(out.shape) * k + extra
    if name in ("convolution", "conv1d", "conv2d", "conv3d"):
        w = _val(args[1])
        if not w:
            return 0
        per_out = _numel(w[0].shape[1:])  # Cin/groups * kernel
        return 2 * _numel(out.shape) * per_out
    if name in ("conv_transpose1d", "conv_transpose2d"):
        x, w = _val(args[0]), _val(args[1])
        if not (x and w):
            return 0
        return 2 * _numel(x[0].shape) * _numel(w[0].shape[1:])
    if name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        q, key, v = (_val(a) for a in args[:3])
        if not (q and key and v):
            return 0
        lq, e = int(q[0].shape[-2]), int(q[0].shape[-1])
        lk, ev = int(key[0].shape[-2]), int(v[0].shape[-1])
        batch = _numel(q[0].shape[:-2])
        return batch * (2 * lq * lk * e + 2 * lq * lk * ev + 5 * lq * lk)
    if name == "einsum":
        operands = args[1] if isinstance(args[1], (list, tuple)) else ()
        return _einsum_flops(str(args[0]), [t for a in operands for t in _val(a)], out)
    if name in ("embedding", "embedding_bag", "_embedding_bag"):
        return _numel(out.shape)
    return _PER_ELEMENT.get(name, 0) * _numel(out.shape)


def _einsum_flops(equation: str, operands: list[torch.Tensor], out: torch.Tensor) -> int:
    # 2 x (product of every index size): exact for two operands; '...' dims are read off the output.
    terms = equation.replace(" ", "").split("->")
    sizes: dict[str, int] = {}
    for term, t in zip(terms[0].split(","), operands, strict=False):
        letters = term.replace("...", "")
        for ch, size in zip(letters, t.shape[t.dim() - len(letters) :], strict=False):
            sizes[ch] = int(size)
    out_letters = terms[1].replace("...", "") if len(terms) > 1 else ""
    named_out = math.prod(sizes.get(ch, 1) for ch in out_letters)
    ellipsis = max(1, _numel(out.shape) // max(1, named_out))
    return 2 * math.prod(sizes.values()) * ellipsis


def node_bytes(node: fx.Node) -> int:
    """Bytes one node reads (its tensor inputs) and writes (its outputs)."""
    total = sum(t.numel() * t.element_size() for t in _val(node))
    for arg in node.all_input_nodes:
        total += sum(t.numel() * t.element_size() for t in _val(arg))
    return total


def node_costs(program: Program) -> list[NodeCost]:
    """FLOPs and bytes of every compute node, in graph order."""
    return [
        NodeCost(n.name, op_name(n), module_path(n), node_flops(n), node_bytes(n))
        for n in program.compute_nodes()
    ]


def total_flops(program: Program) -> int:
    """FLOPs of one forward call on the example inputs."""
    return sum(c.flops for c in node_costs(program))


def flops_by_block(program: Program, pattern: str | None = None) -> dict[str, int]:
    """FLOPs per block (see `Program.block_paths`); nodes outside every block go to '(other)'."""
    paths = program.block_paths(pattern)
    result = {p: 0 for p in paths}
    result["(other)"] = 0
    for cost in node_costs(program):
        owner = next((p for p in paths if cost.module == p or cost.module.startswith(p + ".")), "(other)")
        result[owner] += cost.flops
    return result


def tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Identity of a tensor's values in memory: storage, offset, shape, strides, dtype. Two names
    with one key are one tensor (tied weights)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def unique_parameters(program: Program) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the graph, each tensor once: names that alias one tensor
    (tied weights — an embedding table read by the output head — whether one Parameter under
    two names or two Parameters viewing the same storage) keep the first name."""
    unique: dict[tuple[Any, ...], tuple[str, torch.Tensor]] = {}
    for name, t in program.parameters().items():
        unique.setdefault(tensor_key(t) if t.numel() else (name,), (name, t))
    return dict(unique.values())


def parameter_bytes(program: Program) -> int:
    """Bytes of the parameters and buffers the graph holds, tied weights once."""
    return sum(t.numel() * t.element_size() for t in unique_parameters(program).values())


def parameter_count(program: Program) -> int:
    """Elements of the parameters and buffers the graph holds: float weights, and the integer
    weights and scales a quantization pass stores as buffers (a packed int4 element holds two
    weights). Tied weights count once."""
    return sum(t.numel() for t in unique_parameters(program).values())


def peak_activation_bytes(program: Program) -> int:
    """Peak bytes of live intermediate tensors when the graph runs in order (inputs included,
    parameters excluded): a value is live from its producer until its last user."""
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in program.graph.nodes}
    live: dict[fx.Node, int] = {}
    peak = 0
    for node in program.graph.nodes:
        if node.op in ("placeholder", "call_function"):
            live[node] = sum(t.numel() * t.element_size() for t in _val(node))
        peak = max(peak, sum(live.values()))
        for n in [n for n in live if last_use[n] <= order[node]]:
            del live[n]
    return peak
