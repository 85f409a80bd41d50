"""Fused attention on the CPU: `softmax(Q K^T) V` in one kernel, tile of query rows by tile.

The export spells `scaled_dot_product_attention` as two batched matmuls around a softmax, and the
lowering ran them as three kernels: the scores `Q K^T` written out whole, the softmax reading
and writing them again, the second matmul reading them a third time. For a diffusers UNet's
self-attention at 32 x 32 latents (4 heads x 1,024 x 1,024 scores, 16 MiB, eight times one
core's L2 here) those passes were bound by memory: the softmax alone took 17.7 ms of the
model's 149 ms, the two matmuls 19 ms at 45-56% of the fp32 peak.

`fuse_attention` replaces `matmul(softmax(matmul(Q, Kt)), V)` (through the reshapes between
them) with one kernel that, for every tile of `ROWS` query rows, computes the tile's scores,
their row maxima, exponentials and sums, and the weighted sum of V, then divides: the tile's
`ROWS x N` scores stay in L1 / L2 and are never written to memory. The scale the export
multiplies into Q and K stays where it is (elementwise kernels over Q and K, not the scores).

An additive mask on the scores (`scores + mask`, a causal decoder's `where(causal, 0, -inf)`, a
boolean `attn_mask` as PyTorch's SDPA spells it, with its "safe softmax" that gives a row masked
whole zeros) becomes a fourth input, [1, M, N] when every head shares it. Applies when the shapes
are static, float32 and the softmax is over the keys, with at least 16 queries and 16 keys and a
value width a multiple of 8 (`worth_fusing`). Keys are padded to a multiple of 16 (one AVX-512
register) and get no weight; queries to a multiple of 8 unless they are one of 4, and the extra
rows are sliced off. The kernel is scheduled here (`schedule_attention`) and marked scheduled, so
the build's schedule rules leave it alone.

A constant mask that hides the keys past each query (a causal decoder's) splits the attention
into blocks of query rows, each a kernel call over the keys its rows see (`causal_blocks`): at
512 tokens 8 blocks do 56% of the work, and the result is the same bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from optkit.backends import attention_int16, attention_kernel
from optkit.backends.parallel_loops import parallel
from optkit.backends.relax_exprs import (
    OPAQUE,
    constant_value,
    relax_op,
    reshaped,
    rewrite_functions,
    scalar_constant,
    static_shape,
)

ROWS = 8  # query rows per tile: 8 x 32 accumulators of the weighted sum, like the GEMM tile
AVX2_SUB_ROWS = 4  # on AVX2, rows of each score / weighted-sum register tile within a tile
LANES = 16  # one AVX-512 register of float32


def attention_te(
    q: Any,
    kt: Any,
    v: Any,
    scale: float = 1.0,
    keys: int | None = None,
    mask: Any = None,
    rows: tuple[int, int] | None = None,
    width: int | None = None,
) -> Any:
    """TE compute of `softmax(scale * q @ kt [+ mask], axis=-1) @ v` for q [B, M, D],
    kt [B, D, N], v [B, N, Dv], scale > 0, over the first `keys` keys (all N by default; the rest
    are padding that gets no weight). `mask` [B or 1, M, N] is added to the scaled scores; a row
    it masks whole (every logit -inf) gives zeros, as PyTorch's SDPA does. `rows` (first, count)
    computes those query rows only, and `width` reads only the first `width` keys (the rest
    masked for every one of these rows: `causal_blocks`)."""
    from tvm import te, tirx, topi

    b, _, d = (int(x) for x in q.shape)
    first, m = rows if rows is not None else (0, int(q.shape[1]))
    n, dv = int(kt.shape[2]) if width is None else width, int(v.shape[2])
    keys = n if keys is None else min(keys, n)
    # Padded keys are masked with `Select`, which computes both sides: the scores buffer has all
    # n columns, so that is safe, and it vectorizes as a blend. `if_then_else` (lazy) with a
    # condition that varies across the vector's lanes made TVM compute the 16 lanes one by one,
    # the exponential's polynomial included: ViT-Tiny's heads (50 keys padded to 64, 24 x 56 x
    # 64 x 64) 1127 -> 642 us alone, the UNet's cross-attention (77 keys of 80) 1760 -> 1136 us,
    # bit-identical (AMD EPYC znver3, 1 thread); ViT-Tiny 0.96-0.98x in float, 0.93x in W8A8.
    lowest, zero = tirx.min_value("float32"), tirx.const(0.0, "float32")
    rd = te.reduce_axis((0, d), name="d")
    scores = te.compute(
        (b, m, n), lambda z, i, j: te.sum(q[z, first + i, rd] * kt[z, rd, j], axis=rd), name="scores"
    )
    if mask is not None:
        shared = int(mask.shape[0]) == 1
        scores = te.compute(
            (b, m, n),
            lambda z, i, j: scores[z, i, j] * scale + mask[0 if shared else z, first + i, j],
            name="logits",
        )
    rm = te.reduce_axis((0, n), name="jm")
    row_max = te.compute(
        (b, m),
        lambda z, i: te.max(
            scores[z, i, rm] if keys == n else tirx.Select(rm < keys, scores[z, i, rm], lowest), axis=rm
        ),
        name="row_max",
    )
    factor = 1.0 if mask is not None else scale  # a mask's logits are scaled already
    shifted = te.compute(
        (b, m, n), lambda z, i, j: (scores[z, i, j] - row_max[z, i]) * factor, name="shifted"
    )
    unmasked = topi.fast_exp(shifted)  # 0 for a masked logit (fast_exp(x) = 0 for x < -88)
    exp = te.compute(
        (b, m, n),
        lambda z, i, j: unmasked[z, i, j] if keys == n else tirx.Select(j < keys, unmasked[z, i, j], zero),
        name="exp",
    )
    rs = te.reduce_axis((0, n), name="js")
    row_sum = te.compute((b, m), lambda z, i: te.sum(exp[z, i, rs], axis=rs), name="row_sum")
    rw = te.reduce_axis((0, n), name="jw")
    weighted = te.compute(
        (b, m, dv), lambda z, i, c: te.sum(exp[z, i, rw] * v[z, rw, c], axis=rw), name="weighted"
    )
    if mask is None:
        return te.compute((b, m, dv), lambda z, i, c: weighted[z, i, c] / row_sum[z, i], name="attention")
    return te.compute(
        (b, m, dv),
        lambda z, i, c: te.if_then_else(row_sum[z, i] > 0.0, weighted[z, i, c] / row_sum[z, i], 0.0),
        name="attention",
    )


def worth_fusing(queries: int, keys: int, dv: int) -> bool:
    """Whether the fused kernel beats the three kernels, as measured (1 thread, this Xeon): not
    for a value width that no 8 divides (`zoo:efficientsam:tiny`'s heads of 20: a 20-lane tile,
    579 against 238 us), nor for fewer keys than one vector (5 mask tokens padded to 16: 93
    against 84 us), nor for fewer than 16 queries (its 8 queries over 64 keys: the model was
    1.14x slower with them fused, the reshapes around the kernel costing more than it saved)."""
    return dv % 8 == 0 and keys >= LANES and queries >= 2 * ROWS


def padded(m: int, n: int) -> tuple[int, int]:
    """Queries and keys as the kernel takes them: queries a multiple of 4 (else of `ROWS`), keys
    a multiple of `LANES`."""
    return (m if m % 4 == 0 else _round_up(m, ROWS)), _round_up(n, LANES)


def attention_func(
    b: int,
    m: int,
    n: int,
    d: int,
    dv: int,
    scale: float = 1.0,
    keys: int | None = None,
    mask_batch: int | None = None,
    block: tuple[int, int, int] | None = None,
    lanes: int = LANES,
) -> Any:
    """The scheduled PrimFunc for one shape and scale (`m`, `n` as `padded` gives them; `keys`:
    how many of the `n` are real). With `mask_batch` (1 or `b`) it takes a fourth input, the
    additive mask [mask_batch, m, n]. With `block` (first row, rows, keys) it computes those
    query rows over the first keys only, reading the same inputs (`causal_blocks`). `lanes`:
    float32 lanes of the CPU's registers (`schedule_attention`)."""
    from tvm import te

    q = te.placeholder((b, m, d), "float32", name="q")
    kt = te.placeholder((b, d, n), "float32", name="kt")
    v = te.placeholder((b, n, dv), "float32", name="v")
    inputs = [q, kt, v]
    if mask_batch is not None:
        inputs.append(te.placeholder((mask_batch, m, n), "float32", name="mask"))
    first, rows, width = block if block is not None else (0, m, n)
    out = attention_te(
        q,
        kt,
        v,
        scale,
        keys,
        mask=inputs[3] if mask_batch is not None else None,
        rows=(first, rows),
        width=width,
    )
    func = te.create_prim_func([*inputs, out]).without_attr("global_symbol")
    sch = schedule_attention(func, rows, width, dv, masked=mask_batch is not None, lanes=lanes)
    return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": OPAQUE, "tirx.noalias": True})


def schedule_attention(func: Any, m: int, n: int, dv: int, masked: bool = False, lanes: int = LANES) -> Any:
    """Parallel over (batch, query tiles); every stage computed per tile, vectorized (`masked`:
    `func` adds a mask to the scores, `attention_te`). `lanes`: float32 lanes of one register of
    the CPU (16: AVX-512; 8: AVX2, whose 16 registers take 8 rows of one register each, where
    8 x 32 spilled: ViT-Tiny's 56 x 64 x 64 heads at 12 GFLOP/s on znver3). On AVX2 the score
    and weighted-sum tiles of 8 rows x 16 lanes (two ymm each) run as two sub-tiles of 4 rows:
    kernels alone, interleaved in one process, znver3, 1 thread, batch x queries x keys x head
    dim, 8 rows -> 4-row sub-tiles: 6 x 256 x 256 x 64 2.77 -> 2.13 ms, 8 x 256 x 256 x 32 1.90
    -> 1.80, 4 x 1024 x 1024 x 32 14.76 -> 11.18, 12 x 64 x 64 x 32 0.19 -> 0.15, 24 x 56 x 64 x
    64 0.54 -> 0.36 ms; 16-row tiles of 4-row sub-tiles ran within 7% of those, except 1.60 ms
    at 8 x 256 x 256 x 32."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    rows = ROWS if m % ROWS == 0 else 4
    widths = (32, 16, 8) if lanes == LANES else (16, 8)
    cols = next((w for w in widths if dv % w == 0), dv)
    # AVX2: 16 keys (scores) or 16 value columns (the weighted sum) of 8 rows are 16 ymm
    # accumulators, which spill; sub-tiles of 4 rows hold 8
    sub = AVX2_SUB_ROWS if lanes < LANES else rows
    sub_weighted = sub if cols > lanes else rows
    if masked:
        sch.compute_inline(sch.get_sblock("logits"))
    sch.compute_inline(sch.get_sblock("shifted"))
    sch.compute_inline(sch.get_sblock("T_fast_exp"))
    partials = []
    for name in ("row_max", "row_sum"):  # per row: LANES partial results in one register
        j_r = sch.get_loops(sch.get_sblock(name))[-1]
        partials.append(sch.rfactor(sch.split(j_r, factors=[None, LANES])[1], factor_axis=2))

    out = sch.get_sblock("attention")
    z, i, c = sch.get_loops(out)
    i_out, _ = sch.split(i, factors=[None, rows])
    tile = sch.fuse(z, i_out)
    parallel(sch, tile)
    sch.vectorize(sch.get_loops(out)[-1])
    row_max_rf, row_sum_rf = partials
    consumers_first = ["weighted", "row_sum", row_sum_rf, "exp", "row_max", row_max_rf, "scores"]
    for block in consumers_first:  # each block's consumers are under the tile loop before it
        sch.compute_at(
            sch.get_sblock(block) if isinstance(block, str) else block, tile, preserve_unit_loops=True
        )

    # The weighted sum: rows x cols accumulators over the keys, like the GEMM tile.
    weighted = sch.get_sblock("weighted")
    i_w, c_w, j_w = sch.get_loops(weighted)[-3:]
    c_out, c_in = sch.split(c_w, factors=[None, cols])
    if sub_weighted < rows:
        i_wo, i_w = sch.split(i_w, factors=[None, sub_weighted])
        sch.reorder(i_wo, c_out, j_w, i_w, c_in)
    else:
        sch.reorder(c_out, j_w, i_w, c_in)
    sch.unroll(i_w)
    sch.vectorize(c_in)

    # Scores: rows x 32 (or 16) keys accumulated over the head dim, like the GEMM tile.
    scores = sch.get_sblock("scores")
    i_s, j_s, d_s = sch.get_loops(scores)[-3:]
    keys = 2 * LANES if n % (2 * LANES) == 0 and lanes == LANES else LANES  # 16 keys: two AVX2 registers
    j_out, j_in = sch.split(j_s, factors=[None, keys])
    if sub < rows:
        i_so, i_s = sch.split(i_s, factors=[None, sub])
        sch.reorder(i_so, j_out, d_s, i_s, j_in)
    else:
        sch.reorder(j_out, d_s, i_s, j_in)
    sch.unroll(i_s)
    sch.vectorize(j_in)
    sch.decompose_reduction(scores, d_s)

    exp = sch.get_sblock("exp")
    j_e = sch.get_loops(exp)[-1]
    sch.vectorize(sch.split(j_e, factors=[None, LANES])[1])

    for block in partials:  # rfactor put the lanes outermost: move them inside, vectorized
        lanes, z_r, i_r, j_r = sch.get_loops(block)[-4:]
        sch.reorder(z_r, i_r, j_r, lanes)
        sch.vectorize(lanes)

    sch.decompose_reduction(weighted, j_w)
    return sch


def fuse_attention(mod: Any, precision: str = "float32", lanes: int = LANES) -> tuple[Any, int, int]:
    """`mod` with every `matmul(softmax(matmul(Q, Kt)), V)` the kernel takes (module docstring)
    replaced by a call to it; with `precision` `float16` or `int16`, those whose heads that kernel
    takes run on it (`attention_kernel.py`, `attention_int16.py`); `lanes`, float32 lanes of the
    CPU's vector registers (16: AVX-512, 8: AVX2). Returns (mod, number replaced, how many of them
    in `precision`)."""
    from tvm import relax

    matmul, softmax = relax_op("relax.matmul"), relax_op("relax.nn.softmax")
    count = reductions = 0
    masks: dict[int, Any] = {}  # constant masks by expression, evaluated once (`causal_blocks`)

    @relax.expr_functor.mutator
    class _Fuse(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            nonlocal count
            call = self.visit_expr_post_order(call)
            if call.op != matmul:
                return call
            new = self._fused(call)
            if new is None:
                return call
            count += 1
            return new

        def _through_views(self, expr: Any, tail: list[int]) -> Any:
            """The expression behind reshapes and same-shape broadcasts that all keep the last
            two dims equal to `tail`."""
            while isinstance(expr, relax.Var):
                bound = self.lookup_binding(expr)
                if not isinstance(bound, relax.Call) or bound.op not in (
                    relax_op("relax.reshape"),
                    relax_op("relax.broadcast_to"),
                ):
                    break
                src = bound.args[0]
                src_shape, shape = static_shape(src), static_shape(expr)
                if src_shape is None or shape is None or src_shape[-2:] != tail or shape[-2:] != tail:
                    break
                if bound.op == relax_op("relax.broadcast_to") and src_shape != shape:
                    break
                expr = src
            return expr

        def _bound(self, expr: Any, op: Any) -> Any | None:
            if not isinstance(expr, relax.Var):
                return None
            bound = self.lookup_binding(expr)
            return bound if isinstance(bound, relax.Call) and bound.op == op else None

        def _fused(self, call: Any) -> Any | None:
            p, v = call.args
            p_shape, v_shape, out_shape = static_shape(p), static_shape(v), static_shape(call)
            if p_shape is None or v_shape is None or out_shape is None or len(p_shape) < 3:
                return None
            if not all(str(e.ty.dtype) == "float32" for e in (p, v, call)):
                return None
            m, n = p_shape[-2:]
            soft = self._softmax(self._through_views(p, [m, n]))
            if soft is None or int(soft.attrs.axis) not in (-1, len(static_shape(soft) or []) - 1):
                return None
            logits = self._through_views(soft.args[0], [m, n])
            mask, logits_shape = None, static_shape(logits)
            if logits_shape is not None and (masked := self._masked(logits)) is not None:
                mask, logits = masked
            scale, logits = self._scaled(logits)
            scores = self._bound(self._through_views(logits, [m, n]), matmul)
            if scores is None or scale <= 0:
                return None
            q, kt = scores.args
            q_shape, kt_shape, s_shape = static_shape(q), static_shape(kt), static_shape(scores)
            if q_shape is None or kt_shape is None or s_shape is None or len(s_shape) < 3:
                return None
            batch = math.prod(s_shape[:-2])
            if (
                q_shape[:-2] != s_shape[:-2]
                or kt_shape[:-2] != s_shape[:-2]
                or v_shape[:-2] != p_shape[:-2]
                or math.prod(p_shape[:-2]) != batch
                or v_shape[-2] != n
                or not worth_fusing(m, n, v_shape[-1])
                or not all(str(e.ty.dtype) == "float32" for e in (q, kt))
            ):
                return None
            mask_shape = None if mask is None else _mask_batch(static_shape(mask), logits_shape, batch)
            if mask is not None and mask_shape is None:
                return None
            d, dv = q_shape[-1], v_shape[-1]
            mp, np_ = padded(m, n)
            reduced = _reduced_kernel(precision, d, dv)
            multiple = LANES if reduced is None else reduced.keys
            np_ = _round_up(n, multiple)
            value = None if mask is None else constant_value(mask, self.lookup_binding, cache=masks)
            blocks = None if value is None else causal_blocks(value, logits_shape, mp, np_, multiple)
            mask_batch = None if mask_shape is None else mask_shape[0]
            q3, kt3, v3 = (reshaped(self.builder_, x, [batch, *static_shape(x)[-2:]]) for x in (q, kt, v))
            # Zero rows of queries, zero columns of keys and rows of values: the kernel gives the
            # padded keys no weight, and the padded queries' rows are sliced off.
            q3 = self._pad(q3, 1, mp - m)
            kt3, v3 = self._pad(kt3, 2, np_ - n), self._pad(v3, 1, np_ - n)
            inputs = [q3, kt3, v3] if reduced is None else [q3, *reduced.operands(self.builder_, kt3, v3)]
            if mask is not None and mask_shape is not None:
                inputs.append(
                    self._pad(self._pad(self._mask_3d(mask, mask_shape, logits_shape), 1, mp - m), 2, np_ - n)
                )
            outs = []
            kernel = partial(attention_func, lanes=lanes) if reduced is None else reduced.func
            name = "attention" if reduced is None else reduced.name
            for block in blocks or [(0, mp, np_)]:
                func = kernel(batch, mp, np_, d, dv, scale, keys=n, mask_batch=mask_batch, block=block)
                out_type = relax.TensorType([batch, block[1], dv], "float32")
                outs.append(
                    self.builder_.emit(relax.call_tir(self.builder_.add_func(func, name), inputs, out_type))
                )
            nonlocal reductions
            reductions += reduced is not None
            out = outs[0] if len(outs) == 1 else self.builder_.emit(relax.op.concat(outs, axis=1))
            if mp > m:
                out = self.builder_.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[m]))
            return relax.op.reshape(out, out_shape)

        def _softmax(self, expr: Any) -> Any | None:
            """The softmax `expr` is bound to, directly or as a safe softmax: PyTorch's SDPA with
            a mask spells `where(row all -inf, 0, softmax(L))`, the row test being
            `not(max(astype(not(L == -inf), int8)))` over the keys (the kernel gives such a row
            zeros)."""
            soft = self._bound(expr, softmax)
            if soft is not None:
                return soft
            where = self._bound(expr, relax_op("relax.where"))
            if where is None or _scalar_value(where.args[1], self) != 0.0:
                return None
            soft = self._bound(where.args[2], softmax)
            if soft is None:
                return None
            test = where.args[0]
            for op in ("logical_not", "astype", "max", "astype", "logical_not", "equal"):
                bound = self._bound(test, relax_op(f"relax.{op}"))
                if bound is None:
                    return None
                test = bound
                if op != "equal":
                    test = bound.args[0]
            logits, floor = test.args
            if not logits.same_as(soft.args[0]) or scalar_constant(floor) != -math.inf:
                return None
            return soft

        def _masked(self, logits: Any) -> tuple[Any, Any] | None:
            """(mask, scores) for `logits` bound to `scores + mask` (either order) with `scores`
            (scaled) from a matmul and `mask` a float32 tensor of static shape; else None."""
            bound = self._bound(logits, relax_op("relax.add"))
            if bound is None:
                return None
            for scores, mask in (bound.args, bound.args[::-1]):
                tail = static_shape(logits)[-2:]
                found = self._bound(self._through_views(self._scaled(scores)[1], tail), matmul)
                if found is not None and static_shape(mask) is not None and str(mask.ty.dtype) == "float32":
                    return mask, scores
            return None

        def _mask_3d(self, mask: Any, shape: list[int], logits_shape: list[int]) -> Any:
            """`mask` broadcast to the logits and flattened to `shape` ([1 or batch, M, N])."""
            full = logits_shape if shape[0] > 1 else [1] * (len(logits_shape) - 2) + logits_shape[-2:]
            if static_shape(mask) != full:
                mask = self.builder_.emit(relax.op.broadcast_to(mask, full))
            return reshaped(self.builder_, mask, shape)

        def _pad(self, x: Any, axis: int, extra: int) -> Any:
            if extra == 0:
                return x
            width = [0] * 6
            width[2 * axis + 1] = extra
            return self.builder_.emit(relax.op.nn.pad(x, width))

        def _scaled(self, logits: Any) -> tuple[float, Any]:
            """(c, s) for `logits` bound to `s * c`, `c * s` or `s / c` (then 1 / c) with c a
            scalar constant, as a hand-written attention scales its scores; else (1, logits)."""
            bound = self._bound(logits, relax_op("relax.multiply"))
            if bound is not None:
                a, b = bound.args
                if (c := scalar_constant(b)) is not None:
                    return c, a
                if (c := scalar_constant(a)) is not None:
                    return c, b
            bound = self._bound(logits, relax_op("relax.divide"))
            if bound is not None and (c := scalar_constant(bound.args[1])) not in (None, 0.0):
                return 1.0 / c, bound.args[0]
            return 1.0, logits

    rewritten = rewrite_functions(_Fuse(mod), mod)
    return relax.transform.DeadCodeElimination()(rewritten), count, reductions


CAUSAL_BLOCKS = (8, 4, 2)  # query blocks to try, each over the keys any of its rows can see
BLOCK_COST = 0.01  # a block's fixed cost, as a share of the whole attention's work
MIN_SAVING = 0.2  # split only when the blocks skip at least this share of the work
MIN_BLOCK_ROWS = 64  # fewer rows a block: its call and the concatenation cost more than it skips


@dataclass(frozen=True)
class _Reduced:
    """A kernel that runs attention's matmuls below float32: its name, the multiple it pads keys
    to, its PrimFunc (`attention_func`'s arguments) and how K^T and V become its operands."""

    name: str
    keys: int
    func: Callable[..., Any]
    operands: Callable[[Any, Any, Any], list[Any]]


def _reduced_kernel(precision: str, d: int, dv: int) -> _Reduced | None:
    """The kernel for `precision` (`float16`, `int16`) where it takes heads of `d` x `dv`."""
    if precision == "float16" and attention_kernel.fits(dv):
        # K and V in float16 (a cast that fuses into their producers); Q converts per tile
        return _Reduced(
            "half_attention",
            attention_kernel.KEYS,
            attention_kernel.half_attention_func,
            lambda bb, kt, v: [bb.emit(_astype(kt, "float16")), bb.emit(_astype(v, "float16"))],
        )
    if precision == "int16" and attention_int16.fits(d, dv):
        return _Reduced(
            "int16_attention",
            attention_int16.KEYS,
            attention_int16.int16_attention_func,
            lambda bb, kt, v: [
                *attention_int16.quantized_keys(bb, kt),
                *attention_int16.quantized_values(bb, v),
            ],
        )
    return None


def _astype(x: Any, dtype: str) -> Any:
    from tvm import relax

    return relax.op.astype(x, dtype)


def causal_blocks(
    mask: np.ndarray, logits_shape: list[int], mp: int, np_: int, multiple: int = LANES
) -> list[tuple[int, int, int]] | None:
    """Query blocks (first row, rows, keys) for a constant additive `mask` (broadcast to the
    logits [..., M, N]; the kernel's M, N padded to `mp`, `np_`) whose rows see no key past
    their block's `keys`: a causal mask's upper triangle, `-inf`, gets no weight, and a block
    need not compute it. Each block reads the same inputs; the result is the same bit for bit
    (the skipped keys only ever added exact zeros). None when no split skips `MIN_SAVING` of the
    work, or the mask does not broadcast."""
    m, n = logits_shape[-2:]
    try:
        seen = np.broadcast_to(mask, logits_shape).reshape(-1, m, n) != -np.inf
    except ValueError:
        return None
    seen = seen.any(axis=0)
    last = np.where(seen.any(axis=1), n - np.argmax(seen[:, ::-1], axis=1), 0)  # keys each row sees
    best, best_cost = None, 1.0 - MIN_SAVING
    for count in CAUSAL_BLOCKS:
        rows = mp // count
        if mp % count or rows % ROWS or rows < MIN_BLOCK_ROWS:
            continue
        blocks = []
        for first in range(0, mp, rows):
            real = last[first : min(first + rows, m)]
            width = _round_up(max(int(real.max()) if real.size else 0, 1), multiple)
            blocks.append((first, rows, min(width, np_)))
        cost = sum(r * w for _, r, w in blocks) / (mp * np_) + BLOCK_COST * count
        if cost < best_cost:
            best, best_cost = blocks, cost
    return best


def _mask_batch(mask_shape: list[int] | None, logits_shape: list[int], batch: int) -> list[int] | None:
    """The mask as the kernel takes it, [1, M, N] if it is the same for every batch entry and
    head, else [batch, M, N]; None if it does not broadcast to the logits."""
    if mask_shape is None or len(mask_shape) > len(logits_shape) or math.prod(logits_shape[:-2]) != batch:
        return None
    aligned = [1] * (len(logits_shape) - len(mask_shape)) + list(mask_shape)
    if any(a not in (1, f) for a, f in zip(aligned, logits_shape, strict=True)):
        return None
    shared = math.prod(aligned[:-2]) == 1
    return [1 if shared else batch, *logits_shape[-2:]]


def _scalar_value(expr: Any, mutator: Any) -> float | None:
    """`scalar_constant` of `expr`, or of the fill value of the `full_like` it is bound to."""
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        if isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.full_like"):
            return scalar_constant(bound.args[1])
    return scalar_constant(expr)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
