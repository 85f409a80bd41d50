"""Which kernels run their outer loop on TVM's thread pool, and which on the calling thread.

A parallel loop is a launch on TVM's thread pool: its workers pick up their share of the
iterations and the caller waits for the last. On 2 threads of an AMD EPYC (znver3) with the
workers still spinning from the previous kernel, a launch costs ~2.8 us (an elementwise kernel
over 1,024 floats: 3.26 us parallel, 0.50 us serial); on one thread ~0.2 us. A kernel whose work
takes less than about twice that on one thread runs slower in parallel: the same kernel over
16,384 floats took 3.89 us parallel against 2.25 serial, over 65,536 7.03 against 9.03.
A recommender such as `zoo:recsys:small` (2.6 MFLOPs in 44 kernel calls) is nothing but such kernels:
at 2 threads it ran in 0.330 ms with every kernel parallel against 0.257 ms with every kernel
serial (0.233 / 0.221 ms at 1 thread).

`worth_parallel` keeps a kernel serial when both its floating-point work (TVM's
`estimate_tir_flops`, or a GEMM's 2 M N K) and the bytes of its buffers are under `MIN_FLOPS`
and `MIN_BYTES`: about 5 us of one core at 50-60 GFLOP/s or 50 GB/s from L2. The schedule rules
call `parallel(sch, loop)` instead of `sch.parallel(loop)`, and the hand-written kernels pick
`T.parallel` or `T.serial` with `loop_kind`. A kernel whose size is not static stays parallel.
The choice is made where a loop is made parallel rather than by a pass over the scheduled module:
TVM 0.27's Python API has no TIR statement mutator to turn a parallel loop back into a serial
one. DLight's own `cpu.Reduction` rule, the last fallback, still parallelizes what it schedules.
"""

from __future__ import annotations

import math
from typing import Any

MIN_FLOPS = 1 << 18  # floating-point operations (a multiply-add: 2)
MIN_BYTES = 1 << 18  # bytes of the kernel's parameters: its inputs and outputs


def worth_parallel(flops: float, nbytes: float) -> bool:
    """Whether a kernel of this work gains from the thread pool's launch (module docstring)."""
    return flops >= MIN_FLOPS or nbytes >= MIN_BYTES


def buffer_bytes(func: Any) -> float:
    """Bytes of the PrimFunc's parameter buffers; infinite when a shape is not static."""
    import tvm

    total = 0.0
    for param in func.params:
        shape = getattr(param, "shape", None)
        if shape is None:  # a scalar parameter
            continue
        try:
            elements = math.prod(int(d) for d in shape)
        except TypeError:  # a symbolic dimension
            return math.inf
        dtype = tvm.DataType(str(param.dtype))
        total += elements * dtype.bits * dtype.lanes // 8
    return total


def func_flops(func: Any) -> float:
    """TVM's estimate of the PrimFunc's floating-point operations; infinite where it has none."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # no rule for an intrinsic or a symbolic extent: assume it is big
        return math.inf


def func_worth_parallel(func: Any) -> bool:
    """`worth_parallel` for a PrimFunc, from its buffers first (cheap), then its flops."""
    return buffer_bytes(func) >= MIN_BYTES or func_flops(func) >= MIN_FLOPS


def parallel(sch: Any, loop: Any) -> None:
    """`sch.parallel(loop)` where the kernel being scheduled is worth it; else the loop stays
    serial."""
    if func_worth_parallel(sch.mod["main"]):
        sch.parallel(loop)


def loop_kind(flops: float, nbytes: float) -> Any:
    """The IR builder's `T.parallel` for a kernel of this work, or `T.serial`."""
    from tvm.tirx.script.builder import ir as T

    return T.parallel if worth_parallel(flops, nbytes) else T.serial
