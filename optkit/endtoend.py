"""What a user gets end to end: optimize's latency and sampling tables, measured in one process.

Every runtime runs on the same number of threads (`threads`: PyTorch's intra-op pool, ONNX
Runtime's intra-op threads and TVM's runtime pool), all are built and warmed up before timing
(torch.compile compiles, the cached sampler builds its step variants), and they are timed in
interleaved rounds (`optkit.timing.interleaved_latency_ms`), each call starting after the
previous runtime's spinning pool went idle and one untimed call of its own when there is more
than one thread (`optkit.timing.settle_before`). The machine's
load average is recorded beside the figures: on a busy machine absolute times inflate (PyTorch's
OpenMP pool most of all), and the ratios of interleaved runs are the figures that hold.

The sampling table's rows, one batch of the workload's sampler each:

| row | what runs |
|---|---|
| float eager | the input Program's graph in PyTorch |
| float torch.compile | the same graph under `torch.compile` (inductor) |
| float ONNX Runtime | the input Program exported to ONNX |
| optimized eager | the optimized Program (block-cached when it has a schedule) in PyTorch |
| compiled pipeline | the optimized Program and its step variants in TVM (`Pipeline.sample`) |
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from optkit import quality
from optkit.backends.pipeline import Pipeline
from optkit.ir.onnx_io import onnx_session
from optkit.ir.program import Program
from optkit.metrics import psnr_db
from optkit.report import Report, Table
from optkit.timing import interleaved_latency_ms, speedup

COLUMNS = ["runtime", "median", "p10", "p90", "speed-up vs float eager"]
UNITS = {"median": "ms", "p10": "ms", "p90": "ms", "speed-up vs float eager": "x"}


@contextlib.contextmanager
def same_threads(threads: int, pipeline: Pipeline | None = None) -> Iterator[int]:
    """PyTorch (and TVM's runtime pool, with a CPU `pipeline`) on `threads` threads inside the
    block; yields the count TVM reports (it keeps that size after the block)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = threads
        if pipeline is not None and pipeline.target.name == "cpu":
            from optkit.backends.threads import set_runtime_threads

            got = set_runtime_threads(threads)
        yield got
    finally:
        torch.set_num_threads(before)


def record_conditions(report: Report, threads: int) -> None:
    """The threads every runtime ran on and the machine's load before timing; a note when the
    machine was busy enough to inflate absolute latencies."""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    report.add("threads per runtime (timing)", threads, "threads", "timing_threads")
    report.add("load average before timing (1 min)", round(load, 2), "", "load_average")
    if load > 0.5 * cpus:
        report.notes.append(
            f"The machine was busy while timing (load average {load:.1f} on {cpus} CPUs): absolute "
            "latencies are inflated, PyTorch's most; the speed-ups, measured interleaved, hold better."
        )


def record_peak_memory(report: Report) -> None:
    """The process's peak resident memory so far (capture, passes, export, lowering, timing)."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    report.add("peak resident memory of the run", peak_kib * 1024, "bytes", "peak_rss_bytes")


def latency_table(
    report: Report,
    before: Program,
    after: Program,
    onnx_path: Path | None,
    repeats: int,
    threads: int,
    pipeline: Pipeline | None = None,
    float_onnx: Path | None = None,
) -> None:
    """One call on the example inputs: eager before and after passes, ONNX Runtime on the
    input model (`float_onnx`) and on the optimized one, and the compiled `main`, interleaved."""
    runners: dict[str, Callable[[], Any]] = {"before": before.run}
    if float_onnx is not None:
        float_session = onnx_session(float_onnx, threads)
        float_feeds = {
            i.name: t.numpy() for i, t in zip(float_session.get_inputs(), before.example_inputs, strict=True)
        }
        runners["ort_float"] = lambda: float_session.run(None, float_feeds)
    runners["after"] = after.run
    if onnx_path is not None:
        session = onnx_session(onnx_path, threads)
        names = [i.name for i in session.get_inputs()]
        feeds = {n: t.numpy() for n, t in zip(names, after.example_inputs, strict=True)}
        runners["ort"] = lambda: session.run(None, feeds)
    if pipeline is not None:
        compiled = pipeline.main
        runners["tvm"] = lambda: compiled.run_torch(*after.example_inputs)
    timing = interleaved_latency_ms(runners, warmup=3, repeats=repeats, settle=threads > 1)
    base = timing["before"]
    what = {
        "before": "PyTorch eager (captured, before passes)",
        "ort_float": "ONNX Runtime (input graph)",
        "after": "PyTorch eager (optimized graph)",
        "ort": "ONNX Runtime (optimized graph)",
        "tvm": f"TVM {pipeline.target.name} (optimized graph)" if pipeline is not None else "",
    }
    report.tables.append(
        Table(
            f"Latency on the example inputs, one call ({threads} thread(s) each; median of "
            f"{repeats} interleaved runs after 3 warm-up)",
            COLUMNS,
            [_row(what[k], t, base) for k, t in timing.items()],
            UNITS,
        )
    )
    report.add_timing("latency eager (before)", base, "latency_eager_before")
    report.add_timing("latency eager (after)", timing["after"], "latency_eager_after")
    report.add_timing(
        "speed-up of eager (after) vs eager (before)", speedup(base, timing["after"]), "speedup_vs_eager", "x"
    )
    for key, label, name in (("ort", "ONNX Runtime", "ort"), ("tvm", "TVM", "compiled")):
        if key in timing:
            report.add_timing(f"latency {label} (after)", timing[key], f"latency_{name}_after")
            report.add_timing(
                f"speed-up of {label} (after) vs eager (before)",
                speedup(base, timing[key]),
                f"speedup_{name}_vs_eager",
                "x",
            )
    if "ort_float" in timing:
        report.add_timing("latency ONNX Runtime (before)", timing["ort_float"], "latency_ort_before")
        if "tvm" in timing:
            report.add_timing(
                "speed-up of TVM (after) vs ONNX Runtime (before)",
                speedup(timing["ort_float"], timing["tvm"]),
                "speedup_compiled_vs_ort_float",
                "x",
            )


def sampling_table(
    report: Report,
    before: Program,
    after: Program,
    repeats: int,
    threads: int,
    pipeline: Pipeline | None = None,
    float_onnx: Path | None = None,
    inductor: bool = False,
) -> None:
    """End-to-end sampling of one batch with the workload's sampler (see the module docstring
    for the rows); `inductor` adds the torch.compile row (its first call compiles, untimed)."""
    diffusion = before.workload.diffusion
    assert diffusion is not None
    draw = {"before": quality.sampler_for(before)}
    if inductor:
        draw["inductor"] = quality.sampler_for(before, quality.inductor_denoiser(before))
    if float_onnx is not None:
        draw["ort"] = quality.sampler_for(
            before, quality.onnx_denoiser(before, onnx_session(float_onnx, threads))
        )
    draw["after"] = quality.sampler_for(after)
    if pipeline is not None:
        draw["compiled"] = pipeline.sample
    # Warm-up outside the timing: compiles (inductor) and builds the step variants; the
    # samples of seed 0 give the compiled pipeline's quality against the float sampler.
    first = {name: fn(0) for name, fn in draw.items()}
    if pipeline is not None:
        report.add(
            "compiled samples PSNR vs float samples (seed 0)",
            psnr_db(first["before"], first["compiled"]),
            "dB",
            "compiled_psnr_vs_float_db",
        )
        report.add(
            "compiled samples PSNR vs eager optimized (seed 0)",
            psnr_db(first["after"], first["compiled"]),
            "dB",
            "compiled_psnr_db",
        )
    runners: dict[str, Callable[[], Any]] = {name: functools.partial(fn, 0) for name, fn in draw.items()}
    timing = interleaved_latency_ms(runners, warmup=1, repeats=repeats, settle=threads > 1)
    base = timing["before"]
    cached = " (block-cached)" if after.annotations.cache_schedule else ""
    what = {
        "before": "PyTorch eager, input graph",
        "inductor": "torch.compile (inductor), input graph",
        "ort": "ONNX Runtime, input graph",
        "after": f"PyTorch eager, optimized graph{cached}",
        "compiled": f"TVM {pipeline.target.name}, optimized graph{cached}" if pipeline is not None else "",
    }
    steps = f"{diffusion.steps} {diffusion.sampler.label} steps, guidance {diffusion.guidance_scale:g}"
    report.tables.append(
        Table(
            f"Sampling latency, one batch of {before.example_inputs[0].shape[0]} ({steps}; {threads} "
            f"thread(s) each; median of {repeats} interleaved runs after a warm-up)",
            COLUMNS,
            [_row(what[k], t, base) for k, t in timing.items()],
            UNITS,
        )
    )
    report.add_timing("sampling latency (before)", base, "latency_sampling_before")
    report.add_timing("sampling latency (after)", timing["after"], "latency_sampling_after")
    report.add_timing(
        "sampling speed-up in PyTorch eager, optimized graph (measured)",
        speedup(base, timing["after"]),
        "speedup_sampling",
        "x",
    )
    if "inductor" in timing:
        report.add_timing(
            "sampling latency (torch.compile, input)", timing["inductor"], "latency_sampling_compile_before"
        )
    if "ort" in timing:
        report.add_timing(
            "sampling latency (ONNX Runtime, input)", timing["ort"], "latency_sampling_ort_before"
        )
    if "compiled" in timing:
        report.add_timing("sampling latency (compiled)", timing["compiled"], "latency_sampling_compiled")
        report.add_timing(
            "sampling speed-up of the compiled pipeline (measured)",
            speedup(base, timing["compiled"]),
            "speedup_sampling_compiled",
            "x",
        )
        for key, label, name in (("ort", "ONNX Runtime", "ort"), ("inductor", "torch.compile", "compile")):
            if key in timing:
                report.add_timing(
                    f"sampling speed-up of the compiled pipeline vs {label} float (measured)",
                    speedup(timing[key], timing["compiled"]),
                    f"speedup_sampling_compiled_vs_{name}",
                    "x",
                )


def _row(label: str, t: dict[str, float], base: dict[str, float]) -> list[Any]:
    return [label, t["median"], t["p10"], t["p90"], base["median"] / t["median"]]
