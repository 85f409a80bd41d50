"""Default CPU schedules: DLight-style rules for the kernels DLight's CPU rules leave naive.

TVM 0.27's `dlight.cpu` has GEMV and Reduction rules only; everything else (matmul epilogues,
convolutions, elementwise kernels, int8 GEMMs) would be compiled as the naive loop nest that
`LegalizeOps` produces. Two rules fill the gap, applied after DLight's own:

- `CPUMatmul`: any block with spatial loops and reduction loops (GEMM, batched GEMM, conv, the
  int8 and group-wise quantized kernels). The innermost spatial loop moves inside the reduction
  and is vectorized, the next one is tiled into a small register block that accumulates in a
  local buffer, and the remaining outer spatial loops run in parallel:
  `parallel(outer) / reduction / unroll(rows) / vectorize(cols)`.
- `CPUElementwise`: spatial-only blocks: fuse, vectorize the inner chunk, parallelize the rest.

They are a reasonable default, not a tuned kernel: MetaSchedule (`tuning.py`) searches the same
space properly, and float32 matmuls go to BLAS by default (`blas.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

log = logging.getLogger(__name__)

VECTOR_LANES = 16  # float32 lanes of AVX-512; on narrower CPUs LLVM splits the vector
ROW_TILE = 4


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
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    split = _split_inner(sch, fused, VECTOR_LANES)
    if split is None:
        sch.parallel(fused)
        return
    outer, inner = split
    sch.parallel(outer)
    sch.vectorize(inner)


def has_single_reduction(func: Any) -> bool:
    """Whether `func` is the kind of kernel `CPUMatmul` schedules (exactly one reduction block)."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    infos = normalize_prim_func(s_tir.Schedule(func))
    return infos is not None and sum("R" in i.dom_kind() for i in infos) == 1


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
        self.tuned = tuned or {}
        self.spec = spec

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        params = self.params
        if self.tuned and self.spec is not None:
            from optkit.backends.tuning import workload_key

            params = {**params, **self.tuned.get(workload_key(func, self.spec), {})}
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        reductions = [i for i in infos if "R" in i.dom_kind()]
        if len(reductions) != 1:
            return None
        try:
            _schedule_reduction(sch, reductions[0], params["rows"], params["lanes"])
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


def _schedule_reduction(sch: s_tir.Schedule, info: Any, row_tile: int, lanes: int) -> None:
    block = info.block_rv
    kinds = info.dom_kind()
    if any(k not in "SR" for k in kinds):
        raise ValueError(f"unsupported iteration kinds {kinds}")
    loops = sch.get_loops(block)
    s_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
    r_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
    if not s_loops:
        raise ValueError("a pure reduction is DLight's Reduction rule's job")
    cols = None
    for width in dict.fromkeys((lanes, 8, 4)):  # narrower vectors when the extent is not a multiple
        cols = _split_inner(sch, s_loops[-1], width)
        if cols is not None:
            lanes = width
            break
    if cols is None:  # odd widths (a 7x7 conv): parallel spatial loops around the reduction
        sch.reorder(*s_loops, *r_loops)
        sch.parallel(sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0])
        sch.decompose_reduction(block, r_loops[0])
        return
    col_outer, col_inner = cols
    rows = _split_inner(sch, s_loops[-2], row_tile) if len(s_loops) > 1 and row_tile > 1 else None
    outer = list(s_loops[:-2]) if rows is not None else list(s_loops[:-1])
    if rows is not None:
        row_outer, row_inner = rows
        outer.append(row_outer)
        sch.reorder(*outer, col_outer, *r_loops, row_inner, col_inner)
    else:
        sch.reorder(*outer, col_outer, *r_loops, col_inner)
    # Accumulate the row_tile x lanes tile in a local buffer (registers), write it once.
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, col_outer, preserve_unit_loops=True)
    # Vectorize while the block still has its init (a reduction block); decompose afterwards.
    if rows is not None:
        sch.unroll(row_inner)
    sch.vectorize(col_inner)
    parallel = outer + [col_outer]
    fused = sch.fuse(*parallel) if len(parallel) > 1 else parallel[0]
    sch.parallel(fused)
    init = sch.decompose_reduction(block, r_loops[0])
    for blk in (init, acc):
        inner = sch.get_loops(blk)[-1]
        if _extent(sch, inner) == lanes:
            sch.vectorize(inner)
