"""Channels-last activations for float convolutions on the CPU.

PyTorch hands TVM NCHW convs. The packed conv kernel (`packing.py`) writes its output channels
innermost (that is what it vectorizes), so in NCHW every conv ended in an NHWC -> NCHW transpose,
and a depthwise conv in NCHW can only vectorize along the image width (7, 14, 28: odd or short
rows). Measured on MobileNetV2 at batch 8, 112 x 112 (Intel Xeon with AVX-512, 1 thread, before this module):
of 78 ms in TVM, 36 ms went to the NCHW depthwise convs and 14 ms to the transposes back to NCHW,
against 16 ms for all of ONNX Runtime.

`channels_last` converts every float32 `conv2d` to NHWC data / OHWI weights with TVM's
`ConvertLayout`, which carries the layout through the elementwise ops between convs (bias adds,
activations, residual adds), so that transposes remain only where the graph leaves the conv
chain (the input, a `mean` over H and W, a flatten). `clip` (ReLU6, hardtanh) has no layout rule
in TVM 0.27 and would force a transpose pair around every activation, so it is spelled
`minimum(maximum(x, lo), hi)` first. int8 convs go NHWC too where the VNNI kernels take them
(`vnni.py` reads NHWC), and keep NCHW elsewhere. A W8A8 MobileNetV2 has float convs too: its
depthwise convs compute in float32 (`quantized.py`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NHWC = ["NHWC", "OHWI"]


def channels_last(mod: Any, fold_weights: bool = True, int8: bool = False) -> tuple[Any, int]:
    """`mod` with its float32 conv2d ops in NHWC / OHWI (see the module docstring), and how many.

    With `fold_weights=False` the weights' OIHW -> OHWI transposes stay `permute_dims` of the
    original constants: `pack_weights` reads them through that binding, so no transposed copy
    of every conv weight is made only to be replaced by its packed panels. `int8`: int8 convs
    go NHWC too (the VNNI kernels read NHWC, `packing._vnni_conv`); otherwise they keep NCHW,
    whatever layout flows into them.
    """
    from tvm import relax

    convs = [0]

    def desired(call: Any) -> dict[str, list[str]]:
        if str(getattr(call.op, "name", "")) != "relax.nn.conv2d" or str(call.attrs.data_layout) != "NCHW":
            return {}
        dtype = str(call.args[0].ty.dtype)
        if dtype == "float32" or (int8 and dtype == "int8"):
            convs[0] += 1
            return {"relax.nn.conv2d": NHWC}
        return {"relax.nn.conv2d": ["NCHW", "OIHW"]}

    mod = _clip_as_min_max(mod)
    if not _has_float_conv(mod):
        return mod, 0
    mod = relax.transform.ConvertLayout({}, desired)(mod)
    if fold_weights:
        mod = relax.transform.FoldConstant()(mod)  # the transposed weights
    return mod, convs[0]


def cancel_transposes(mod: Any) -> tuple[Any, int]:
    """Drop `permute_dims(permute_dims(x, p), q)` pairs whose composition is the identity."""
    import tvm
    from tvm import relax

    permute = tvm.ir.Op.get("relax.permute_dims")
    cancelled = [0]

    @relax.expr_functor.mutator
    class _Cancel(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if call.op != permute or call.attrs.axes is None:
                return call
            inner = call.args[0]
            bound = self.lookup_binding(inner) if isinstance(inner, relax.Var) else inner
            if not isinstance(bound, relax.Call) or bound.op != permute or bound.attrs.axes is None:
                return call
            first = [int(a) for a in bound.attrs.axes]
            second = [int(a) for a in call.attrs.axes]
            if [first[a] for a in second] != list(range(len(first))):
                return call
            cancelled[0] += 1
            return bound.args[0]

    mutator = _Cancel(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return relax.transform.DeadCodeElimination()(mutator.builder_.get()), cancelled[0]


def _has_float_conv(mod: Any) -> bool:
    from tvm import relax

    found = []

    def visit(expr: Any) -> None:
        if (
            isinstance(expr, relax.Call)
            and str(getattr(expr.op, "name", "")) == "relax.nn.conv2d"
            and str(expr.args[0].ty.dtype) == "float32"
        ):
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _clip_as_min_max(mod: Any) -> Any:
    import tvm
    from tvm import relax

    clip = tvm.ir.Op.get("relax.clip")

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if call.op != clip:
                return call
            x, lo, hi = call.args
            dtype = str(x.ty.dtype)
            if not dtype.startswith("float"):
                return call
            low = relax.const(np.array(float(lo.value), dtype))
            high = relax.const(np.array(float(hi.value), dtype))
            return relax.op.minimum(self.builder_.emit(relax.op.maximum(x, low)), high)

    mutator = _Rewrite(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
