"""Benchmarks of one Program on several runtimes: latency, FLOP rate, memory, output agreement.

| target     | what runs                                                                  |
|------------|----------------------------------------------------------------------------|
| `eager`    | PyTorch eager: the Program's graph module (or the original module if given) |
| `compile`  | `torch.compile` (inductor) of the same module; the first call compiles     |
| `ort`      | ONNX Runtime (CPU) on the Program's ONNX export, intra-op threads = torch's |
| `tvm-cpu`  | `optkit.backends.lower(program, "cpu")`: TVM Relax built for llvm          |
| `tvm-cuda` | the same for CUDA; only where TVM finds a GPU                              |

Every target is built, run once for the output check against eager and warmed up; then all
targets are timed in rounds, one call of each per round (a run of back-to-back calls for a call
under 1 ms, `optkit.timing.run_length`), `repeats` rounds (median, p10, p90 per target), so
that load from other processes falls on every target alike. A target that fails to build
or run is reported as `failed` with the reason and the others still run; one whose outputs differ
from eager beyond the tolerance is reported as `mismatch` with its figures.

Memory, measured two ways and named for what each is:

- `peak RSS growth`: the process's resident memory, sampled every millisecond from just before
  the runtime is built (its libraries imported; for `ort` the ONNX file written) until its
  warm-up ends (not during the timed runs, so that sampling cannot slow them), minus the value
  at the start. It counts weight copies, arenas, activations, and the compiler's own working
  memory where building compiles (`compile`, TVM). It is process-wide: memory that an earlier target freed and this one reused
  is not counted again, so for later targets it is a lower bound.
- `peak tensor memory` (eager only): the most bytes held at once by tensors that one call
  allocated (activations and outputs; weights and inputs excluded), tracked op by op with a
  `TorchDispatchMode`. Compiled runtimes allocate outside PyTorch's dispatcher (inductor
  buffers, ONNX Runtime's arena, TVM's pool), where this cannot be seen.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from optkit.budgets import Budget, check_budgets, parse_budgets
from optkit.errors import BackendError, ConfigError, UnknownNameError
from optkit.fsutil import atomic_dir, atomic_file
from optkit.ir.flops import total_flops
from optkit.ir.onnx_io import export_onnx, flat_outputs, onnx_session
from optkit.ir.program import Program
from optkit.quant.ops import is_quantized
from optkit.refs import load_program_ref
from optkit.report import Report, Table
from optkit.timing import RUN_MS, run_length, settle_before, speedup, summarize, timed_run_ms

log = logging.getLogger(__name__)

TARGETS = ("eager", "compile", "ort", "tvm-cpu", "tvm-cuda")
FLOAT_RTOL = 1e-3
# Quantized kernels round activations to an integer grid; two runtimes may round a value that
# sits on a grid midpoint differently, which moves an output by one step of the grid.
QUANT_RTOL = 1e-2

Progress = Callable[[str], None]


def cuda_available() -> bool:
    """Whether TVM sees a CUDA GPU (the CPU build of PyTorch cannot tell)."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def default_targets() -> tuple[str, ...]:
    """eager, compile, ort, tvm-cpu, and tvm-cuda where a GPU exists."""
    return TARGETS if cuda_available() else TARGETS[:-1]


def parse_targets(text: str) -> tuple[str, ...]:
    """`eager,ort` -> ('eager', 'ort'); an unknown name fails listing the allowed ones."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise ConfigError(f"no targets given; allowed: {', '.join(TARGETS)}")
    for name in names:
        if name not in TARGETS:
            raise UnknownNameError("target", name, TARGETS)
    return names


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how.

    `threads`: PyTorch threads, ONNX Runtime intra-op threads, the TVM CPU target's core count
    and TVM's runtime pool (`optkit.backends.threads`; it keeps that size after the run);
    default: torch's current setting. `tune_trials`: tuning trials for TVM targets (0: untuned
    default schedules), spent by `tuner` (`optkit`: its tile search; `metaschedule`: TVM's
    MetaSchedule, kept per kernel where it beats optkit's schedule; the backend's `lower` checks
    the name).
    Outputs agree when max |target - eager| <= atol + rtol * max |eager| for every output;
    `rtol=None` picks 1e-3 for float graphs and 1e-2 for graphs with quantized kernels.
    """

    targets: tuple[str, ...] = ("eager", "compile", "ort", "tvm-cpu")
    repeats: int = 20
    warmup: int = 3
    threads: int | None = None
    tune_trials: int = 0
    tuner: str = "optkit"
    rtol: float | None = None
    atol: float = 1e-5
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(dict.fromkeys(self.targets)))
        if not self.targets:
            raise ConfigError(f"no targets given; allowed: {', '.join(TARGETS)}")
        for name in self.targets:
            if name not in TARGETS:
                raise UnknownNameError("target", name, TARGETS)
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(
                f"repeats must be >= 1 and warmup >= 0, got repeats={self.repeats}, warmup={self.warmup}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.tune_trials < 0:
            raise ConfigError(f"tune_trials must be >= 0, got {self.tune_trials}")
        if (self.rtol is not None and self.rtol < 0) or self.atol < 0:
            raise ConfigError(f"tolerances must be >= 0, got rtol={self.rtol}, atol={self.atol}")


@dataclass
class TargetResult:
    """One target's figures. `status`: `ok`, `failed` (did not build or run: see `reason`) or
    `mismatch` (ran, but its outputs differ from eager beyond the tolerance)."""

    target: str
    status: str = "ok"
    reason: str = ""
    detail: str = ""
    build_s: float | None = None
    latency: dict[str, float] = field(default_factory=dict)
    calls: int = 1  # back-to-back calls per timed round (calls under `RUN_MS`; `_time_interleaved`)
    gflops_per_s: float | None = None
    rss_peak_bytes: int | None = None
    tensor_peak_bytes: int | None = None
    max_abs_error: float | None = None
    rel_error: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the runtime says about itself

    @property
    def median_ms(self) -> float | None:
        return self.latency.get("median")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BenchResult:
    """Every target's result for one Program, with the settings that produced them."""

    name: str
    flops: int
    threads: int
    config: BenchConfig
    rtol: float
    targets: list[TargetResult]
    reference_abs_max: float = float("nan")  # max |eager output|: the scale of every error

    def get(self, target: str) -> TargetResult:
        """The result of `target`."""
        for r in self.targets:
            if r.target == target:
                return r
        raise UnknownNameError("benchmarked target", target, [r.target for r in self.targets])

    def to_report(self) -> Report:
        """A Report: figures, the per-target table, and notes saying what each column measures."""
        cfg = self.config
        report = Report(f"optkit bench: {self.name}", model=self.name, kind="bench")
        report.add("FLOPs per call", self.flops, "FLOPs", "flops")
        report.add("threads", self.threads, "", "threads")
        report.add("timed runs per target", cfg.repeats, "", "repeats")
        report.add("warm-up runs per target", cfg.warmup, "", "warmup")
        if any(t.startswith("tvm") for t in cfg.targets):
            report.add("TVM tuning trials", cfg.tune_trials, "", "tune_trials")
        eager = next((r for r in self.targets if r.target == "eager" and r.median_ms), None)
        rows = []
        for r in self.targets:
            lat = r.latency
            ratio = eager.median_ms / r.median_ms if eager and eager.median_ms and r.median_ms else None
            rows.append(
                [
                    r.target,
                    r.status,
                    r.info.get("threads", ""),
                    _nan(lat.get("median")),
                    _nan(lat.get("p10")),
                    _nan(lat.get("p90")),
                    _nan(r.gflops_per_s),
                    _nan(ratio),
                    _nan(r.build_s),
                    _mib(r.rss_peak_bytes),
                    _mib(r.tensor_peak_bytes),
                    _nan(r.max_abs_error),
                    _nan(r.rel_error),
                    r.reason or r.detail,
                ]
            )
            key = r.target.replace("-", "_")
            if r.median_ms is not None:
                report.add_timing(f"{r.target} latency (median)", r.latency, f"latency_{key}")
            if eager and eager.median_ms and r.median_ms and r is not eager:
                report.add_timing(
                    f"{r.target} speed-up vs eager",
                    speedup(eager.latency, r.latency),
                    f"speedup_{key}_vs_eager",
                    "x",
                )
            if r.status != "ok":
                report.notes.append(f"{r.target} {r.status}: {r.reason}")
        runs = [f"{r.target} {r.calls}" for r in self.targets if r.calls > 1 and r.median_ms]
        if runs:
            report.notes.append(
                f"Calls under {RUN_MS:g} ms are timed per round as one run of back-to-back calls after an "
                f"untimed one, and the figure is the run's mean per call (calls per run: {', '.join(runs)}): "
                "timed alone after the other runtimes, such a call measures the caches they left cold."
            )
        report.tables.append(
            Table(
                f"Latency per target (median, p10, p90 of {cfg.repeats} interleaved rounds after "
                f"{cfg.warmup} warm-up)",
                [
                    "target",
                    "status",
                    "threads",
                    "median",
                    "p10",
                    "p90",
                    "achieved",
                    "speed-up vs eager",
                    "build",
                    "peak RSS growth",
                    "peak tensor memory",
                    "max abs error",
                    "rel error",
                    "note",
                ],
                rows,
                {
                    "median": "ms",
                    "p10": "ms",
                    "p90": "ms",
                    "achieved": "GFLOP/s",
                    "speed-up vs eager": "x",
                    "build": "s",
                    "peak RSS growth": "MiB",
                    "peak tensor memory": "MiB",
                },
            )
        )
        if self.reference_abs_max == 0:
            report.notes.append(
                "Every eager output is exactly zero (e.g. a zero-initialized head): the output check "
                "cannot tell a right runtime from a wrong one here."
            )
        report.notes += [
            f"Outputs agree when max |target - eager| <= {cfg.atol:g} + {self.rtol:g} * max |eager| "
            "for every output; rel error = max abs error / max |eager|.",
            "Achieved GFLOP/s = FLOPs per call (optkit.ir.flops) / median latency.",
            "Threads: what each runtime reports it ran on (PyTorch set_num_threads, ONNX Runtime "
            "intra-op threads, TVM's runtime pool via runtime.config_threadpool); "
            + (
                "with more than one thread, each timed call follows one untimed call of the same "
                "runtime made after this process's CPU use fell below 10% over 5 ms "
                "(optkit.timing.settle_before), so that a runtime's spinning pool does not take the "
                "cores of the next and the timed call is warm."
                if self.threads > 1
                else "one thread: no pools to settle between runtimes."
            ),
            "Peak RSS growth: process resident memory sampled every 1 ms from just before the runtime "
            "is built (libraries imported, ONNX written) to the end of warm-up, minus the value then "
            "(weight copies, arenas, activations, compiler working memory for compile/TVM); "
            "process-wide, so a lower bound for targets run after others.",
            "Peak tensor memory (eager only): most bytes held at once by tensors one call allocated "
            "(weights and inputs excluded), tracked op by op.",
            "Build: capture-to-runnable time (torch.compile: first call; ORT: ONNX export + session; "
            "TVM: lowering, tuning included).",
        ]
        return report


def _nan(value: float | int | None) -> float | int:
    return float("nan") if value is None else value


def _mib(value: int | None) -> float:
    return float("nan") if value is None else value / 2**20


# -- runners ---------------------------------------------------------------------------------
@dataclass
class _Runner:
    """A built target: `call()` runs it once on the example inputs; `outputs(value)` turns what
    `call` returned into numpy arrays for the check against eager."""

    call: Callable[[], Any]
    outputs: Callable[[Any], list[np.ndarray]]
    detail: str
    keep: list[Any] = field(default_factory=list)  # objects the runner needs alive
    info: dict[str, Any] = field(default_factory=dict)
    warm_ms: float | None = None  # the fastest warm-up call (`run_length`)


@dataclass
class _Context:
    program: Program
    module: nn.Module | None
    inputs: tuple[torch.Tensor, ...]
    threads: int
    tune_trials: int
    work_dir: Path
    say: Progress
    tuner: str = "optkit"
    # Called by a builder once its libraries are imported (and files written): memory from here on
    # is the runtime's own.
    memory_start: Callable[[], None] = lambda: None


def _torch_outputs(value: Any) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in flat_outputs(value)]


def _eager_module(ctx: _Context) -> tuple[Callable[..., Any], str]:
    if ctx.module is not None:
        return ctx.module.eval(), f"original module {type(ctx.module).__name__}"
    return ctx.program.graph_module, "the Program's captured ATen graph"


def _build_eager(ctx: _Context) -> _Runner:
    fn, what = _eager_module(ctx)
    return _Runner(
        lambda: fn(*ctx.inputs),
        _torch_outputs,
        f"PyTorch {torch.__version__} eager, {what}, {torch.get_num_threads()} thread(s)",
        info={"threads": torch.get_num_threads()},
    )


def _build_compile(ctx: _Context) -> _Runner:
    fn, what = _eager_module(ctx)
    ctx.say("compile: torch.compile (inductor); the first call compiles, often 20-60 s")
    compiled = torch.compile(fn, backend="inductor")
    compiled(*ctx.inputs)
    return _Runner(
        lambda: compiled(*ctx.inputs),
        _torch_outputs,
        f"torch.compile inductor of {what}",
        [compiled],
        {"threads": torch.get_num_threads()},
    )


def _build_ort(ctx: _Context) -> _Runner:
    import onnxruntime

    ctx.say("ort: ONNX export")
    path = ctx.work_dir / f"{ctx.program.name}.onnx"
    figures = export_onnx(ctx.program, path, check=False)
    # on CPUs without VNNI the export stores 8-bit int8 weights as uint8 (`optkit.ir.onnx_int8`)
    weights = ", int8 weights as uint8 (exact U8U8 kernels)" if figures["int8_weights_u8"] else ""
    ctx.memory_start()
    session = onnx_session(path, ctx.threads)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(ctx.inputs):
        raise BackendError(f"the ONNX export takes {len(names)} inputs, the Program {len(ctx.inputs)}")
    feeds = {n: t.detach().numpy() for n, t in zip(names, ctx.inputs, strict=True)}
    return _Runner(
        lambda: session.run(None, feeds),
        lambda value: [np.asarray(v) for v in value],
        f"ONNX Runtime {onnxruntime.__version__} CPU, {ctx.threads} intra-op threads{weights}",
        [session],
        {"threads": ctx.threads},
    )


def _lower() -> Callable[..., Any]:
    try:
        from optkit.backends import lower
    except ImportError as err:
        raise BackendError(f"TVM backend not available: {err}") from err
    return lower  # type: ignore[no-any-return]


def _build_tvm(ctx: _Context, device: str) -> _Runner:
    lower = _lower()
    import tvm  # noqa: F401  (loaded before memory is counted)

    ctx.memory_start()
    runtime_threads = None
    if device == "cpu":
        from optkit.backends.threads import set_runtime_threads

        runtime_threads = set_runtime_threads(ctx.threads)
    if device == "cuda" and not cuda_available():
        raise BackendError("tvm-cuda needs a CUDA GPU and TVM finds none (tvm.cuda(0).exist is False)")
    tuned = f"{ctx.tune_trials} {ctx.tuner} tuning trials" if ctx.tune_trials else "untuned default schedules"
    ctx.say(f"tvm-{device}: lowering ({tuned})")
    # Optional keywords of the backend's `lower`: its CPU thread count and progress messages.
    accepted = inspect.signature(lower).parameters
    extra: dict[str, Any] = {}
    if "num_cores" in accepted and device == "cpu":
        extra["num_cores"] = ctx.threads
    if "progress" in accepted:
        extra["progress"] = lambda msg: ctx.say(f"tvm-{device}: {msg}")
    if ctx.tune_trials and ctx.tuner != "optkit":
        extra["tuner"] = ctx.tuner
    artifact = lower(
        ctx.program, target=device, tune_trials=ctx.tune_trials, work_dir=ctx.work_dir / device, **extra
    )
    copies = "host<->device copies included" if device == "cuda" else "input/output copies included"
    info = dict(getattr(artifact, "info", {}) or {})
    blas = f", {info['blas_matmuls']} float matmuls via BLAS callback" if info.get("blas_matmuls") else ""
    pool = ""
    if runtime_threads is not None:
        info["threads"] = runtime_threads
        pool = f", {runtime_threads} runtime thread(s)"
    return _Runner(
        lambda: artifact.run(*ctx.inputs),
        lambda value: [np.asarray(v) for v in value],
        f"TVM {_tvm_version()} {device}, {tuned}{blas}{pool}, Artifact.run ({copies})",
        [artifact],
        info,
    )


def _tvm_version() -> str:
    try:
        import tvm

        return str(tvm.__version__)
    except Exception:
        return "?"


_BUILDERS: dict[str, Callable[[_Context], _Runner]] = {
    "eager": _build_eager,
    "compile": _build_compile,
    "ort": _build_ort,
    "tvm-cpu": lambda ctx: _build_tvm(ctx, "cpu"),
    "tvm-cuda": lambda ctx: _build_tvm(ctx, "cuda"),
}


# -- measurement -------------------------------------------------------------------------------
class _RssSampler:
    """Peak resident set size of this process, sampled on a thread every `period_s`."""

    def __init__(self, period_s: float = 1e-3) -> None:
        self._proc = psutil.Process()
        self._period = period_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.start_rss = self._proc.memory_info().rss
        self.peak = self.start_rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def restart(self) -> None:
        """Count from now: the current RSS becomes the baseline."""
        with self._lock:
            self.start_rss = self.peak = self._proc.memory_info().rss

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            rss = self._proc.memory_info().rss
            with self._lock:
                self.peak = max(self.peak, rss)

    def stop(self) -> int:
        """Stop sampling; return the peak growth over the starting RSS in bytes."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak - self.start_rss


class _TensorPeak(TorchDispatchMode):
    """Most bytes held at once by storages that ops allocated inside this mode."""

    def __init__(self, external: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self._external = {t.untyped_storage().data_ptr() for t in external}
        self._refs: dict[int, int] = {}  # storage pointer -> live tensors that use it
        self._sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in flat_outputs(out):
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self._external:
                continue
            if ptr not in self._refs:
                self._refs[ptr] = 0
                self._sizes[ptr] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._refs[ptr] += 1
            weakref.finalize(t, self._release, ptr)
        return out

    def _release(self, ptr: int) -> None:
        self._refs[ptr] -= 1
        if not self._refs[ptr]:
            del self._refs[ptr]
            self.live -= self._sizes.pop(ptr)


def tensor_peak_bytes(
    fn: Callable[..., Any], inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
) -> int:
    """Peak bytes of tensors allocated by one call `fn(*inputs)` (weights and inputs excluded)."""
    mode = _TensorPeak(list(inputs) + list(weights))
    with mode:
        out = fn(*inputs)
    del out
    return mode.peak


def compare_outputs(
    got: list[np.ndarray], expected: list[np.ndarray], rtol: float, atol: float
) -> tuple[float, float, str]:
    """(max abs error, relative error, '' or why they disagree) of `got` against `expected`.

    Relative error is the max abs error over max |expected|, per output, the worst output taken.
    """
    if len(got) != len(expected):
        return float("nan"), float("nan"), f"{len(got)} outputs, eager has {len(expected)}"
    worst_abs = worst_rel = 0.0
    problem = ""
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        g = np.asarray(g)
        if g.shape != e.shape:
            return float("nan"), float("nan"), f"output {i} has shape {g.shape}, eager {e.shape}"
        if not e.size:
            continue
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        if (np.isnan(g64) & ~np.isnan(e64)).any():
            err = float("inf")
        else:
            diff = np.abs(g64 - e64)
            err = 0.0 if np.isnan(diff).all() else float(np.nanmax(diff))
        scale = float(np.nanmax(np.abs(e64))) if not np.isnan(e64).all() else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        if not err <= atol + rtol * scale and not problem:
            problem = (
                f"output {i}: max abs error {err:.3g} exceeds {atol:g} + {rtol:g} * {scale:.3g} (max |eager|)"
            )
    return worst_abs, worst_rel, problem


def _first_line(err: BaseException) -> str:
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def benchmark(
    program: Program,
    config: BenchConfig | None = None,
    *,
    module: nn.Module | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure `program` on every target in `config` (see the module docstring).

    With `module` (the nn.Module the Program was captured from), `eager` and `compile` run it
    instead of the captured graph. Never raises for a target that fails: its result says why.
    """
    config = config or BenchConfig()
    say = progress or (lambda _msg: None)
    threads = config.threads or torch.get_num_threads()
    rtol = config.rtol if config.rtol is not None else QUANT_RTOL if is_quantized(program) else FLOAT_RTOL
    flops = total_flops(program)
    results: list[TargetResult] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_torch_threads(threads))
        stack.enter_context(torch.no_grad())
        if config.work_dir is not None:
            work = Path(config.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optkit-bench-")))
        ctx = _Context(
            program, module, program.example_inputs, threads, config.tune_trials, work, say, config.tuner
        )
        eager_fn, _ = _eager_module(ctx)
        reference = _torch_outputs(eager_fn(*ctx.inputs))
        prepared = []
        for target in config.targets:
            result, runner = _prepare(target, ctx, reference, config, rtol)
            results.append(result)
            if runner is not None:
                prepared.append((result, runner))
            gc.collect()
        _time_interleaved(prepared, config.repeats, say, settle=threads > 1)
        for result in results:
            median = result.latency.get("median")
            result.gflops_per_s = flops / (median * 1e6) if median else None
        del prepared
        if "eager" in config.targets and results[config.targets.index("eager")].status != "failed":
            ctx.say("eager: peak tensor memory")
            fn, _ = _eager_module(ctx)
            weights = list(fn.parameters()) + list(fn.buffers()) if isinstance(fn, nn.Module) else []
            results[config.targets.index("eager")].tensor_peak_bytes = tensor_peak_bytes(
                fn, ctx.inputs, weights
            )
    scale = max((float(np.max(np.abs(r))) for r in reference if r.size), default=0.0)
    return BenchResult(program.name, flops, threads, config, rtol, results, scale)


def _prepare(
    target: str, ctx: _Context, reference: list[np.ndarray], config: BenchConfig, rtol: float
) -> tuple[TargetResult, _Runner | None]:
    """Build `target`, check its outputs against eager, warm it up; the runner is None on failure."""
    result = TargetResult(target)
    sampler = _RssSampler()
    ctx.memory_start = sampler.restart
    try:
        ctx.say(f"{target}: build")
        start = time.perf_counter()
        try:
            runner = _BUILDERS[target](ctx)
        except Exception as err:
            log.info("%s failed to build", target, exc_info=True)
            result.status, result.reason = "failed", f"build failed: {_first_line(err)}"
            return result, None
        result.build_s = time.perf_counter() - start
        result.detail, result.info = runner.detail, runner.info
        ctx.say(f"{target}: output check and {config.warmup} warm-up runs")
        try:
            got = runner.outputs(runner.call())
            runner.warm_ms = min((timed_run_ms(runner.call) for _ in range(config.warmup)), default=None)
        except Exception as err:
            log.info("%s failed to run", target, exc_info=True)
            result.status, result.reason = "failed", f"run failed: {_first_line(err)}"
            return result, None
        abs_err, rel_err, problem = compare_outputs(got, reference, rtol, config.atol)
        result.max_abs_error, result.rel_error = abs_err, rel_err
        if problem:
            result.status, result.reason = "mismatch", f"outputs differ from eager: {problem}"
        return result, runner
    finally:
        result.rss_peak_bytes = sampler.stop()


def _time_interleaved(
    prepared: list[tuple[TargetResult, _Runner]], repeats: int, say: Progress, settle: bool = False
) -> None:
    """Time every runner `repeats` times in rounds (one timed run of each per round), so that
    load from other processes that comes and goes falls on all targets alike. A runner whose
    call takes under `RUN_MS` is timed per round as a run of back-to-back calls (`run_length`,
    `timed_run_ms`), the count kept in `TargetResult.calls`. With `settle` (more than one
    thread), each run starts once the previous runtime's pool has gone idle and after one
    untimed call of its own (`settle_before`)."""
    times: dict[str, list[float]] = {r.target: [] for r, _ in prepared}
    live = []
    for result, runner in prepared:
        try:
            result.calls = run_length(runner.call, seen_ms=runner.warm_ms)
            live.append((result, runner))
        except Exception as err:
            result.status, result.reason = "failed", f"run failed while timing: {_first_line(err)}"
    for i in range(repeats):
        say(f"timed round {i + 1}/{repeats}: {', '.join(r.target for r, _ in live)}")
        for result, runner in list(live):
            try:
                if settle:
                    settle_before(runner.call)
                times[result.target].append(timed_run_ms(runner.call, result.calls))
            except Exception as err:
                result.status, result.reason = "failed", f"run failed while timing: {_first_line(err)}"
                live.remove((result, runner))
    for result, _ in live:
        result.latency = summarize(times[result.target])


# -- files -------------------------------------------------------------------------------------
def latency_plot(path: str | Path, result: BenchResult) -> Path:
    """Bar chart of the median latency per target with p10-p90 whiskers, written atomically.
    Targets without a latency (failed) are named under the axis instead of drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    timed = [r for r in result.targets if r.median_ms is not None]
    failed = [r.target for r in result.targets if r.median_ms is None]
    med = [r.latency["median"] for r in timed]
    low = [r.latency["median"] - r.latency["p10"] for r in timed]
    high = [r.latency["p90"] - r.latency["median"] for r in timed]
    colors = ["#3a7bd5" if r.status == "ok" else "#d9534f" for r in timed]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(timed) + 2), 4))
    ax.bar(range(len(timed)), med, yerr=[low, high], capsize=5, color=colors)
    ax.set_xticks(range(len(timed)))
    ax.set_xticklabels([r.target + ("" if r.status == "ok" else f"\n({r.status})") for r in timed])
    ax.set_ylabel("latency per call (ms): median, p10-p90")
    ax.set_title(f"{result.name}: {result.threads} thread(s), {result.config.repeats} runs per target")
    if failed:
        ax.set_xlabel(f"failed, not drawn: {', '.join(failed)}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def bench_file(
    ref: str,
    output: str | Path,
    config: BenchConfig | None = None,
    *,
    overwrite: bool = False,
    trust_pickle: bool = False,
    progress: Progress | None = None,
    budgets: Sequence[str | Budget] = (),
) -> tuple[BenchResult, Report]:
    """Benchmark the model at `ref`; write report.json, report.md and bench.png to `output`
    (atomically: the directory appears whole or not at all). `budgets` (`optkit.budgets`) are
    checked into `report.budgets` before anything is written; a bad one writes nothing."""
    config = config or BenchConfig()
    budgets = parse_budgets(budgets)
    say = progress or (lambda _msg: None)
    output = Path(output)
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        # Checked before the (slow) run; atomic_dir checks again when writing.
        raise ConfigError(
            f"output directory {output} exists and is not empty; pass --overwrite to replace it"
        )
    say("capture")
    program = load_program_ref(ref, trust_pickle=trust_pickle)
    result = benchmark(program, config, progress=say)
    report = result.to_report()
    report.budgets = check_budgets(report, budgets)
    with atomic_dir(output, overwrite) as tmp:
        latency_plot(tmp / "bench.png", result)
        report.plots["Latency per target"] = "bench.png"
        report.write(tmp)
    return result, report
