"""Attention in float16 on CPUs with AVX512-FP16: twice the multiply-adds per instruction.

The fused float32 kernel (`attention.py`) runs its two matmuls at the fp32 FMA peak, and in a
W8A8 model those matmuls are what is left in float: the diffusers UNet's W8A8 step spent 19 of
its 54 ms of kernel time in attention. AVX512-FP16 (Sapphire Rapids and later) multiplies and
adds 32 float16 lanes per instruction where float32 has 16, at the same rate (`vfmadd231ph`,
measured here: 379 GFLOP/s against 176 for float32 on one core).

`tiled_attention_func` computes what `attention.attention_te` does, per tile of `ROWS` query
rows, with the matmuls in float16:

1. the tile's queries, times the softmax scale, rounded to float16; each value stored twice in
   a 32-bit word, so that one 32-bit broadcast (a load, no shuffle) fills a register with it
   (a 16-bit broadcast costs a shuffle per multiply-add, on the port the multiply-adds need);
2. the scores, `ROWS x 64` float16 accumulators over the head dim, stored as float32 logits
   (plus the mask, in float32);
3. per row the maximum, `exp(logit - max)` in float32 (a degree-5 polynomial), rounded to
   float16; the row sum adds the rounded weights, so that the weights sum to exactly what
   divides them; each weight again stored twice in a word, over its logit;
4. the weighted sum of V: float16 accumulators over `CHUNK` keys at a time, each chunk's sum
   added into float32, so that rounding does not grow with the number of keys;
5. the float32 sums divided by the row sums (a row masked whole gives zeros, as PyTorch does).

Rounding Q, K, V and the weights to float16 (11 significant bits) costs accuracy that a W8A8
model has already given up: its activations carry 8. On the zoo and the model families the
float16 kernel's output is within 47 dB SQNR of float64 attention, where the W8A8 models' own
error against float is 23-33 dB (docs/backends.md has the figures). It is therefore the default
only for quantized Programs (`lowering.attention_precision`); a float Program keeps float32.

K and V arrive in float16 (a cast before the call, fused into whatever produced them); Q stays
float32 and is converted per tile. Keys are padded to a multiple of 32, value widths must be
multiples of 32 (one register of float16): other shapes keep the float32 kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ROWS = 8  # query rows per tile, as the float32 kernel
SCORE_VECTORS = 2  # score columns per step: ROWS x 2 registers of accumulators
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI = 0.6875  # 4 significant bits: n * _LN2_HI is exact in float16 for |n| < 128
_EXP16_FLOOR = -18.0  # p * 2^-26 rounds to float16 zero: a masked or padded key's weight is 0
_EXP32_FLOOR = -110.0  # p * 2^-159 rounds to float32 zero


@dataclass(frozen=True)
class Precision:
    """How the kernel multiplies: `dtype` of Q, K, V, the weights and the partial sums, `lanes`
    of it per register (keys are padded to a multiple, value widths must be one), `chunk` keys
    summed in `dtype` before the sum joins float32, and whether a value to broadcast is stored
    twice in a 32-bit word (`doubled`: a 16-bit broadcast costs a shuffle per multiply-add)."""

    dtype: str
    lanes: int
    chunk: int
    doubled: bool

    @property
    def vector(self) -> str:
        return f"{self.dtype}x{self.lanes}"

    @property
    def word(self) -> str:
        """The dtype a broadcast operand is stored in."""
        return "uint32" if self.doubled else self.dtype


HALF = Precision("float16", 32, 64, doubled=True)
SINGLE = Precision("float32", 16, 1 << 30, doubled=False)  # float32 sums need no chunks
LANES = HALF.lanes
KEYS = HALF.lanes  # the float16 kernel's keys are a multiple of this


def precisions(target: Any, half: bool) -> tuple[Precision, ...]:
    """The kernels the llvm target runs, in order of preference: float16 when `half` and the CPU
    has AVX512-FP16, float32 when it has AVX-512 (`vscalefps`); none on others, where fused
    attention keeps the TE kernel (`attention.attention_func`)."""
    kernels = (HALF,) if half and target_has_fp16(target) else ()
    return (*kernels, SINGLE) if _has(target, "avx512f") else kernels


def target_has_fp16(target: Any) -> bool:
    """Whether the llvm target's CPU has AVX512-FP16."""
    return _has(target, "avx512fp16")


def _has(target: Any, feature: str) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # a non-x86 target or an LLVM that cannot answer: not there
        return False


def fits(dv: int, precision: Precision = HALF) -> bool:
    """Whether a value width fits the kernel: whole registers."""
    return dv % precision.lanes == 0


def padded_keys(n: int, precision: Precision = HALF) -> int:
    return -(-n // precision.lanes) * precision.lanes


def tiled_attention_func(
    b: int,
    m: int,
    n: int,
    d: int,
    dv: int,
    scale: float = 1.0,
    keys: int | None = None,
    mask_batch: int | None = None,
    block: tuple[int, int, int] | None = None,
    precision: Precision = HALF,
) -> Any:
    """The PrimFunc `out = softmax(scale * q @ kt [+ mask]) @ v` over the first `keys` keys
    (the rest get no weight): q float32 [b, m, d], kt and v of `precision.dtype` ([b, d, n],
    [b, n, dv]), mask float32 [mask_batch, m, n] when `mask_batch` is given, out float32. `n`
    and `dv` multiples of `precision.lanes`, `m` of 4. With `block` (first row, rows, keys) it
    computes those query rows over the first keys only, like `attention.attention_func`."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    first, rows, width = block if block is not None else (0, m, n)
    if width % precision.lanes or not fits(dv, precision) or rows % 4 or m % 4:
        raise ValueError(
            f"the attention kernel needs keys and value widths in whole registers of {precision.lanes} "
            f"and rows in fours, got {width} keys, width {dv}, {rows} rows"
        )
    tile = ROWS if rows % ROWS == 0 else 4
    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("half_attention" if precision is HALF else "tile_attention")
        q = T.arg("q", T.buffer((_i64(b), _i64(m), _i64(d)), "float32"))
        kt = T.arg("kt", T.buffer((_i64(b), _i64(d), _i64(n)), precision.dtype))
        v = T.arg("v", T.buffer((_i64(b), _i64(n), _i64(dv)), precision.dtype))
        mask = None
        if mask_batch is not None:
            mask = T.arg("mask", T.buffer((_i64(mask_batch), _i64(m), _i64(n)), "float32"))
        out = T.arg("out", T.buffer((_i64(b), _i64(rows), _i64(dv)), "float32"))
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        with T.sblock("root"), T.parallel(_i64(0), _i64(b * (rows // tile))) as t:
            kernel = _Tile(precision, tile, width, min(n if keys is None else keys, width), scale)
            kernel.emit(t, first, rows // tile, q, kt, v, mask, mask_batch not in (None, 1), out)
    return ib.get()


class _Tile:
    """One tile of `rows` queries over `width` keys (the first `real` of them real), emitted
    stage by stage into the IRBuilder frame it is built in (module docstring)."""

    def __init__(self, precision: Precision, rows: int, width: int, real: int, scale: float) -> None:
        from tvm.tirx.script.builder import ir as T

        self.p, self.rows, self.width, self.real, self.scale = precision, rows, width, real, scale
        self.logits = T.alloc_buffer((_i64(rows), _i64(width)), precision.dtype, scope="global")
        self.words = T.alloc_buffer((_i64(rows), _i64(width)), precision.word, scope="global")  # weights
        self.top = T.alloc_buffer((_i64(rows),), precision.dtype, scope="global")
        self.sums = T.alloc_buffer((_i64(rows),), "float32", scope="global")
        self.lane = T.alloc_buffer((_i64(precision.lanes),), precision.dtype, scope="global")
        self.pair = T.alloc_buffer((_i64(precision.lanes),), "float32", scope="global")

    def emit(
        self, t: Any, first: int, tiles: int, q: Any, kt: Any, v: Any, mask: Any, per_batch: bool, out: Any
    ) -> None:
        from tvm.tirx.script.builder import ir as T

        z, row0 = t // _i64(tiles), (t % _i64(tiles)) * _i64(self.rows)  # row0: of this block
        queries = [
            T.alloc_buffer((_i64(int(q.shape[2])),), self.p.word, scope="global") for _ in range(self.rows)
        ]
        total = T.alloc_buffer((_i64(self.rows), _i64(int(v.shape[2]))), "float32", scope="global")
        self.queries(queries, q, z, _i64(first) + row0)
        masked = None if mask is None else (mask, z if per_batch else _i64(0), _i64(first) + row0)
        step = SCORE_VECTORS * self.p.lanes
        with T.serial(_i64(0), _i64(self.width // step)) as jb:
            self.scores(jb * _i64(step), SCORE_VECTORS, queries, kt, z, masked)
        for c in range(self.width % step // self.p.lanes):
            self.scores(_i64(self.width - self.width % step + c * self.p.lanes), 1, queries, kt, z, masked)
        for r in range(self.rows):
            self.weights(r)
        self.weighted_sum(total, v, z)
        self.finish(total, out, z, row0, masked is not None)

    def queries(self, queries: list[Any], q: Any, z: Any, row: Any) -> None:
        """1. the tile's queries times the scale, in the kernel's dtype (words to broadcast)."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        for r, buf in enumerate(queries):
            with T.vectorized(_i64(0), _i64(int(q.shape[2]))) as k:
                value = tirx.Cast(self.p.dtype, q[z, row + _i64(r), k] * tirx.const(self.scale, "float32"))
                T.buffer_store(buf, _doubled(value) if self.p.doubled else value, [k])

    def scores(self, col: Any, vectors: int, queries: list[Any], kt: Any, z: Any, masked: Any) -> None:
        """2. `vectors` registers of logits from key `col`: rows x vectors accumulators over the
        head dim, plus the mask."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        lanes, vec = self.p.lanes, self.p.vector
        acc = [
            T.alloc_buffer((_i64(self.rows), _i64(lanes)), self.p.dtype, scope="global")
            for _ in range(vectors)
        ]
        for c, r in _grid(vectors, self.rows):
            T.buffer_store(acc[c], _splat(0.0, self.p.dtype, lanes), [_i64(r), _ramp(0, lanes)])
        with T.serial(_i64(0), _i64(int(kt.shape[1]))) as k:
            keys = [kt.vload([z, k, col + _i64(c * lanes)], dtype=vec) for c in range(vectors)]
            for r in range(self.rows):
                query = self._broadcast(queries[r][k])
                for c in range(vectors):
                    now = acc[c].vload([_i64(r), _i64(0)], dtype=vec)
                    T.buffer_store(acc[c], now + query * keys[c], [_i64(r), _ramp(0, lanes)])
        for c, r in _grid(vectors, self.rows):
            start = col + _i64(c * lanes)
            value = acc[c].vload([_i64(r), _i64(0)], dtype=vec)
            if masked is not None:
                mask, mz, row = masked
                value = value + tirx.Cast(
                    vec, mask.vload([mz, row + _i64(r), start], dtype=f"float32x{lanes}")
                )
            T.buffer_store(self.logits, value, [_i64(r), tirx.Ramp(start, _i64(1), lanes)])

    def weights(self, r: int) -> None:
        """3. row `r`'s maximum (padded keys excluded), its weights `exp(logit - max)` and their
        sum: the weights' own rounding included, so that they sum to what divides them."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        lanes, vec, f32 = self.p.lanes, self.p.vector, f"float32x{self.p.lanes}"
        with T.serial(_i64(self.real), _i64(self.width)) as j:  # padded keys: no weight
            T.buffer_store(self.logits, tirx.const(-math.inf, self.p.dtype), [_i64(r), j])
        T.buffer_store(self.lane, _splat(-math.inf, self.p.dtype, lanes), [_ramp(0, lanes)])
        with T.serial(_i64(0), _i64(self.width // lanes)) as j:
            now = self.logits.vload([_i64(r), j * _i64(lanes)], dtype=vec)
            T.buffer_store(self.lane, tirx.max(self.lane.vload([_i64(0)], dtype=vec), now), [_ramp(0, lanes)])
        T.buffer_store(self.top, _across(self.lane.vload([_i64(0)], dtype=vec), lanes, tirx.max), [_i64(r)])
        T.buffer_store(self.pair, _splat(0.0, "float32", lanes), [_ramp(0, lanes)])
        with T.serial(_i64(0), _i64(self.width // (2 * lanes))) as j:  # two registers a step
            both = self._weight(r, j * _i64(2 * lanes)) + self._weight(r, j * _i64(2 * lanes) + _i64(lanes))
            T.buffer_store(
                self.pair, self.pair.vload([_i64(0)], dtype=f32) + tirx.Cast(f32, both), [_ramp(0, lanes)]
            )
        if self.width % (2 * lanes):
            last = self._weight(r, _i64(self.width - lanes))
            T.buffer_store(
                self.pair, self.pair.vload([_i64(0)], dtype=f32) + tirx.Cast(f32, last), [_ramp(0, lanes)]
            )
        add = lambda a, b: a + b  # noqa: E731
        T.buffer_store(self.sums, _across(self.pair.vload([_i64(0)], dtype=f32), lanes, add), [_i64(r)])

    def _weight(self, r: int, col: Any) -> Any:
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        lanes = self.p.lanes
        x = self.logits.vload([_i64(r), col], dtype=self.p.vector) - tirx.Broadcast(self.top[_i64(r)], lanes)
        weight = _exp16(x, lanes) if self.p.dtype == "float16" else _exp32(x, lanes)
        stored = _doubled(weight, lanes) if self.p.doubled else weight
        T.buffer_store(self.words, stored, [_i64(r), tirx.Ramp(col, _i64(1), lanes)])
        return weight

    def weighted_sum(self, total: Any, v: Any, z: Any) -> None:
        """4. the weights times V, two registers of V at a time: `dtype` accumulators over
        `chunk` keys, each chunk's sum added into the float32 `total`."""
        from tvm.tirx.script.builder import ir as T

        lanes, dv = self.p.lanes, int(v.shape[2])
        for c, r in _grid(dv // lanes, self.rows):
            T.buffer_store(total, _splat(0.0, "float32", lanes), [_i64(r), _ramp(c * lanes, lanes)])
        chunk = min(self.p.chunk, self.width)
        for group in range(0, dv // lanes, 2):
            vectors = min(2, dv // lanes - group)
            streams = 2 // vectors  # one V register: two keys at once, for 16 accumulators
            acc = [
                [
                    T.alloc_buffer((_i64(self.rows), _i64(lanes)), self.p.dtype, scope="global")
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

        lanes, vec, f32 = self.p.lanes, self.p.vector, f"float32x{self.p.lanes}"
        streams, vectors = len(acc), len(acc[0])
        for s, c, r in _grid3(streams, vectors, self.rows):
            T.buffer_store(acc[s][c], _splat(0.0, self.p.dtype, lanes), [_i64(r), _ramp(0, lanes)])
        with T.serial(_i64(0), _i64(count // streams)) as jj:
            for s in range(streams):
                j = start + jj * _i64(streams) + _i64(s)
                values = [v.vload([z, j, _i64((group + c) * lanes)], dtype=vec) for c in range(vectors)]
                for r in range(self.rows):
                    weight = self._broadcast(self.words[_i64(r), j])
                    for c in range(vectors):
                        now = acc[s][c].vload([_i64(r), _i64(0)], dtype=vec)
                        T.buffer_store(acc[s][c], now + weight * values[c], [_i64(r), _ramp(0, lanes)])
        for c, r in _grid(vectors, self.rows):
            part = acc[0][c].vload([_i64(r), _i64(0)], dtype=vec)
            for s in range(1, streams):
                part = part + acc[s][c].vload([_i64(r), _i64(0)], dtype=vec)
            col = (group + c) * lanes
            now = total.vload([_i64(r), _i64(col)], dtype=f32)
            T.buffer_store(total, now + tirx.Cast(f32, part), [_i64(r), _ramp(col, lanes)])

    def finish(self, total: Any, out: Any, z: Any, row0: Any, masked: bool) -> None:
        """5. the sums divided by the row sums; a row masked whole (maximum -inf) gives zeros."""
        from tvm import tirx
        from tvm.tirx.script.builder import ir as T

        for r in range(self.rows):
            with T.vectorized(_i64(0), _i64(int(total.shape[1]))) as c:
                value = total[_i64(r), c] / self.sums[_i64(r)]
                if masked:
                    seen = self.top[_i64(r)] > tirx.const(-math.inf, self.p.dtype)
                    value = tirx.Select(seen, value, tirx.const(0.0, "float32"))
                T.buffer_store(out, value, [z, row0 + _i64(r), c])

    def _broadcast(self, word: Any) -> Any:
        """A register filled with one stored value: a 32-bit broadcast (a load, no shuffle)."""
        from tvm import tirx

        if self.p.doubled:
            return tirx.reinterpret(self.p.vector, tirx.Broadcast(word, self.p.lanes // 2))
        return tirx.Broadcast(word, self.p.lanes)


def _doubled(value: Any, lanes: int = 1) -> Any:
    """A float16 scalar (or vector) as 32-bit words holding it twice: broadcast as 32 bits, the
    word fills a register with the value."""
    from tvm import tirx

    u16, u32 = ("uint16", "uint32") if lanes == 1 else (f"uint16x{lanes}", f"uint32x{lanes}")
    bits = tirx.Cast(u32, tirx.reinterpret(u16, value))
    factor = tirx.const(0x10001, "uint32")
    return bits * (factor if lanes == 1 else tirx.Broadcast(factor, lanes))


def _exp16(x: Any, lanes: int) -> Any:
    """exp(x) for x <= 0 in float16 lanes: 2^n * p(r), x = n ln2 + r, with ln2 split in two so
    that n * ln2 loses nothing, p the degree-4 Taylor polynomial (4e-5 at |r| <= ln2 / 2, under
    float16's rounding); from `_EXP16_FLOOR` down (and for -inf) exactly zero, so that keys a
    mask hides add nothing, as in float32."""
    return _exp(
        x,
        lanes,
        "float16",
        _EXP16_FLOOR,
        (_LN2_HI, _LN2 - _LN2_HI),
        4,
        "llvm.x86.avx512fp16.mask.scalef.ph.512",
    )


def _exp32(x: Any, lanes: int) -> Any:
    """exp(x) for x <= 0 in float32 lanes: as `_exp16` with a degree-6 polynomial (relative
    error 3e-8 at |r| <= ln2 / 2) and ln2 in two parts of float32."""
    hi = 0.693359375  # 9 significant bits: n * hi is exact in float32 for |n| < 2**15
    return _exp(x, lanes, "float32", _EXP32_FLOOR, (hi, _LN2 - hi), 6, "llvm.x86.avx512.mask.scalef.ps.512")


def _exp(
    x: Any, lanes: int, dtype: str, floor: float, ln2: tuple[float, float], degree: int, scalef: str
) -> Any:
    from tvm import tirx

    def c(value: float) -> Any:
        return tirx.Broadcast(tirx.const(value, dtype), lanes)

    x = tirx.max(x, c(floor))
    n = tirx.floor(x * c(_LOG2E) + c(0.5))
    r = x - n * c(ln2[0])
    r = r - n * c(ln2[1])
    p = c(1 / math.factorial(degree))
    for k in range(degree - 1, -1, -1):
        p = p * r + c(1 / math.factorial(k))
    return tirx.call_llvm_pure_intrin(  # p * 2^n in one `vscalef`
        f"{dtype}x{lanes}",
        scalef,
        p,
        n,
        p,
        tirx.const(-1, "int32" if lanes == 32 else "int16"),  # all lanes
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


def _grid(a: int, b: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(a) for j in range(b)]


def _grid3(a: int, b: int, c: int) -> list[tuple[int, int, int]]:
    return [(i, j, k) for i in range(a) for j in range(b) for k in range(c)]


def _ramp(start: int, lanes: int) -> Any:
    from tvm import tirx

    return tirx.Ramp(_i64(start), _i64(1), lanes)


def _i64(value: int) -> Any:
    from tvm import tirx

    return tirx.IntImm("int64", value)
