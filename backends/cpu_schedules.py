"""Default CPU schedules: DLight-style rules for the kernels DLight's CPU rules leave naive.

TVM 0.27's `dlight.cpu` has GEMV and Reduction rules only; everything else (matmul epilogues,
convolutions, elementwise kernels, int8 GEMMs) would be compiled as the naive loop nest that
`LegalizeOps` produces. Three rules fill the gap (order in `build.schedule_pass`), and a fourth
replaces DLight's GEMV schedule:

- `CPURowReduction`: softmax, norms, row any / max: rows in parallel, every block computed per
  row, each reduction split into vector partial results (`rfactor`).
- `CPUMatmul`: other kernels with one reduction block (GEMM, batched GEMM, packed GEMM and conv,
  the NHWC depthwise conv, the int8 and group-wise quantized kernels). The innermost spatial
  loop moves inside the reduction and is vectorized, the next one is tiled into a register block
  (7 or 8 x 32 by default, `_row_heights`) that accumulates in a local buffer, and the remaining outer spatial loops
  run in parallel: `parallel(outer) / reduction / unroll(rows) / vectorize(cols)`. For optkit's NHWC conv kernels
  (dense or depthwise, `packing.py`) the columns are channels and the rows output pixels of one
  image row, so rows of 7 or 14 pixels get 1- or 2-row tiles. Fusing the pixel loops first
  (to fill the 8-row tile) gave wrong results with TVM 0.27's primitives once the loops were
  fused (convs and max pools at 7, 14, 28 pixels wide); it is not done.
- `CPUElementwise`: spatial-only blocks: vectorize a long innermost axis alone, or fuse and
  vectorize the inner chunk; parallelize the rest. A block that reads an input with its last two
  axes swapped (attention's K^T, with a rotary embedding fused in) runs in 16 x 16 tiles
  (`_tile_transpose`): compiled before and after, one process, 1 thread, bit-identical, a
  Llama-style decoder at 512 tokens 109.7 -> 106.2 ms float and 42.6 -> 39.4 ms W8A8,
  `zoo:moviegen` small 22.6 -> 22.1 and 13.9 -> 13.4 ms, the UNet 85.1 -> 83.8 and 47.1 ->
  46.4 ms; ViT-Tiny (50 tokens: no whole tiles), DiT and the CNNs even. A lazy `if_then_else`
  whose condition turns along the vector (a rotary embedding's concatenated halves, a pad's
  edge) would scalarize the loop: the loop is partitioned where it turns (`_lane_cuts`).
- `CPUGEMV`: DLight's GEMV rule (a layer of width 1) without its 128-row vector of strided
  gathers, which made LLVM's codegen run for minutes: parallel tiles of 16 unrolled rows.

`tuning.py` measures other tile sizes for `CPUMatmul`; weight packing (`packing.py`) is what
makes its GEMMs and convs read memory contiguously.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
from optkit.backends.parallel_loops import parallel
from optkit.backends.vnni import target_has_avx512
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

log = logging.getLogger(__name__)

VECTOR_LANES = 32  # two AVX-512 float32 registers per row; on narrower CPUs LLVM splits the vector
# Without AVX-512, 8 x 32 float32 accumulators are 32 of AVX2's 16 registers: 6 x 16 fit. MobileNetV2
# float at batch 8 on znver3 (1 thread): 29.7 ms with 8 x 32 tiles, 27.9 with 6 x 16 (its depthwise convs)
AVX2_ROW_TILE, AVX2_LANES = 6, 16
ROW_TILE = 8
STACK_BYTES = 1024  # TVM puts a buffer below this on the stack (LowerTVMBuiltin), else in a workspace
SHORT_TAPS = 7  # the widest filter row whose taps `_schedule_reduction` unrolls
SHORT_K = 64  # reductions up to this long: a workspace per tile costs more than a taller tile saves
WEIGHT_CACHE_BYTES = 2 << 20  # a weight above this (a core's L2 on the Xeons here) is swept panel by panel
ELEMENTWISE_LANES = 16  # one AVX-512 register of float32


def vectorizable_rounding() -> None:
    """Let TVM's loop vectorizer keep `nearbyint` (round half to even: Relax's `round`, so every
    quantize) in vector form.

    TVM 0.27 marks `round`, `floor`, `exp` and the like `TVectorizable` but not `nearbyint`. A
    vectorized loop that contains one is scalarized by `VectorizeLoop`, and LLVM's own loop
    vectorizer then rebuilds it from the scalar index arithmetic as per-lane gathers and byte
    scatters: a 2 x 192 x 32 x 32 quantize to uint8 took 0.36 ms on one thread against 0.09 ms
    with `nearbyint` kept whole (LLVM lowers the vector `llvm.nearbyint` to one `vrndscaleps`).
    The attribute is process-wide; it is set once, before any CPU kernel is built."""
    import tvm

    if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


vectorizable_rounding()


def _extent(sch: s_tir.Schedule, loop: Any) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _split_inner(sch: s_tir.Schedule, loop: Any, factor: int) -> tuple[Any, Any] | None:
    ext = _extent(sch, loop)
    if ext is None or ext < factor or ext % factor:
        return None
    outer, inner = sch.split(loop, factors=[None, factor])
    return outer, inner


class CPUElementwise(CPUScheduleRule):
    """Spatial-only PrimFuncs: inline what can be inlined, then parallel + vectorized loops."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not all(info.is_injective() for info in infos):
            return None
        infos = try_inline(sch, infos)
        try:
            for info in infos:
                _parallel_vectorize(sch, info.block_rv)
        except Exception as err:  # a schedule primitive refused: leave this kernel to the next rule
            log.debug("CPUElementwise skipped a kernel: %s", err)
            return None
        return sch


def _parallel_vectorize(sch: s_tir.Schedule, block: Any) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    if _transposing(sch, block, loops):
        _tile_transpose(sch, loops)
        return
    inner = _extent(sch, loops[-1])
    cuts = _lane_cuts(sch, block, loops)
    if cuts and _partition_vectors(sch, loops, cuts):
        return
    if len(loops) > 1 and inner is not None and inner >= ELEMENTWISE_LANES:
        # A long innermost axis: vectorize it alone. Fusing it with the outer axes first would
        # put div / mod by the axis extents into every vector lane's index (a transpose, a
        # `take` along a leading axis, SwiGLU's halves of width 344), which x86 has no vector
        # instruction for.
        split = _split_inner(sch, loops[-1], ELEMENTWISE_LANES) or _split_inner(sch, loops[-1], 8)
        if split is not None or inner <= 4 * ELEMENTWISE_LANES:
            outer, vec = ([*loops[:-1], split[0]], split[1]) if split else (loops[:-1], loops[-1])
            parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
            sch.vectorize(vec)
            return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    split = _split_inner(sch, fused, ELEMENTWISE_LANES)
    if split is None:
        parallel(sch, fused)
        return
    outer, inner_loop = split
    parallel(sch, outer)
    sch.vectorize(inner_loop)


MAX_CUT_EXTENT = 4096  # longest innermost axis whose `if_then_else` conditions are evaluated point by point
MAX_CUTS = 3  # more pieces than 4 (a stack's interleaved lanes: a cut at every lane) stay one loop


def _lane_cuts(sch: s_tir.Schedule, block: Any, loops: list[Any]) -> list[int]:
    """Where along the innermost loop the block's lazy conditions change value: the points in
    (0, extent) at which some `if_then_else` condition that reads the innermost axis only (a
    concatenation's halves, a pad's edge) turns. Empty when there is none, or when a condition
    mixes that axis with another variable (it cannot be split off by the loop alone).

    TVM's `VectorizeLoop` scalarizes a vector loop whose `if_then_else` condition differs
    across its lanes, the whole loop body with it; split at these points, each piece's
    condition is one value across its lanes and simplifies away."""
    import tvm
    import tvm_ffi
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
    from tvm.sym import Analyzer

    stmt = sch.get(block)
    extent = _extent(sch, loops[-1])
    if extent is None or extent > MAX_CUT_EXTENT or len(stmt.iter_vars) != len(loops):
        return []
    axis, dtype = stmt.iter_vars[-1].var, str(stmt.iter_vars[-1].var.ty)
    conditions: list[Any] = []

    def visit(call: Any) -> None:
        if getattr(call.op, "name", "") == "prim.if_then_else":
            conditions.append(call.args[0])

    tvm_ffi.structural_walk(stmt.body, (tvm.ir.expr.Call, visit), order="post")
    cuts: set[int] = set()
    for cond in conditions:
        used = collect_vars_used_in_prim_expr(cond)
        if not any(v.same_as(axis) for v in used):
            continue
        if len(used) > 1:
            return []
        values = []
        for point in range(extent):
            analyzer = Analyzer()
            analyzer.bind(axis, tirx.IntImm(dtype, point))
            value = analyzer.simplify(cond)
            if not isinstance(value, tirx.IntImm):
                return []
            values.append(bool(value.value))
        cuts.update(i for i in range(1, extent) if values[i] != values[i - 1])
    return sorted(cuts)


def _partition_vectors(sch: s_tir.Schedule, loops: list[Any], cuts: list[int]) -> bool:
    """Vectorize the innermost loop in pieces between `cuts` (`_lane_cuts`), the outer loops in
    parallel; False (nothing changed) when the pieces do not fit one of two forms: every cut a
    multiple of `ELEMENTWISE_LANES` (vectors of that width, partitioned between vectors), or
    an axis of at most four vectors (each piece one vector of its own width)."""
    extent = _extent(sch, loops[-1])
    if extent is None or len(cuts) > MAX_CUTS:
        return False
    lanes = ELEMENTWISE_LANES
    if extent % lanes == 0 and all(c % lanes == 0 for c in cuts):
        chunks, vec = sch.split(loops[-1], factors=[None, lanes])
        if len(loops) > 1:
            parallel(sch, sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        bounds = [0, *(c // lanes for c in cuts)]
        parts = sch.loop_partition(chunks, [b - a for a, b in itertools.pairwise(bounds)] + [None])
        for part in parts:
            for child in sch.get_child_blocks(part):
                sch.vectorize(sch.get_loops(child)[-1])
        return True
    if extent > 4 * lanes:
        return False
    if len(loops) > 1:
        parallel(sch, sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    bounds = [0, *cuts]
    for part in sch.loop_partition(loops[-1], [b - a for a, b in itertools.pairwise(bounds)] + [None]):
        sch.vectorize(part)
    return True


def _transposing(sch: s_tir.Schedule, block: Any, loops: list[Any]) -> bool:
    """Whether the block reads some input across its last two loops: the input's contiguous
    (last) index follows the second-to-last loop and the last loop indexes another dimension
    (`permute_dims` swapping the last two axes, attention's K^T). Both loops must split into
    `ELEMENTWISE_LANES` tiles, and the block's variables must be its loops' (no fused index)."""
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr

    if len(loops) < 2 or any((_extent(sch, loop) or 1) % ELEMENTWISE_LANES for loop in loops[-2:]):
        return False
    stmt = sch.get(block)
    if len(stmt.iter_vars) != len(loops):
        return False
    last, second = stmt.iter_vars[-1].var, stmt.iter_vars[-2].var

    def uses(expr: Any, var: Any) -> bool:
        return any(v.same_as(var) for v in collect_vars_used_in_prim_expr(expr))

    for region in stmt.reads:
        dims = [r.min for r in region.region]
        if len(dims) < 2:
            continue
        if uses(dims[-1], second) and not uses(dims[-1], last) and any(uses(d, last) for d in dims[:-1]):
            return True
    return False


def _tile_transpose(sch: s_tir.Schedule, loops: list[Any]) -> None:
    """16 x 16 tiles of the last two loops, in parallel; per tile, 16 unrolled rows of one
    vector each. The vector still gathers its input across 16 rows, but the tile's 16 cache
    lines of each input stay in L1 while all of its 16 rows are computed: a rotary embedding
    written transposed (attention's K^T, [8, 32, 256]) took 97.6 us with its rows computed one
    whole row after another, 42.0 us in tiles (Intel Xeon with AVX-512, 1 thread)."""
    rows_outer, rows = sch.split(loops[-2], factors=[None, ELEMENTWISE_LANES])
    cols_outer, cols = sch.split(loops[-1], factors=[None, ELEMENTWISE_LANES])
    sch.reorder(rows_outer, cols_outer, rows, cols)
    parallel(sch, sch.fuse(*loops[:-2], rows_outer, cols_outer))
    sch.unroll(rows)
    sch.vectorize(cols)


GEMV_ROWS = 16  # output rows per tile in `CPUGEMV`: independent accumulators, unrolled


class CPUGEMV(dl.cpu.GEMV):  # type: ignore[misc]
    """Matrix-vector products (a layer of width 1, `y = A x`): DLight's CPU GEMV rule, bounded.

    DLight's rule (kept for matching) vectorizes the output rows 128 (or 64) at a time with the
    reduction inside, unrolled up to 256 steps. Each step reads `A[rows, k]`, a gather with
    stride K, so LLVM receives one 128-lane gather per unrolled step, and its codegen time grows
    far faster than the vector: on `_MiniDLRM(6, 2000, 16, 32)`'s last layer (256 x 32 @ 32 x 1)
    a 16-row vector compiled in 0.7 s, 32 rows in 6.9 s, 64 in over 40 s, and DLight's 128 ran
    past 5 minutes, so `lower()` hung from batch 128 on (at batch 64 and 96 the rows do not fill
    the tile and TVM scalarized the predicated loop into 64 or 96 unrolled rows). The gathers
    buy nothing; independent accumulators do. Here tiles of `GEMV_ROWS` rows run in parallel,
    the reduction loop is outside the rows and the rows are unrolled (16 scalar accumulation
    chains instead of one): 0.04 s to compile, and on one thread 0.38 us at batch 64 (DLight
    0.45-0.63), 0.53 us at 96 (DLight 0.70), 1.4 us at 256 (16-row gathers 2.6, one row at a
    time 1.5) and 5.7 us at 1024 (16-row gathers 10.5); 8-row tiles were slower (0.77 us at 64,
    6.7 at 1024).
    Row counts that 16 does not divide take the largest tile that does (100 rows: 10, 0.55-0.8
    us against DLight's 0.70; a prime count, one row at a time), since a predicated last tile
    branched on every unrolled row (1.1-2.0 us at 100 rows).
    """

    def sch_inner_reduction(
        self,
        sch: s_tir.Schedule,
        target: Target,
        block: Any,
        vector_input_buffers: list[Any],
        epilogue_info: Any,
    ) -> s_tir.Schedule:
        batch, rows, reduce, _c = sch.get_loops(block)
        rows = sch.fuse(batch, rows)
        extent = _extent(sch, rows)
        # A tile that divides the rows: a predicated last tile put a branch on every unrolled row.
        tile = GEMV_ROWS if extent is None else max(t for t in range(1, GEMV_ROWS + 1) if extent % t == 0)
        row_outer, row_inner = sch.split(rows, factors=[None, tile])
        sch.reorder(row_outer, reduce, row_inner)
        parallel(sch, row_outer)
        sch.unroll(row_inner)
        sch.decompose_reduction(block, reduce)
        return sch


def is_matmul_like(func: Any) -> bool:
    """Whether `CPUMatmul` schedules `func`: exactly one reduction block, not a row reduction."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return False
    reductions = [i for i in infos if "R" in i.dom_kind()]
    return len(reductions) == 1 and not _is_row_reduction(sch, reductions[0])


class CPUMatmul(CPUScheduleRule):
    """PrimFuncs with one reduction block (GEMM, conv, quantized GEMM) and elementwise neighbours.

    `params` (`rows`, `lanes`) set the register tile; `tuned` maps workload keys (see
    `tuning.workload_key`, needs `spec`) to the parameters tuning measured best for that kernel.
    """

    def __init__(
        self,
        params: dict[str, int] | None = None,
        tuned: dict[str, dict[str, int]] | None = None,
        spec: Any = None,
    ) -> None:
        self.params = {"rows": ROW_TILE, "lanes": VECTOR_LANES, **(params or {})}
        self.exact = params is not None  # the tile as given, not `_row_heights`'s choice
        self.tuned = tuned or {}
        self.spec = spec

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        params, exact = self.params, self.exact
        if not exact and not target_has_avx512(target):  # AVX2: 6 x 16 accumulators in 12 of 16 registers
            params = {"rows": AVX2_ROW_TILE, "lanes": AVX2_LANES}
        if self.tuned and self.spec is not None:
            from optkit.backends.tuning import workload_key

            found = self.tuned.get(workload_key(func, self.spec), {})
            params, exact = {**params, **found}, exact or bool(found)
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        reductions = [i for i in infos if "R" in i.dom_kind()]
        if len(reductions) != 1:
            return None
        try:
            _schedule_reduction(sch, reductions[0], params["rows"], params["lanes"], exact)
            for info in infos:
                if info is reductions[0] or not info.is_injective():
                    continue
                try:  # an elementwise epilogue (bias, GELU, requantize) joins the tile write-back
                    sch.reverse_compute_inline(info.block_rv)
                except Exception:  # not a pure consumer: give it its own parallel loops
                    _parallel_vectorize(sch, info.block_rv)
        except Exception as err:  # unusual iteration spaces: leave the kernel to DLight's fallback
            log.debug("CPUMatmul skipped a kernel: %s", err)
            return None
        return sch


def _schedule_reduction(
    sch: s_tir.Schedule, info: Any, row_tile: int, lanes: int, exact: bool = True
) -> None:
    block = info.block_rv
    kinds = info.dom_kind()
    if any(k not in "SR" for k in kinds):
        raise ValueError(f"unsupported iteration kinds {kinds}")
    loops = sch.get_loops(block)
    s_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
    r_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
    if not s_loops:
        raise ValueError("a pure reduction is DLight's Reduction rule's job")
    n_extent = _extent(sch, s_loops[-1]) or 1
    k_extent = int(np.prod([_extent(sch, lp) or 1 for lp in r_loops]))
    cols = None
    for width in dict.fromkeys((lanes, 16, 8, 4)):  # narrower vectors when the extent is not a multiple
        cols = _split_inner(sch, s_loops[-1], width)
        if cols is not None:
            lanes = width
            break
    if cols is None:  # odd widths (a 7x7 conv): parallel spatial loops around the reduction
        sch.reorder(*s_loops, *r_loops)
        parallel(sch, sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0])
        sch.decompose_reduction(block, r_loops[0])
        return
    col_outer, col_inner = cols
    rows = None
    heights = (row_tile, 4, 2) if exact else _row_heights(row_tile, lanes, k_extent)
    for height in dict.fromkeys(heights) if len(s_loops) > 1 else ():
        if height > 1 and (rows := _split_inner(sch, s_loops[-2], height)) is not None:
            break
    outer = list(s_loops[:-2]) if rows is not None else list(s_loops[:-1])
    row_inner: list[Any] = []
    if rows is not None:
        outer.append(rows[0])
        row_inner = [rows[1]]
    # Which operand stays in cache: rows outermost sweep every weight panel once per row tile,
    # panels outermost sweep the activations once per panel. A weight that fits the cache keeps
    # rows outermost (each row tile reads it from cache; the zoo's transformers). A bigger one
    # goes panel by panel: (rows / row_tile) sweeps of the weight, k x cols, move more bytes than
    # (cols / lanes) sweeps of the activations, rows x k for a GEMM and fewer for a conv (its
    # image, not its im2col). A 3 x 3 conv at 512 channels on a 4 x 4 image (128 x 4608 x 512,
    # its weight 9 MiB): 27 -> 14.5 ms, ResNet-18 at batch 1 12% faster; a Llama MLP's down
    # projection (512 x 1408 -> 512, 2.75 MiB, rows first while the rule also asked for more
    # columns than rows): 7.6 -> 4.8 ms.
    weight_first = k_extent * n_extent * 4 > WEIGHT_CACHE_BYTES
    spatial = [col_outer, *outer] if weight_first and rows is not None else [*outer, col_outer]
    sch.reorder(*spatial, *r_loops, *row_inner, col_inner)
    if len(r_loops) > 1 and (_extent(sch, r_loops[-1]) or SHORT_TAPS + 1) <= SHORT_TAPS:
        # A filter row's taps unrolled (a depthwise conv: no channel reduction inside them): the
        # tile's neighbouring taps read the same input vectors, and LLVM loads and converts each
        # once. Int8 depthwise input (`packing._centered_int8`), MobileNetV2 shapes at batch 8,
        # 1 thread: 56 x 56 x 32 0.34 -> 0.19 ms, 28 x 28 x 144 0.38 -> 0.22 ms; float32 input
        # the same as rolled.
        sch.unroll(r_loops[-1])
    # Accumulate the row_tile x lanes tile in its own buffer (registers), write it once. Scope
    # `global`, not `local`: TVM allocates a `local` buffer inside a parallel loop with a
    # TVMBackendAllocWorkspace / free pair per tile, and a `global` one under its 1 KiB stack
    # limit on the task's stack, where LLVM keeps it in registers. Depthwise tiles (4 pixels x
    # 16 channels, 9 taps) had spent more time allocating than computing: MobileNetV2 at batch
    # 8, 1 thread, 27.3 -> 22.1 ms; the zoo's transformers and ResNet-18 0.99-1.01x (their
    # 8 x 32 float tiles are exactly 1 KiB, a workspace: hence `_row_heights`).
    acc = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(acc, spatial[-1], preserve_unit_loops=True)
    # Vectorize while the block still has its init (a reduction block); decompose afterwards.
    if row_inner:
        sch.unroll(row_inner[0])
    sch.vectorize(col_inner)
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    parallel(sch, fused)
    init = sch.decompose_reduction(block, r_loops[0])
    for blk in (init, acc):
        inner = sch.get_loops(blk)[-1]
        if _extent(sch, inner) == lanes:
            sch.vectorize(inner)


def _row_heights(row_tile: int, lanes: int, k: int) -> tuple[int, ...]:
    """Register tile heights to try, best first, for `lanes` columns over a reduction of `k`.

    A tile whose float32 / int32 accumulators reach `STACK_BYTES` (8 x 32: exactly 1 KiB) is a
    workspace that TVM allocates and frees for every tile, so the tallest tile below the limit
    comes first: 7 x 32 where 7 divides the rows (images 7, 14, 28, 56, 112 pixels wide, 49 or
    784 tokens). Measured alone, 1 thread, 7 x 32 against 8 x 32 (M x K x N): 25088 x 16 x 96
    153 against 102 GFLOP/s, 3136 x 32 x 192 167 / 137, 784 x 64 x 256 174 / 152, 784 x 512 x
    512 168 / 162, 448 x 1408 x 512 165 / 163. Else the full tile, unless the reduction is
    short: 4 x 32 against 8 x 32 at 1024 x 32 x 256 155 / 133, 512 x 64 x 512 even, 784 x 512
    x 512 146 / 162."""
    on_stack = min(row_tile, (STACK_BYTES - 1) // (4 * lanes))
    if on_stack == row_tile:
        return (row_tile, 4, 2)
    return (on_stack, 4, row_tile, 2) if k <= SHORT_K else (on_stack, row_tile, 4, 2)


REDUCE_LANES = 16  # partial sums / maxima kept per row in one AVX-512 register


def _is_row_reduction(sch: s_tir.Schedule, info: Any) -> bool:
    """A reduction over its last loop only, reading the reduced axis as the last index (softmax,
    norms, any/all over a row), as opposed to a GEMM or a conv, whose operands index it elsewhere."""
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr

    kinds = info.dom_kind()
    if not kinds.endswith("R") or kinds.count("R") != 1 or "S" not in kinds:
        return False
    block = sch.get(info.block_rv)
    r_var = block.iter_vars[-1].var
    for region in block.reads:
        for dim, rng in enumerate(region.region):
            uses = {v.same_as(r_var) for v in collect_vars_used_in_prim_expr(rng.min)}
            if True in uses and dim != len(region.region) - 1:
                return False
    return True


class CPURowReduction(CPUScheduleRule):
    """Row-wise kernels (softmax, layer/group norm, masked-row checks): per row, vectorized.

    Like DLight's CPU `Reduction` rule (parallel rows, every block computed at the row loop,
    injective blocks vectorized), but each reduction is first split into `REDUCE_LANES` partial
    results (`rfactor`) that accumulate in one vector register, so that the reduction is not one
    serial chain of dependent adds or maxes: on `moviegen:tiny`'s masked softmax that chain cost
    ~4 cycles per element. The kernel may also end in the reduction itself (a row any / max).
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        reductions = [i for i in infos if not i.is_injective()]
        if not reductions or not all(_is_row_reduction(sch, i) for i in reductions):
            return None
        lead = min(len(i.dom_kind()) - len(i.dom_kind().lstrip("S")) for i in infos)
        if lead == 0:
            return None
        try:
            return _schedule_rows(sch, infos, lead)
        except Exception as err:  # a primitive refused (an unusual layout): leave it to DLight
            log.debug("CPURowReduction skipped a kernel: %s", err)
            return None


def _schedule_rows(sch: s_tir.Schedule, infos: list[Any], lead: int) -> s_tir.Schedule:
    partials = []
    for info in infos:
        if info.is_injective():
            continue
        inner = sch.get_loops(info.block_rv)[-1]
        extent = _extent(sch, inner)
        if extent is not None and extent >= 2 * REDUCE_LANES and extent % REDUCE_LANES == 0:
            _, lanes = sch.split(inner, factors=[None, REDUCE_LANES])
            partials.append(sch.rfactor(lanes, factor_axis=len(info.dom_kind()) - 1))
    last = infos[-1].block_rv
    loops = sch.get_loops(last)
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    parallel(sch, rows)
    ordered = [b for b in _all_blocks(sch) if not _same(sch, b, last)]
    for block in reversed(ordered):
        sch.compute_at(block, rows, preserve_unit_loops=True)
    partial_set = {str(sch.get(p).name_hint) for p in partials}
    for block in [*ordered, last]:
        stmt = sch.get(block)
        if len(sch.get_loops(block)) == 1:
            # Only the parallel row loop (a kernel ending in a per-row write such as argmax's):
            # vectorizing it would vectorize the rows, the reduction inside them included.
            continue
        inner = sch.get_loops(block)[-1]
        extent = _extent(sch, inner)
        if stmt.name_hint in partial_set:
            # rfactor makes the lanes the block's first iteration variable, so compute_at put its
            # loop outermost under the row loop: move it inside the reduction and vectorize it.
            loops = sch.get_loops(block)
            lanes_loop = loops[len(loops) - len(stmt.iter_vars)]
            sch.reorder(inner, lanes_loop)
            sch.vectorize(lanes_loop)
        elif all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars) and extent:
            if extent > ELEMENTWISE_LANES and extent % ELEMENTWISE_LANES == 0:
                _, vec = sch.split(inner, factors=[None, ELEMENTWISE_LANES])
                sch.vectorize(vec)
            elif 2 <= extent <= ELEMENTWISE_LANES:
                sch.vectorize(inner)
    return sch


def _all_blocks(sch: s_tir.Schedule) -> list[Any]:
    from tvm.s_tir.dlight.analysis import get_root_block

    return list(sch.get_child_blocks(get_root_block(sch)))


def _same(sch: s_tir.Schedule, a: Any, b: Any) -> bool:
    return sch.get(a).same_as(sch.get(b))
