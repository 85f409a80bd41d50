"""The VNNI GEMM's requantization in its tile write-back, not as a pass over its int32 output.

`vnni.gemm_func` is built with TVM's IR builder and is opaque to `FuseOps` (fused into it, an
epilogue ran over a workspace the size of the output, `vnni.py`), so every W8A8 Linear and conv
wrote its int32 result and an elementwise kernel read it back to rescale, add the bias, clamp
and round onto the next layer's int8 grid. On MobileNetV2's 16 -> 96 expansion at 56 x 56
(batch 8) that pass took 1.6 ms against the GEMM's 1.2 ms.

`fuse_vnni_epilogues` follows each VNNI GEMM's result through the elementwise ops that use it
alone (`astype`, `round`, `clip`, ReLU, and add / subtract / multiply / divide / maximum / minimum
with a scalar, a per-column vector, a per-row column or a full matrix such as a residual) while the
shape stays [M, N], and replaces the chain with one GEMM whose write-back applies it to the
accumulators (`vnni.Epilogue`); the other operands become inputs of the kernel. The reshapes that
`reshapes.py` sank below such ops stay after it, as views. When the chain's result is only
reshaped to NHWC images and padded (the next conv's input, its zero point in the border), the
GEMM writes the padded image (`vnni.OutPad`) and the pad kernel that copied it is gone: W8A8
ResNet-18 (batch 8, 1 thread) 14.99 -> 14.71 ms, bit-identical.

The float32 tile GEMMs (`vnni.F32`, float Linears on AVX-512) take their chains the same way,
starting from float32 accumulators: a bias, a residual add, a ReLU. A GELU or SiLU is no step
of `vnni.Epilogue` and stays a kernel of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optkit.backends.relax_exprs import relax_op, reshaped, rewrite_functions, scalar_constant, static_shape


def fuse_vnni_epilogues(mod: Any) -> tuple[Any, int, int]:
    """`mod` with each VNNI GEMM and the elementwise chain after it as one kernel (module
    docstring); returns (mod, number of GEMMs that took an epilogue, number of those that write
    the next conv's padded input)."""
    from optkit.backends import vnni
    from tvm import relax

    # the call the fused kernel replaces (the chain's end, or the pad after it) -> (GEMM call, ...)
    chains: dict[Any, tuple[Any, vnni.Epilogue, list[Any], vnni.OutPad | None]] = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            found = _chains(mod, func)
            # an int8 tensor that another GEMM reads dequantized (a residual) is a result its
            # GEMM writes: a chain that ran on through it would leave it to a second kernel
            loaded = {
                o for _, e, others, _ in found.values() for o, ld in zip(others, e.loads, strict=True) if ld
            }
            chains.update(_chains(mod, func, stops=loaded) if loaded else found)
    if not chains:
        return mod, 0, 0

    @relax.expr_functor.mutator
    class _Fuse(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            found = chains.get(call)
            if found is None:
                return self.visit_expr_post_order(call)
            gemm, epilogue, others, out_pad = found
            xu, w, offset = (self.visit_expr(a) for a in gemm.args[1].fields)
            conv, arith = vnni.Conv.of(mod[gemm.args[0]]), vnni.Arith.of(mod[gemm.args[0]])
            shape = static_shape(xu) or [0, 0]
            (m, k), n = conv.gemm_shape(shape) if conv else shape, int(gemm.ty.shape[1])
            params = [
                reshaped(self.builder_, self.visit_expr(o), [rows, cols])
                for o, (rows, cols, _) in zip(others, epilogue.params, strict=True)
            ]
            gvar = self.builder_.add_func(
                vnni.gemm_func(
                    m, n, k, offset=True, epilogue=epilogue, conv=conv, out_pad=out_pad, arith=arith
                ),
                arith.kernel_name(conv),
            )
            shape = list(out_pad.image(m, n)) if out_pad is not None else [m, n]
            return relax.call_tir(gvar, [xu, w, offset, *params], relax.TensorType(shape, epilogue.dtype))

    rewritten = rewrite_functions(_Fuse(mod), mod)
    padded = sum(found[3] is not None for found in chains.values())
    return relax.transform.DeadCodeElimination()(rewritten), len(chains), padded


def _chains(
    mod: Any, func: Any, stops: set[Any] | frozenset[Any] = frozenset()
) -> dict[Any, tuple[Any, Any, list[Any], Any]]:
    """For each VNNI GEMM in `func` with an elementwise chain after it: the chain's last call, or
    the pad that reads it (`_padded_image`) -> (the GEMM's call, the `vnni.Epilogue`, the
    chain's other operands in parameter order, the `vnni.OutPad` or None). A chain ends at a
    variable of `stops`."""
    from optkit.backends import vnni
    from tvm import relax

    bound: dict[Any, Any] = {}
    users: dict[Any, list[Any]] = {}
    blocks = func.body.blocks if isinstance(func.body, relax.SeqExpr) else []
    for block in blocks:
        for binding in block.bindings:  # match_casts count as users too
            if isinstance(binding, relax.VarBinding):
                bound[binding.var] = binding.value
            for used in relax.analysis.free_vars(binding.value):
                users.setdefault(used, []).append(binding.var)
    for used in relax.analysis.free_vars(func.body.body):  # the function's outputs
        users.setdefault(used, []).append(None)

    found = {}
    for var, value in bound.items():
        if not _is_vnni_gemm(mod, value):
            continue
        shape = static_shape(var)
        if shape is None or len(value.args[1].fields) != 3:  # the GEMM with its offset
            continue
        steps: list[tuple[Any, ...]] = []
        params: list[tuple[int, int, str]] = []
        loads: list[tuple[float, float] | None] = []
        others: list[Any] = []
        cur, dtype, end = var, vnni.Arith.of(mod[value.args[0]]).acc, None
        while cur not in stops and len(users.get(cur, [])) == 1 and (nxt := users[cur][0]) is not None:
            call = bound.get(nxt)
            if static_shape(nxt) != shape or not isinstance(call, relax.Call):
                break
            step = _step(call, cur, shape, len(params), dtype, bound)
            if step is None:
                break
            new_steps, new_params, new_loads, new_others, dtype = step
            steps += new_steps
            params += new_params
            loads += new_loads
            others += new_others
            cur, end = nxt, call
        if end is None:
            continue
        epilogue = vnni.Epilogue(tuple(steps), tuple(params), dtype, tuple(loads))
        padded = _padded_image(cur, shape, dtype, users, bound)
        if padded is not None:
            pad_call, out_pad = padded
            found[pad_call] = (value, epilogue, others, out_pad)
        else:
            found[end] = (value, epilogue, others, None)
    return found


def _padded_image(
    var: Any, shape: list[int], dtype: str, users: dict[Any, list[Any]], bound: dict[Any, Any]
) -> Any:
    """(the pad's call, `vnni.OutPad`) when `var` ([M, N], the chain's result) is read only by a
    reshape to NHWC images that is read only by a constant spatial pad (the next conv's input),
    else None: the kernel then writes the padded image itself."""
    from optkit.backends import vnni
    from optkit.backends.relax_exprs import exact_cast
    from tvm import relax

    def only_user(v: Any, name: str) -> tuple[Any, Any] | None:
        found = users.get(v, [])
        if len(found) != 1 or found[0] is None:
            return None
        call = bound.get(found[0])
        return (found[0], call) if isinstance(call, relax.Call) and call.op == relax_op(name) else None

    view = only_user(var, "relax.reshape")
    pad = only_user(view[0], "relax.nn.pad") if view is not None else None
    image = static_shape(view[0]) if view is not None else None
    if pad is None or image is None or len(image) != 4 or image[3] != shape[1]:
        return None
    call = pad[1]
    widths = [int(w) for w in call.attrs.pad_width]
    value = exact_cast(np.array(float(call.attrs.pad_value)), dtype)
    spatial = len(widths) == 8 and not any(widths[i] for i in (0, 1, 6, 7))
    if str(call.attrs.pad_mode) != "constant" or not spatial or value is None:
        return None
    top, bottom, left, right = widths[2:6]
    return call, vnni.OutPad(image[1], image[2], top, bottom, left, right, float(value))


def _is_vnni_gemm(mod: Any, value: Any) -> bool:
    """Whether `value` calls a `vnni.gemm_func` kernel of `mod`."""
    from optkit.backends.vnni import GEMM_KERNEL, KERNEL_ATTR
    from tvm import relax

    if not isinstance(value, relax.Call) or value.op != relax_op("relax.call_tir"):
        return False
    callee = value.args[0]
    if not isinstance(callee, relax.GlobalVar) or callee not in mod:
        return False
    attrs = mod[callee].attrs
    return attrs is not None and KERNEL_ATTR in attrs and str(attrs[KERNEL_ATTR]) == GEMM_KERNEL


def _step(call: Any, cur: Any, shape: list[int], first: int, dtype: str, bound: dict[Any, Any]) -> Any:
    """How `call` (a use of `cur`, of `dtype`) extends the epilogue whose parameters so far
    number `first`: (steps, params, their loads, operands, new dtype); None if it does not. A
    full-matrix operand that is an int8 tensor dequantized (`requant.py`) is read as int8 and
    dequantized in the write-back (`vnni.Epilogue.loads`). A scalar constant
    operand is an immediate (`bound`: the function's bindings, to see through `astype`), not a
    parameter: a parameter loaded once per kernel would hold a register through the K loop,
    which the tile's accumulators fill."""
    from tvm import relax

    def same(x: Any) -> bool:
        return isinstance(x, relax.Var) and x.same_as(cur)

    op = call.op
    if op == relax_op("relax.astype") and same(call.args[0]):
        to = str(call.attrs.dtype)
        return None if to == "bool" else ([("astype", to)], [], [], [], to)
    if op == relax_op("relax.round") and same(call.args[0]):
        return [("round",)], [], [], [], dtype
    if op == relax_op("relax.nn.relu") and same(call.args[0]):
        return [("maximum", 0.0, False)], [], [], [], dtype
    if op == relax_op("relax.clip") and same(call.args[0]):
        bounds = call.args[1:3]
        if len(bounds) != 2 or not all(isinstance(a, relax.PrimValue) for a in bounds):
            return None
        low, high = (float(a.value.value) for a in bounds)
        return [("maximum", low, False), ("minimum", high, False)], [], [], [], dtype
    from optkit.backends.vnni import EPILOGUE_OPS

    name = next((b for b in EPILOGUE_OPS if op == relax_op(f"relax.{b}")), None)
    if name is None or len(call.args) != 2:
        return None
    a, b = call.args
    if same(a) == same(b):  # neither, or both (x * x)
        return None
    other, swapped = (b, False) if same(a) else (a, True)
    grid = _broadcast_2d(static_shape(other), shape)
    if grid is None or (name == "divide" and not dtype.startswith("float")):
        return None
    if list(grid) == shape and dtype == "float32" and (found := _dequantized(other, bound)) is not None:
        q, load = found
        return [(name, first, swapped)], [(*grid, str(q.ty.dtype))], [load], [q], dtype
    if str(other.ty.dtype) != dtype:
        return None
    if grid == (1, 1) and (value := _scalar_constant(other, bound)) is not None:
        return [(name, value, swapped)], [], [], [], dtype
    return [(name, first, swapped)], [(*grid, dtype)], [None], [other], dtype


def _dequantized(x: Any, bound: dict[Any, Any]) -> tuple[Any, tuple[float, float]] | None:
    """(q, (zero, scale)) when `x` is, through reshapes, `(astype(q, float32) - zero) * scale`
    of an int8 / uint8 `q` with scalar constants, else None."""
    from tvm import relax

    def call_of(expr: Any, name: str) -> Any | None:
        value = bound.get(expr) if isinstance(expr, relax.Var) else None
        return value if isinstance(value, relax.Call) and value.op == relax_op(name) else None

    while (view := call_of(x, "relax.reshape")) is not None:
        x = view.args[0]
    mul = call_of(x, "relax.multiply")
    sub = call_of(mul.args[0], "relax.subtract") if mul is not None else None
    cast = call_of(sub.args[0], "relax.astype") if sub is not None else None
    if mul is None or sub is None or cast is None or str(cast.args[0].ty.dtype) not in ("int8", "uint8"):
        return None
    zero, scale = _scalar_constant(sub.args[1], bound), _scalar_constant(mul.args[1], bound)
    if zero is None or scale is None:
        return None
    return cast.args[0], (zero, scale)


def _scalar_constant(expr: Any, bound: dict[Any, Any]) -> float | None:
    """The value of a one-element constant, directly or through `astype` bindings; else None."""
    import numpy as np
    from tvm import relax

    if isinstance(expr, relax.Var) and isinstance(call := bound.get(expr), relax.Call):
        if (
            call.op == relax_op("relax.astype")
            and (inner := _scalar_constant(call.args[0], bound)) is not None
        ):
            return float(np.asarray(inner).astype(str(call.attrs.dtype)))
        return None
    return scalar_constant(expr)


def _broadcast_2d(other: list[int] | None, shape: list[int]) -> tuple[int, int] | None:
    """(rows, cols) of an operand of shape `other` broadcast against [M, N] = `shape`: rows 1 or
    M, cols 1 or N; None if it does not broadcast so."""
    if other is None:
        return None
    lead, tail = other[:-2], ([1, 1] + other)[-2:]
    if any(d != 1 for d in lead) or tail[0] not in (1, shape[0]) or tail[1] not in (1, shape[1]):
        return None
    return tail[0], tail[1]
