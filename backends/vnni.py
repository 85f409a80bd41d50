"""int8 GEMM and convolution with AVX-512 VNNI (`vpdpbusd`: 64 u8 x s8 multiply-adds per instruction).

`vpdpbusd` multiplies 4 unsigned bytes by 4 signed bytes and adds the four products to each of
16 int32 lanes. optkit's int8 matmuls (`linear_w8a8`) and int8 convolutions (`conv2d_w8a8`,
through im2col) use it as follows:

- activations shifted to unsigned, `xu = x + 128` (uint8; int16 on AVX2, below), in the kernel
  that quantizes them;
- the constant weight packed once at compile time as `Wv[N / 16, K / 4, 16, 4]`, so that for
  4 consecutive k the 16 output columns' bytes are one 64-byte register;
- `y = xu @ w - 128 * colsum(w)`: the correction is the accumulators' starting value (`offset`),
  so no elementwise pass over y is left for it.

The kernel is written directly in TIR (`gemm_func`), built with TVM's IR builder; it is not a
schedule plus `tensorize` (with apache-tvm-ffi 0.1.15.x `tensorize` crashed in
`ffi::ToJSONGraph`, the serializer bug that also kept MetaSchedule out; see `tuning.py`). A
parallel loop runs over register tiles of `rows x panels` int32 accumulators (a panel: 16
output columns). Per 4 k a tile loads one 64-byte weight register per panel and broadcasts 4
activation bytes per row straight from memory (`vpbroadcastd zmm, m32`: a load, not a port-5
shuffle), then issues `rows * panels` `vpdpbusd`. `choose_tile` picks the tile per shape from
a cost model fitted to measurements (up to 24 accumulators in 31 zmm registers: 4x6 and 6x4
for wide N, 7x3 for M = 49, 10x2 for N = 32); tiles that do not divide M or N / 16 overlap the
one before rather than shrinking (M = 49, 196, 200 keep 7-, 4- and 5-row tiles), and a last
panel past N stores lane by lane, so the padded columns need no slice. Tiles run down M over
the same weight panels while those fit L1, else across N (long K).

The accumulators are per-panel buffers in `global` scope under TVM's 1 KiB stack limit: a
`local` buffer in a parallel loop becomes a `TVMBackendAllocWorkspace` / free pair per tile,
which in the previous kernel (`rows x 16` tiles, rows the first of 8, 4, 2, 1 dividing M) cost
more than the tile's work when K is short.

Measured alone on one thread of an Intel Xeon (emeraldrapids, AVX-512 VNNI, no AMX; shared
2-core machine, load average ~1.9; int8 dot-product peak ~720 GOP/s), old kernel -> this one,
M x K x N, median of 30 interleaved rounds: 128x192x768 184 -> 540 GOP/s, 512x128x352
138 -> 498, 49x576x96 46 -> 505, 256x512x2048 252 -> 524 (that shape varies 350-650 from run
to run here), 196x1152x192 209 -> 476, 784x72x32 113 -> 469. End to end (TVM, 1 thread, same
run): dit:small int8 runs 2.2x faster than float (1.4x with the old kernel), moviegen:small
1.44x (1.02x); W8A8 MobileNetV2 stayed slower than float (0.59x, from 0.46x), its time being
in the int32 depthwise convs; since those compute in exact float32 on the NHWC depthwise kernel
(`quantized.py`) and the int8 convs run NHWC, it is 1.36x faster than float (batch 8,
`bench_families`). Used when the llvm target reports `avx512vnni`.

On AVX2 CPUs without VNNI (`U8S16`, `int8_arith`; an AMD EPYC `znver3` in session 24) the same
kernel runs on `vpmaddwd`, which multiplies 16 pairs of int16 and adds each pair into one of 8
int32 lanes: the weight is packed as int16 (`madd_pack`: per 4 k of a panel, four 32-byte
registers, one per pair of k and half panel), the activations are held as int16 too (their
shifted values 0-255: `to_unsigned` writes them so, in the kernel that produces them), so that
each row's (k0, k1) and (k2, k3) pairs are one 4-byte word broadcast each, and per panel and
step 4 `vpmaddwd` and 4 `vpaddd` accumulate. It is exact: a product pair is at most
2 * 255 * 128 in magnitude. (`vpmaddubsw`, the u8 x s8 instruction ONNX Runtime's AVX2 kernels
use, saturates its int16 pair sums: on this CPU ONNX Runtime running optkit's own W8A8 ONNX of the model
families loses 4.5-25 dB of output SQNR against float that the same graph keeps with VNNI, and
that TVM's exact kernel keeps here; `docs/benchmarks.md`.) Until session 29 the activations were
uint8 and each row's 4 bytes were split into the two pairs by two `vpshufb` per row and step:
with 4 `vpmaddwd` and 4 `vpaddd` per row and step, 10 vector instructions where 8 now, on a
core that issues about 3.2 of them per cycle (`vpmaddwd` + `vpaddd` in registers: 1.62 pairs a
cycle, 166 GOP/s on one znver3 core at 3.2 GHz). Measured alone on that core (1 thread), GOP/s,
uint8 -> int16 activations: 392 x 576 x 96 125 -> 146, 128 x 320 x 1280 127 -> 153,
128 x 960 x 320 126 -> 151, 1568 x 32 x 192 118 -> 140 (`peaks.py`'s `vpmaddwd` kernel: 153);
W8A8 models, artifacts of the two timed in one process, bit-identical: ResNet-18 0.81x,
MobileNetV2 0.90x, ViT-Tiny 0.86x, the 64-token Llama decoder 0.83x the time (the activations'
bytes double, and a depthwise conv that writes them is slower: MobileNetV2's 3.6 -> 4.2 ms of
its 16 ms). AVX2 has 16 ymm registers, and a 16-column panel takes two: `choose_tile(width=8)`
counts them (6 x 1 float and 4 x 1 int8 tiles for large shapes).

Weights of 7 bits (`ptq`'s `wbits=7`: every value in [-64, 64]) run on AVX2 as `U8S7`
(`for_weight` chooses it per weight, where `U8S16` would run): uint8 activations and the int8
weight packed as for VNNI, per panel and step two 32-byte weight registers, per row one 4-byte
broadcast, and per half panel `vpmaddubsw` (u8 x s8 products summed in pairs into int16 lanes),
`vpmaddwd` by ones (the pairs into int32) and `vpaddd`: 6 vector instructions per row and
panel for 64 products where `U8S16` issues 8 and 2 broadcasts. `vpmaddubsw` saturates its pair
sums at int16, which is why ONNX Runtime's AVX2 kernels lose accuracy on 8-bit weights; with
|w| <= 64 a pair sum is at most 2 * 255 * 64 = 32640, so `U8S7` is exact (the same bound as
ONNX Runtime's `reduce_range`). Alone on one znver3 core, GOP/s, `U8S16` -> `U8S7` (4 x 1 tiles
both; 5 x 1 and 6 x 1 ran 2-17% slower): 392 x 576 x 96 151 -> 194, 128 x 320 x 1280 155 ->
192, 128 x 960 x 320 151 -> 192, 1568 x 32 x 192 142 -> 185, where `peaks.py` measures the
triple at 190 (`avx2-maddubs`) and the pair at 155 (`avx2-madd`).

The same tile kernel runs float32 (`Arith` `F32`, used for float Linears when the target reports
`avx512f`, `packing._fma_matmul`; `F32_AVX2` with AVX2 and FMA3, two `vfmadd231ps` per
panel): the weight packed `[N / 16, K, 16, 1]`, one row value
broadcast per row and k, one `vfmadd231ps` per row and panel. TVM's schedule of the packed
float kernel keeps its accumulators in one buffer, which TVM's 1 KiB stack limit caps at 16
registers (8 x 32); per-panel buffers hold 24. With rows inner, each row tile also prefetches
its share of the next tile column's weight lines (`PREFETCH_LOCALITY`), so that weights
streamed from memory (a model's weights are used once per call and seldom stay in L2) arrive
while the current column computes, not when the next column's first row tile stalls on them.
On eight chained 64-token Llama MLP GEMMs (64 x 512 x 1408 and back, 23 MB of float32 weights,
1 thread, emeraldrapids): the scheduled kernel 1.17x ONNX Runtime's time, this kernel without
the prefetch 1.01x, with it 0.87x; the W8A8 Llama decoder at 64 tokens 2-6% faster with it
(two runs).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from optkit.backends.parallel_loops import loop_kind, parallel

from optkit.errors import BackendError
from optkit.quant.numerics import SEVEN_BIT_BOUND

LANES, GROUP = 16, 4  # int32 lanes per register, bytes per lane
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
VECTOR_REGISTERS = 31  # of AVX-512's 32 zmm registers, one left to LLVM
AVX2_REGISTERS = 16  # ymm registers
MAX_PANELS = 8  # 16-column panels per tile
KERNEL_ATTR, GEMM_KERNEL = "optkit_kernel", "tile_gemm"  # marks the GEMM for `epilogues.py`
CONV_ATTR = "optkit_conv"  # a GEMM that reads a padded image in place: its `Conv` geometry
PAD_ATTR = "optkit_out_pad"  # a GEMM that writes a padded image: its `OutPad`
ARITH_ATTR = "optkit_arith"  # a GEMM's `Arith.key`
BATCH_ATTR = "optkit_batch"  # a batched GEMM's count of products (`gemm_func`'s `batch`)
PMADDWD = "llvm.x86.avx2.pmadd.wd"
PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
L1_WEIGHT_BYTES = 32 * 1024  # a tile column's weight panels up to this stay in L1 (48 KiB) across M
# an operand up to this is re-read from L2 (1 MiB on Zen 4, 2 MiB on Xeons since Sapphire Rapids)
L2_BYTES = 1024 * 1024
PREFETCH_LOCALITY = 3  # `llvm.prefetch` locality of the next tile column's weights: into L1


@dataclass(frozen=True)
class Arith:
    """What the tile kernel multiplies: `x` (activation) and `w` (weight) dtypes, the
    accumulators' dtype, `group`, the k values of x one step of the kernel reads per row (4
    bytes as one word for int8, 1 float), and `width`, the lanes of one hardware vector register
    (16: AVX-512, 8: AVX2; a 16-column panel is `LANES // width` registers). The packed weight is
    `[N / 16, K / group, 16, group]` (`pack`)."""

    x: str
    w: str
    acc: str
    group: int
    name: str  # the kernels' name prefix: `vnni_gemm`, `fma_conv`, ...
    width: int = LANES

    def kernel_name(self, conv: Any = None) -> str:
        """The name of a `gemm_func` kernel of this arithmetic, a GEMM or a conv read in place."""
        return f"{self.name}_{'conv' if conv is not None else 'gemm'}"

    @property
    def key(self) -> str:
        """How a kernel records its arithmetic (`ARITH_ATTR`): name and register bits."""
        return f"{self.name}{self.width * 32}"

    @property
    def bytes(self) -> int:
        """Bytes of one packed weight value."""
        return {"int8": 1, "int16": 2}.get(self.w, 4)

    @property
    def words_per_step(self) -> int:
        """4-byte words of one row's `group` activation values (2 for int16, else 1)."""
        return max(1, self.group * np.dtype(self.x).itemsize // 4)

    @property
    def weight_bound(self) -> int:
        """The largest |w| this kernel multiplies exactly: `SEVEN_BIT_BOUND` (64) for `U8S7`, else
        128 (all of int8)."""
        return SEVEN_BIT_BOUND if self.name == "maddubs" else 128

    @property
    def vectors(self) -> int:
        """Hardware registers per 16-column panel of accumulators."""
        return LANES // self.width

    def pack(self, w: np.ndarray) -> np.ndarray:
        """`W[K, N]` (N a multiple of 16) as this kernel reads it (`pack`; for `pmaddwd`,
        `madd_pack`)."""
        return madd_pack(w) if self.w == "int16" else pack(w, self.group)

    @classmethod
    def of(cls, func: Any) -> Arith:
        """The arithmetic a `gemm_func` kernel was built with."""
        attrs = func.attrs
        if attrs is not None and ARITH_ATTR in attrs:
            return ARITHS[str(attrs[ARITH_ATTR])]
        return F32 if str(func.params[0].dtype) == "float32" else U8S8


U8S8 = Arith("uint8", "int8", "int32", GROUP, "vnni")  # VNNI: u8 x s8 -> s32
F32 = Arith("float32", "float32", "float32", 1, "fma")  # AVX-512F: `vfmadd231ps` with a broadcast row value
# AVX2 without VNNI: u8 and s8 widened to s16, `vpmaddwd` (pairs of s16 products summed into s32,
# exact: |255 * -128 * 2| fits) and `vpaddd`; activations (0-255) and weights stored as int16
U8S16 = Arith("int16", "int16", "int32", GROUP, "madd", 8)
# AVX2 with weights of at most 7 bits (|w| <= 64): u8 x s8 `vpmaddubsw` (pair sums in int16, which
# cannot saturate), `vpmaddwd` by ones (the 4 products of a lane in int32), `vpaddd`
U8S7 = Arith("uint8", "int8", "int32", GROUP, "maddubs", 8)
F32_AVX2 = Arith("float32", "float32", "float32", 1, "fma", 8)  # AVX2 + FMA3: two `vfmadd231ps` per panel
ARITHS = {a.key: a for a in (U8S8, F32, U8S16, U8S7, F32_AVX2)}


def int8_arith(target: Any) -> Arith | None:
    """The int8 tile arithmetic the llvm target's CPU runs: VNNI, else `pmaddwd` on AVX2, else
    None (the scheduled kernels). On AVX2, `for_weight` moves a 7-bit weight to `U8S7`."""
    if target_has_vnni(target):
        return U8S8
    return U8S16 if _has_feature("avx2", target) else None


def for_weight(arith: Arith | None, w: np.ndarray) -> Arith | None:
    """`arith`, or for AVX2's `U8S16` and an int8 weight whose values all lie in [-64, 64] (7-bit
    weights: `ptq`'s `wbits=7`), `U8S7`, which is exact on such weights and issues fewer
    instructions per product."""
    if arith != U8S16 or w.dtype != np.int8 or not w.size:
        return arith
    return U8S7 if int(np.abs(w.astype(np.int16)).max()) <= U8S7.weight_bound else arith


def float_arith(target: Any) -> Arith | None:
    """The float32 tile arithmetic the llvm target's CPU runs: AVX-512 FMAs, else AVX2 + FMA3,
    else None."""
    if target_has_avx512(target):
        return F32
    return F32_AVX2 if _has_feature("avx2", target) and _has_feature("fma", target) else None


@dataclass(frozen=True)
class Tile:
    """A register tile of the GEMM: `rows` x `panels` int32 accumulators of 16 lanes, and the
    order of the tiles: with `rows_inner`, the tiles of one column (the same weight panels) run
    one after another, so that the panels stay in L1 while the activation rows change."""

    rows: int
    panels: int
    rows_inner: bool = True

    @property
    def registers(self) -> int:
        """zmm registers in the inner loop: accumulators, one broadcast per row, one weight."""
        return self.rows * self.panels + self.rows + 1


def choose_tile(m: int, n: int, k: int, value_bytes: int = 1, even: bool = False, width: int = LANES) -> Tile:
    """The tile for `y[M, N] = xu[M, K] @ W`: the one of least modelled time that fits the
    registers.

    Per 4 k, a `rows` x `panels` tile issues `rows * panels` `vpdpbusd`, `rows` broadcast loads
    and `panels` 64-byte weight loads; measured on emeraldrapids, its time per tile tracks
    `rows * panels + rows + panels` (24 accumulators at ~90% of the register-only peak, 15 at
    ~60%). Tiles that do not divide M or N / 16 overlap the previous one (the last rows or panels
    are computed twice), so the model counts ceil(M / rows) * ceil(N / 16 / panels) tiles.
    Rows run inner while a tile column's weight panels fit L1, else panels run inner (long K:
    the activation rows stay in L1 and the weights stream from L2), unless the weights do not
    fit L2: then every tile row would stream all weights from L3 or memory, and rows run inner
    (the weights read once, the activations once per tile column) where that moves fewer bytes.
    Measured alone (emeraldrapids, 1 thread), panels inner -> rows inner: 128 x 4608 x 512 (a
    ResNet-18's last 3 x 3 convs at batch 8) 1.30 -> 0.84 ms, 16 x 4608 x 512 0.20 -> 0.12 ms,
    64 x 2048 x 2048 1.82 -> 0.80 ms, 512 x 1024 x 2048 3.96 -> 2.91 ms; 1024 x 1280 x 1280
    (neither fits) 4.94 vs 4.86 ms before the prefetch. In float32, a Llama down projection at
    512 tokens (512 x 1408 x 512, 2.75 MiB each of weights and activations) read its weights
    once per row tile with panels inner, and the decoder ran slower than on the scheduled
    kernel (111 -> 122 ms, artifacts timed in one process); with rows inner, faster (107.5 ->
    102.9 ms, another run). `value_bytes`: bytes per weight value (1 for int8, 2 for AVX2's int16,
    4 for float32); `even`: an even number of panels (a `Glu`'s pairs).

    `width` 8 (AVX2: 16 ymm registers, a panel two of them): the same count with each panel's
    accumulators and weight load doubled, `2 * rows * panels + rows + 2 * panels`, and tiles whose
    accumulators, weights and one broadcast fit 16 registers. Float32 on one core of an AMD EPYC
    (znver3, 95 GFLOP/s peak), GFLOP/s of rows x panels: 512 x 512 x 512 83 (6 x 1), 79 (4 x 1),
    57 (2 x 2), 62 (3 x 1), 31 (1 x 2); 49 x 576 x 96 59, 59, 59, 57, 43; the model's order. The
    int8 `vpmaddwd` step holds 4 weight registers per panel and 4 more for the activation pairs
    and products: 4 x 1 tiles. With uint8 activations and their shuffle masks, 6 x 1 spilled
    (ResNet-18's 3 x 3 convs at batch 8, GOP/s: 28 x 28 x 64 85 -> 97, 4 x 4 x 512 85 -> 123);
    with int16 ones 6 x 1 no longer spills, but W8A8 ResNet-18 ran 0.93x the time on 4 x 1 (its
    convs read in place keep a pixel offset per row) and MobileNetV2 within 1% (session 29).
    `U8S7` (1-byte weights, two registers per panel, a broadcast, the ones and two products)
    takes the same rule: 4 x 1, the fastest of 4, 5 and 6 rows measured alone."""
    nb = -(-n // LANES)
    vectors, registers = (1, VECTOR_REGISTERS) if width == LANES else (LANES // width, AVX2_REGISTERS)

    def fits(rows: int, panels: int) -> bool:
        if vectors == 1:  # accumulators, one broadcast per row, one weight
            return rows * panels + rows + 1 <= registers
        if value_bytes <= 2:  # int8 (`U8S16`, `U8S7`): as `vpmaddwd`'s 4 weight registers per panel, 4 more
            return vectors * panels * rows + 2 * vectors * panels + 4 <= registers
        return vectors * panels * (rows + 1) + 1 <= registers  # accumulators, weights, one broadcast

    _, panels, rows = min(
        (-(-m // rows) * -(-nb // panels) * (vectors * (rows * panels + panels) + rows), panels, rows)
        for panels in range(2 if even else 1, min(MAX_PANELS, nb) + 1, 2 if even else 1)
        for rows in range(1, min(m, registers) + 1)
        if fits(rows, panels)
    )
    x_bytes, w_bytes = m * k * value_bytes, k * n * value_bytes
    tiles_m, tiles_n = -(-m // rows), -(-nb // panels)
    in_l1 = panels * k * LANES * value_bytes <= L1_WEIGHT_BYTES
    if in_l1 and vectors > 1 and tiles_n > 1 and x_bytes > L2_BYTES:
        # AVX2's narrow tiles: rows inner would stream activations past L2 once per tile column
        # (an RGB stem's 25088 x 168 x 64 in float32: 22.7 ms rows inner, 1-panel tiles)
        return Tile(rows, panels, rows_inner=False)
    if in_l1 or w_bytes <= L2_BYTES:
        return Tile(rows, panels, rows_inner=in_l1)
    # weights past L2: rows inner read them once, and the activations once per tile column;
    # panels inner, the activations once and the weights once per row tile
    return Tile(rows, panels, rows_inner=x_bytes * tiles_n <= w_bytes * tiles_m)


def products(func: Any) -> int:
    """The GEMMs one `gemm_func` kernel computes (its `batch`; 1 for most)."""
    attrs = func.attrs
    return int(attrs[BATCH_ATTR]) if attrs is not None and BATCH_ATTR in attrs else 1


def target_has_vnni(target: Any) -> bool:
    """Whether the llvm target's CPU has AVX-512 VNNI."""
    return _has_feature("avx512vnni", target)


def target_has_avx512(target: Any) -> bool:
    """Whether the llvm target's CPU has AVX-512F (the FMA kernel's 16-lane float32 vectors)."""
    return _has_feature("avx512f", target)


def _has_feature(feature: str, target: Any) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # a non-x86 target or an LLVM that cannot answer: not there
        return False


def applies(k: int) -> bool:
    """Whether a K x N int8 weight fits the kernel: K a multiple of 4 (N is padded to 16)."""
    return k % GROUP == 0


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack(w: np.ndarray, group: int = GROUP) -> np.ndarray:
    """`W[K, N]` -> `Wv[N / 16, K / group, 16, group]` (int8, group 4; float32, group 1)."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k // group, group, n // LANES, LANES).transpose(2, 0, 3, 1))


def madd_pack(w: np.ndarray) -> np.ndarray:
    """int8 `W[K, N]` -> int16 `[N / 16, K / 4, 16, 4]` as `U8S16` reads it: for each 4 k of a
    panel, four 32-byte registers, one per pair of k (k0 k1, then k2 k3) and half of the panel
    (columns 0-7, then 8-15), each holding its 8 columns' two values side by side, which
    `vpmaddwd` multiplies by a row's pair of activations and sums."""
    k, n = w.shape
    half = LANES // 2
    pairs = w.astype(np.int16).reshape(k // GROUP, 2, 2, n // LANES, 2, half)  # k: (word, pair, e)
    return np.ascontiguousarray(
        pairs.transpose(3, 0, 1, 4, 5, 2).reshape(n // LANES, k // GROUP, LANES, GROUP)
    )


@dataclass(frozen=True)
class Epilogue:
    """Elementwise steps applied to each int32 result in the tile write-back (`epilogues.py`).

    `steps`: `("astype", dtype)`, `("round",)`, `(name,)` for a float32 unary op of
    `fast_math.UNARY_EXPRS` (GELU, SiLU, ...), `(op, operand, swapped)` for a binary `op` (add,
    subtract, multiply, divide, maximum, minimum) with parameter `operand` (an int: its index)
    or an immediate (a float), `swapped` when it is the left operand. `params`: (rows, cols) of each parameter, rows 1 or M, cols
    1 or N (a scalar, a per-column vector, a per-row column, a full matrix), and its dtype.
    `loads`: per parameter, None, or (zero, scale) for an int8 / uint8 parameter that the steps
    read dequantized, `(float32(p) - zero) * scale` (a residual kept as int8, `requant.py`)."""

    steps: tuple[tuple[Any, ...], ...]
    params: tuple[tuple[int, int, str], ...]
    dtype: str
    loads: tuple[tuple[float, float] | None, ...] = ()
    glu: Glu | None = None


@dataclass(frozen=True)
class Glu:
    """A GELU-gated linear unit (GEGLU) in the write-back: the GEMM's N columns are two halves,
    and the kernel stores `[M, N / 2]`, the ungated half times the GELU of the other (`gated`:
    0 or 1, which half goes through the GELU). `Epilogue.steps[:step]` run on each half first,
    reading per-column parameters at the half's own columns (0..N); the rest run on the product
    (parameters of N / 2 columns). The packed weight and offset interleave the halves' panels
    (first 0, second 0, first 1, ...: `interleave_panels`), so that one tile holds both halves
    of its output columns; tiles take an even number of panels."""

    step: int
    gated: int


def interleave_panels(packed: np.ndarray) -> np.ndarray:
    """A packed weight `[N / 16, ...]` or an offset `[N]` with the two halves' 16-column panels
    interleaved (`Glu`); N a multiple of 32."""
    panels = packed.reshape(packed.shape[0] // LANES, LANES) if packed.ndim == 1 else packed
    half = panels.shape[0] // 2
    order = np.stack([np.arange(half), np.arange(half, 2 * half)], axis=1).ravel()
    return np.ascontiguousarray(panels[order].reshape(packed.shape))


@dataclass(frozen=True)
class Conv:
    """A conv that the GEMM reads in place (implicit GEMM), instead of an im2col that writes the
    image KH x KW times over: W8A8 ResNet-18 (batch 8, 1 thread) 16.76 -> 15.94 ms, its 3 x 3
    convs at 28 x 28 x 64 0.75 ms each against 1.0 ms of GEMM and 0.40 ms of im2col; the
    diffusers UNet's W8A8 step 47.2 -> 45.7 ms. `x` is the padded NHWC uint8 image
    `[B, height, width, C4]`, and GEMM row `m` / column block `k` read pixel
    `(b, i * stride + ky, j * stride + kx)` of it (`m = (b * out_h + i) * out_w + j`, the K
    columns in im2col's order: kernel row, kernel column, channel). `attr` is how the kernel
    records it (`epilogues.py` rebuilds the kernel from it). With `runs` (float32 only), each
    kernel row's KW taps are one run of KW x C contiguous values of the NHWC row, read as one
    K loop of KW x C steps: an image of few channels (an RGB stem) without the im2col that
    `im2col_rows` writes, nor its padding of each run to 4 values. ResNet-18's float32 stem
    (7 x 7, stride 2, over 8 x 3 x 112 x 112; AVX2, AMD EPYC znver3, 1 thread): 7.6 ms of GEMM
    over 168 columns and 1.2 ms of `im2col_rows` -> 5.2 ms read in place; the model 87.6 ->
    84.6 ms, MobileNetV2 17.4 -> 17.1 ms (bit-identical)."""

    height: int
    width: int
    kh: int
    kw: int
    stride: tuple[int, int]
    out_h: int
    out_w: int
    runs: bool = False

    @property
    def attr(self) -> list[int]:
        return [
            self.height,
            self.width,
            self.kh,
            self.kw,
            *self.stride,
            self.out_h,
            self.out_w,
            int(self.runs),
        ]

    @classmethod
    def of(cls, func: Any) -> Conv | None:
        """The geometry a `gemm_func` kernel was built with, None for a plain GEMM."""
        attrs = func.attrs
        if attrs is None or CONV_ATTR not in attrs:
            return None
        h, w, kh, kw, sh, sw, oh, ow, runs = (int(v) for v in attrs[CONV_ATTR])
        return cls(h, w, kh, kw, (sh, sw), oh, ow, bool(runs))

    def gemm_shape(self, image: list[int]) -> tuple[int, int]:
        """(M, K) of the GEMM over the padded image of shape `image` ([B, H, W, C4])."""
        return image[0] * self.out_h * self.out_w, self.kh * self.kw * image[3]


@dataclass(frozen=True)
class OutPad:
    """A GEMM whose rows are the pixels of `[B, height, width]` images and whose result is the
    padded image `[B, top + height + bottom, left + width + right, N]`, `value` in the border:
    the next conv's input, written in the tile write-back instead of by a pad kernel that copies
    it (`epilogues.py`)."""

    height: int
    width: int
    top: int
    bottom: int
    left: int
    right: int
    value: float

    @property
    def attr(self) -> list[float]:
        return [self.height, self.width, self.top, self.bottom, self.left, self.right, self.value]

    @classmethod
    def of(cls, func: Any) -> OutPad | None:
        """The padding a `gemm_func` kernel writes, None for a plain [M, N] result."""
        attrs = func.attrs
        if attrs is None or PAD_ATTR not in attrs:
            return None
        h, w, top, bottom, left, right, value = (float(v) for v in attrs[PAD_ATTR])
        return cls(int(h), int(w), int(top), int(bottom), int(left), int(right), value)

    def image(self, m: int, n: int) -> tuple[int, int, int, int]:
        """The padded image's shape for M = B x height x width rows of N columns."""
        return (
            m // (self.height * self.width),
            self.top + self.height + self.bottom,
            self.left + self.width + self.right,
            n,
        )


def gemm_func(
    m: int,
    n: int,
    k: int,
    tile: Tile | None = None,
    *,
    offset: bool = False,
    conv: Conv | None = None,
    epilogue: Epilogue | None = None,
    out_pad: OutPad | None = None,
    arith: Arith = U8S8,
    batch: int = 1,
) -> Any:
    """The TIR kernel `y[M, N] (int32) = xu[M, K] (uint8) @ Wv (packed int8)` (`U8S16`: xu and
    Wv int16; `U8S7`: Wv's values within [-64, 64]), or with `arith` `F32`
    `y (float32) = x (float32) @ Wv (packed float32)`; with `offset`,
    `y = offset[N16] + xu @ Wv` (int32 `offset` a third input, before `y`). `Wv` and `offset`
    have N rounded up to a multiple of 16 (N16); the columns past N are not stored. With
    `epilogue`, its parameters are the next inputs and `y` (of its dtype) holds the epilogue's
    result: the requantization runs on the accumulators before the store, not as a pass over y.
    With `conv`, `xu` is the padded image that the GEMM reads in place (`Conv`); with `out_pad`,
    `y` is the padded image `OutPad` describes, its border written first. With the epilogue's
    `glu`, `y` is `[M, N / 2]` (`Glu`). With `batch` B > 1 it runs B independent GEMMs, `xu`
    `[B * M, K]`, `Wv` B packed weights one after another (`[B * N16 / 16, ...]`) and `y`
    `[B * M, N]` (no offset, epilogue, conv or padding: `winograd.py`'s 16 products).

    One parallel loop over `tile`s (default `choose_tile`); each keeps its `rows x panels`
    accumulators in registers over all of K (starting from `offset`), then stores them. Built with TVM's IR builder, as
    the tile's size sets how many accumulator buffers there are: one per panel, each under
    TVM's 1 KiB stack-allocation limit and in `global` scope, so that they live on the parallel
    task's stack (LLVM keeps them in registers) rather than in a workspace that TVM would
    allocate and free for every tile. Shapes and loops are int64, as Relax's. The kernel is
    opaque to `FuseOps` (`op_pattern` 8): fused into it, the requantizing epilogue did not join
    the tile write-back (this body has no blocks to compute it at) but ran after it over a
    workspace the size of the output, one more pass than a separate elementwise kernel once the
    whole epilogue could fuse (`reshapes.py`). Opaque, against out-elementwise-fusable, in one
    process, 1 thread: the diffusers UNet's W8A8 step 0.96x, ViT-Tiny 0.97x, the Llama-style
    decoder 0.99x, MobileNetV2 1.00x.
    """
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    group = arith.group
    if m < 1 or n < 1 or k < group or k % group:
        raise BackendError(f"the tile GEMM needs M, N >= 1 and K a multiple of {group}, got {m}x{n}x{k}")
    if batch > 1 and (offset or conv is not None or epilogue is not None or out_pad is not None):
        raise BackendError("a batched tile GEMM takes no offset, conv geometry, epilogue or output padding")
    glu = epilogue.glu if epilogue is not None else None
    if glu is not None and (n % (2 * LANES) or out_pad is not None or (tile and tile.panels % 2)):
        raise BackendError(f"a GLU write-back needs N a multiple of 32, an even tile, no padding; N = {n}")
    tile = tile or choose_tile(m, n, k, arith.bytes, even=glu is not None, width=arith.width)
    nb, kb = -(-n // LANES), k // group
    rows, panels = min(tile.rows, m), min(tile.panels, nb)
    tiles_m, tiles_n = -(-m // rows), -(-nb // panels)

    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name(arith.name + "_gemm")
        image: tuple[int, ...] = (batch * m, k)
        if conv is not None:
            image = (m // (conv.out_h * conv.out_w), conv.height, conv.width, k // (conv.kh * conv.kw))
        x = T.arg("x", T.buffer(tuple(_i64(d) for d in image), arith.x))
        w = T.arg("w", T.buffer((_i64(batch * nb), _i64(kb), LANES, group), arith.w))
        c = T.arg("offset", T.buffer((_i64(nb * LANES),), arith.acc)) if offset else None
        params = [
            T.arg(f"p{i}", T.buffer((_i64(r), _i64(cols)), dtype))
            for i, (r, cols, dtype) in enumerate(epilogue.params if epilogue else ())
        ]
        dtype = epilogue.dtype if epilogue else arith.acc
        y_shape = out_pad.image(m, n) if out_pad is not None else (batch * m, n // 2 if glu else n)
        y = T.arg("y", T.buffer(tuple(_i64(d) for d in y_shape), dtype))
        attrs: dict[str, Any] = {
            "tirx.noalias": True,
            "tirx.is_scheduled": True,
            "op_pattern": 8,
            KERNEL_ATTR: GEMM_KERNEL,
            ARITH_ATTR: arith.key,
        }
        if conv is not None:
            attrs[CONV_ATTR] = conv.attr
        if out_pad is not None:
            attrs[PAD_ATTR] = out_pad.attr
        if batch > 1:
            attrs[BATCH_ATTR] = batch
        T.func_attr(attrs)
        # a small GEMM runs on the calling thread (`parallel_loops`)
        nbytes = np.prod(image) * np.dtype(arith.x).itemsize + batch * nb * LANES * k * arith.bytes
        loop = loop_kind(2.0 * batch * m * n * k, nbytes + batch * m * n * np.dtype(dtype).itemsize)
        with T.sblock("root"):
            if out_pad is not None:
                y = _padded_rows(y, out_pad, n, loop)
            # a row's (a pixel's channels') k values by accumulator step: 4 bytes as one word
            # (int8), or 2 words of 2 int16 (`U8S16`)
            per = arith.words_per_step
            words = (_i64(int(np.prod(image)) * per // group),)
            x4 = T.decl_buffer(words, "int32" if group > 1 else arith.x, data=x.data)
            source = _Rows(x4, kb, per) if conv is None else _Image(x4, conv, kb // (conv.kh * conv.kw), per)
            with loop(_i64(0), _i64(batch * tiles_m * tiles_n)) as bt:
                # a batched GEMM's product: its first row of x and y, and its weights
                first, w_first, t = _i64(0), None, bt
                if batch > 1:
                    product, t = bt // _i64(tiles_m * tiles_n), bt % _i64(tiles_m * tiles_n)
                    first, w_first = product * _i64(m), (product * _i64(nb), nb)
                if tile.rows_inner:
                    tm, tn = t % _i64(tiles_m), t // _i64(tiles_m)
                else:
                    tm, tn = t // _i64(tiles_n), t % _i64(tiles_n)
                # the last tile of a column or row overlaps the one before instead of running off
                row = T.min(tm * _i64(rows), _i64(m - rows))
                panel = T.min(tn * _i64(panels), _i64(nb - panels))
                rows_of = y if out_pad is not None else _Rows2d(y)
                ahead = None
                if tile.rows_inner and tiles_n > 1 and arith.vectors == 1:
                    # the next tile column's weights, spread over this column's row tiles: row
                    # tile tm fetches lines tm * K' / tiles_m ... of each of its panels. Not on
                    # AVX2, where a step's 12 FMAs leave no room for its index arithmetic (float
                    # 400 x 192 x 576 on znver3: 43 GFLOP/s with, 72 without; int8 alike)
                    def ahead(ko: Any, tm: Any = tm, panel: Any = panel) -> tuple[Any, Any]:
                        return panel + _i64(panels), (tm * _i64(kb) + ko) // _i64(tiles_m)

                place = (first + row, panel, rows, panels)
                finish = _Finisher(epilogue, params, arith, n // 2)
                _tile_body(source, w, c, rows_of, place, arith, finish, ahead, w_first)
    return ib.get()


class _Finisher:
    """`finish(values, row, col, lanes)`: the epilogue applied to accumulators (vectors of `lanes`
    from output column `col` on, or scalars), reading its parameters at (row, col): one value,
    or with a `Glu` the two halves' (`per` = 2), the first half's at `col`, the second's at
    `half + col`."""

    def __init__(self, epilogue: Epilogue | None, params: list[Any], arith: Arith, half: int) -> None:
        self.epilogue, self.params, self.arith, self.half = epilogue, params, arith, half
        self.glu = epilogue.glu if epilogue is not None else None
        self.per = 1 if self.glu is None else 2

    def __call__(self, values: list[Any], row: Any, col: Any, lanes: int) -> Any:
        if self.epilogue is None:
            return values[0]
        steps, acc = self.epilogue.steps, self.arith.acc
        if self.glu is None:
            return self._run(steps, values[0], row, col, lanes, acc)[0]
        from optkit.backends.fast_math import gelu_expr

        cut = self.glu.step
        (a, dtype), (b, _) = (
            self._run(steps[:cut], v, row, col + _i64(i * self.half), lanes, acc)
            for i, v in enumerate(values)
        )
        gate, plain = (b, a) if self.glu.gated else (a, b)
        return self._run(steps[cut:], plain * gelu_expr(gate, lanes), row, col, lanes, dtype)[0]

    def _run(self, steps: Any, value: Any, row: Any, col: Any, lanes: int, dtype: str) -> tuple[Any, str]:
        from tvm import tirx

        epilogue, params = self.epilogue, self.params
        assert epilogue is not None
        for step in steps:
            if step[0] == "astype":
                dtype = step[1]
                value = tirx.Cast(dtype if lanes == 1 else f"{dtype}x{lanes}", value)
                continue
            if step[0] == "round":
                value = tirx.round(value)
                continue
            if len(step) == 1:  # a unary op of `fast_math.UNARY_EXPRS`
                from optkit.backends.fast_math import unary_expr

                value = unary_expr(step[0], value, lanes)
                continue
            op, i, swapped = step
            if isinstance(i, float):  # an immediate, of the value's type
                other = tirx.const(i if dtype.startswith("float") else int(i), dtype)
                other = tirx.Broadcast(other, lanes) if lanes > 1 else other
            else:
                rows, cols, stored = epilogue.params[i]
                r = row if rows > 1 else _i64(0)
                if cols > 1:
                    vector = f"{stored}x{lanes}"
                    other = params[i].vload([r, col], dtype=vector) if lanes > 1 else params[i][r, col]
                else:
                    other = params[i][r, _i64(0)]
                    other = tirx.Broadcast(other, lanes) if lanes > 1 else other
                load = epilogue.loads[i] if i < len(epilogue.loads) else None
                if load is not None:  # (float32(p) - zero) * scale, as Relax computed it
                    zero, scale = load
                    other = _dequantize(other, zero, scale, lanes)
            a, b = (other, value) if swapped else (value, other)
            value = _binary(op, a, b)
        return value, dtype


def _binary(op: str, a: Any, b: Any) -> Any:
    """`a op b` for an `Epilogue` step's binary op (`EPILOGUE_OPS`)."""
    from tvm import tirx

    if op == "add":
        return a + b
    if op == "subtract":
        return a - b
    if op == "multiply":
        return a * b
    if op == "divide":
        return a / b
    return tirx.max(a, b) if op == "maximum" else tirx.min(a, b)


def _dequantize(value: Any, zero: float, scale: float, lanes: int) -> Any:
    """`(float32(value) - zero) * scale` for an int8 / uint8 scalar or vector of `lanes`."""
    from tvm import tirx

    def const(v: float) -> Any:
        c = tirx.const(v, "float32")
        return tirx.Broadcast(c, lanes) if lanes > 1 else c

    return (tirx.Cast("float32" if lanes == 1 else f"float32x{lanes}", value) - const(zero)) * const(scale)


EPILOGUE_OPS = ("add", "subtract", "multiply", "divide", "maximum", "minimum")  # `Epilogue`'s binary ops


def _i64(value: int) -> Any:
    from tvm import tirx

    return tirx.IntImm("int64", value)


class _Rows:
    """GEMM operand `xu[M, K]`: row `m`'s step `k` in its `per` words from `(m * steps + k) * per`
    (`steps`: K / 4 for int8 and int16, K for float32). `k_loop` yields (k, word), `word(r, part)`
    the word `part` of row r of the tile at step k."""

    def __init__(self, x4: Any, steps: int, per: int = 1) -> None:
        self.x4, self.steps, self.per = x4, steps, per

    @contextmanager
    def k_loop(self, row: Any, _rows: int) -> Iterator[tuple[Any, Any]]:
        from tvm.tirx.script.builder import ir as T

        with T.serial(_i64(0), _i64(self.steps)) as ko:

            def word(r: int, part: int = 0) -> Any:
                at = (row + _i64(r)) * _i64(self.steps) + ko
                return self.x4[at if self.per == 1 else at * _i64(self.per) + _i64(part)]

            yield ko, word


class _Image:
    """A padded NHWC image read in place (`Conv`): each tile row's pixel offset is computed
    once per tile; the K loop runs over kernel rows, kernel columns and channel steps, so the
    words of tap (ky, kx) start at that offset + (ky * width + kx) * words per pixel + the
    channel step's first word (`per` words a step, as `_Rows`)."""

    def __init__(self, x4: Any, conv: Conv, steps: int, per: int = 1) -> None:
        self.x4, self.conv, self.steps, self.per = x4, conv, steps, per

    @contextmanager
    def k_loop(self, row: Any, rows: int) -> Iterator[tuple[Any, Any]]:
        from tvm.tirx.script.builder import ir as T

        g, cw, per = self.conv, _i64(self.steps * self.per), _i64(self.per)
        if g.runs and self.per != 1:
            raise BackendError("a conv read by kernel-row runs needs one value per step (float32)")
        bases = []
        for r in range(rows):
            m = row + _i64(r)
            b, pixel = m // _i64(g.out_h * g.out_w), m % _i64(g.out_h * g.out_w)
            i, j = pixel // _i64(g.out_w), pixel % _i64(g.out_w)
            top_left = (b * _i64(g.height) + i * _i64(g.stride[0])) * _i64(g.width) + j * _i64(g.stride[1])
            bases.append(T.Bind(top_left * cw))
        if g.runs:  # a kernel row's taps: KW x C values from the row's first tap on
            with T.serial(_i64(0), _i64(g.kh)) as ky, T.serial(_i64(0), _i64(g.kw * self.steps)) as step:
                tap = ky * _i64(g.width) * cw + step
                yield ky * _i64(g.kw * self.steps) + step, lambda r, part=0: self.x4[bases[r] + tap]
            return
        with (
            T.serial(_i64(0), _i64(g.kh)) as ky,
            T.serial(_i64(0), _i64(g.kw)) as kx,
            T.serial(_i64(0), _i64(self.steps)) as step,
        ):
            tap = (ky * _i64(g.width) + kx) * cw + (step if self.per == 1 else step * per)
            yield (
                (ky * _i64(g.kw) + kx) * _i64(self.steps) + step,
                lambda r, part=0: self.x4[bases[r] + tap + _i64(part) if part else bases[r] + tap],
            )


@dataclass(frozen=True)
class _Rows2d:
    """Where the write-back stores GEMM row m: row m of `buffer` ([M, N])."""

    buffer: Any

    def row(self, m: Any) -> Any:
        return m


@dataclass(frozen=True)
class _PaddedRows:
    """Where the write-back stores GEMM row m: its pixel's row of `buffer`, the padded image
    viewed as one row per padded pixel (`OutPad`)."""

    buffer: Any
    pad: OutPad

    def row(self, m: Any) -> Any:
        pad = self.pad
        plane, width = pad.height * pad.width, pad.left + pad.width + pad.right
        b, rest = m // _i64(plane), m % _i64(plane)
        i, j = rest // _i64(pad.width), rest % _i64(pad.width)
        return (
            (b * _i64(pad.top + pad.height + pad.bottom) + i + _i64(pad.top)) * _i64(width)
            + j
            + _i64(pad.left)
        )


def _padded_rows(y: Any, pad: OutPad, n: int, loop: Any) -> _PaddedRows:
    """Fill the border of the padded image `y` with `pad.value` (a `loop`, `T.parallel` or
    `T.serial` as the GEMM's, before it) and return its row view for the write-back."""
    from tvm import tirx
    from tvm.tirx.script.builder import ir as T

    batch, height, width, _ = (int(d) for d in y.shape)
    flat = T.decl_buffer((_i64(batch * height * width), _i64(n)), y.dtype, data=y.data)
    value = tirx.const(pad.value, y.dtype)
    with loop(_i64(0), _i64(batch * height)) as t:
        i = t % _i64(height)
        with T.serial(_i64(0), _i64(width)) as j:
            border = tirx.Or(
                tirx.Or(i < _i64(pad.top), i >= _i64(pad.top + pad.height)),
                tirx.Or(j < _i64(pad.left), j >= _i64(pad.left + pad.width)),
            )
            with T.If(border), T.Then(), T.serial(_i64(0), _i64(n)) as c:  # LLVM vectorizes the fill
                T.buffer_store(flat, value, [t * _i64(width) + j, c])
    return _PaddedRows(flat, pad)


def _tile_body(
    source: Any,
    w: Any,
    c: Any,
    y: Any,
    place: tuple[Any, Any, int, int],
    arith: Arith,
    finish: Any,
    ahead: Any = None,
    w_first: Any = None,
) -> None:
    """Emit one tile at `place` (first row, first panel, rows, panels): set the accumulators to 0
    or the offset `c`, one multiply-add per row and panel per step of k (`vpdpbusd` over 4 k, or
    an FMA), store `finish(accumulators)`. `ahead(ko)`, when given, is the (panel, k step) of
    the weights to prefetch at step `ko`: the first of `panels` panels, each one cache line.
    `w_first`: (the weight panel of output panel 0, panels per product) of a batched GEMM's
    product (default: panel 0 of the one product)."""
    from tvm import tirx
    from tvm.tirx.script.builder import ir as T

    row, panel, rows, panels = place
    lanes, vec = tirx.Ramp(_i64(0), _i64(1), LANES), f"{arith.acc}x{LANES}"
    acc = [T.alloc_buffer((_i64(rows), LANES), arith.acc, scope="global") for _ in range(panels)]
    zero = tirx.const(0, arith.acc)
    for p, r in itertools.product(range(panels), range(rows)):
        cols = tirx.Ramp((panel + _i64(p)) * _i64(LANES), _i64(1), LANES)
        start = tirx.Broadcast(zero, LANES) if c is None else c.vload([cols.base], dtype=vec)
        T.buffer_store(acc[p], start, [_i64(r), lanes])
    nb = int(w.shape[0])
    if w_first is None:
        w_first = _i64(0)
    else:
        w_first, nb = w_first
    with source.k_loop(row, rows) as (ko, word):
        if arith.w == "int16":
            _madd_step(w, acc, w_first + panel, ko, word, rows)
        elif arith == U8S7:
            _maddubs_step(w, acc, w_first + panel, ko, word, rows)
        else:
            _step(w, acc, w_first + panel, ko, word, rows, arith)
        if ahead is not None:
            nxt, step = ahead(ko)
            with T.If(nxt < _i64(nb)), T.Then():
                for p in range(panels):
                    line = tirx.address_of(
                        w[w_first + T.min(nxt + _i64(p), _i64(nb - 1)), step, _i64(0), _i64(0)]
                    )
                    flags = (tirx.IntImm("int32", v) for v in (0, PREFETCH_LOCALITY, 1))  # read, data
                    T.evaluate(tirx.call_intrin("void", "tirx.prefetch", line, *flags))
    n, per = int(y.buffer.shape[1]), finish.per
    for r, p in itertools.product(range(rows), range(0, panels, per)):
        # the output panel: a GLU's pair of accumulator panels stores one
        start = ((panel + _i64(p)) // _i64(per) if per > 1 else panel + _i64(p)) * _i64(LANES)
        cols = tirx.Ramp(start, _i64(1), LANES)
        values = [acc[p + i].vload([_i64(r), _i64(0)], dtype=vec) for i in range(per)]
        whole = finish(values, row + _i64(r), start, LANES)
        out = y.row(row + _i64(r))
        if n % LANES == 0:
            T.buffer_store(y.buffer, whole, [out, cols])
            continue
        with T.If(start + _i64(LANES) <= _i64(n)):  # a whole panel; the last one stores lane by lane
            with T.Then():
                T.buffer_store(y.buffer, whole, [out, cols])
            with T.Else():
                for lane in range(n % LANES):
                    col = start + _i64(lane)
                    lane_values = [acc[p + i][_i64(r), _i64(lane)] for i in range(per)]
                    T.buffer_store(y.buffer, finish(lane_values, row + _i64(r), col, 1), [out, col])


def _step(w: Any, acc: list[Any], panel: Any, ko: Any, word: Any, rows: int, arith: Arith) -> None:
    """One step of k of a `U8S8` tile (4 k, `vpdpbusd`) or an `F32` one (1 k, an FMA): one weight
    register per panel, used by all rows."""
    from tvm import tirx
    from tvm.tirx.script.builder import ir as T

    lanes, vec = tirx.Ramp(_i64(0), _i64(1), LANES), f"{arith.acc}x{LANES}"
    for p in range(len(acc)):
        b = w.vload([panel + _i64(p), ko, _i64(0), _i64(0)], dtype=f"{arith.w}x{LANES * arith.group}")
        for r in range(rows):
            old = acc[p].vload([_i64(r), _i64(0)], dtype=vec)
            if arith == U8S8:
                a = tirx.reinterpret(f"uint8x{LANES * GROUP}", tirx.Broadcast(word(r), LANES))
                new = tirx.call_llvm_pure_intrin(vec, VPDPBUSD, old, a, b)
            else:
                new = tirx.op.fma(tirx.Broadcast(word(r), LANES), b, old)
            T.buffer_store(acc[p], new, [_i64(r), lanes])


def _madd_step(w: Any, acc: list[Any], panel: Any, ko: Any, word: Any, rows: int) -> None:
    """One step of 4 k of a `U8S16` tile: per pair of k (k0 k1, then k2 k3), each row's pair of
    int16 activations, one word broadcast; per panel and half panel, one `vpmaddwd` with the
    weights (`madd_pack`) and one `vpaddd` into the accumulators."""
    from tvm import tirx
    from tvm.tirx.script.builder import ir as T

    half = LANES // 2
    quads = T.decl_buffer(
        (w.shape[0], w.shape[1], _i64(GROUP), _i64(LANES)), "int16", data=w.data
    )  # (pair, half) -> 8 columns x 2 values
    for pair, r in itertools.product(range(2), range(rows)):
        a = tirx.reinterpret("int16x16", tirx.Broadcast(word(r, pair), half))
        for p, q in itertools.product(range(len(acc)), range(2)):
            b = quads.vload([panel + _i64(p), ko, _i64(pair * 2 + q), _i64(0)], dtype="int16x16")
            old = acc[p].vload([_i64(r), _i64(q * half)], dtype=f"int32x{half}")
            product = tirx.call_llvm_pure_intrin(f"int32x{half}", PMADDWD, a, b)
            T.buffer_store(acc[p], old + product, [_i64(r), tirx.Ramp(_i64(q * half), _i64(1), half)])


def _maddubs_step(w: Any, acc: list[Any], panel: Any, ko: Any, word: Any, rows: int) -> None:
    """One step of 4 k of a `U8S7` tile: per panel and half panel, one 32-byte weight register
    (8 columns x 4 k, `pack`); per row, its 4 activation bytes broadcast, one `vpmaddubsw` (pairs
    of products summed into int16: exact for |w| <= 64), one `vpmaddwd` by ones (the pairs
    summed into int32) and one `vpaddd` into the accumulators."""
    from tvm import tirx
    from tvm.tirx.script.builder import ir as T

    half = LANES // 2
    ones = tirx.Broadcast(tirx.const(1, "int16"), LANES)
    for p, q in itertools.product(range(len(acc)), range(2)):
        b = w.vload([panel + _i64(p), ko, _i64(q * half), _i64(0)], dtype=f"int8x{half * GROUP}")
        for r in range(rows):
            a = tirx.reinterpret(f"uint8x{half * GROUP}", tirx.Broadcast(word(r), half))
            pairs = tirx.call_llvm_pure_intrin(f"int16x{LANES}", PMADDUBSW, a, b)
            old = acc[p].vload([_i64(r), _i64(q * half)], dtype=f"int32x{half}")
            product = tirx.call_llvm_pure_intrin(f"int32x{half}", PMADDWD, pairs, ones)
            T.buffer_store(acc[p], old + product, [_i64(r), tirx.Ramp(_i64(q * half), _i64(1), half)])


def to_unsigned(bb: Any, x: Any, arith: Arith | None = None) -> Any:
    """int8 -> uint8 by adding 128 (elementwise; fuses into the kernel that produced x), held in
    the activation dtype of the int8 `arith` (default uint8; `U8S16`: int16)."""
    from tvm import relax

    op = relax.op
    return bb.emit(
        op.astype(
            bb.emit(op.add(bb.emit(op.astype(x, "int32")), relax.const(128, "int32"))), _unsigned_dtype(arith)
        )
    )


def _unsigned_dtype(arith: Arith | None) -> str:
    """The dtype of the shifted int8 activations an int8 `arith` reads (uint8 by default)."""
    return arith.x if arith is not None and arith.acc == "int32" else "uint8"


def matmul(bb: Any, xu: Any, w: np.ndarray, conv: Conv | None = None, arith: Arith | None = None) -> Any:
    """Emit `xu[M, K] (uint8, int8 + 128) @ w[K, N] (int8) - 128 * colsum(w)` (int32) through
    the int8 tile kernel, or for a float32 `w`, `xu (float32) @ w` (float32) through the FMA
    kernel, of `arith` (default: AVX-512's, `U8S8` or `F32`); with `conv`, `xu` is a padded image
    that the kernel reads in place (`Conv`, `w` laid out by `conv_weight`). Returns the Relax
    expression."""
    from tvm import relax

    arith = arith or (F32 if w.dtype == np.float32 else U8S8)
    shape = [int(d) for d in xu.ty.shape]
    m, k = conv.gemm_shape(shape) if conv is not None else shape
    n = w.shape[1]
    n16 = _round_up(n, LANES)
    wide = np.concatenate([w, np.zeros((k, n16 - n), w.dtype)], axis=1) if n16 > n else w
    if arith.acc == "int32":  # the correction starts the accumulators: no elementwise pass over y for it
        offset = (-128 * wide.astype(np.int64).sum(axis=0)).astype(np.int32)
    else:  # zeros: a bias is a step of the epilogue (`epilogues.py`)
        offset = np.zeros(n16, np.float32)
    gvar = bb.add_func(gemm_func(m, n, k, offset=True, conv=conv, arith=arith), arith.kernel_name(conv))
    args = [xu, relax.const(arith.pack(wide)), relax.const(offset)]
    return relax.call_tir(gvar, args, relax.TensorType((m, n), arith.acc))


def im2col(
    bb: Any,
    x: Any,
    kh: int,
    kw: int,
    stride: list[int],
    dilation: list[int],
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    pad_value: int = 0,
) -> Any:
    """Emit `cols[B * OH * OW, KH * KW * C4]` from an NHWC `x[B, H, W, C]` (C4: C rounded up to a
    multiple of 4, the extra channels 0). Channels innermost, so each tap copies C contiguous
    bytes (vectorized). `pad` (top, left, bottom, right) pads the image with `pad_value` inside
    the copy, so no padded copy of x is written first. A kernel of its own, marked opaque so that
    `FuseOps` does not pull x's producers into it (each input element is read up to KH * KW
    times, and would be recomputed as often)."""
    from tvm import relax, te, tirx

    b, h, w, c = (int(d) for d in x.ty.shape)
    top, left, bottom, right = pad
    c4 = _round_up(c, GROUP)
    oh = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    src = te.placeholder((b, h, w, c), str(x.ty.dtype), name="x")

    def tap(n: Any, i: Any, j: Any, ky: Any, kx: Any, ch: Any) -> Any:
        row = i * stride[0] + ky * dilation[0] - top
        col = j * stride[1] + kx * dilation[1] - left
        if not any(pad):
            value = src[n, row, col, tirx.min(ch, c - 1)]
        else:  # clamped, so that the read stays inside x whichever branch the code runs
            inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
            clamped = src[
                n, tirx.max(tirx.min(row, h - 1), 0), tirx.max(tirx.min(col, w - 1), 0), tirx.min(ch, c - 1)
            ]
            value = tirx.if_then_else(inside, clamped, tirx.const(pad_value, src.dtype))
        return value if c4 == c else tirx.if_then_else(ch < c, value, tirx.const(0, src.dtype))

    cols = te.compute((b, oh, ow, kh, kw, c4), tap, name="im2col")
    func = _schedule_im2col(te.create_prim_func([src, cols]).without_attr("global_symbol"), c4)
    func = func.with_attr("op_pattern", 8)  # kOpaque
    gvar = bb.add_func(func, "im2col")
    out = bb.emit(relax.call_tir(gvar, [x], relax.TensorType([b, oh, ow, kh, kw, c4], str(x.ty.dtype))))
    return bb.emit(relax.op.reshape(out, (b * oh * ow, kh * kw * c4)))


def im2col_rows(
    bb: Any,
    x: Any,
    channels: int,
    kh: int,
    kw: int,
    stride: list[int],
    pad: tuple[int, int, int, int],
    pad_value: int,
) -> Any:
    """`im2col` for images with a channel count that is not a multiple of 4 (an RGB stem), at
    dilation 1: in NHWC, a kernel row's KW taps of C channels are KW * C contiguous bytes, so
    each (pixel, kernel row) copies that run, padded to a multiple of 4, as one vector instead
    of KW runs of C bytes each padded to 4. `x` is the image as `[B, H, W * C]` (`channels` = C:
    a view of NHWC, or `interleave_channels` of NCHW). Returns `cols[B * OH * OW, KH * T]` (T = KW * C
    rounded up to 4; `conv_weight_rows` lays the weight out to match). Measured on a 7 x 7,
    stride-2 stem over 8 x 3 x 112 x 112 (Intel Xeon, AVX-512 VNNI, 1 thread): this copy 0.40 ms
    and the VNNI GEMM over its 168 columns 0.81 ms, against 3.6 ms for the packed float32 conv
    (exact on the centered int8 values) that ran the stem before."""
    from tvm import relax, s_tir, te, tirx

    b, h, row_bytes = (int(d) for d in x.ty.shape)
    c, w = channels, row_bytes // channels
    top, left, bottom, right = pad
    span, t = kw * c, _round_up(kw * c, GROUP)
    oh = (h + top + bottom - kh) // stride[0] + 1
    ow = (w + left + right - kw) // stride[1] + 1
    src = te.placeholder((b, h, w * c), str(x.ty.dtype), name="x")

    def tap(n: Any, i: Any, j: Any, ky: Any, col: Any) -> Any:
        row = i * stride[0] + ky - top
        flat = (j * stride[1] - left) * c + col  # the byte in the image row: contiguous in col
        inside = tirx.all(col < span, row >= 0, row < h, flat >= 0, flat < w * c)
        clamped = src[n, tirx.max(tirx.min(row, h - 1), 0), tirx.max(tirx.min(flat, w * c - 1), 0)]
        return tirx.if_then_else(inside, clamped, tirx.const(pad_value, src.dtype))

    cols = te.compute((b, oh, ow, kh, t), tap, name="im2col")
    sch = s_tir.Schedule(te.create_prim_func([src, cols]).without_attr("global_symbol"))
    loops = sch.get_loops(sch.get_sblock("im2col"))
    parallel(sch, sch.fuse(loops[0], loops[1]))
    sch.vectorize(loops[4])
    func = sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)  # kOpaque
    gvar = bb.add_func(func, "im2col_rows")
    out = bb.emit(relax.call_tir(gvar, [x], relax.TensorType([b, oh, ow, kh, t], str(x.ty.dtype))))
    return bb.emit(relax.op.reshape(out, (b * oh * ow, kh * t)))


def interleave_channels(
    bb: Any,
    x: Any,
    arith: Arith | None = None,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    fill: float = 0,
    channels: int | None = None,
) -> Any:
    """int8 NCHW `x` -> uint8 `[B, H, W * C]` (NHWC rows, shifted by 128, in the activation dtype
    of `arith` as `to_unsigned`; a float32 `x` keeps its values and dtype) for `im2col_rows`, in
    a kernel that writes each pixel's channels as one short vector. Fused into the quantizing
    kernel before it, the same transpose gathered its inputs with a division and remainder per
    byte: 0.48 ms for 8 x 3 x 112 x 112 (Intel Xeon, 1 thread). Vectorized along each channel's
    row instead (each lane's write C values apart), it took 0.10 ms unpadded and 0.16 / 0.26 ms
    padded (float32 / int8 to 4 channels), against 0.07-0.09 and 0.09 / 0.15 ms now (AMD EPYC
    znver3, 1 thread).

    On the way it can pad the image (`pad`: top, left, bottom, right) and its channels (to
    `channels`) with `fill` (an int8 value, shifted as x; the extra channels meet zero weights),
    so that a conv's tile GEMM reads the result in place (`Conv`): TVM's own pad of the float32
    NCHW image took 2.1 ms for 8 x 3 x 112 x 112 (AMD EPYC znver3, 1 thread). Returns
    `[B, H', W' * C']`."""
    from tvm import relax, s_tir, te, tirx

    b, c, h, w = (int(d) for d in x.ty.shape)
    dtype = str(x.ty.dtype)
    src = te.placeholder((b, c, h, w), dtype, name="x")
    unsigned = _unsigned_dtype(arith)
    out_dtype = "float32" if dtype == "float32" else unsigned
    top, left, bottom, right = pad
    oh, ow, oc = h + top + bottom, w + left + right, channels or c

    def value(n: Any, i: Any, j: Any, ch: Any) -> Any:
        # clamped, so that the read stays inside x whichever branch the code runs
        row = tirx.max(tirx.min(i - top, h - 1), 0) if top or bottom else i
        col = tirx.max(tirx.min(j - left, w - 1), 0) if left or right else j
        read = src[n, tirx.min(ch, c - 1) if oc > c else ch, row, col]
        shifted = read if dtype == "float32" else tirx.Cast(unsigned, tirx.Cast("int32", read) + 128)
        inside = [ch < c] if oc > c else []
        inside += [i >= top, i < top + h] if top or bottom else []
        inside += [j >= left, j < left + w] if left or right else []
        if not inside:
            return shifted
        border = tirx.const(fill if dtype == "float32" else int(fill) + 128, out_dtype)
        return tirx.if_then_else(tirx.all(*inside), shifted, border)

    out = te.compute((b, oh, ow, oc), value, name="interleave")
    sch = s_tir.Schedule(te.create_prim_func([src, out]).without_attr("global_symbol"))
    n, i, _, ch = sch.get_loops(sch.get_sblock("interleave"))
    parallel(sch, sch.fuse(n, i))
    sch.vectorize(ch)  # a pixel's channels, written as one short vector
    func = sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)  # kOpaque
    gvar = bb.add_func(func, "interleave_channels")
    out = bb.emit(relax.call_tir(gvar, [x], relax.TensorType([b, oh, ow, oc], out_dtype)))
    return bb.emit(relax.op.reshape(out, (b, oh, ow * oc)))


def _schedule_im2col(func: Any, channels: int) -> Any:
    """Images x rows in parallel, the other loops nested, each tap's channels one vector copy.
    The generic elementwise rule fused all six loops and split off 16 bytes, so every 16-byte
    copy decoded six indices by div / mod: a W8A8 ResNet-18's im2col ran at 2 GB/s, 11 of its 37 ms."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock("im2col"))
    parallel(sch, sch.fuse(loops[0], loops[1]))
    width = next((v for v in (64, 32, 16) if channels % v == 0), None)
    if width is not None:
        sch.vectorize(sch.split(loops[5], factors=[None, width])[1])
    elif channels <= 64:
        sch.vectorize(loops[5])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def conv_weight(w: np.ndarray) -> np.ndarray:
    """`W[Co, Ci, KH, KW]` -> the GEMM weight `[KH * KW * Ci4, Co]` matching `im2col`'s columns."""
    co, ci, kh, kw = w.shape
    ci4 = _round_up(ci, GROUP)
    if ci4 > ci:
        w = np.concatenate([w, np.zeros((co, ci4 - ci, kh, kw), w.dtype)], axis=1)
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * ci4, co))


def conv_weight_rows(w: np.ndarray) -> np.ndarray:
    """`W[Co, Ci, KH, KW]` -> the GEMM weight `[KH * T, Co]` matching `im2col_rows`' columns
    (T = KW * Ci rounded up to 4; within a kernel row, tap-major, channel-minor)."""
    co, ci, kh, kw = w.shape
    rows = w.transpose(2, 3, 1, 0).reshape(kh, kw * ci, co)
    t = _round_up(kw * ci, GROUP)
    if t > kw * ci:
        rows = np.concatenate([rows, np.zeros((kh, t - kw * ci, co), w.dtype)], axis=1)
    return np.ascontiguousarray(rows.reshape(kh * t, co))
