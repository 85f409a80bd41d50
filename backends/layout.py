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
from optkit.backends.relax_exprs import rewrite_functions, use_counts

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
    if not _has_conv(mod, ("float32", "int8") if int8 else ("float32",)):
        return mod, 0
    mod = relax.transform.ConvertLayout({}, desired)(mod)
    if fold_weights:
        mod = relax.transform.FoldConstant()(mod)  # the transposed weights
    return mod, convs[0]


def cancel_transposes(mod: Any) -> tuple[Any, int]:
    """Drop `permute_dims(permute_dims(x, p), q)` pairs whose composition is the identity, also
    where layout-free ops stand between them (`_cancel_across_ops`), and identity transposes."""
    import tvm
    from tvm import relax

    mod, across = _cancel_across_ops(mod)
    permute = tvm.ir.Op.get("relax.permute_dims")
    cancelled = [across]

    @relax.expr_functor.mutator
    class _Cancel(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if call.op != permute or call.attrs.axes is None:
                return call
            if [int(a) for a in call.attrs.axes] == list(range(len(call.attrs.axes))):
                cancelled[0] += 1  # the identity (ConvertLayout leaves some)
                return call.args[0]
            inner = call.args[0]
            bound = self.lookup_binding(inner) if isinstance(inner, relax.Var) else inner
            if not isinstance(bound, relax.Call) or bound.op != permute or bound.attrs.axes is None:
                return call
            if not _undoes(call.attrs.axes, bound.attrs.axes):
                return call
            cancelled[0] += 1
            return bound.args[0]

    return relax.transform.DeadCodeElimination()(rewrite_functions(_Cancel(mod), mod)), cancelled[0]


def _undoes(second: Any, first: Any) -> bool:
    """Whether transposing by axes `second` after axes `first` gives back the original order."""
    before = [int(a) for a in first]
    return [before[int(a)] for a in second] == list(range(len(before)))


# Ops that compute each element from the same element of one tensor (and scalars): a transpose
# commutes with them. `nn.pad` commutes too, with its widths permuted.
_LAYOUT_FREE = frozenset(
    f"relax.{name}"
    for name in (
        "add", "subtract", "multiply", "divide", "maximum", "minimum", "round", "floor", "clip",
        "astype", "negative", "sigmoid", "nn.pad",
    )
)  # fmt: skip


def _cancel_across_ops(mod: Any) -> tuple[Any, int]:
    """`permute_dims(f(permute_dims(x, p)), q)` -> `f(x)` where q undoes p and `f` is a chain of
    layout-free ops (`_LAYOUT_FREE`), each read by the next only; how many pairs went.

    Where ConvertLayout has no rule for an op it puts it back in the old layout between two
    transposes. TVM 0.27 has none for `nn.pad`, and a W8A8 conv's input is padded in the integer
    domain (quantize, pad, re-add the zero point, cast), so every int8 conv of a channels-last
    UNet read its input through NHWC -> NCHW (float) and NCHW -> NHWC (int8) transposes."""
    import tvm
    from tvm import relax

    permute = tvm.ir.Op.get("relax.permute_dims")
    plans: dict[Any, tuple[Any, list[tuple[Any, int]], list[int]]] = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            plans.update(_sink_plans(func, permute))
    if not plans:
        return mod, 0

    @relax.expr_functor.mutator
    class _Sink(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            plan = plans.get(call)
            if plan is None:
                return self.visit_expr_post_order(call)
            root, chain, axes = plan
            value = self.visit_expr(root)
            for i, (op_call, slot) in enumerate(chain):
                if i:
                    value = self.builder_.emit(value)
                value = _rebuilt(op_call, slot, value, [self.visit_expr(a) for a in op_call.args], axes)
            return value

    return relax.transform.DeadCodeElimination()(rewrite_functions(_Sink(mod), mod)), len(plans)


def _sink_plans(func: Any, permute: Any) -> dict[Any, tuple[Any, list[tuple[Any, int]], list[int]]]:
    """Per outer `permute_dims` call of `func` that `_cancel_across_ops` removes: (x, the chain's
    calls innermost first with the argument slot the chain runs through, p)."""
    from tvm import relax

    values = {
        binding.var: binding.value
        for block in func.body.blocks
        for binding in block.bindings
        if isinstance(binding, relax.VarBinding)
    }
    uses = use_counts(func)

    plans = {}
    for value in values.values():
        if not isinstance(value, relax.Call) or value.op != permute or value.attrs.axes is None:
            continue
        chain: list[tuple[Any, int]] = []
        current = value.args[0]
        while isinstance(current, relax.Var) and uses.get(current) == 1:
            inner = values.get(current)
            if not isinstance(inner, relax.Call):
                break
            if inner.op == permute:
                if chain and inner.attrs.axes is not None and _undoes(value.attrs.axes, inner.attrs.axes):
                    plans[value] = (inner.args[0], chain[::-1], [int(a) for a in inner.attrs.axes])
                break
            slot = _chain_slot(inner)
            if slot is None:
                break
            chain.append((inner, slot))
            current = inner.args[slot]
    return plans


def _chain_slot(call: Any) -> int | None:
    """The argument of a layout-free `call` that carries the tensor (the others are scalars),
    or None if `call` is not layout-free."""
    from tvm import relax

    if str(getattr(call.op, "name", "")) not in _LAYOUT_FREE:
        return None
    tensors = [
        i for i, arg in enumerate(call.args) if isinstance(arg.ty, relax.TensorType) and arg.ty.ndim != 0
    ]
    return tensors[0] if len(tensors) == 1 else None


def _rebuilt(call: Any, slot: int, value: Any, args: list[Any], axes: list[int]) -> Any:
    """`call` with `value` (in the layout before the transpose `axes`) in argument `slot`."""
    from tvm import relax

    if str(call.op.name) == "relax.nn.pad":
        width = [int(w) for w in call.attrs.pad_width]
        before = {axes[i]: width[2 * i : 2 * i + 2] for i in range(len(axes))}
        widths = [w for axis in range(len(axes)) for w in before[axis]]
        return relax.op.nn.pad(value, widths, str(call.attrs.pad_mode), float(call.attrs.pad_value))
    args[slot] = value
    return relax.Call(call.op, args, call.attrs, list(call.ty_args))


def _has_conv(mod: Any, dtypes: tuple[str, ...]) -> bool:
    """Whether `mod` has a conv2d whose data is one of `dtypes`."""
    from tvm import relax

    found = []

    def visit(expr: Any) -> None:
        if (
            isinstance(expr, relax.Call)
            and str(getattr(expr.op, "name", "")) == "relax.nn.conv2d"
            and str(expr.args[0].ty.dtype) in dtypes
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
