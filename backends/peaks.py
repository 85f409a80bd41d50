"""Per-core compute peaks of this CPU, measured with TVM-compiled micro-kernels on one thread.

A kernel's "% of peak" means something only against a peak measured on the same machine, the
same way: issue 17 asks for the big GEMM/conv kernels at >= 60% of it. Two kernels, both
written directly in TIR (as `vnni.gemm_func` is) so that nothing but the measured instruction
runs in the hot loop:

- fp32 FMA (`fma_func`): `ACC` independent vector accumulators held in registers, each updated
  `acc = fma(acc, mul, add)` per iteration, the accumulators unrolled. Enough accumulators hide
  the FMA latency (4 cycles, 2 ports: >= 8 in flight) while leaving registers for the operands:
  24 of the 32 zmm registers with AVX-512 (16 lanes), 12 of the 16 ymm registers with AVX2
  (8 lanes). One FMA is 2 FLOPs per lane.
- int8 dot product (`dot_func`): the same shape around `vpdpbusd` (VNNI: 4 u8 x s8 products
  added into each int32 lane), through the LLVM intrinsic `vnni.py` uses: 512-bit with AVX-512
  VNNI, 256-bit with AVX-VNNI. One instruction is 2 * 4 * lanes int8 ops. On AVX2 without VNNI
  (`madd_func`), the sequence optkit's AVX2 int8 GEMM issues for 7-bit weights (`vnni.U8S7`):
  `vpmaddubsw` (u8 x s8 pairs summed into 16 int16 lanes), `vpmaddwd` by ones (the pairs into
  8 int32 lanes) and `vpaddd`, 2 * 4 * 8 ops per triple: the fastest int8 arithmetic there, the
  peak AVX2's int8 kernels are compared against. The pair it issues for 8-bit weights
  (`vnni.U8S16`: `vpmaddwd` of int16 activations and weights, `vpaddd`, 2 * 2 * 8 ops) is
  `avx2-madd`, measured on request. A CPU with none of these gets no int8 peak, and the reason
  says so.

The ISA is chosen from the /proc/cpuinfo flags, never assumed. Both kernels compute something
checkable: with `mul = 1`, `add = 1` the FMA accumulators end at `init + n` (exact in float32
while below 2**24); each dot accumulator ends at `init + n * sum_k(a_k * b_k)` per lane. Every
measured call is checked that way, so a peak never comes from a kernel that skipped work.
Neither `vpmaddwd` nor `vpmaddubsw` has an accumulator operand, so LLVM would compute the
products once before the loop; `madd_func` adds a runtime vector of zeros to each of its two `a`
registers each iteration (two `vpaddw` or `vpaddb` per 8 products), so the products stay in
the loop and the closed form stays `init + n * products(a, b)`.
Figures: median over `repeats` timed calls of about `seconds` each, after one warm-up call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optkit.backends.targets import cpu_model_name, host_cpu_config, host_mcpu

from optkit.errors import BackendError, ConfigError, UnknownNameError
from optkit.host import cpu_flags

FMA_MAX_ITERATIONS = 2**23  # init (< 8) + n stays below 2**24, exact in float32: the check is exact
DOT_MAX_ITERATIONS = 2**28  # |init + n * lane sum| (lane sums <= 4) stays inside int32


@dataclass(frozen=True)
class VectorISA:
    """One way to run a kernel: vector width, accumulators, the cpuinfo flags it needs and, for
    the dot product, the LLVM intrinsic."""

    name: str
    lanes: int  # 32-bit lanes per register
    accumulators: int
    flags: tuple[str, ...]
    intrinsic: str = ""


FMA_ISAS = {
    "avx512": VectorISA("avx512", 16, 24, ("avx512f",)),
    "avx2": VectorISA("avx2", 8, 12, ("avx2", "fma")),
}
DOT_ISAS = {
    "avx512-vnni": VectorISA("avx512-vnni", 16, 24, ("avx512_vnni",), "llvm.x86.avx512.vpdpbusd.512"),
    "avx-vnni": VectorISA("avx-vnni", 8, 12, ("avx_vnni",), "llvm.x86.avx512.vpdpbusd.256"),
    # 6: two activation registers times 3 weight ones (znver3, GOP/s: 4 accumulators 188, 6 190,
    # 8 177, 10 or 12 spilled: 146-156)
    "avx2-maddubs": VectorISA("avx2-maddubs", 8, 6, ("avx2",), "llvm.x86.avx2.pmadd.ub.sw"),
    # 8: two activation registers times 4 weight ones, each pair its own product (znver3, GOP/s:
    # 6 accumulators of one activation 142, 8 of two 155, 10 or 12 spilled: 73-88)
    "avx2-madd": VectorISA("avx2-madd", 8, 8, ("avx2",), "llvm.x86.avx2.pmadd.wd"),
}
MADD_ISAS = ("avx2-maddubs", "avx2-madd")  # `madd_func`'s: two activation registers, no accumulator operand
DOT_GROUP = 4  # bytes multiplied and summed into each int32 lane per instruction
MADD_GROUP = 2  # int16 pairs summed into each int32 lane by `vpmaddwd`
MADD_ROWS = 2  # `madd_func`'s activation registers: accumulator j multiplies a[j % 2] by b[j // 2]


@dataclass(frozen=True)
class CpuInfo:
    """The CPU a peak was measured on: model name, LLVM's name for it and its /proc/cpuinfo flags."""

    name: str
    mcpu: str
    flags: frozenset[str]

    def features(self) -> list[str]:
        """The flags that matter for these peaks, in a stable order."""
        wanted = ("fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
        return [f for f in wanted if f in self.flags]


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU: name, LLVM host cpu and the first `flags` line of `cpuinfo`."""
    return CpuInfo(cpu_model_name() or "unknown CPU", host_mcpu(), cpu_flags(cpuinfo))


def best_isa(table: dict[str, VectorISA], cpu: CpuInfo) -> VectorISA | None:
    """The first (widest) entry of `table` whose flags `cpu` has, or None."""
    return next((isa for isa in table.values() if all(f in cpu.flags for f in isa.flags)), None)


def _isa(table: dict[str, VectorISA], name: str) -> VectorISA:
    if name not in table:
        raise UnknownNameError("vector ISA", name, tuple(table))
    return table[name]


def fma_func(isa: VectorISA) -> Any:
    """TIR kernel `out[ACC, L] = init` after `n` times `acc = fma(acc, mul, add)` (float32)."""
    from tvm.script import tirx as T

    lanes, accs = isa.lanes, isa.accumulators
    vec = f"float32x{lanes}"
    fma = f"llvm.fma.v{lanes}f32"

    @T.prim_func(s_tir=True)
    def fma_peak(  # TVMScript buffer specs below are calls, which mypy cannot read as types
        init: T.Buffer((accs, lanes), "float32"),  # type: ignore[valid-type]
        mul: T.Buffer((lanes,), "float32"),  # type: ignore[valid-type]
        add: T.Buffer((lanes,), "float32"),  # type: ignore[valid-type]
        out: T.Buffer((accs, lanes), "float32"),  # type: ignore[valid-type]
        n: T.int32,
    ) -> None:
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            acc = T.alloc_local((accs, lanes), "float32")
            for j in T.unroll(accs):
                acc[j, T.ramp(0, 1, lanes)] = init.vload([j, 0], dtype=vec)
            for _ in T.serial(n):
                for j in T.unroll(accs):
                    acc[j, T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(fma),
                        acc.vload([j, 0], dtype=vec),
                        mul.vload([0], dtype=vec),
                        add.vload([0], dtype=vec),
                        dtype=vec,
                    )
            for j in T.unroll(accs):
                out[j, T.ramp(0, 1, lanes)] = acc.vload([j, 0], dtype=vec)

    return fma_peak


def dot_func(isa: VectorISA) -> Any:
    """TIR kernel `out[ACC, L] = init` after `n` times `acc = vpdpbusd(acc, a, b)` (int32 lanes,
    `a` uint8 and `b` int8 of 4 * L bytes each)."""
    from tvm.script import tirx as T

    lanes, accs, width = isa.lanes, isa.accumulators, isa.lanes * DOT_GROUP
    vec = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def dot_peak(
        init: T.Buffer((accs, lanes), "int32"),  # type: ignore[valid-type]
        a: T.Buffer((width,), "uint8"),  # type: ignore[valid-type]
        b: T.Buffer((width,), "int8"),  # type: ignore[valid-type]
        out: T.Buffer((accs, lanes), "int32"),  # type: ignore[valid-type]
        n: T.int32,
    ) -> None:
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            acc = T.alloc_local((accs, lanes), "int32")
            for j in T.unroll(accs):
                acc[j, T.ramp(0, 1, lanes)] = init.vload([j, 0], dtype=vec)
            for _ in T.serial(n):
                for j in T.unroll(accs):
                    acc[j, T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(isa.intrinsic),
                        acc.vload([j, 0], dtype=vec),
                        a.vload([0], dtype=f"uint8x{width}"),
                        b.vload([0], dtype=f"int8x{width}"),
                        dtype=vec,
                    )
            for j in T.unroll(accs):
                out[j, T.ramp(0, 1, lanes)] = acc.vload([j, 0], dtype=vec)

    return dot_peak


def madd_group(isa: VectorISA) -> int:
    """Products summed into each int32 lane per step of `isa`: 2 for `vpmaddwd`, else 4."""
    return MADD_GROUP if isa.intrinsic == DOT_ISAS["avx2-madd"].intrinsic else DOT_GROUP


def madd_dtypes(isa: VectorISA) -> tuple[str, str]:
    """The activation and weight dtypes of `madd_func(isa)`: int16 pairs, or u8 x s8 quads."""
    return ("int16", "int16") if madd_group(isa) == MADD_GROUP else ("uint8", "int8")


def madd_func(isa: VectorISA) -> Any:
    """TIR kernel `out[ACC, L] = init` after `n` times `a[i] += zero` (i < 2), then
    `acc[j] += products(a[j % 2], b[j // 2])` (int32 lanes): for `avx2-madd`, `vpmaddwd` of
    `a[i]` and `b[j]` int16 of 2 * L values; for `avx2-maddubs`, `vpmaddwd(vpmaddubsw(a, b), 1)`
    of uint8 `a[i]` and int8 `b[j]` of 4 * L values (operands small enough that the int16 pair
    sums cannot saturate). `zero`, all zeros, keeps the products in the loop. Each accumulator
    multiplies its own pair of registers: with one `b` shared by several accumulators of one `a`,
    LLVM computed the product once per iteration and added it to every accumulator (session 24's
    figure of 236 GOP/s on znver3 counted products that never ran)."""
    from tvm.script import tirx as T

    group = madd_group(isa)
    lanes, accs, width = isa.lanes, isa.accumulators, isa.lanes * group
    rows, weights = MADD_ROWS, isa.accumulators // MADD_ROWS
    a_dtype, b_dtype = madd_dtypes(isa)
    vec, a_vec, b_vec, pairs = (
        f"int32x{lanes}",
        f"{a_dtype}x{width}",
        f"{b_dtype}x{width}",
        f"int16x{2 * lanes}",
    )
    madd = T.llvm_lookup_intrinsic_id(DOT_ISAS["avx2-madd"].intrinsic)

    def products(av: Any, bv: Any) -> Any:
        if group == MADD_GROUP:
            return T.call_llvm_pure_intrin(madd, av, bv, dtype=vec)
        quads = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(isa.intrinsic), av, bv, dtype=pairs)
        return T.call_llvm_pure_intrin(madd, quads, T.Broadcast(T.int16(1), 2 * lanes), dtype=vec)

    @T.prim_func(s_tir=True)
    def madd_peak(
        init: T.Buffer((accs, lanes), "int32"),  # type: ignore[valid-type]
        a: T.Buffer((rows, width), a_dtype),  # type: ignore[valid-type]
        b: T.Buffer((weights, width), b_dtype),  # type: ignore[valid-type]
        zero: T.Buffer((width,), a_dtype),  # type: ignore[valid-type]
        out: T.Buffer((accs, lanes), "int32"),  # type: ignore[valid-type]
        n: T.int32,
    ) -> None:
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            acc = T.alloc_local((accs, lanes), "int32")
            av = T.alloc_local((rows, width), a_dtype)
            for i in T.unroll(rows):
                av[i, T.ramp(0, 1, width)] = a.vload([i, 0], dtype=a_vec)
            for j in T.unroll(accs):
                acc[j, T.ramp(0, 1, lanes)] = init.vload([j, 0], dtype=vec)
            for _ in T.serial(n):
                for i in T.unroll(rows):
                    av[i, T.ramp(0, 1, width)] = av.vload([i, 0], dtype=a_vec) + zero.vload([0], dtype=a_vec)
                for j in T.unroll(accs):
                    acc[j, T.ramp(0, 1, lanes)] = acc.vload([j, 0], dtype=vec) + products(
                        av.vload([j % rows, 0], dtype=a_vec), b.vload([j // rows, 0], dtype=b_vec)
                    )
            for j in T.unroll(accs):
                out[j, T.ramp(0, 1, lanes)] = acc.vload([j, 0], dtype=vec)

    return madd_peak


def compile_kernel(func: Any) -> Callable[..., None]:
    """Compile a micro-kernel for the host CPU (all its features); returns the callable."""
    import tvm

    config = host_cpu_config(num_cores=1)
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target(config)
    )
    return lib["main"]  # type: ignore[no-any-return]


def fma_reference(init: np.ndarray, mul: np.ndarray, add: np.ndarray, n: int) -> np.ndarray:
    """What `fma_func`'s kernel returns: `n` fused multiply-adds per lane (float64, then float32)."""
    acc = init.astype(np.float64)
    for _ in range(n):
        acc = acc * mul.astype(np.float64) + add.astype(np.float64)
    return acc.astype(np.float32)


def dot_reference(
    init: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, group: int = DOT_GROUP
) -> np.ndarray:
    """What `dot_func`'s kernel returns: each lane adds `n` times its `group` products (4 u8 x s8,
    or 2 int16). `madd_func`'s operands are 2-D, `a` and `b` of `MADD_ROWS` and ACC / `MADD_ROWS`
    rows, accumulator j multiplying a[j % rows] by b[j // rows]."""
    accs, lanes = init.shape
    if a.ndim == 2:
        a, b = a[np.arange(accs) % len(a)], b[np.arange(accs) // len(a)]
    products = a.astype(np.int64) * b.astype(np.int64)
    per_lane = products.reshape(*b.shape[:-1], lanes, group).sum(axis=-1)
    return (init.astype(np.int64) + n * per_lane).astype(np.int32)


@dataclass(frozen=True)
class Peak:
    """One measured peak: `gops` (GFLOP/s for fp32, GOP/s for int8) on one core, the median of
    `samples`; `ops_per_iter` counts 2 per multiply-add."""

    kind: str  # "fp32" or "int8"
    isa: str
    lanes: int
    accumulators: int
    ops_per_iter: int
    iterations: int
    gops: float
    samples: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MicroKernel:
    """A compiled peak kernel with its operands: `run(n)` runs `n` iterations and checks the
    result against the closed form, returning the seconds the call took."""

    def __init__(self, kind: str, isa: VectorISA) -> None:
        import tvm

        self.kind, self.isa = kind, isa
        shape = (isa.accumulators, isa.lanes)
        self.init: np.ndarray
        self.operands: tuple[np.ndarray, ...]
        if kind == "fp32":
            self.fn = compile_kernel(fma_func(isa))
            # mul = 1, add = 1: the accumulators count iterations, exactly (init + n < 2**24).
            self.init = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 7
            self.operands = (np.ones(isa.lanes, np.float32), np.ones(isa.lanes, np.float32))
            self.ops_per_iter = 2 * isa.lanes * isa.accumulators
            self.max_iterations = FMA_MAX_ITERATIONS
        elif kind == "int8":
            madd = isa.name in MADD_ISAS
            self.group = madd_group(isa) if madd else DOT_GROUP
            self.fn = compile_kernel(madd_func(isa) if madd else dot_func(isa))
            width = isa.lanes * self.group
            a_dtype, b_dtype = madd_dtypes(isa) if madd else ("uint8", "int8")
            self.init = (np.arange(np.prod(shape), dtype=np.int32).reshape(shape) % 5) - 2
            # a in 0-2, b in -1-1: small lane sums; madd: `MADD_ROWS` activation rows and a
            # weight row for each `MADD_ROWS` accumulators
            rows_a = (MADD_ROWS, width) if madd else (width,)
            rows_b = (isa.accumulators // MADD_ROWS, width) if madd else (width,)
            a = (np.arange(int(np.prod(rows_a))) % 3).reshape(rows_a).astype(a_dtype)
            b = ((np.arange(int(np.prod(rows_b))) % 3) - 1).reshape(rows_b).astype(b_dtype)
            self.operands = (a, b, np.zeros(width, a_dtype)) if madd else (a, b)
            self.ops_per_iter = 2 * self.group * isa.lanes * isa.accumulators
            self.max_iterations = DOT_MAX_ITERATIONS
        else:
            raise UnknownNameError("peak kind", kind, ("fp32", "int8"))
        self._args = [tvm.runtime.tensor(x) for x in (self.init, *self.operands)]
        self._out = tvm.runtime.tensor(np.zeros(shape, self.init.dtype))

    def reference(self, n: int) -> np.ndarray:
        """The kernel's result after `n` iterations, from the closed form in numpy."""
        if self.kind == "fp32":
            return self.init + np.float32(n) * self.operands[1]  # mul = 1: the closed form is exact
        return dot_reference(self.init, self.operands[0], self.operands[1], n, self.group)

    def result(self, n: int) -> np.ndarray:
        """Run `n` iterations and return the accumulators."""
        self.fn(*self._args, self._out, n)
        return np.asarray(self._out.numpy())

    def run(self, n: int) -> float:
        """Seconds for one call of `n` iterations; raises `BackendError` if its result is wrong."""
        if not 0 <= n <= self.max_iterations:
            raise ConfigError(f"{self.kind} peak iterations must be in [0, {self.max_iterations}], got {n}")
        start = time.perf_counter()
        self.fn(*self._args, self._out, n)
        seconds = time.perf_counter() - start
        got, want = self._out.numpy(), self.reference(n)
        if not np.array_equal(got, want):
            raise BackendError(
                f"the {self.kind} {self.isa.name} peak kernel computed wrong accumulators after {n} "
                f"iterations (first value {got.flat[0]}, expected {want.flat[0]}): its timing is void"
            )
        return seconds


def measure(kernel: MicroKernel, seconds: float = 0.2, repeats: int = 7) -> Peak:
    """Time `kernel` on one thread: iterations sized so a call takes about `seconds`, one warm-up
    call, then the median of `repeats` calls (each checked)."""
    if seconds <= 0 or repeats < 1:
        raise ConfigError(f"seconds must be > 0 and repeats >= 1, got seconds={seconds}, repeats={repeats}")
    n = 1 << 12
    limit = kernel.max_iterations
    while n < limit and kernel.run(n) < seconds / 8:  # grow until a call is long enough to scale
        n = min(n * 4, limit)
    n = max(1, min(limit, int(n * seconds / max(kernel.run(n), 1e-9))))
    kernel.run(n)  # warm-up at the measured size
    samples = [kernel.ops_per_iter * n / kernel.run(n) / 1e9 for _ in range(repeats)]
    return Peak(
        kernel.kind,
        kernel.isa.name,
        kernel.isa.lanes,
        kernel.isa.accumulators,
        kernel.ops_per_iter,
        n,
        statistics.median(samples),
        tuple(round(s, 2) for s in samples),
    )


@dataclass(frozen=True)
class CpuPeaks:
    """This core's measured fp32 FMA and int8 dot-product peaks; `int8` is None with the reason
    in `int8_unavailable` when the CPU has no int8 instruction measured here."""

    cpu: CpuInfo
    fp32: Peak
    int8: Peak | None
    int8_unavailable: str = ""

    def peak_for(self, precision: str) -> Peak | None:
        """The peak a kernel of `precision` (`fp32` or `int8`) is compared against."""
        return self.fp32 if precision == "fp32" else self.int8 if precision == "int8" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu.name,
            "mcpu": self.cpu.mcpu,
            "features": self.cpu.features(),
            "fp32": self.fp32.to_dict(),
            "int8": self.int8.to_dict() if self.int8 else None,
            "int8_unavailable": self.int8_unavailable,
        }


def measure_peaks(
    seconds: float = 0.2,
    repeats: int = 7,
    fma_isa: str | None = None,
    dot_isa: str | None = None,
    cpu: CpuInfo | None = None,
) -> CpuPeaks:
    """Measure this core's peaks (run it with TVM's runtime on one thread; the kernels have no
    parallel loop). `fma_isa` / `dot_isa` force a variant of `FMA_ISAS` / `DOT_ISAS` (it must
    exist on this CPU); by default the widest the CPU's flags allow."""
    cpu = cpu or cpu_info()
    fma = _isa(FMA_ISAS, fma_isa) if fma_isa else best_isa(FMA_ISAS, cpu)
    if fma is None:
        raise BackendError(
            f"{cpu.name} has neither AVX-512F nor AVX2+FMA (flags: {', '.join(cpu.features()) or 'none'}); "
            "no fp32 FMA peak kernel is written for it"
        )
    fp32 = measure(MicroKernel("fp32", fma), seconds, repeats)
    dot = _isa(DOT_ISAS, dot_isa) if dot_isa else best_isa(DOT_ISAS, cpu)
    if dot is None:
        reason = f"{cpu.name} has neither VNNI (avx512_vnni, avx_vnni) nor AVX2 in /proc/cpuinfo"
        return CpuPeaks(cpu, fp32, None, reason)
    return CpuPeaks(cpu, fp32, measure(MicroKernel("int8", dot), seconds, repeats))
