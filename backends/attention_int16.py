"""Attention on 16-bit integers on CPUs with AVX-512 VNNI but no AVX512-FP16 (AMD Zen 4, Intel
Ice Lake and Cascade Lake): `vpdpwssd` multiplies and adds pairs of int16, 32 products per
instruction where a float32 FMA does 16.

In a W8A8 model the fused attention's two matmuls are what is left in float32, and they run near
the fp32 FMA peak: on one core of an AMD EPYC (Zen 4) the diffusers UNet's W8A8 step spent 27 of
its 61 ms of kernel time in attention, the int8 convs and GEMMs around it at 85-96% of the
`vpdpbusd` peak. Where AVX512-FP16 is there, `attention_kernel.py` runs the matmuls in float16;
where it is not, this kernel runs them on integers. `int16_attention_func` computes what
`attention.attention_te` does, per tile of `ROWS` query rows, written directly in TIR:

1. the tile's queries times the softmax scale, each row quantized to integers of at most `QMAX`
   in magnitude with its own scale (its largest magnitude maps to `QMAX`);
2. the logits: `ROWS x 32` int32 accumulators over pairs of the head dim (`vpdpwssd`, the row's
   pair of values broadcast as one 32-bit word), times the row's and each key's scale in float32,
   plus the mask;
3. per row the maximum and the weights `exp(logit - max)` in float32 (a degree-4 polynomial and
   one `vscalefps`), each rounded to an integer of at most `WEIGHT_MAX` (a weight of 1, the row's
   largest, is exactly `WEIGHT_MAX`; a masked or padded key weighs exactly 0), and their sum;
4. the weighted sum of V: int32 accumulators over `CHUNK` keys at a time, each chunk's sum added
   into float32 (`CHUNK * WEIGHT_MAX * QMAX` < 2^31, so no chunk overflows);
5. the sums times each value column's scale, divided by the row sums (a row masked whole gives
   zeros, as PyTorch does).

K and V arrive quantized (`quantized_keys`, `quantized_values`: one `pairs_func` kernel each;
Relax's own max / divide / round / cast / transpose fused into kernels that ran at 2 GB/s and
made ViT-Tiny's W8A8 0.7 ms slower than float32 attention): K per key and V per value column,
each to integers of at most `QMAX`, two int16 in one 32-bit word as `vpdpwssd` pairs them: kq
[b, d / 2, n] (16 words, a register, hold 16 keys' pairs of the head dim), vq [b, n / 2, dv]
(16 value columns' pairs of keys), with their float32 scales. With 12-bit Q, K and V (every
value within half a step of 1/2047 of its row's, key's or column's largest) and weights in steps
of 1/4095 of the row's largest, the kernel's output is within 59-63 dB SQNR of float64 attention
on random heads (`tests/backends/test_attention_int16.py` asks for 50), closer than the float16
kernel's 47-57 dB; a W8A8 model's outputs are 23-33 dB from float. `lowering` therefore runs
it only for quantized Programs by default (`attention_precision`). Keys are padded to a multiple
of 32; value widths must be multiples of 16 and head dims even and at most `MAX_HEAD`.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

from optkit.backends.attention_kernel import KEYS_ATTR, _across, _exp, _i64, _ramp, _splat
from optkit.backends.parallel_loops import loop_kind
from optkit.backends.relax_exprs import static_shape

from optkit.errors import BackendError

ROWS = 8  # query rows per tile, as the float32 kernel
LANES = 16  # int32 / float32 lanes of one AVX-512 register
KEYS = 2 * LANES  # one score step: two registers of 16 keys; keys are padded to a multiple
QMAX = 2047  # Q, K and V quantized to [-QMAX, QMAX]: 12 bits
WEIGHT_MAX = 4095  # a weight of 1 (the row's largest) as an integer
CHUNK = 256  # keys summed in int32: CHUNK * WEIGHT_MAX * QMAX < 2^31
MAX_HEAD = 256  # head dims: MAX_HEAD * QMAX^2 < 2^31 (a logit's int32 sum)
VPDPWSSD = "llvm.x86.avx512.vpdpwssd.512"
I16, I32, F32 = f"int16x{2 * LANES}", f"int32x{LANES}", f"float32x{LANES}"


def fits(d: int, dv: int) -> bool:
    """Whether a head fits the kernel: an even head dim of at most `MAX_HEAD`, whole registers of
    value columns."""
    return d % 2 == 0 and d <= MAX_HEAD and dv % LANES == 0


def quantized_keys(bb: Any, kt: Any) -> tuple[Any, Any]:
    """kt float32 [b, d, n] as the kernel reads it: (kq [b, d / 2, n] words of two int16, a
    key's pair of head dims, per-key scales float32 [b, n]); a key of zeros gets scale 0."""
    return _quantized(bb, kt)


def quantized_values(bb: Any, v: Any) -> tuple[Any, Any]:
    """v float32 [b, n, dv] as the kernel reads it: (vq [b, n / 2, dv] words of two int16, a
    column's pair of keys, per-column scales float32 [b, dv])."""
    return _quantized(bb, v)


def _quantized(bb: Any, x: Any) -> tuple[Any, Any]:
    """`pairs_func` on x [b, p, c], emitted: (words [b, p / 2, c], scales [b, c])."""
    from tvm import relax

    b, p, c = static_shape(x) or []
    func = pairs_func(b, p, c)
    words, scales = relax.TensorType([b, p // 2, c], "uint32"), relax.TensorType([b, c], "float32")
    both = bb.emit(relax.call_tir(bb.add_func(func, "int16_pairs"), [x], [words, scales]))
    return bb.emit(relax.TupleGetItem(both, 0)), bb.emit(relax.TupleGetItem(both, 1))


def pairs_func(b: int, p: int, c: int) -> Any:
    """The PrimFunc x float32 [b, p, c] -> (words uint32 [b, p / 2, c], scales float32 [b, c]):
    one scale per index of the last axis (its largest magnitude over axis 1 maps to `QMAX`), the
    integers of rows 2i and 2i + 1 in one word (low and high half), as `vpdpwssd` pairs them.
    Vectorized over the last axis, `c` a multiple of `LANES` and `p` even."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    if c % LANES or p % 2:
        raise BackendError(
            f"int16 pairs need an even axis 1 and a last axis in whole registers, got {p} x {c}"
        )
    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("int16_pairs")
        x = T.arg("x", T.buffer((_i64(b), _i64(p), _i64(c)), "float32"))
        words = T.arg("words", T.buffer((_i64(b), _i64(p // 2), _i64(c)), "uint32"))
        scales = T.arg("scales", T.buffer((_i64(b), _i64(c)), "float32"))
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        loop = loop_kind(3.0 * b * p * c, 6.0 * b * p * c)
        with T.sblock("root"), loop(_i64(0), _i64(b * (c // LANES))) as t:
            z, col = t // _i64(c // LANES), (t % _i64(c // LANES)) * _i64(LANES)
            top = T.alloc_buffer((_i64(LANES),), "float32", scope="global")
            T.buffer_store(top, _splat(0.0, "float32", LANES), [_ramp(0, LANES)])
            with T.serial(_i64(0), _i64(p)) as i:
                now = tirx.max(top.vload([_i64(0)], dtype=F32), tirx.abs(x.vload([z, i, col], dtype=F32)))
                T.buffer_store(top, now, [_ramp(0, LANES)])
            largest = top.vload([_i64(0)], dtype=F32)
            lanes = tirx.Ramp(col, _i64(1), LANES)
            T.buffer_store(scales, largest * _splat(1 / QMAX, "float32", LANES), [z, lanes])
            zero = _splat(0.0, "float32", LANES)
            inverse = tirx.Select(largest > zero, _splat(float(QMAX), "float32", LANES) / largest, zero)
            T.buffer_store(top, inverse, [_ramp(0, LANES)])
            with T.serial(_i64(0), _i64(p // 2)) as i:
                half = [_integers(x.vload([z, i * _i64(2) + _i64(h), col], dtype=F32), top) for h in (0, 1)]
                low = half[0] & tirx.Broadcast(tirx.const(0xFFFF, "uint32"), LANES)
                high = half[1] << tirx.Broadcast(tirx.const(16, "uint32"), LANES)
                T.buffer_store(words, low | high, [z, i, lanes])
    return ib.get()


def _integers(value: Any, inverse: Any) -> Any:
    """`value` times the inverse scales, rounded, as the two's-complement bits of uint32 lanes."""
    from tvm import tirx

    rounded = tirx.nearbyint(value * inverse.vload([_i64(0)], dtype=F32))
    return tirx.reinterpret(f"uint32x{LANES}", tirx.Cast(I32, rounded))


def int16_attention_func(
    b: int,
    m: int,
    n: int,
    d: int,
    dv: int,
    scale: float = 1.0,
    keys: int | None = None,
    mask_batch: int | None = None,
    block: tuple[int, int, int] | None = None,
) -> Any:
    """The PrimFunc `out = softmax(scale * q @ kt [+ mask]) @ v` over the first `keys` keys
    (the rest get no weight): q float32 [b, m, d], kq uint32 [b, d / 2, n] and sk float32
    [b, n] (`quantized_keys`), vq uint32 [b, n / 2, dv] and sv float32 [b, dv]
    (`quantized_values`), mask float32 [mask_batch, m, n] when `mask_batch` is given, out float32.
    `n` a multiple of `KEYS`, `m` of 4. With `block` (first row, rows, keys) it computes those
    query rows over the first keys only, like `attention.attention_func`."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    first, rows, width = block if block is not None else (0, m, n)
    if width % KEYS or n % KEYS or not fits(d, dv) or rows % 4 or m % 4:
        raise BackendError(
            f"the int16 attention kernel needs keys in multiples of {KEYS}, an even head dim of at most "
            f"{MAX_HEAD}, value widths in multiples of {LANES} and rows in fours, got {width} keys, "
            f"head dim {d}, width {dv}, {rows} rows"
        )
    tile = ROWS if rows % ROWS == 0 else 4
    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("int16_attention")
        q = T.arg("q", T.buffer((_i64(b), _i64(m), _i64(d)), "float32"))
        kq = T.arg("kq", T.buffer((_i64(b), _i64(d // 2), _i64(n)), "uint32"))
        sk = T.arg("sk", T.buffer((_i64(b), _i64(n)), "float32"))
        vq = T.arg("vq", T.buffer((_i64(b), _i64(n // 2), _i64(dv)), "uint32"))
        sv = T.arg("sv", T.buffer((_i64(b), _i64(dv)), "float32"))
        mask = None
        if mask_batch is not None:
            mask = T.arg("mask", T.buffer((_i64(mask_batch), _i64(m), _i64(n)), "float32"))
        out = T.arg("out", T.buffer((_i64(b), _i64(rows), _i64(dv)), "float32"))
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, KEYS_ATTR: width})
        loop = loop_kind(2.0 * b * rows * width * (d + dv), 4.0 * b * (m * d + rows * dv) + b * n * (d + dv))
        with T.sblock("root"), loop(_i64(0), _i64(b * (rows // tile))) as t:
            kernel = _Tile(tile, width, min(n if keys is None else keys, width), d, scale)
            masked = mask, mask_batch not in (None, 1)
            kernel.emit(t, first, rows // tile, q, (kq, sk), (vq, sv), masked, out)
    return ib.get()


class _Tile:
    """One tile of `rows` queries over `width` keys (the first `real` of them real), emitted
    stage by stage into the IRBuilder frame it is built in (module docstring)."""

    def __init__(self, rows: int, width: int, real: int, d: int, scale: float) -> None:
        from tvm.tirx.script.builder import ir as T

        self.rows, self.width, self.real, self.d, self.scale = rows, width, real, d, scale
        self.queries = T.alloc_buffer((_i64(rows), _i64(d)), "int16", scope="global")
        self.query_words = T.decl_buffer((_i64(rows), _i64(d // 2)), "uint32", data=self.queries.data)
        self.row_scale = T.alloc_buffer((_i64(rows),), "float32", scope="global")
        self.inverse = T.alloc_buffer((_i64(rows),), "float32", scope="global")
        self.logits = T.alloc_buffer((_i64(rows), _i64(width)), "float32", scope="global")
        self.weights = T.alloc_buffer((_i64(rows), _i64(width)), "int16", scope="global")
        self.weight_words = T.decl_buffer((_i64(rows), _i64(width // 2)), "uint32", data=self.weights.data)
        self.top = T.alloc_buffer((_i64(rows),), "float32", scope="global")
        self.sums = T.alloc_buffer((_i64(rows),), "float32", scope="global")
        self.lane = T.alloc_buffer((_i64(LANES),), "float32", scope="global")
        self.count = T.alloc_buffer((_i64(LANES),), "int32", scope="global")

    def emit(self, t: Any, first: int, tiles: int, q: Any, k: Any, v: Any, masked: Any, out: Any) -> None:
        from tvm.tirx.script.builder import ir as T

        z, row0 = t // _i64(tiles), (t % _i64(tiles)) * _i64(self.rows)  # row0: of this block
        row = _i64(first) + row0
        mask, per_batch = masked
        total = T.alloc_buffer((_i64(self.rows), _i64(int(out.shape[2]))), "float32", scope="global")
        for r in range(self.rows):
            self.quantize_query(r, q, z, row + _i64(r))
        tail = None if mask is None else (mask, z if per_batch else _i64(0), row)
        with T.serial(_i64(0), _i64(self.width // KEYS)) as jb:
            self.scores(jb * _i64(KEYS), k, z, tail)
        for r in range(self.rows):
            self.softmax_weights(r)
        self.weighted_sum(total, v[0], z)
        self.finish(total, v[1], out, z, row0, mask is not None)

    def quantize_query(self, r: int, q: Any, z: Any, row: Any) -> None:
        """1. row `r`'s query times the softmax scale as integers of at most `QMAX`, and the
        factor that takes their products with a key's integers back to logits (with the key's
        scale)."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        d = self.d
        step = LANES if d % LANES == 0 else 2
        T.buffer_store(self.lane, _splat(0.0, "float32", LANES), [_ramp(0, LANES)])
        for c in range(0, d, step):  # the largest magnitude: d / 16 vector steps (d is small)
            now = tirx.abs(q.vload([z, row, _i64(c)], dtype=f"float32x{step}"))
            lanes = tirx.Ramp(_i64(0), _i64(1), step)
            T.buffer_store(
                self.lane, tirx.max(self.lane.vload([_i64(0)], dtype=f"float32x{step}"), now), [lanes]
            )
        top = _across(self.lane.vload([_i64(0)], dtype=F32), LANES, tirx.max)
        T.buffer_store(self.row_scale, top * tirx.const(self.scale / QMAX, "float32"), [_i64(r)])
        zero = tirx.const(0.0, "float32")
        inverse = tirx.Select(top > zero, tirx.const(float(QMAX), "float32") / top, zero)
        T.buffer_store(self.inverse, inverse, [_i64(r)])  # a scalar: the loop below vectorizes
        with T.vectorized(_i64(0), _i64(d)) as c:
            value = tirx.nearbyint(q[z, row, c] * self.inverse[_i64(r)])
            T.buffer_store(self.queries, tirx.Cast("int16", value), [_i64(r), c])

    def scores(self, col: Any, k: Any, z: Any, tail: Any) -> None:
        """2. `KEYS` logits from key `col`: rows x 2 int32 accumulators over pairs of the head
        dim, scaled to float32, plus the mask."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        kq, sk = k
        acc = [T.alloc_buffer((_i64(self.rows), _i64(LANES)), "int32", scope="global") for _ in range(2)]
        for c, r in product(range(2), range(self.rows)):
            T.buffer_store(acc[c], _splat(0, "int32", LANES), [_i64(r), _ramp(0, LANES)])
        with T.serial(_i64(0), _i64(self.d // 2)) as p:
            keys = [_pairs(kq, [z, p, col + _i64(c * LANES)]) for c in range(2)]
            for r in range(self.rows):
                pair = tirx.reinterpret(I16, tirx.Broadcast(self.query_words[_i64(r), p], LANES))
                for c in range(2):
                    now = acc[c].vload([_i64(r), _i64(0)], dtype=I32)
                    new = tirx.call_llvm_pure_intrin(I32, VPDPWSSD, now, pair, keys[c])
                    T.buffer_store(acc[c], new, [_i64(r), _ramp(0, LANES)])
        for c, r in product(range(2), range(self.rows)):
            start = col + _i64(c * LANES)
            factor = tirx.Broadcast(self.row_scale[_i64(r)], LANES) * sk.vload([z, start], dtype=F32)
            value = tirx.Cast(F32, acc[c].vload([_i64(r), _i64(0)], dtype=I32)) * factor
            if tail is not None:
                mask, mz, row = tail
                value = value + mask.vload([mz, row + _i64(r), start], dtype=F32)
            T.buffer_store(self.logits, value, [_i64(r), tirx.Ramp(start, _i64(1), LANES)])

    def softmax_weights(self, r: int) -> None:
        """3. row `r`'s maximum (padded keys excluded), its weights `exp(logit - max)` as integers
        of at most `WEIGHT_MAX`, and their sum."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        with T.serial(_i64(self.real), _i64(self.width)) as j:  # padded keys: no weight
            T.buffer_store(self.logits, tirx.const(-math.inf, "float32"), [_i64(r), j])
        T.buffer_store(self.lane, _splat(-math.inf, "float32", LANES), [_ramp(0, LANES)])
        with T.serial(_i64(0), _i64(self.width // LANES)) as j:
            now = self.logits.vload([_i64(r), j * _i64(LANES)], dtype=F32)
            T.buffer_store(self.lane, tirx.max(self.lane.vload([_i64(0)], dtype=F32), now), [_ramp(0, LANES)])
        T.buffer_store(self.top, _across(self.lane.vload([_i64(0)], dtype=F32), LANES, tirx.max), [_i64(r)])
        T.buffer_store(self.count, _splat(0, "int32", LANES), [_ramp(0, LANES)])
        with T.serial(_i64(0), _i64(self.width // LANES)) as j:
            col = j * _i64(LANES)
            x = self.logits.vload([_i64(r), col], dtype=F32) - tirx.Broadcast(self.top[_i64(r)], LANES)
            weight = tirx.Cast(
                I32, tirx.nearbyint(_exp(x, LANES, "float32") * _splat(WEIGHT_MAX, "float32", LANES))
            )
            T.buffer_store(
                self.weights, tirx.Cast(f"int16x{LANES}", weight), [_i64(r), tirx.Ramp(col, _i64(1), LANES)]
            )
            T.buffer_store(self.count, self.count.vload([_i64(0)], dtype=I32) + weight, [_ramp(0, LANES)])
        add = lambda a, b: a + b  # noqa: E731
        total = _across(self.count.vload([_i64(0)], dtype=I32), LANES, add)
        T.buffer_store(self.sums, tirx.Cast("float32", total), [_i64(r)])

    def weighted_sum(self, total: Any, vq: Any, z: Any) -> None:
        """4. the weights times V, two registers of value columns at a time: int32 accumulators
        over `CHUNK` keys, each chunk's sum added into the float32 `total`."""
        from tvm.tirx.script.builder import ir as T

        dv = int(vq.shape[2])
        for c, r in product(range(dv // LANES), range(self.rows)):
            T.buffer_store(total, _splat(0.0, "float32", LANES), [_i64(r), _ramp(c * LANES, LANES)])
        chunk = min(CHUNK, self.width)
        for group in range(0, dv // LANES, 2):
            vectors = min(2, dv // LANES - group)
            acc = [
                T.alloc_buffer((_i64(self.rows), _i64(LANES)), "int32", scope="global")
                for _ in range(vectors)
            ]
            with T.serial(_i64(0), _i64(self.width // chunk)) as jc:
                self._chunk(acc, total, vq, z, group, jc * _i64(chunk), chunk)
            if self.width % chunk:
                self._chunk(
                    acc, total, vq, z, group, _i64(self.width - self.width % chunk), self.width % chunk
                )

    def _chunk(self, acc: list[Any], total: Any, vq: Any, z: Any, group: int, start: Any, count: int) -> None:
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        for c, r in product(range(len(acc)), range(self.rows)):
            T.buffer_store(acc[c], _splat(0, "int32", LANES), [_i64(r), _ramp(0, LANES)])
        with T.serial(_i64(0), _i64(count // 2)) as jj:
            pair = start // _i64(2) + jj
            values = [_pairs(vq, [z, pair, _i64((group + c) * LANES)]) for c in range(len(acc))]
            for r in range(self.rows):
                weights = tirx.reinterpret(I16, tirx.Broadcast(self.weight_words[_i64(r), pair], LANES))
                for c in range(len(acc)):
                    now = acc[c].vload([_i64(r), _i64(0)], dtype=I32)
                    new = tirx.call_llvm_pure_intrin(I32, VPDPWSSD, now, weights, values[c])
                    T.buffer_store(acc[c], new, [_i64(r), _ramp(0, LANES)])
        for c, r in product(range(len(acc)), range(self.rows)):
            col = (group + c) * LANES
            now = total.vload([_i64(r), _i64(col)], dtype=F32)
            part = tirx.Cast(F32, acc[c].vload([_i64(r), _i64(0)], dtype=I32))
            T.buffer_store(total, now + part, [_i64(r), _ramp(col, LANES)])

    def finish(self, total: Any, sv: Any, out: Any, z: Any, row0: Any, masked: bool) -> None:
        """5. the sums times the value columns' scales, divided by the row sums; a row masked
        whole (maximum -inf) gives zeros."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        for r in range(self.rows):
            with T.vectorized(_i64(0), _i64(int(total.shape[1]))) as c:
                value = total[_i64(r), c] * sv[z, c] / self.sums[_i64(r)]
                if masked:
                    seen = self.top[_i64(r)] > tirx.const(-math.inf, "float32")
                    value = tirx.Select(seen, value, tirx.const(0.0, "float32"))
                T.buffer_store(out, value, [z, row0 + _i64(r), c])


def _pairs(words: Any, index: list[Any]) -> Any:
    """16 words of two int16 from `index` as one register of 32 int16."""
    from tvm import tirx

    return tirx.reinterpret(I16, words.vload(index, dtype=f"uint32x{LANES}"))
