"""Attention in float16 on CPUs with AVX512-FP16: twice the multiply-adds per instruction.

The fused float32 kernel (`attention.py`) runs its two matmuls near the fp32 FMA peak, and in a
W8A8 model they are what is left in float: the diffusers UNet's W8A8 step spent 19 of its 54 ms
of kernel time in attention. AVX512-FP16 (Sapphire Rapids and later) multiplies and adds 32
float16 lanes per `vfmadd231ph` where float32 has 16, at the same rate (measured here: 379
GFLOP/s on one core against 176).

`half_attention_func` computes what `attention.attention_te` does, per tile of `ROWS` query
rows, written directly in TIR (as the VNNI GEMM is):

1. the tile's queries, times the softmax scale, rounded to float16, each stored twice in a
   32-bit word: a 32-bit broadcast of the word (a load) fills a register with the value, where
   a 16-bit broadcast costs a shuffle per multiply-add on the port the multiply-adds need;
2. the logits: `ROWS x 64` float16 accumulators over the head dim, plus the mask;
3. per row the maximum, folded across lanes with shuffles (not a scalar step per lane, which
   cost the TE kernel most of its time at short sequences), the weights `exp(logit - max)` in
   float16 (a degree-4 polynomial and one `vscalefph`; a masked or padded key weighs exactly 0),
   stored as doubled words, and their sum in float32 (of the weights as rounded, which are what
   multiplies V);
4. the weighted sum of V: float16 accumulators over `CHUNK` keys at a time (two keys in flight
   when V is one register wide), each chunk's sum added into float32, so that rounding does not
   grow with the number of keys;
5. the float32 sums divided by the row sums (a row masked whole gives zeros, as PyTorch does).

Float16 keeps 11 significant bits of Q, K, V and the weights; against float64 attention the
kernel's output is within 47-57 dB SQNR (`tests/backends/test_attention_kernel.py`). A W8A8
model's activations carry 8 bits, and its outputs are 23-33 dB from float: `lowering` therefore
runs this kernel only for quantized Programs by default (`attention_precision`), and a float
Program keeps float32. K and V arrive in float16 (a cast before the call, fused into whatever
produced them), Q in float32, converted per tile. Keys are padded to a multiple of 32; value
widths must be multiples of 32 (whole registers), other attentions keep the float32 kernel.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

from optkit.backends.parallel_loops import loop_kind

from optkit.errors import BackendError

ROWS = 8  # query rows per tile, as the float32 kernel
SCORE_VECTORS = 2  # score columns per step: ROWS x 2 registers of accumulators
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI = 0.6875  # 4 significant bits: n * _LN2_HI is exact in float16 for |n| < 128
_EXP_FLOOR = -18.0  # p * 2^-26 rounds to float16 zero: a masked or padded key's weight is 0
LANES = 32  # float16 lanes in one AVX-512 register
KEYS = LANES  # the kernel's keys are a multiple of this
CHUNK = 64  # keys summed in float16 before the sum joins the float32 accumulator
F16, F32 = f"float16x{LANES}", f"float32x{LANES}"
KEYS_ATTR = "optkit_attention_keys"  # PrimFunc attribute: the keys a call reads (`kernel_profile`)


def target_has_fp16(target: Any) -> bool:
    """Whether the llvm target's CPU has AVX512-FP16."""
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features("avx512fp16", target))
    except Exception:  # a non-x86 target or an LLVM that cannot answer: no float16 arithmetic
        return False


def fits(dv: int) -> bool:
    """Whether a value width fits the kernel: whole float16 registers."""
    return dv % LANES == 0


def attention_ops(func: Any, shapes: list[tuple[tuple[int, ...], str]]) -> float | None:
    """Multiply-adds (x 2) per call of a `half_attention_func` kernel, from its arguments q [b,
    m, d], ..., out [b, rows, dv] and the keys it reads; None for another kernel."""
    keys = func.attrs.get(KEYS_ATTR) if func.attrs is not None else None
    if keys is None:
        return None
    (b, _, d), (_, rows, dv) = shapes[0][0], shapes[-1][0]
    return float(2 * b * rows * int(keys) * (d + dv))


def half_attention_func(
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
    (the rest get no weight): q float32 [b, m, d], kt float16 [b, d, n], v float16 [b, n, dv],
    mask float32 [mask_batch, m, n] when `mask_batch` is given, out float32. `n` and `dv`
    multiples of `LANES`, `m` of 4. With `block` (first row, rows, keys) it computes those
    query rows over the first keys only, like `attention.attention_func`."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    first, rows, width = block if block is not None else (0, m, n)
    if width % KEYS or not fits(dv) or rows % 4 or m % 4:
        raise BackendError(
            f"the float16 attention kernel needs keys and value widths in whole registers of {LANES} "
            f"and rows in fours, got {width} keys, width {dv}, {rows} rows"
        )
    tile = ROWS if rows % ROWS == 0 else 4
    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("half_attention")
        q = T.arg("q", T.buffer((_i64(b), _i64(m), _i64(d)), "float32"))
        kt = T.arg("kt", T.buffer((_i64(b), _i64(d), _i64(n)), "float16"))
        v = T.arg("v", T.buffer((_i64(b), _i64(n), _i64(dv)), "float16"))
        mask = None
        if mask_batch is not None:
            mask = T.arg("mask", T.buffer((_i64(mask_batch), _i64(m), _i64(n)), "float32"))
        out = T.arg("out", T.buffer((_i64(b), _i64(rows), _i64(dv)), "float32"))
        attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, KEYS_ATTR: width}
        T.func_attr(attrs)
        loop = loop_kind(
            2.0 * b * rows * width * (d + dv), 4.0 * b * (m * d + rows * dv) + 2.0 * b * n * (d + dv)
        )
        with T.sblock("root"), loop(_i64(0), _i64(b * (rows // tile))) as t:
            kernel = _Tile(tile, width, min(n if keys is None else keys, width), scale)
            kernel.emit(t, first, rows // tile, q, kt, v, mask, mask_batch not in (None, 1), out)
    return ib.get()


class _Tile:
    """One tile of `rows` queries over `width` keys (the first `real` of them real), emitted
    stage by stage into the IRBuilder frame it is built in (module docstring)."""

    def __init__(self, rows: int, width: int, real: int, scale: float) -> None:
        from tvm.tirx.script.builder import ir as T

        self.rows, self.width, self.real, self.scale = rows, width, real, scale
        self.logits = T.alloc_buffer((_i64(rows), _i64(width)), "float16", scope="global")
        self.words = T.alloc_buffer((_i64(rows), _i64(width)), "uint32", scope="global")  # weights
        self.top = T.alloc_buffer((_i64(rows),), "float16", scope="global")
        self.sums = T.alloc_buffer((_i64(rows),), "float32", scope="global")
        self.lane = T.alloc_buffer((_i64(LANES),), "float16", scope="global")
        self.pair = T.alloc_buffer((_i64(LANES),), "float32", scope="global")

    def emit(
        self, t: Any, first: int, tiles: int, q: Any, kt: Any, v: Any, mask: Any, per_batch: bool, out: Any
    ) -> None:
        from tvm.tirx.script.builder import ir as T

        z, row0 = t // _i64(tiles), (t % _i64(tiles)) * _i64(self.rows)  # row0: of this block
        queries = [
            T.alloc_buffer((_i64(int(q.shape[2])),), "uint32", scope="global") for _ in range(self.rows)
        ]
        total = T.alloc_buffer((_i64(self.rows), _i64(int(v.shape[2]))), "float32", scope="global")
        self.queries(queries, q, z, _i64(first) + row0)
        masked = None if mask is None else (mask, z if per_batch else _i64(0), _i64(first) + row0)
        step = SCORE_VECTORS * LANES
        with T.serial(_i64(0), _i64(self.width // step)) as jb:
            self.scores(jb * _i64(step), SCORE_VECTORS, queries, kt, z, masked)
        for c in range(self.width % step // LANES):
            self.scores(_i64(self.width - self.width % step + c * LANES), 1, queries, kt, z, masked)
        for r in range(self.rows):
            self.weights(r)
        self.weighted_sum(total, v, z)
        self.finish(total, out, z, row0, masked is not None)

    def queries(self, queries: list[Any], q: Any, z: Any, row: Any) -> None:
        """1. the tile's queries times the scale, in float16, as doubled words to broadcast."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        for r, buf in enumerate(queries):
            with T.vectorized(_i64(0), _i64(int(q.shape[2]))) as k:
                value = tirx.Cast("float16", q[z, row + _i64(r), k] * tirx.const(self.scale, "float32"))
                T.buffer_store(buf, _doubled(value), [k])

    def scores(self, col: Any, vectors: int, queries: list[Any], kt: Any, z: Any, masked: Any) -> None:
        """2. `vectors` registers of logits from key `col`: rows x vectors accumulators over the
        head dim, plus the mask."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        acc = [
            T.alloc_buffer((_i64(self.rows), _i64(LANES)), "float16", scope="global") for _ in range(vectors)
        ]
        for c, r in product(range(vectors), range(self.rows)):
            T.buffer_store(acc[c], _splat(0.0, "float16", LANES), [_i64(r), _ramp(0, LANES)])
        with T.serial(_i64(0), _i64(int(kt.shape[1]))) as k:
            keys = [kt.vload([z, k, col + _i64(c * LANES)], dtype=F16) for c in range(vectors)]
            for r in range(self.rows):
                query = self._broadcast(queries[r][k])
                for c in range(vectors):
                    now = acc[c].vload([_i64(r), _i64(0)], dtype=F16)
                    T.buffer_store(acc[c], now + query * keys[c], [_i64(r), _ramp(0, LANES)])
        for c, r in product(range(vectors), range(self.rows)):
            start = col + _i64(c * LANES)
            value = acc[c].vload([_i64(r), _i64(0)], dtype=F16)
            if masked is not None:
                mask, mz, row = masked
                value = value + tirx.Cast(
                    F16, mask.vload([mz, row + _i64(r), start], dtype=f"float32x{LANES}")
                )
            T.buffer_store(self.logits, value, [_i64(r), tirx.Ramp(start, _i64(1), LANES)])

    def weights(self, r: int) -> None:
        """3. row `r`'s maximum (padded keys excluded), its weights `exp(logit - max)` and their
        sum, of the weights as rounded to float16 (two registers added in float16, then in
        float32), not of the float32 exponentials."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        with T.serial(_i64(self.real), _i64(self.width)) as j:  # padded keys: no weight
            T.buffer_store(self.logits, tirx.const(-math.inf, "float16"), [_i64(r), j])
        T.buffer_store(self.lane, _splat(-math.inf, "float16", LANES), [_ramp(0, LANES)])
        with T.serial(_i64(0), _i64(self.width // LANES)) as j:
            now = self.logits.vload([_i64(r), j * _i64(LANES)], dtype=F16)
            T.buffer_store(self.lane, tirx.max(self.lane.vload([_i64(0)], dtype=F16), now), [_ramp(0, LANES)])
        T.buffer_store(self.top, _across(self.lane.vload([_i64(0)], dtype=F16), LANES, tirx.max), [_i64(r)])
        T.buffer_store(self.pair, _splat(0.0, "float32", LANES), [_ramp(0, LANES)])
        with T.serial(_i64(0), _i64(self.width // (2 * LANES))) as j:  # two registers a step
            both = self._weight(r, j * _i64(2 * LANES)) + self._weight(r, j * _i64(2 * LANES) + _i64(LANES))
            T.buffer_store(
                self.pair, self.pair.vload([_i64(0)], dtype=F32) + tirx.Cast(F32, both), [_ramp(0, LANES)]
            )
        if self.width % (2 * LANES):
            last = self._weight(r, _i64(self.width - LANES))
            T.buffer_store(
                self.pair, self.pair.vload([_i64(0)], dtype=F32) + tirx.Cast(F32, last), [_ramp(0, LANES)]
            )
        add = lambda a, b: a + b  # noqa: E731
        T.buffer_store(self.sums, _across(self.pair.vload([_i64(0)], dtype=F32), LANES, add), [_i64(r)])

    def _weight(self, r: int, col: Any) -> Any:
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        x = self.logits.vload([_i64(r), col], dtype=F16) - tirx.Broadcast(self.top[_i64(r)], LANES)
        weight = _exp(x, LANES, "float16")
        T.buffer_store(self.words, _doubled(weight, LANES), [_i64(r), tirx.Ramp(col, _i64(1), LANES)])
        return weight

    def weighted_sum(self, total: Any, v: Any, z: Any) -> None:
        """4. the weights times V, two registers of V at a time: float16 accumulators over
        `CHUNK` keys, each chunk's sum added into the float32 `total`."""
        from tvm.tirx.script.builder import ir as T

        dv = int(v.shape[2])
        for c, r in product(range(dv // LANES), range(self.rows)):
            T.buffer_store(total, _splat(0.0, "float32", LANES), [_i64(r), _ramp(c * LANES, LANES)])
        chunk = min(CHUNK, self.width)
        for group in range(0, dv // LANES, 2):
            vectors = min(2, dv // LANES - group)
            streams = 2 // vectors  # one V register: two keys at once, for 16 accumulators
            acc = [
                [
                    T.alloc_buffer((_i64(self.rows), _i64(LANES)), "float16", scope="global")
                    for _ in range(vectors)
                ]
                for _ in range(streams)
            ]
            with T.serial(_i64(0), _i64(self.width // chunk)) as jc:
                self._chunk(acc, total, v, z, group, jc * _i64(chunk), chunk)
            if self.width % chunk:
                self._chunk(
                    acc, total, v, z, group, _i64(self.width - self.width % chunk), self.width % chunk
                )

    def _chunk(
        self, acc: list[list[Any]], total: Any, v: Any, z: Any, group: int, start: Any, count: int
    ) -> None:
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        streams, vectors = len(acc), len(acc[0])
        for s, c, r in product(range(streams), range(vectors), range(self.rows)):
            T.buffer_store(acc[s][c], _splat(0.0, "float16", LANES), [_i64(r), _ramp(0, LANES)])
        with T.serial(_i64(0), _i64(count // streams)) as jj:
            for s in range(streams):
                j = start + jj * _i64(streams) + _i64(s)
                values = [v.vload([z, j, _i64((group + c) * LANES)], dtype=F16) for c in range(vectors)]
                for r in range(self.rows):
                    weight = self._broadcast(self.words[_i64(r), j])
                    for c in range(vectors):
                        now = acc[s][c].vload([_i64(r), _i64(0)], dtype=F16)
                        T.buffer_store(acc[s][c], now + weight * values[c], [_i64(r), _ramp(0, LANES)])
        for c, r in product(range(vectors), range(self.rows)):
            part = acc[0][c].vload([_i64(r), _i64(0)], dtype=F16)
            for s in range(1, streams):
                part = part + acc[s][c].vload([_i64(r), _i64(0)], dtype=F16)
            col = (group + c) * LANES
            now = total.vload([_i64(r), _i64(col)], dtype=F32)
            T.buffer_store(total, now + tirx.Cast(F32, part), [_i64(r), _ramp(col, LANES)])

    def finish(self, total: Any, out: Any, z: Any, row0: Any, masked: bool) -> None:
        """5. the sums divided by the row sums; a row masked whole (maximum -inf) gives zeros."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        for r in range(self.rows):
            with T.vectorized(_i64(0), _i64(int(total.shape[1]))) as c:
                value = total[_i64(r), c] / self.sums[_i64(r)]
                if masked:
                    seen = self.top[_i64(r)] > tirx.const(-math.inf, "float16")
                    value = tirx.Select(seen, value, tirx.const(0.0, "float32"))
                T.buffer_store(out, value, [z, row0 + _i64(r), c])

    def _broadcast(self, word: Any) -> Any:
        """A register filled with one stored value: a 32-bit broadcast (a load, no shuffle)."""
        from tvm import tirx

        return tirx.reinterpret(F16, tirx.Broadcast(word, LANES // 2))


def _doubled(value: Any, lanes: int = 1) -> Any:
    """A float16 scalar (or vector) as 32-bit words holding it twice: broadcast as 32 bits, the
    word fills a register with the value."""
    from tvm import tirx

    u16, u32 = ("uint16", "uint32") if lanes == 1 else (f"uint16x{lanes}", f"uint32x{lanes}")
    bits = tirx.Cast(u32, tirx.reinterpret(u16, value))
    factor = tirx.const(0x10001, "uint32")
    return bits * (factor if lanes == 1 else tirx.Broadcast(factor, lanes))


def _exp(x: Any, lanes: int, dtype: str) -> Any:
    """exp(x) for x <= 0 in float16 or float32 lanes (AVX-512): 2^n * p(r), x = n ln2 + r, with
    ln2 split in two so that n * ln2 loses nothing, p the degree-4 Taylor polynomial (4e-5 at
    |r| <= ln2 / 2, under float16's rounding); from `_EXP_FLOOR` down (and for -inf) exactly zero
    in float16, 1.5e-8 in float32, so that keys a mask hides add nothing."""
    from tvm import tirx

    def c(value: float) -> Any:
        return tirx.Broadcast(tirx.const(value, dtype), lanes)

    x = tirx.max(x, c(_EXP_FLOOR))
    n = tirx.floor(x * c(_LOG2E) + c(0.5))
    r = x - n * c(_LN2_HI)
    r = r - n * c(_LN2 - _LN2_HI)
    p = c(1 / 24)
    for coef in (1 / 6, 1 / 2, 1.0, 1.0):
        p = p * r + c(coef)
    half = dtype == "float16"
    return tirx.call_llvm_pure_intrin(  # p * 2^n in one `vscalefph` / `vscalefps`
        f"{dtype}x{lanes}",
        "llvm.x86.avx512fp16.mask.scalef.ph.512" if half else "llvm.x86.avx512.mask.scalef.ps.512",
        p,
        n,
        p,
        tirx.const(-1, "int32" if half else "int16"),  # all lanes
        tirx.const(4, "int32"),  # the current rounding mode
    )


def _across(value: Any, lanes: int, op: Any) -> Any:
    """`op` folded over the `lanes` of a vector, halving it each step (a shuffle and one vector
    op per step, not one scalar op per lane)."""
    from tvm import tirx

    while lanes > 1:
        lanes //= 2
        low = tirx.Shuffle([value], [tirx.IntImm("int32", i) for i in range(lanes)])
        high = tirx.Shuffle([value], [tirx.IntImm("int32", i) for i in range(lanes, 2 * lanes)])
        value = op(low, high)
    return value


def _splat(value: float, dtype: str, lanes: int) -> Any:
    from tvm import tirx

    return tirx.Broadcast(tirx.const(value, dtype), lanes)


def _ramp(start: int, lanes: int) -> Any:
    from tvm import tirx

    return tirx.Ramp(_i64(start), _i64(1), lanes)


def _i64(value: int) -> Any:
    from tvm import tirx

    return tirx.IntImm("int64", value)
