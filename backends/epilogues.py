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
starting from float32 accumulators: a bias, a residual add, a ReLU.

With fast math (the default), activations join too: GELU (erf or tanh), SiLU (also as captured,
`x * sigmoid(x)`) and sigmoid, computed in registers by `fast_math.unary_expr` (rational fits
of erf and tanh), and so do two gated units common in users' models. A GEGLU (diffusers'
feed-forward: the projection's result split in two halves along its columns, one half times the
GELU of the other) becomes one write-back computing the product (`vnni.Glu`), and the GEMM stores
`[M, N / 2]` values (int8 when the next Linear is quantized) instead of `[M, N]` float32 values
that a GELU kernel read back. A SwiGLU (a Llama MLP, `silu(gate(x)) * up(x)`: two GEMMs whose
chains meet in one multiply) is split where they meet: the earlier GEMM's chain stops before
the multiply and writes `silu(gate(x))`, which the later one reads as a full-matrix operand and
multiplies in its write-back. Measured (1 thread, Intel Xeon, artifacts with and without the
activation steps timed in one process): see docs/backends.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from optkit.backends.fast_math import UNARY_EXPRS
from optkit.backends.relax_exprs import relax_op, reshaped, rewrite_functions, scalar_constant, static_shape


class _Chain(NamedTuple):
    """A GEMM's call, its `vnni.Epilogue`, the chain's other operands in parameter order, the
    `vnni.OutPad` or None, the shape the chain's result had (a GLU's product may be N-D), and
    the calls it took."""

    gemm: Any
    epilogue: Any
    others: list[Any]
    out_pad: Any
    shape: list[int]
    path: list[tuple[Any, Any]]  # (the variable read, the call) of each call taken


def fuse_vnni_epilogues(mod: Any, fast: bool = True) -> tuple[Any, int, int, int]:
    """`mod` with each VNNI GEMM and the elementwise chain after it as one kernel (module
    docstring); returns (mod, number of GEMMs that took an epilogue, number of those that write
    the next conv's padded input, number of those that compute a GEGLU). `fast`: GELU, SiLU and
    sigmoid steps and GEGLUs join too, computed by `fast_math`'s approximations."""
    from optkit.backends import vnni
    from tvm import relax

    # the call the fused kernel replaces (the chain's end, or the pad after it) -> its `_Chain`
    chains: dict[Any, _Chain] = {}
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        stops: set[Any] = set()
        while True:
            found, clashes = _chains(mod, func, stops, fast)
            # an int8 tensor that another GEMM reads dequantized (a residual) is a result its
            # GEMM writes: a chain that ran on through it would leave it to a second kernel
            loaded = {
                o for c in found.values() for o, ld in zip(c.others, c.epilogue.loads, strict=True) if ld
            }
            if (loaded | clashes) <= stops:
                break
            stops |= loaded | clashes
        chains.update(found)
    if not chains:
        return mod, 0, 0, 0

    @relax.expr_functor.mutator
    class _Fuse(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            found = chains.get(call)
            if found is None:
                return self.visit_expr_post_order(call)
            gemm, epilogue, others, out_pad, result, _ = found
            xu, w, offset = (self.visit_expr(a) for a in gemm.args[1].fields)
            if epilogue.glu is not None:  # both halves' panels in each tile
                w, offset = (relax.const(vnni.interleave_panels(c.value.numpy())) for c in (w, offset))
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
            shape = list(out_pad.image(m, n)) if out_pad is not None else [m, n // (2 if epilogue.glu else 1)]
            call = relax.call_tir(gvar, [xu, w, offset, *params], relax.TensorType(shape, epilogue.dtype))
            if out_pad is not None or result == shape:
                return call
            return relax.op.reshape(self.builder_.emit(call), result)  # a GLU's N-D product

    rewritten = rewrite_functions(_Fuse(mod), mod)
    padded = sum(found.out_pad is not None for found in chains.values())
    geglus = sum(found.epilogue.glu is not None for found in chains.values())
    return relax.transform.DeadCodeElimination()(rewritten), len(chains), padded, geglus


def _chains(
    mod: Any, func: Any, stops: set[Any] | frozenset[Any] = frozenset(), fast: bool = True
) -> tuple[dict[Any, _Chain], set[Any]]:
    """For each VNNI GEMM in `func` with an elementwise chain after it: the chain's last call, or
    the pad that reads it (`_padded_image`) -> its `_Chain`; and the variables where chains
    that lost their last call to a later GEMM's chain (both end in `a(x) * b(x)`) must stop. A
    chain ends at a variable of `stops`; with `fast`, it may pass GELU, SiLU and sigmoid steps
    and one GEGLU (`_geglu`)."""
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

    found: dict[Any, _Chain] = {}
    clashes: set[Any] = set()
    for var, value in bound.items():
        if not _is_vnni_gemm(mod, value):
            continue
        shape = static_shape(var)
        if shape is None or len(value.args[1].fields) != 3:  # the GEMM with its offset
            continue
        chain = _Collector(users, bound, stops, fast)
        acc = vnni.Arith.of(mod[value.args[0]]).acc
        cur = chain.follow(var, acc, shape, shape)
        glu, result = None, shape
        geglu = _geglu(cur, shape, chain.dtype, users, bound) if fast and cur not in stops else None
        if geglu is not None and _constant_operands(value):
            product, chain.end, gated, result = geglu
            glu = vnni.Glu(len(chain.steps), gated)
            chain.path.append((cur, chain.end))
            cur = chain.follow(product, chain.dtype, result, [shape[0], shape[1] // 2])
        if chain.end is None:
            continue
        steps = merge_clamps(chain.steps, acc) if glu is None else chain.steps
        epilogue = vnni.Epilogue(tuple(steps), tuple(chain.params), chain.dtype, tuple(chain.loads), glu)
        padded = _padded_image(cur, shape, chain.dtype, users, bound) if glu is None else None
        if padded is not None:
            pad_call, out_pad = padded
            found[pad_call] = _Chain(value, epilogue, chain.others, out_pad, shape, chain.path)
            continue
        if chain.end in found:  # an earlier GEMM's chain joins this one: it stops where they meet
            taken = {call for _, call in chain.path}
            clashes.add(next(var for var, call in found[chain.end].path if call in taken))
        found[chain.end] = _Chain(value, epilogue, chain.others, None, result, chain.path)
    return found, clashes


class _Collector:
    """The epilogue of one GEMM as `_chains` follows it: steps, parameters and their loads and
    operands, the value's dtype, the last call taken (`end`) and each call's input (`path`)."""

    def __init__(self, users: dict[Any, list[Any]], bound: dict[Any, Any], stops: Any, fast: bool) -> None:
        self.users, self.bound, self.stops, self.fast = users, bound, stops, fast
        self.steps: list[tuple[Any, ...]] = []
        self.params: list[tuple[int, int, str]] = []
        self.loads: list[tuple[float, float] | None] = []
        self.others: list[Any] = []
        self.dtype, self.end = "", None
        self.path: list[tuple[Any, Any]] = []

    def follow(self, cur: Any, dtype: str, result: list[int], matrix: list[int]) -> Any:
        """Extend the chain from `cur` (of `dtype`) through single-use calls of shape `result`
        ([M, N], or a GLU's product), operands broadcast against `matrix` ([M, N] or
        [M, N / 2]); returns the chain's last variable."""
        from tvm import relax

        self.dtype = dtype
        users, bound = self.users, self.bound
        while cur not in self.stops:
            if self.fast and self.dtype == "float32" and (silu := _silu(cur, users, bound)) is not None:
                self.steps.append(("silu",))
                self.path.append((cur, silu[1]))
                cur, self.end = silu
                continue
            if len(users.get(cur, [])) != 1 or (nxt := users[cur][0]) is None:
                break
            call = bound.get(nxt)
            if static_shape(nxt) != result or not isinstance(call, relax.Call):
                break
            step = _step(call, cur, matrix, len(self.params), self.dtype, bound, self.fast)
            if step is None:
                break
            steps, params, loads, others, self.dtype = step
            self.steps += steps
            self.params += params
            self.loads += loads
            self.others += others
            self.path.append((cur, call))
            self.end, cur = call, nxt
        return cur


def _silu(var: Any, users: dict[Any, list[Any]], bound: dict[Any, Any]) -> tuple[Any, Any] | None:
    """(the product's var, its call) when `var`'s two uses are `sigmoid(var)` and `var *
    sigmoid(var)` (a SiLU as captured: `x * sigmoid(x)`); else None."""
    found = users.get(var, [])
    if len(found) != 2 or None in found:
        return None
    for sig_var, mul_var in (found, found[::-1]):
        sig: Any = bound.get(sig_var)
        mul: Any = bound.get(mul_var)
        if not (_is_op(sig, "relax.sigmoid") and _is_op(mul, "relax.multiply")):
            continue
        sig_user, _ = _only_user(sig_var, users, bound)
        a, b = mul.args
        operands = (a.same_as(var) and b.same_as(sig_var)) or (a.same_as(sig_var) and b.same_as(var))
        if sig.args[0].same_as(var) and sig_user is not None and sig_user.same_as(mul_var) and operands:
            return mul_var, mul
    return None


def _is_op(call: Any, name: str) -> bool:
    from tvm import relax

    return isinstance(call, relax.Call) and call.op == relax_op(name)


def _only_user(var: Any, users: dict[Any, list[Any]], bound: dict[Any, Any]) -> tuple[Any, Any]:
    """(the variable, its bound value) of `var`'s one use in the function's bindings; (None,
    None) when it has several, none, or is an output."""
    found = users.get(var, [])
    return (found[0], bound.get(found[0])) if len(found) == 1 and found[0] is not None else (None, None)


def _geglu(var: Any, shape: list[int], dtype: str, users: dict[Any, list[Any]], bound: dict[Any, Any]) -> Any:
    """(the product's var, its call, the gated half: 0 or 1, the product's shape) when float32
    `var` ([M, N], N a multiple of 32), through a reshape that keeps its last axis, is split
    into two halves along that axis and one half multiplies the GELU of the other, each used
    once; else None."""
    from optkit.backends.vnni import LANES
    from tvm import relax

    def only_user(v: Any) -> tuple[Any, Any]:
        return _only_user(v, users, bound)

    if dtype != "float32" or shape[1] % (2 * LANES):
        return None
    nxt, call = only_user(var)
    if _is_op(call, "relax.reshape") and (view := static_shape(nxt)) and view[-1] == shape[1]:
        nxt, call = only_user(nxt)
    if not _is_op(call, "relax.split") or not _halves_last_axis(call, shape[1]):
        return None
    halves: list[tuple[Any, Any]] = [(v, bound.get(v)) for v in users.get(nxt, [])]
    if len(halves) != 2 or not all(isinstance(h, relax.TupleGetItem) for _, h in halves):
        return None
    by_index = {int(h.index): v for v, h in halves}
    for gated in (0, 1):
        gate_var, plain = by_index.get(gated), by_index.get(1 - gated)
        act_var, act = only_user(gate_var)
        if not _is_op(act, "relax.nn.gelu"):
            continue
        product, mul = only_user(act_var)
        plain_product, _ = only_user(plain)
        if _is_op(mul, "relax.multiply") and plain_product is not None and plain_product.same_as(product):
            return product, mul, gated, static_shape(product)
    return None


def _halves_last_axis(split: Any, n: int) -> bool:
    """Whether `split` cuts its input's last axis (of `n`) into two equal halves."""
    ndim = len(static_shape(split.args[0]) or [])
    axis = int(split.attrs.axis)
    sections = split.attrs.indices_or_sections
    if hasattr(sections, "value"):  # a number of sections
        halves = int(sections.value) == 2
    else:  # split indices
        halves = [int(i) for i in sections] == [n // 2]
    return halves and axis in (ndim - 1, -1)


def _constant_operands(gemm: Any) -> bool:
    """Whether the GEMM call's packed weight and offset are constants (a GLU reorders them)."""
    import tvm

    return all(isinstance(a, tvm.ir.expr.Constant) for a in gemm.args[1].fields[1:])


def _padded_image(
    var: Any, shape: list[int], dtype: str, users: dict[Any, list[Any]], bound: dict[Any, Any]
) -> Any:
    """(the pad's call, `vnni.OutPad`) when `var` ([M, N], the chain's result) is read only by a
    reshape to NHWC images that is read only by a constant spatial pad (the next conv's input),
    else None: the kernel then writes the padded image itself."""
    from optkit.backends import vnni
    from optkit.backends.relax_exprs import exact_cast

    def only_user(v: Any, name: str) -> tuple[Any, Any] | None:
        user, call = _only_user(v, users, bound)
        return (user, call) if _is_op(call, name) else None

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


def _step(
    call: Any, cur: Any, shape: list[int], first: int, dtype: str, bound: dict[Any, Any], fast: bool = True
) -> Any:
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
    unary = next((u for u in UNARY_EXPRS if op == relax_op(u)), None)
    if unary is not None and fast and dtype == "float32" and same(call.args[0]):
        return [(UNARY_EXPRS[unary],)], [], [], [], dtype
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


Step = tuple[Any, ...]


def merge_clamps(steps: list[Step] | tuple[Step, ...], dtype: str) -> list[Step]:
    """`steps` (an `Epilogue`'s, its accumulators of `dtype`) with each float32 clamp that
    precedes a quantize step moved past it and merged into the quantize step's own clamp: an
    activation's ReLU or ReLU6 (`maximum 0`, `minimum 6`), then `multiply 1/s` (or `divide s`),
    `round`, `add z`, `maximum -128`, `minimum 127` become the quantize step with one clamp.

    Exact: with g the monotone map between the clamps (a multiply or divide by a positive
    immediate, then optionally `round` and additions of immediates, each rounded in float32),
    g(clamp(x, a, b)) = clamp(g(x), g(a), g(b)) for every x, and two clamps in a row are one
    clamp to the intersection of their ranges when it is not empty (else nothing is merged). A
    multiply followed by an add is left alone: LLVM may contract the two into an FMA for x but
    not for the bounds computed here. The write-back of MobileNetV2's int8 1 x 1 convs spends
    more time in these steps than in the GEMM (K = 16: 0.44 ms of GEMM, 1.04 ms with the
    write-back, AMD EPYC znver3, 1 thread)."""
    out, i, current = list(steps), 0, dtype
    while i < len(out):
        if out[i][0] == "astype":
            current = out[i][1]
        first = _clamp_run(out, i)
        if current != "float32" or first is None:
            i += 1
            continue
        (low, high), j = first
        g_end = _monotone_run(out, j)
        second = _clamp_run(out, g_end) if g_end > j else None
        if second is None:
            i += 1
            continue
        (low2, high2), end = second
        low, high = max(_apply(out[j:g_end], low), low2), min(_apply(out[j:g_end], high), high2)
        if not low <= high:
            i += 1
            continue
        merged = [("maximum", low, False)] if low > -np.inf else []
        merged += [("minimum", high, False)] if high < np.inf else []
        out[i:end] = out[j:g_end] + merged
        i += g_end - j + len(merged)
    return out


def _clamp_run(steps: list[Step], i: int) -> tuple[tuple[float, float], int] | None:
    """((low, high), the index after it) for the `maximum` / `minimum` steps with immediates
    from `steps[i]` on, when there are any and they form one clamp (low <= high); else None."""
    low, high, j = -np.inf, np.inf, i
    while j < len(steps) and steps[j][0] in ("maximum", "minimum") and isinstance(steps[j][1], float):
        bound = steps[j][1]
        if steps[j][0] == "maximum":  # max(min(max(x, low), high), bound)
            if bound > high:
                return None
            low = max(low, bound)
        else:
            if bound < low:
                return None
            high = min(high, bound)
        j += 1
    return ((low, high), j) if j > i else None


def _monotone_run(steps: list[Step], i: int) -> int:
    """The index after the quantize steps from `steps[i]` on that `merge_clamps` moves clamps
    past (i itself when there are none): a multiply or divide by a positive immediate, then
    optionally `round` and immediate additions or subtractions."""
    step = steps[i] if i < len(steps) else ("",)
    scale = step[0] in ("multiply", "divide") and isinstance(step[1], float) and step[1] > 0
    if not scale or (step[0] == "divide" and step[2]):  # c / x decreases
        return i
    j = i + 1
    if j >= len(steps) or steps[j] != ("round",):
        return j  # (a multiply then an add: LLVM's FMA; the add is not taken)
    j += 1
    while j < len(steps) and steps[j][0] in ("add", "subtract") and isinstance(steps[j][1], float):
        if steps[j][0] == "subtract" and steps[j][2]:  # c - x decreases
            break
        j += 1
    return j


def _apply(steps: list[Step], bound: float) -> float:
    """`bound` through `_monotone_run`'s steps in float32, as the kernel computes them."""
    if not np.isfinite(bound):
        return bound
    binary = {"multiply": np.multiply, "divide": np.divide, "add": np.add, "subtract": np.subtract}
    x = np.float32(bound)
    for op, *rest in steps:
        x = np.rint(x) if op == "round" else binary[op](x, np.float32(rest[0]))
    return float(x)
