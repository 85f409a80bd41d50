"""Per-kernel profile of a lowered model: each compiled kernel's time, operation count, and share
of the measured per-core peak (`peaks.py`).

Issue 17 asks, per model, for the five biggest kernels by time with their share of peak. Steps:

1. Lower the Program with `lowering.lower` (the default path, untuned) under a `PassContext`
   whose instrument keeps the IRModule after `AttachGlobalSymbol`, the last Relax pass: its
   PrimFuncs carry the symbols the VM calls, scheduled as they are compiled.
2. Run the model once with a VM instrument (`VirtualMachine.set_instrument`) that counts the
   calls of each kernel and keeps a copy of the arguments of its first call (copies: the VM's
   pooled storage is reused, and a `take` on recycled indices could read out of bounds).
3. Time each kernel alone on those arguments, all kernels in interleaved rounds (each called
   once per round, `interleaved_latency_ms`), so that a slow spell of a shared machine falls on
   all of them alike; with TVM's runtime on the threads the caller set. A kernel's time in the
   model is calls x its median. Alone, every kernel finds its inputs where the kernels run
   before it in the round left the caches, not where the model's previous kernel left them, so
   a memory-bound kernel can take longer than in the model (session 33, AMD EPYC Zen 4, a Llama
   decoder's Q rotary kernel at 512 tokens: 141 us a call in the rounds, 51 us called 100 times
   in a row, 85 us inside the model; its K^T kernel, compute-bound: 446, 270 and 284 us). Each
   kernel's time inside model runs is measured too (`time_in_model`: the VM
   instrument's timestamps around its calls, median of the runs): `KernelTime.in_model_ms`.
4. Count each kernel's operations per call with `estimate_tir_flops` (multiply and add count
   one each, so a multiply-add is 2, as in the peaks). It cannot read the tile GEMM of
   `vnni.py` (it raises on `vpdpbusd` and the broadcasts); those kernels, VNNI or FMA, count
   `2 * M * K * N` from their `x[M, K]` and packed `w[N / 16, K / group, 16, group]`
   arguments (a batched one, `winograd.py`'s 16 products, per product), and the float16 and int16 attentions (`attention_kernel.py`, `attention_int16.py`)
   their two matmuls' multiply-adds.
5. Class each kernel: its precision from the first tensor it reads (8-bit integers, or the
   int16 pairs of AVX2's int8 GEMM: `int8`, against the int8 dot-product peak, on AVX2 the
   `vpmaddubsw` triple's, so that a GEMM of 8-bit weights on `vpmaddwd` shows what 7-bit ones
   would gain; float32: `fp32`, against the FMA peak; int32, as W8A8's
   grouped convs compute: `int32`, no peak measured), `fp16` if it reads float16 (no peak
   measured), and its family, `gemm`, `conv`,
   `depthwise` or `other`, from its symbol, which `FuseOps` builds from the ops it fused
   (optkit's own kernels: `packed_matmul`, `packed_conv2d`, `depthwise_conv2d_nhwc`,
   `vnni_gemm`, `fma_gemm`), and for grouped convs from their weight's shape. Only the first three
   families get a % of peak: the op counts of the others include compares, selects and
   polynomial steps that are no multiply-adds, and can pass 100%.

Kernel times are of each kernel alone with warm caches, so their sum can differ from the
model's latency (the report gives both).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optkit.backends.artifact import Artifact
from optkit.backends.lowering import lower
from optkit.backends.peaks import CpuPeaks
from optkit.backends.vnni import GEMM_KERNEL, KERNEL_ATTR

from optkit.errors import BackendError, ConfigError
from optkit.ir.program import Program
from optkit.timing import interleaved_latency_ms

log = logging.getLogger(__name__)

VNNI_INTRINSICS = ("vpdpbusd",)  # in a kernel's TIR: counted from its shapes (step 4)
LAST_RELAX_PASS = "AttachGlobalSymbol"
_FAMILIES = (
    ("depthwise", re.compile(r"depthwise")),
    ("conv", re.compile(r"conv")),
    ("gemm", re.compile(r"matmul|gemm|dense|bmm")),
)
GOAL_FAMILIES = ("gemm", "conv")  # "the big GEMM/conv kernels" of issue 17's goal


@dataclass(frozen=True)
class KernelTime:
    """One compiled kernel: calls per model run, median time per call, operations per call, its
    precision (`fp32`, `int8` or `other`), family and argument shapes."""

    name: str
    calls: int
    ms_per_call: float
    ops: float
    precision: str
    family: str
    shapes: tuple[str, ...] = ()
    in_model_ms: float = 0.0  # all its calls in one model run, timed inside the runs (`time_in_model`)

    @property
    def total_ms(self) -> float:
        return self.calls * self.ms_per_call

    @property
    def gops(self) -> float:
        """GFLOP/s (fp32) or GOP/s (int8) of one call."""
        return self.ops / (self.ms_per_call * 1e6) if self.ms_per_call > 0 else 0.0

    def percent_of_peak(self, peaks: CpuPeaks) -> float | None:
        """Its rate as a percentage of the peak of its precision; None for `other` kernels and
        for kernels without a peak or without operations."""
        peak = peaks.peak_for(self.precision)
        if peak is None or self.ops <= 0 or self.family == "other":
            return None
        return 100.0 * self.gops / peak.gops


@dataclass(frozen=True)
class KernelProfile:
    """The kernels of one lowered model, biggest total time first, with the model's own latency."""

    model: str
    kernels: tuple[KernelTime, ...]
    model_ms: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kernels_ms(self) -> float:
        return sum(k.total_ms for k in self.kernels)

    @property
    def in_model_ms(self) -> float:
        """The kernels' summed time inside model runs (the rest of a run is the VM's own work)."""
        return sum(k.in_model_ms for k in self.kernels)

    def top(self, count: int = 5) -> tuple[KernelTime, ...]:
        return self.kernels[:count]

    def share(self, kernel: KernelTime) -> float:
        """The kernel's fraction of the summed kernel time."""
        return kernel.total_ms / self.kernels_ms if self.kernels_ms > 0 else 0.0

    def family_rate(self, peaks: CpuPeaks, families: tuple[str, ...] = GOAL_FAMILIES) -> dict[str, float]:
        """Per precision, the time-weighted % of peak of all kernels of `families` together
        (their operations over their time)."""
        rates: dict[str, float] = {}
        for precision in ("fp32", "int8"):
            peak = peaks.peak_for(precision)
            chosen = [k for k in self.kernels if k.family in families and k.precision == precision and k.ops]
            seconds = sum(k.total_ms for k in chosen) / 1e3
            if peak is not None and seconds > 0:
                rates[precision] = 100.0 * sum(k.ops * k.calls for k in chosen) / seconds / 1e9 / peak.gops
        return rates


def kernel_family(name: str, shapes: list[tuple[tuple[int, ...], str]] | None = None) -> str:
    """`gemm`, `conv`, `depthwise` or `other`, from a kernel's symbol; a `conv` whose arguments
    are an NCHW `x[B, C, H, W]` and an OIHW weight `[C, 1, KH, KW]` (one input channel per
    group: TVM's generic grouped conv, which W8A8 depthwise convs run as) is `depthwise`."""
    family = next((family for family, pattern in _FAMILIES if pattern.search(name)), "other")
    tensors = [s for s, _d in shapes or []]
    if family == "conv" and len(tensors) >= 2 and len(tensors[0]) == 4 and len(tensors[1]) == 4:
        x, w = tensors[0], tensors[1]
        if w[1] == 1 and w[0] == x[1] and w[2] * w[3] > 1:
            return "depthwise"
    return family


def precision_of(dtypes: list[str]) -> str:
    """A kernel's precision from its tensor arguments: `int8` when the first (the activation it
    reads) holds 8-bit integers and the second (its weight) is no float32 (a W8A8 depthwise conv
    reads int8 and computes in float32: `fp32`), or both are int16 (AVX2's int8 GEMM, `vnni.U8S16`,
    holds its 8-bit values in int16), `fp16` when any is float16 (the float16
    attention reads Q in float32), `int16` when any holds words of two int16 (the int16
    attention's K and V, `attention_int16.py`; no peak measured), else `fp32`, `int32` (integer
    arithmetic without a measured peak) or `other`."""
    first = dtypes[0] if dtypes else ""
    if first in ("int8", "uint8"):
        return "fp32" if dtypes[1:2] == ["float32"] else "int8"
    if dtypes[:2] == ["int16", "int16"]:
        return "int8"
    if "float16" in dtypes:
        return "fp16"
    if "uint32" in dtypes:
        return "int16"
    return {"float32": "fp32", "int32": "int32"}.get(first, "other")


def vnni_ops(shapes: list[tuple[tuple[int, ...], str]], out_pad: Any = None) -> float:
    """Operations of a `vnni.gemm_func` kernel (VNNI or FMA, with an epilogue or not) from its
    arguments: the second is the packed `w[N / 16, K / group, 16, group]`; M is the row count
    of the first, `x[M, K]`, or, for a conv read in place (`vnni.Conv`, a 4-D image), of the
    output `y[M, N]`, the last argument, or, when that is a padded image (`out_pad`, the
    kernel's `vnni.OutPad`), its images' unpadded pixels."""
    first = shapes[0] if shapes else None
    x = (
        first[0]
        if first is not None and first[1] in ("uint8", "int16", "float32") and len(first[0]) == 2
        else None
    )
    w = shapes[1][0] if len(shapes) > 1 and shapes[1][1] in ("int8", "int16", "float32") else None
    if w is None or len(w) != 4 or (x is None and len(shapes[-1][0]) != 2 and out_pad is None):
        raise BackendError(
            f"a tile GEMM kernel without x[M, K] or y[M, N], and a packed weight argument: {shapes}"
        )
    if x is not None:
        m = x[0]
    elif out_pad is not None:
        m = shapes[-1][0][0] * out_pad.height * out_pad.width
    else:
        m = shapes[-1][0][0]
    return float(2 * m * w[1] * w[3] * w[0] * w[2])


_LOOP = re.compile(
    r"^(\s*)for .* in (T\.grid|T\.parallel|T\.unroll|T\.vectorized|T\.serial|range)\((.*)\):\s*$"
)
_REDUCE = re.compile(r'T\.axis\.reduce\(|T\.axis\.remap\("[SR]*R')
_BLOCK = re.compile(r"^(\s*)with T\.sblock\(")


def _extent(kind: str, args: str) -> int:
    values = [int(v) for v in re.findall(r"(?<![\w.])(\d+)(?![\w.])", re.sub(r"T\.int(32|64)\(", "(", args))]
    if kind == "T.grid":
        return math.prod(values)
    return values[-1] - values[0] if len(values) == 2 else (values[0] if values else 1)


def reduction_volume(script: str) -> int:
    """Iterations of the reduction blocks (those with a reduce axis) of a scheduled
    PrimFunc's TVMScript: the product of the loop extents around each, summed."""
    lines = script.splitlines()
    stack: list[tuple[int, int]] = []  # (indent, extent) of the loops enclosing the line
    total = 0
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        stack = [(d, e) for d, e in stack if d < indent] if line.strip() else stack
        if (loop := _LOOP.match(line)) is not None:
            stack.append((indent, _extent(loop.group(2), loop.group(3))))
        elif _BLOCK.match(line) is not None:
            body = []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            if any(_REDUCE.search(b) for b in body):
                total += math.prod(e for _, e in stack)
    return total


def kernel_ops(func: Any, shapes: list[tuple[tuple[int, ...], str]], family: str = "other") -> float:
    """Operations per call of PrimFunc `func` called with tensors of `shapes` (shape, dtype);
    a multiply-add counts 2. A GEMM or conv (`family`) counts its reductions' multiply-adds only:
    the epilogue fused into its tile write-back (a GELU's polynomial, a requantization) would
    otherwise count as GEMM work and inflate its share of the peak."""
    import tvm
    from optkit.backends.attention_kernel import attention_ops
    from tvm.s_tir.analysis import estimate_tir_flops

    if (ops := attention_ops(func, shapes)) is not None:
        return ops
    script = func.script()
    attrs = func.attrs
    tile_gemm = attrs is not None and str(attrs.get(KERNEL_ATTR, "")) == GEMM_KERNEL
    if tile_gemm or any(name in script for name in VNNI_INTRINSICS):
        from optkit.backends.vnni import OutPad, products

        # a batched GEMM's x and w hold all its products: M x K x N counted once per product
        return vnni_ops(shapes, OutPad.of(func)) / products(func)
    if family in ("gemm", "conv", "depthwise") and (macs := reduction_volume(script)) > 0:
        return 2.0 * macs
    try:
        return float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception as err:  # TVM's estimator has no rule for some intrinsics
        log.warning("cannot count the operations of a kernel (%s); counted as 0", str(err).splitlines()[-1])
        return 0.0


def lower_with_kernels(program: Program, **lower_options: Any) -> tuple[Artifact, dict[str, Any]]:
    """`lower(program, "cpu", **lower_options)` and the compiled PrimFuncs by global symbol."""
    import tvm

    kept: list[Any] = []

    @tvm.instrument.pass_instrument
    class _KeepLastRelaxModule:
        def run_after_pass(self, mod: Any, info: Any) -> None:
            if info.name == LAST_RELAX_PASS:
                kept.append(mod)

    with tvm.transform.PassContext(instruments=[_KeepLastRelaxModule()]):
        artifact = lower(program, "cpu", **lower_options)
    if not kept:
        raise BackendError(f"lowering {program.name} ran no {LAST_RELAX_PASS} pass: no kernels to profile")
    funcs = {}
    for gvar, func in kept[-1].functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
            funcs[str(symbol or gvar.name_hint)] = func
    return artifact, funcs


@dataclass
class _Calls:
    func: Any
    args: list[Any]
    count: int = 0


def record_calls(artifact: Artifact, inputs: tuple[Any, ...], kernels: dict[str, Any]) -> dict[str, _Calls]:
    """Run `artifact` once and return, per kernel of `kernels` it called, the callable, a copy
    of its first call's arguments and the number of calls."""
    import tvm

    calls: dict[str, _Calls] = {}

    def instrument(func: Any, symbol: str, before: bool, _ret: Any, *args: Any) -> int:
        if before and symbol in kernels:
            if symbol not in calls:
                copies = [
                    tvm.runtime.tensor(a.numpy()) if isinstance(a, tvm.runtime.Tensor) else a for a in args
                ]
                calls[symbol] = _Calls(func, copies)
            calls[symbol].count += 1
        return 0  # VMInstrumentReturnKind.kNoOp: run the call

    vm = artifact.virtual_machine()
    vm.set_instrument(instrument)
    try:
        artifact.run(*inputs)
    finally:
        vm.set_instrument(None)
    return calls


def time_in_model(
    artifact: Artifact, inputs: tuple[Any, ...], kernels: dict[str, Any], runs: int = 10, warmup: int = 1
) -> dict[str, float]:
    """Per kernel of `kernels` that the model calls, the ms its calls take in one run of the
    model, timed inside the runs (from the end of the VM instrument's call before each call to
    the start of its call after it): the median over `runs` runs after `warmup`."""
    import statistics
    import time

    current: dict[str, float] = {}
    started = [0.0]

    def instrument(_func: Any, symbol: str, before: bool, _ret: Any, *_args: Any) -> int:
        now = time.perf_counter()
        if symbol in kernels:
            if before:
                started[0] = time.perf_counter()
            else:
                current[symbol] = current.get(symbol, 0.0) + now - started[0]
        return 0  # VMInstrumentReturnKind.kNoOp: run the call

    per_run: list[dict[str, float]] = []
    vm = artifact.virtual_machine()
    vm.set_instrument(instrument)
    try:
        for i in range(warmup + runs):
            current.clear()
            artifact.run(*inputs)
            if i >= warmup:
                per_run.append(dict(current))
    finally:
        vm.set_instrument(None)
    called = {name for run in per_run for name in run}
    return {name: 1e3 * statistics.median(run.get(name, 0.0) for run in per_run) for name in called}


def _bound(call: _Calls) -> Callable[[], Any]:
    return lambda: call.func(*call.args)


def _shapes(args: list[Any]) -> list[tuple[tuple[int, ...], str]]:
    import tvm

    return [(tuple(int(d) for d in a.shape), str(a.dtype)) for a in args if isinstance(a, tvm.runtime.Tensor)]


def profile_kernels(
    program: Program,
    warmup: int = 2,
    repeats: int = 10,
    model_repeats: int = 10,
    progress: Callable[[str], None] | None = None,
    **lower_options: Any,
) -> KernelProfile:
    """Lower `program` for the CPU and profile its kernels (steps 1-5 above), biggest first.

    Run it with TVM's runtime on the threads to measure (`threads.set_runtime_threads`); the
    figures are medians of `repeats` interleaved rounds over the kernels and of `model_repeats`
    model runs."""
    if repeats < 1 or model_repeats < 1 or warmup < 0:
        raise ConfigError(
            f"repeats and model_repeats must be >= 1 and warmup >= 0, got {repeats}, {model_repeats}, {warmup}"
        )
    say = progress or (lambda _msg: None)
    say(f"lower {program.name}")
    artifact, funcs = lower_with_kernels(program, **lower_options)
    inputs = tuple(program.example_inputs)
    say("time the model")
    model_ms = artifact.latency_ms(*inputs, warmup=warmup, repeats=model_repeats)["median"]
    say("record kernel calls")
    calls = record_calls(artifact, inputs, funcs)
    say("time the kernels inside model runs")
    in_model = time_in_model(artifact, inputs, funcs, runs=model_repeats, warmup=warmup)
    say(f"time {len(calls)} kernels in {repeats} interleaved rounds")
    timed = interleaved_latency_ms(
        {name: _bound(call) for name, call in calls.items()}, warmup=warmup, repeats=repeats
    )
    kernels = []
    for name, call in calls.items():
        shapes = _shapes(call.args)
        kernels.append(
            KernelTime(
                name=name,
                calls=call.count,
                ms_per_call=timed[name]["median"],
                ops=kernel_ops(funcs[name], shapes, kernel_family(name, shapes)),
                precision=precision_of([d for _, d in shapes]),
                family=kernel_family(name, shapes),
                shapes=tuple(f"{d}{list(s)}" for s, d in shapes),
                in_model_ms=in_model.get(name, 0.0),
            )
        )
    kernels.sort(key=lambda k: k.total_ms, reverse=True)
    return KernelProfile(program.name, tuple(kernels), model_ms, dict(artifact.info))
