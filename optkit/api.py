"""The library's entry points that the CLI calls: optimize and analyze, on Programs or files.

`optimize_file` is the main job: resolve a model reference, run passes (verified after each),
and write into an output directory, atomically: the optimized Program (`model.pt2` + sidecar),
its ONNX export (checked in ONNX Runtime), a report (JSON, Markdown) and plots.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from optkit import endtoend, quality
from optkit.backends.pipeline import check_target, lower_pipeline
from optkit.budgets import Budget, check_budgets, parse_budgets
from optkit.errors import ConfigError
from optkit.fsutil import atomic_dir
from optkit.ir import flops
from optkit.ir.memory import EXTRA_WEIGHTS, check_memory, peak_message
from optkit.ir.onnx_int8 import int8_kept_note, int8_weights_note, resolve_int8_weights
from optkit.ir.onnx_io import OnnxModel, export_onnx
from optkit.ir.program import Program
from optkit.ir.serialize import save_program
from optkit.pipeline import PassManager, PipelineResult, build_passes
from optkit.refs import load_model, load_program_ref
from optkit.report import Report, Table, bar_plot, heatmap_plot
from optkit.workload import Calibration, Workload

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# What a user gets, first in optimize's summary: quality against the input, then end to end.
HEADLINE = (
    "quality_psnr_db",
    "quality_sqnr_db",
    "quality_top1_pct",
    "perplexity_before",
    "perplexity_after",
    "compiled_psnr_vs_float_db",
    "speedup_compiled_vs_eager",
    "speedup_compiled_vs_ort_float",
    "speedup_sampling_compiled",
    "speedup_sampling_compiled_vs_ort",
    "speedup_sampling_compiled_vs_compile",
    "speedup_sampling",
    "latency_sampling_before",
    "latency_sampling_compile_before",
    "latency_sampling_ort_before",
    "latency_sampling_after",
    "latency_sampling_compiled",
    "compiled_psnr_db",
    "timing_threads",
    "load_average",
)
WorkloadLike = Workload | str | Path


def resolve_workload(
    program: Program, workload: WorkloadLike | None = None, calib: str | Path | None = None
) -> Program:
    """Give `program` the workload `workload` (a Workload or a TOML file) and/or the calibration
    data at `calib` (see `Calibration.from_path`), checked against its inputs; returns it."""
    if workload is not None:
        program.with_workload(workload if isinstance(workload, Workload) else Workload.from_toml(workload))
    if calib is not None:
        program.with_workload(program.workload.replace(calibration=Calibration.from_path(calib)))
    return program


def optimize(
    program: Program,
    passes: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    check_numerics: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> PipelineResult:
    """Run the named passes (or pipelines) on `program`; the input is left untouched."""
    return PassManager(build_passes(passes, options), check_numerics, progress).run(program)


def analyze(program: Program | OnnxModel, block_pattern: str | None = None) -> Report:
    """Graph summary, FLOPs/bytes/parameters per block and in total, for a Program or an ONNX model."""
    if isinstance(program, OnnxModel):
        return _analyze_onnx(program)
    report = Report(f"optkit analyze: {program.name}", model=program.name, kind="analyze")
    _add_size_figures(report, program, "")
    report.add("nodes", len(program.compute_nodes()), "nodes", "nodes")
    report.add("blocks", len(program.block_paths(block_pattern)), "blocks", "blocks")
    report.add("attention sites", len(program.attention_sites()), "sites", "attention_sites")
    report.add(
        "peak activation memory", flops.peak_activation_bytes(program), "bytes", "peak_activation_bytes"
    )
    report.tables.append(_block_table(program, block_pattern))
    counts = program.op_counts()
    report.tables.append(
        Table("ATen ops", ["op", "count"], [[k, v] for k, v in list(counts.items())[:25]], {"count": "nodes"})
    )
    return report


def analyze_file(
    ref: str,
    output: str | Path | None = None,
    *,
    trust_pickle: bool = False,
    block_pattern: str | None = None,
    overwrite: bool = False,
    sensitivity: Mapping[str, Any] | None = None,
    workload: WorkloadLike | None = None,
    calib: str | Path | None = None,
    budgets: Sequence[str | Budget] = (),
) -> Report:
    """Analyze the model at `ref`; with `output`, write the report and plots there.

    With `sensitivity` (options of the `sensitivity` pass), add the SQNR sensitivity ranking
    and, in `output`, its block x timestep heatmap; `workload` / `calib` say how it calibrates.
    `budgets` (`optkit.budgets`) are checked into `report.budgets`; a bad one writes nothing.
    """
    budgets = parse_budgets(budgets)
    if workload is not None and not isinstance(workload, Workload):
        workload = Workload.from_toml(workload)
    model = load_model(ref, trust_pickle=trust_pickle, workload=workload)
    if isinstance(model, Program):
        resolve_workload(model, calib=calib)
    elif calib is not None:
        raise ConfigError("calibration data needs a PyTorch graph, not an ONNX model")
    if sensitivity is not None and isinstance(model, Program):
        model = optimize(model, ["sensitivity"], {"sensitivity": sensitivity}).program
    elif sensitivity is not None:
        raise ConfigError("sensitivity analysis needs a PyTorch graph, not an ONNX model")
    report = analyze(model, block_pattern)
    if isinstance(model, Program):
        _sensitivity_tables(model, report)
    report.budgets = check_budgets(report, budgets)
    if output is not None:
        with atomic_dir(output, overwrite) as tmp:
            if isinstance(model, Program):
                _flops_plot(tmp / "flops_per_block.png", model, block_pattern, report)
                _annotation_plots(tmp, model, report)
            report.write(tmp)
    return report


def _sensitivity_tables(program: Program, report: Report) -> None:
    data = program.annotations.figures.get("sensitivity")
    if not data:
        return
    what = f"W{data['wbits']}A{data['abits']}"
    for key, title in (("layers", "layer"), ("blocks", "block")):
        if key in data:
            rows = [[name, value] for name, value in data[key]]
            report.tables.append(
                Table(
                    f"SQNR sensitivity per {title} at {what} (most sensitive first)",
                    [title, "output SQNR"],
                    rows,
                    {"output SQNR": "dB"},
                )
            )


def _annotation_plots(directory: Path, program: Program, report: Report) -> None:
    """Plots of what passes recorded: the sensitivity heatmap (blocks x sampler steps) and the
    cache schedule beside the block change profile."""
    if program.annotations.cache_schedule:
        from optkit.caching.plots import schedule_heatmap

        report.plots.update(schedule_heatmap(directory, program))
    data = program.annotations.figures.get("sensitivity")
    if data and data.get("block_steps"):
        rows = list(data["block_steps"])
        steps = len(next(iter(data["block_steps"].values())))
        heatmap_plot(
            directory / "sensitivity_heatmap.png",
            rows,
            [str(i) for i in range(steps)],
            [data["block_steps"][r] for r in rows],
            f"Output SQNR with one block at W{data['wbits']}A{data['abits']} (per sampler step)",
            "SQNR (dB)",
        )
        report.plots["SQNR sensitivity: blocks x sampler steps"] = "sensitivity_heatmap.png"


def seven_bit_note(program: Program, target: str) -> str | None:
    """A report's line for int8 layers with 8-bit weights lowered for a CPU with AVX2 but no VNNI
    (`vnni.U8S16`, on `vpmaddwd`): `ptq`'s `wbits=7` would put them on `vpmaddubsw`
    (`vnni.U8S7`). None elsewhere."""
    if target != "cpu":
        return None
    from optkit.backends import vnni
    from optkit.backends.targets import resolve_target

    if vnni.int8_arith(resolve_target("cpu").tvm_target()) != vnni.U8S16:
        return None
    weights = [b for name, b in program.graph_module.named_buffers() if name.endswith("w_q") and b.numel()]
    wide = sum(int(b.abs().max()) > vnni.U8S7.weight_bound for b in weights)
    if not wide:
        return None
    return (
        f"This CPU has AVX2 but no VNNI: {wide} int8 layer(s) with 8-bit weights run on vpmaddwd. "
        "-O ptq.wbits=7 quantizes weights to 7 bits, which the int8 kernels multiply exactly on the "
        'faster vpmaddubsw (docs/passes.md, "7-bit weights": on an AMD EPYC, 1.1-1.3x less '
        "time and 0.4-3.6 dB lower output SQNR on the model families)."
    )


def optimize_file(
    ref: str,
    passes: Sequence[str],
    output: str | Path,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    onnx: bool = True,
    repeats: int = 20,
    progress: Progress | None = None,
    workload: WorkloadLike | None = None,
    calib: str | Path | None = None,
    budgets: Sequence[str | Budget] = (),
    target: str | None = None,
    threads: int | None = None,
    onnx_int8_weights: str = "auto",
) -> Report:
    """Optimize the model at `ref` with `passes` and write model, ONNX, report and plots to `output`.

    `workload` (a Workload or a TOML file) replaces the model's own; `calib` names its
    calibration data (`--calib`). Both are checked against the model's inputs before any pass.
    `budgets` (`optkit.budgets`) are parsed before the run and checked into `report.budgets`
    before anything is written: an unknown figure or a unit that does not fit writes nothing,
    a missed budget is only recorded.
    With `target` (`cpu`, `cuda`; checked before any work), the optimized Program and the step
    variants of its cache schedule are lowered into `output/artifact/` (`optkit.backends.pipeline`)
    and the report adds the compiled pipeline's latency beside the eager rows (and, for a
    sampled model, torch.compile's). Every runtime is timed on `threads` threads (default:
    PyTorch's current setting); see `optkit.endtoend`. `onnx_int8_weights`: how model.onnx
    stores int8 weights (`optkit.ir.onnx_int8`; `auto`: uint8 where ONNX Runtime's int8 kernels
    saturate on this CPU).
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    threads = threads or torch.get_num_threads()
    budgets = parse_budgets(budgets)
    say = progress or (lambda _msg: None)
    # Fail on bad names, options and workload files before the (slow) capture.
    build_passes(passes, options)
    if workload is not None and not isinstance(workload, Workload):
        workload = Workload.from_toml(workload)
    if calib is not None:
        Calibration.from_path(calib)
    if target is not None:
        check_target(target)
    resolve_int8_weights(onnx_int8_weights)
    output = Path(output)
    say("capture")
    start = time.perf_counter()
    # The workload goes in with the load: a diffusers folder without a scheduler needs it.
    program = resolve_workload(
        load_program_ref(ref, trust_pickle=trust_pickle, workload=workload), calib=calib
    )
    capture_s = time.perf_counter() - start
    # Passes clone the Program and run it: refuse now, with a message, rather than be killed later.
    check_memory(program, copies=EXTRA_WEIGHTS["optimize"], what="optimize")
    log.info(peak_message(program, "optimize"))
    say(peak_message(program, "optimize"))
    result = optimize(program, passes, options, progress=lambda i, n, name: say(f"pass {i + 1}/{n}: {name}"))
    optimized = result.program
    report = Report(
        f"optkit optimize: {program.name} with {', '.join(passes)}", model=program.name, kind="optimize"
    )
    report.add("capture time", capture_s, "s", "capture_time")
    say("quality")
    for name, figure in quality.compare(program, optimized).items():
        report.add(figure.label, figure.value, figure.unit, name)
    _add_size_figures(report, program, "before")
    _add_size_figures(report, optimized, "after")
    report.tables.append(_pass_table(result))
    with atomic_dir(output, overwrite) as tmp:
        say("save")
        save_program(optimized, tmp / "model.pt2")
        report.add("model.pt2 size", (tmp / "model.pt2").stat().st_size, "bytes", "model_bytes")
        if onnx:
            say("ONNX export + check in ONNX Runtime")
            figures = export_onnx(optimized, tmp / "model.onnx", int8_weights=onnx_int8_weights)
            report.add("model.onnx size", figures["onnx_bytes"], "bytes", "onnx_bytes")
            if figures["int8_weights_u8"]:
                report.notes.append(int8_weights_note(int(figures["int8_weights_u8"]), onnx_int8_weights))
            if figures["int8_weights_s8"]:
                kept, seven_bit = int(figures["int8_weights_s8"]), bool(figures["int8_weights_7bit"])
                report.notes.append(int8_kept_note(kept, seven_bit))
            report.add(
                "ONNX Runtime max abs error vs optimized", figures["max_abs_error"], "", "onnx_max_abs_error"
            )
            report.add(
                "output max abs value (scale of that error)", figures["output_abs_max"], "", "output_abs_max"
            )
        pipeline = None
        if target is not None:
            pipeline = lower_pipeline(
                optimized, target, progress=lambda msg: say(msg if target in msg else f"{msg} for {target}")
            )
            say("save compiled pipeline")
            pipeline.save(tmp / "artifact")
            report.add("lowering time", pipeline.info["lowering_seconds"], "s", "lowering_time")
            report.add("compiled libraries", len(pipeline.libraries()), "libraries", "compiled_libraries")
            report.add("compiled pipeline size", pipeline.library_bytes, "bytes", "compiled_bytes")
            note = seven_bit_note(optimized, target)
            if note:
                report.notes.append(note)
        with endtoend.same_threads(threads, pipeline) as got, tempfile.TemporaryDirectory() as scratch:
            endtoend.record_conditions(report, got)
            onnx_path = float_onnx = None
            if onnx:  # the peers: the optimized graph, and the float input model, in ONNX Runtime
                onnx_path, float_onnx = tmp / "model.onnx", Path(scratch) / "input.onnx"
                export_onnx(program, float_onnx)
            say("latency")
            endtoend.latency_table(report, program, optimized, onnx_path, repeats, got, pipeline, float_onnx)
            if program.workload.diffusion is not None:
                say("sampling latency" + (" (torch.compile compiles first)" if pipeline is not None else ""))
                endtoend.sampling_table(
                    report,
                    program,
                    optimized,
                    max(3, repeats // 4),
                    got,
                    pipeline,
                    float_onnx,
                    inductor=pipeline is not None,
                )
        endtoend.record_peak_memory(report)
        _flops_plot(tmp / "flops_per_block.png", optimized, None, report)
        _annotation_plots(tmp, optimized, report)
        report.lead(HEADLINE)
        report.budgets = check_budgets(report, budgets)
        report.write(tmp)
    return report


# -- report pieces -------------------------------------------------------------------------------
def _add_size_figures(report: Report, program: Program, when: str) -> None:
    """FLOPs, parameters and parameter bytes; `when` ("before", "after" or "") names them."""
    label, name = (f" ({when})", f"_{when}") if when else ("", "")
    report.add(f"FLOPs per call{label}", flops.total_flops(program), "FLOPs", f"flops{name}")
    report.add(f"parameters{label}", flops.parameter_count(program), "params", f"parameters{name}")
    report.add(f"parameter memory{label}", flops.parameter_bytes(program), "bytes", f"parameter_bytes{name}")


def _block_table(program: Program, pattern: str | None) -> Table:
    by_block = flops.flops_by_block(program, pattern)
    total = max(1, sum(by_block.values()))
    costs = flops.node_costs(program)
    params = program.parameters()
    rows = []
    for path, f in by_block.items():
        if path == "(other)":
            byts = sum(
                c.bytes
                for c in costs
                if not any(c.module == p or c.module.startswith(p + ".") for p in by_block if p != "(other)")
            )
            n_params = 0
        else:
            byts = sum(c.bytes for c in costs if c.module == path or c.module.startswith(path + "."))
            n_params = sum(t.numel() for k, t in params.items() if k.startswith(path + "."))
        rows.append([path, f, round(100 * f / total, 1), byts, n_params])
    return Table(
        "FLOPs, bytes moved and parameters per block",
        ["block", "FLOPs", "share", "bytes moved", "parameters"],
        rows,
        {"FLOPs": "FLOPs", "share": "%", "bytes moved": "bytes", "parameters": "params"},
    )


def _pass_table(result: PipelineResult) -> Table:
    rows = []
    for r in result.records:
        figs = "; ".join(f"{k}: {v}" for k, v in r.figures.items())
        check = [r.check.get(k, float("nan")) for k in ("min_sqnr_db", "max_abs_error")]
        rows.append([r.name, r.modified, r.seconds, *check, figs])
    return Table(
        "Passes",
        ["pass", "modified", "time", "output SQNR vs input", "max abs error vs input", "figures"],
        rows,
        {"time": "s", "output SQNR vs input": "dB"},
    )


def _flops_plot(path: Path, program: Program, pattern: str | None, report: Report) -> None:
    by_block = flops.flops_by_block(program, pattern)
    labels = list(by_block)
    values = [v / 1e6 for v in by_block.values()]
    bar_plot(path, labels, values, f"FLOPs per block: {program.name}", "MFLOPs per call")
    report.plots["FLOPs per block"] = path.name


def _analyze_onnx(model: OnnxModel) -> Report:
    report = Report(f"optkit analyze: {model.name} (ONNX)", model=model.name, kind="analyze")
    report.add("FLOPs per call (MatMul/Gemm/Conv)", model.total_flops(), "FLOPs", "flops")
    report.add("parameters", model.parameter_count(), "params", "parameters")
    report.add("parameter memory", model.parameter_bytes(), "bytes", "parameter_bytes")
    report.add("nodes", len(model.model.graph.node), "nodes", "nodes")
    counts = model.op_counts()
    report.tables.append(
        Table("ONNX ops", ["op", "count"], [[k, v] for k, v in list(counts.items())[:25]], {"count": "nodes"})
    )
    report.notes.append("ONNX models are analyzed at ONNX op level; blocks need a PyTorch capture.")
    return report
