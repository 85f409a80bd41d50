"""Residual adds of a quantized CNN on the int8 grid, so that its export is int8 end to end.

`ptq` quantizes the inputs of weight layers. In a CNN with skip connections (MobileNetV2's
inverted residuals, ResNet's basic blocks) a projection conv's output goes to an `add`, not to
another quantized layer, so in the ONNX export it leaves the conv as float: ONNX Runtime cannot
fuse that conv into `QLinearConv` (no QuantizeLinear after it), runs it in float between
Q/DQ pairs and transposes between its NCHWc float layout and the NHWC int8 one around every
block. Measured on a MobileNetV2-style network (batch 2, 64 x 64, 1 thread): 36 of 52 convs
fused and the W8A8 export ran slower than the float one.

`quantize_residual_adds` puts both inputs of every such `add`, and every quantized conv's output
that a float op reads after its ReLU / ReLU6 if any (the `mean` before a classifier), on the int8 grid (`act_qdq`), as ONNX
Runtime's own QDQ quantizer does: a tensor that some quantized conv also reads reuses that
conv's input scale and zero point (it then has one QuantizeLinear in the export, shared after
ONNX Runtime's common-subexpression elimination, and the add's output, quantized by its
readers, makes the add a `QLinearAdd`); other tensors are calibrated with the pass's observer
on the quantized graph. Quantized readers of a max pool over an int8-grid tensor take that
tensor's grid, so the pool itself runs on uint8. After this, the MobileNetV2-style export fuses like ONNX Runtime's own
(51 of 52 convs `QLinearConv`, every residual add `QLinearAdd`, the classifier `QGemm`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from optkit.ir.ops import op_name
from optkit.ir.program import Program, module_path
from optkit.quant import ops as qops  # noqa: F401  (registers torch.ops.optkit.*)
from optkit.quant.activations import ACT_SPEC
from optkit.quant.observers import Observer, ObserverKind
from optkit.quant.sites import add_buffer

log = logging.getLogger(__name__)

_ADD = torch.ops.aten.add.Tensor
_CLAMPS = frozenset({"relu", "relu6", "hardtanh", "clamp", "clip"})
_MAX_POOLS = frozenset({"max_pool2d", "max_pool2d_with_indices"})


def _qconv(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.target == torch.ops.optkit.conv2d_w8a8.default


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.shape == vb.shape


def residual_adds(program: Program) -> list[fx.Node]:
    """`add` nodes of two same-shape float tensors, at least one the output of a quantized conv."""
    found = []
    for node in program.compute_nodes():
        if node.target != _ADD or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            continue
        a, b = node.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and _same_shape(a, b)):
            continue
        if a.meta["val"].is_floating_point() and (_qconv(a) or _qconv(b)):
            found.append(node)
    return found


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, observers: dict[str, Observer]) -> None:
        super().__init__(gm)
        self.observers = observers

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.observers and isinstance(result, torch.Tensor):
            self.observers[n.name].update(result)
        return result


def _quantized_reader(user: fx.Node, x: fx.Node) -> bool:
    """Whether `user` reads `x` through its own input quantizer."""
    if user.target == torch.ops.optkit.act_qdq.default:
        return True
    return str(getattr(user.target, "namespace", "")) == "optkit" and bool(user.args) and user.args[0] is x


def quantize_residual_adds(
    program: Program, batches: Sequence[tuple[torch.Tensor, ...]], observer: ObserverKind, percentile: float
) -> int:
    """Put the int8 grid (`act_qdq`) between every quantized conv or residual add and its float
    readers, and on both inputs of every residual add (see the module docstring); returns how many tensors got a
    quantizer. Run after the conv sites are quantized."""
    gm = program.graph_module
    rewire: dict[fx.Node, set[fx.Node]] = {}  # tensor -> the readers that must read it quantized
    adds = residual_adds(program)
    for add in adds:
        for x in add.args:
            rewire.setdefault(x, set()).add(add)  # type: ignore[arg-type]
    for node in program.compute_nodes():
        if not (_qconv(node) or node in adds):
            continue
        end = node
        while len(end.users) == 1 and op_name(next(iter(end.users))) in _CLAMPS:
            end = next(iter(end.users))  # ReLU / ReLU6 fuse into the quantizer after them
        floats = {u for u in end.users if not _quantized_reader(u, end)}
        if floats:
            rewire.setdefault(end, set()).update(floats)
    if not rewire:
        return 0
    qparams: dict[fx.Node, tuple[str, str] | None] = {}
    for x in rewire:
        reader = next((u for u in x.users if _qconv(u) and u.args[0] is x), None)
        qparams[x] = (str(reader.args[1].target), str(reader.args[2].target)) if reader else None  # type: ignore[union-attr]
    fresh = {
        x.name: Observer(observer, percentile, module_path(x) or x.name)
        for x, v in qparams.items()
        if v is None
    }
    if fresh:
        recorder = _Recorder(gm, fresh)
        with torch.no_grad():
            for batch in batches:
                recorder.run(*batch)
        for x, v in list(qparams.items()):
            if v is None:
                scale, zero = fresh[x.name].qparams(ACT_SPEC)
                path = module_path(x) or x.name
                qparams[x] = (
                    add_buffer(gm, path, "out_scale", scale.reshape(()).float()),
                    add_buffer(gm, path, "out_zero", (zero.reshape(()) - 128).to(torch.int8)),
                )
    graph = gm.graph
    for x, readers in rewire.items():
        scale_name, zero_name = qparams[x]  # type: ignore[misc]
        with graph.inserting_after(x):
            s = graph.get_attr(scale_name)
        with graph.inserting_after(s):
            z = graph.get_attr(zero_name)
        with graph.inserting_after(z):
            q = graph.call_function(torch.ops.optkit.act_qdq.default, (x, s, z))
        q.meta = dict(x.meta)
        for reader in readers:
            reader.replace_input_with(x, q)
    _share_through_max_pools(gm)
    gm.recompile()
    log.info("put %d conv output(s) and residual input(s) on the int8 grid", len(rewire))
    return len(rewire)


def _share_through_max_pools(gm: fx.GraphModule) -> None:
    """Quantized readers of a max pool whose input is on the int8 grid use that grid too.

    The max of int8-grid values is on the same grid, so the export's DQ -> MaxPool -> Q, with one
    scale and zero point, runs as a uint8 max pool in ONNX Runtime (as in its own QDQ models);
    with the readers' own scales the pool ran in float between layout conversions (ResNet's stem).
    """
    for pool in list(gm.graph.nodes):
        if op_name(pool) not in _MAX_POOLS or not pool.args:
            continue
        q = pool.args[0]
        if not isinstance(q, fx.Node) or q.target != torch.ops.optkit.act_qdq.default:
            continue
        scale, zero = q.args[1], q.args[2]
        for reader in list(pool.users):
            quantized = reader.target == torch.ops.optkit.act_qdq.default or _qconv(reader)
            if quantized and reader.args[0] is pool:
                reader.args = (pool, scale, zero, *reader.args[3:])
