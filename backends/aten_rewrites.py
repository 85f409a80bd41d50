"""ATen rewrites before TVM import: spell out PyTorch semantics that TVM 0.27's importer reads otherwise.

Runs in `tvm_import.import_program` on the core-ATen graph, after the decompositions and right
before `from_exported_program`. Each rule is data (`Rewrite`: a name, the ops it looks at and a
function that edits one node in place and says whether it did); `rewrite_aten` applies them in
order, removes what became dead and returns how often each rule fired.

| rule | PyTorch | TVM 0.27 importer | rewrite |
|---|---|---|---|
| `scan_dtype` | `cumsum` / `cumprod` of bool or a narrower int promote to int64 | keeps the input dtype: a bool `cumsum` reaches LLVM as a bool add, which fails with `Check failed: (t.MatchesCode(DLDataTypeCode::kDLFloat))` naming no op | cast the input to the output dtype |
| `concat_dtype` | `cat` promotes its inputs to one dtype | `concat` needs equal dtypes | cast the inputs to the output dtype |
| `empty_concat` | `cat` skips 1-D empty tensors (the legacy rule) and zero-size inputs add nothing | `concat` needs equal ranks (`ndim 1 and 4`) | drop the zero-size inputs |
| `plain_softmax` | `scaled_dot_product_attention` without a mask exports as a "safe" softmax: `where(row all -inf, 0, softmax(x))` | five more passes over the (B, H, N, N) scores and a zeros constant of their size folded into the weights (32 MiB per self-attention of a 32 x 32 latent UNet) | `softmax(x)` where x comes straight from the scores' matmul (no mask can make a row all -inf) |
| `bf16_norm` | `native_group_norm` / `native_layer_norm` of bfloat16 | `group_norm` / `layer_norm` refuse it: `expects that data must be float, but got T.bfloat16` | normalize in float32 (input, scale and shift cast up), cast the result back |
| `noop_squeeze` | `squeeze(x, d)` leaves a dimension `d` of size > 1 as it is (a PixArt transformer's timestep embedding) | fails: `Cannot operate on an undefined bijective layout` | a `view` to the output shape (`optkit.ir.ops.squeeze_as_view`; the ONNX export does the same) |
| `negative_select` | `select(x, dim, -1)` counts from the end | `take(x, -1, dim)` in fast mode: reads out of bounds (garbage, NaN or a segfault; `x[:, -1]` of a 6-D tensor did it) | the index plus the dimension's size |
| `half_matmul` | `linear`, `mm`, `bmm`, `matmul`, `addmm`, `convolution` of bfloat16 / float16 tensors are bfloat16 / float16 | their matmuls output float32 (`addmm`'s bias add then fails: `Binary operators must have the same datatype`), and every later op, each weight cast up with it, runs in float32: a half model's weights are widened after its first matmul | cast the result back to the half dtype (`addmm` and a convolution with a bias: `add(half(mm(x, w)), bias)`), so the next layer's weights stay in half |

Both patterns come from Hugging Face transformers' Llama: the causal mask of a cache-free forward
counts `position_ids` steps with `cumsum` over a bool tensor, and a `DynamicCache` forward
concatenates each layer's empty initial key/value tensor of shape `(0,)` with the new 4-D one.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx

from optkit.ir.ops import squeeze_as_view

log = logging.getLogger(__name__)

aten = torch.ops.aten


@dataclass(frozen=True)
class Rewrite:
    """One rule: `apply(node)` edits a node whose op is in `ops` and returns whether it did."""

    name: str
    ops: tuple[torch._ops.OpOverload, ...]
    apply: Callable[[fx.Node], bool]


def _val(node: object) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _cast(node: fx.Node, x: fx.Node, dtype: torch.dtype) -> fx.Node:
    """A `_to_copy(x, dtype)` node inserted before `node`, carrying `node`'s module path."""
    with node.graph.inserting_before(node):
        cast = node.graph.call_function(aten._to_copy.default, (x,), {"dtype": dtype})
    cast.meta.update(node.meta)  # nn_module_stack and stack trace of the op that needs the cast
    cast.meta["val"] = x.meta["val"].to(dtype)
    return cast


def _cast_scan_input(node: fx.Node) -> bool:
    x, out = node.args[0], _val(node)
    x_val = _val(x)
    if out is None or x_val is None or x_val.dtype == out.dtype or not isinstance(x, fx.Node):
        return False
    node.replace_input_with(x, _cast(node, x, out.dtype))
    return True


def _concat_operands(node: fx.Node) -> tuple[list[fx.Node], list[torch.Tensor], torch.Tensor] | None:
    """(input nodes, their values, output value) of a `cat` whose inputs all carry tensor values."""
    tensors, out = node.args[0], _val(node)
    if (
        out is None
        or not isinstance(tensors, (list, tuple))
        or not all(isinstance(t, fx.Node) for t in tensors)
    ):
        return None
    nodes = [t for t in tensors if isinstance(t, fx.Node)]
    vals = [v for v in (_val(t) for t in nodes) if v is not None]
    return (nodes, vals, out) if len(vals) == len(nodes) else None


def _cast_concat_inputs(node: fx.Node) -> bool:
    operands = _concat_operands(node)
    if operands is None or all(v.dtype == operands[2].dtype for v in operands[1]):
        return False
    nodes, vals, out = operands
    cast = [
        t if v.dtype == out.dtype else _cast(node, t, out.dtype) for t, v in zip(nodes, vals, strict=True)
    ]
    node.args = (cast, *node.args[1:])
    return True


def _drop_empty_concat_inputs(node: fx.Node) -> bool:
    operands = _concat_operands(node)
    if operands is None:
        return False
    nodes, vals, out = operands
    # Drop only inputs that change nothing: zero elements and the output's dtype (torch.cat
    # promotes over all inputs, empty ones included; `concat_dtype` runs first and casts them).
    kept = [t for t, v in zip(nodes, vals, strict=True) if v.numel() or v.dtype != out.dtype]
    if len(kept) == len(nodes) or not kept:
        return False
    node.args = (kept, *node.args[1:])
    return True


_RESHAPES = (
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.mul.Scalar,
    aten.div.Scalar,
)
_MATMULS = (aten.bmm.default, aten.mm.default, aten.matmul.default)


def _unmasked_softmax(node: fx.Node) -> bool:
    cond, zeros, soft = node.args[:3]
    if not (
        isinstance(soft, fx.Node)
        and soft.target == aten._softmax.default
        and isinstance(zeros, fx.Node)
        and zeros.target == aten.full_like.default
        and zeros.args[0] is soft
        and zeros.args[1] == 0
        and isinstance(cond, fx.Node)
        and cond.target == aten.logical_not.default
    ):
        return False
    scores = soft.args[0]
    while isinstance(scores, fx.Node) and scores.target in _RESHAPES:
        scores = scores.args[0]
    if not (isinstance(scores, fx.Node) and scores.target in _MATMULS):
        return False  # a mask may leave a row all -inf: keep the safe form
    node.replace_all_uses_with(soft)
    return True


def _bf16_norm_in_float32(node: fx.Node) -> bool:
    x = node.args[0]
    x_val = _val(x) if isinstance(x, fx.Node) else None
    if x_val is None or x_val.dtype != torch.bfloat16:
        return False
    args = list(node.args)
    # input, scale, shift (None when the norm has none); layer norm has its shape in between
    for i in (0, 1, 2) if node.target == aten.native_group_norm.default else (0, 2, 3):
        arg = args[i]
        if isinstance(arg, fx.Node):
            args[i] = _cast(node, arg, torch.float32)
    node.args = tuple(args)
    vals = node.meta.get("val")
    if isinstance(vals, (tuple, list)):
        node.meta["val"] = tuple(v.float() if isinstance(v, torch.Tensor) else v for v in vals)
    for user in list(node.users):
        if user.target is operator.getitem and user.args[1] == 0:
            with node.graph.inserting_after(user):
                back = node.graph.call_function(aten._to_copy.default, (user,), {"dtype": torch.bfloat16})
            back.meta.update(user.meta)
            user.meta["val"] = user.meta["val"].float() if _val(user) is not None else user.meta.get("val")
            for later in list(user.users):
                if later is not back:
                    later.replace_input_with(user, back)
    return True


def _half_matmul_result(node: fx.Node) -> bool:
    out = _val(node)
    if out is None or out.dtype not in (torch.bfloat16, torch.float16):
        return False
    graph = node.graph
    if node.target == aten.addmm.default:
        if node.kwargs:
            return False  # alpha / beta are left to the importer
        bias, x, w = node.args[:3]
        with graph.inserting_before(node):
            mm = graph.call_function(aten.mm.default, (x, w))
            mm.meta.update(node.meta)
            add = graph.call_function(aten.add.Tensor, (_cast(node, mm, out.dtype), bias))
        add.meta.update(node.meta)
        node.replace_all_uses_with(add)
        return True
    if node.target == aten.convolution.default and node.args[2] is not None:
        x, w, bias, *rest = node.args
        bias_val = _val(bias) if isinstance(bias, fx.Node) else None
        if bias_val is None:
            return False
        shape = [1, bias_val.shape[0]] + [1] * (out.dim() - 2)
        with graph.inserting_before(node):
            conv = graph.call_function(aten.convolution.default, (x, w, None, *rest))
            conv.meta.update(node.meta)
            view = graph.call_function(aten.view.default, (bias, shape))
            view.meta.update(node.meta)
            view.meta["val"] = bias_val.view(shape)
            add = graph.call_function(aten.add.Tensor, (_cast(node, conv, out.dtype), view))
        add.meta.update(node.meta)
        node.replace_all_uses_with(add)
        return True
    users = list(node.users)
    if len(users) == 1 and users[0].target == aten._to_copy.default:
        return False  # already cast (a second pass over the graph)
    with graph.inserting_after(node):
        cast = graph.call_function(aten._to_copy.default, (node,), {"dtype": out.dtype})
    cast.meta.update(node.meta)
    for user in users:
        user.replace_input_with(node, cast)
    return True


def _select_index_from_start(node: fx.Node) -> bool:
    x, dim, index = node.args[:3]
    val = _val(x)
    if not (isinstance(dim, int) and isinstance(index, int)) or index >= 0 or val is None:
        return False
    node.args = (x, dim, index + int(val.shape[dim]))
    return True


def _squeeze_as_view(node: fx.Node) -> bool:
    shape = squeeze_as_view(node)
    if shape is None:
        return False
    node.target, node.args = aten.view.default, (node.args[0], shape)
    return True


REWRITES: tuple[Rewrite, ...] = (
    Rewrite("noop_squeeze", (aten.squeeze.dim, aten.squeeze.dims), _squeeze_as_view),
    Rewrite("scan_dtype", (aten.cumsum.default, aten.cumprod.default), _cast_scan_input),
    Rewrite("concat_dtype", (aten.cat.default,), _cast_concat_inputs),
    Rewrite("empty_concat", (aten.cat.default,), _drop_empty_concat_inputs),
    Rewrite("plain_softmax", (aten.where.self,), _unmasked_softmax),
    Rewrite("negative_select", (aten.select.int,), _select_index_from_start),
    Rewrite(
        "bf16_norm", (aten.native_group_norm.default, aten.native_layer_norm.default), _bf16_norm_in_float32
    ),
    Rewrite(
        "half_matmul",
        (
            aten.addmm.default,
            aten.linear.default,
            aten.mm.default,
            aten.bmm.default,
            aten.matmul.default,
            aten.convolution.default,
        ),
        _half_matmul_result,
    ),
)


def rewrite_aten(graph_module: fx.GraphModule, rewrites: tuple[Rewrite, ...] = REWRITES) -> dict[str, int]:
    """Apply `rewrites` to every matching node of `graph_module`; returns {rule name: nodes changed}.

    The graph keeps its placeholders and outputs, so an `ExportedProgram`'s signature stays valid.
    """
    fired: dict[str, int] = {}
    for rule in rewrites:
        for node in list(graph_module.graph.nodes):
            if node.op == "call_function" and node.target in rule.ops and rule.apply(node):
                fired[rule.name] = fired.get(rule.name, 0) + 1
    if fired:
        graph_module.graph.eliminate_dead_code()
        graph_module.graph.lint()
        graph_module.recompile()
        log.info("ATen rewrites before TVM import: %s", ", ".join(f"{k} x{v}" for k, v in fired.items()))
    return fired
