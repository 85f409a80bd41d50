"""`optkit lower` and `optkit run`: compile a model through TVM, run a compiled artifact."""

from __future__ import annotations

import json
import zipfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import click

from optkit.cli import options
from optkit.errors import ConfigError


@click.command()
@click.argument("model")
@click.option(
    "--target",
    default="cpu",
    show_default=True,
    help="cpu (LLVM, host CPU), cuda (needs nvcc) or pim:PRESET (simulated PIM: hbm-pim, aim, upmem, recnmp "
    "or a preset .toml; the host part is compiled by TVM).",
)
@options.tune_trials
@options.tuner
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Tuning database directory, reused by later runs (default: .optkit-tune/TARGET).",
)
@click.option(
    "--schedule",
    type=click.Choice(["default", "blas", "naive"]),
    default="default",
    show_default=True,
    help="default: packed weights + optkit/DLight schedules (self-contained library); blas: also "
    "activation x activation matmuls via numpy BLAS (needs optkit at run time); naive: untuned.",
)
@click.option(
    "--exact-math",
    is_flag=True,
    help="Keep libm's exp/erf/tanh (scalar calls) instead of the vectorized polynomial versions, "
    "divide by constants instead of multiplying by their reciprocals, and run 3x3 convs directly "
    "(no Winograd transforms).",
)
@click.option(
    "--no-winograd",
    is_flag=True,
    help="Run float32 3x3 convs directly instead of as Winograd transforms (AVX-512 CPUs): slower, "
    "but their packed weights stay the conv's size (Winograd's are 16/9 or 4 times as large).",
)
@click.option(
    "--attention-precision",
    type=click.Choice(["auto", "float32", "float16", "int16"]),
    default="auto",
    show_default=True,
    help="Fused attention's arithmetic on the CPU. auto: for a quantized model, float16 on a CPU with "
    "AVX512-FP16, else int16 on one with AVX-512 VNNI; float32 otherwise. float16 needs "
    "AVX512-FP16, int16 AVX-512 VNNI.",
)
@options.output
@options.overwrite
@options.trust_pickle
@options.workload
@click.pass_context
def lower(
    ctx: click.Context,
    model: str,
    target: str,
    tune_trials: int,
    tuner: str,
    work_dir: Path | None,
    schedule: str,
    exact_math: bool,
    no_winograd: bool,
    attention_precision: str,
    output: Path,
    overwrite: bool,
    trust_pickle: bool,
    workload_path: Path | None,
) -> None:
    """Compile MODEL through TVM for TARGET and write the artifact (model.so + manifest.json) to OUTPUT.

    MODEL is zoo:NAME[:size], a .pt2 file, pkg.module:factory, or a pickled .pt (--trust-pickle).
    """
    from optkit.backends import lower as lower_program
    from optkit.backends.pim.artifact import parse_target
    from optkit.backends.targets import resolve_target
    from optkit.cli.main import _steps
    from optkit.ir.memory import (
        EXTRA_WEIGHTS,
        WINOGRAD_GROWTH,
        check_memory,
        peak_message,
        winograd_weight_bytes,
    )
    from optkit.native_output import native_stderr_to_file, write_log
    from optkit.refs import load_program_ref
    from optkit.workload import Workload

    pim_preset = parse_target(target)  # fail on a bad target, preset or missing nvcc before loading
    if pim_preset is None:
        resolve_target(target)
    workload = Workload.from_toml(workload_path) if workload_path is not None else None
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {output} exists and is not empty; pass --overwrite to replace it"
        )
    with _steps(ctx, f"lower {model}") as step:
        step("load model")
        program = load_program_ref(model, trust_pickle=trust_pickle, workload=workload)
        if pim_preset is None:
            # Refuse a model whose lowering cannot fit before minutes of compiling, not after.
            winograd = (
                0 if exact_math or no_winograd else int(WINOGRAD_GROWTH * winograd_weight_bytes(program))
            )
            what = "lower, releasing the weights"
            check_memory(program, copies=EXTRA_WEIGHTS[what], what="lower", extra_bytes=winograd)
            if not ctx.obj["quiet"] and not ctx.obj["json"]:
                click.echo(peak_message(program, what, winograd), err=True)
        # TVM's C++ warnings go to OUTPUT/native.log, not the terminal (--debug shows them).
        quiet_native: AbstractContextManager[list[str]] = (
            native_stderr_to_file() if not ctx.obj["debug"] else nullcontext([])
        )
        if pim_preset is not None:
            with quiet_native as native_lines:
                _lower_pim(ctx, program, target, output, overwrite, step)
            write_log(native_lines, output / "native.log")
            return
        with quiet_native as native_lines:
            artifact = lower_program(
                program,
                target=target,
                tune_trials=tune_trials,
                work_dir=work_dir,
                schedule=schedule,
                fast_math=not exact_math,
                tuner=tuner,
                progress=step,
                attention_precision=attention_precision,
                winograd=not no_winograd,
                release_weights=True,  # the Program is not needed after it: one copy of the weights
            )
        step("save")
        artifact.save(output, overwrite=overwrite)
        native_log = write_log(native_lines, output / "native.log")
    summary = {"output": str(output), **artifact.manifest()}
    if ctx.obj["json"]:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    tuned = f"{tune_trials} {tuner} tuning trials" if tune_trials else "untuned"
    click.echo(f"lowered {program.name} for {target} ({schedule}, {tuned}) -> {output}/")
    for name, choice in artifact.info.get("tuning", {}).get("choices", {}).items():
        click.echo(
            f"  kernel {name}: {choice['winner']} (optkit {_us(choice['optkit_us'])}, "
            f"metaschedule {_us(choice['metaschedule_us'])})"
        )
    if native_log is not None:
        click.echo(f"  {len(native_lines)} lines of TVM's own messages in {native_log}")
    for spec in artifact.inputs:
        click.echo(f"  input  {spec.name}: {list(spec.shape)} {spec.dtype}")
    for spec in artifact.outputs:
        click.echo(f"  output {spec.name}: {list(spec.shape)} {spec.dtype}")


def _us(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2f} us"


def _lower_pim(
    ctx: click.Context, program: Any, target: str, output: Path, overwrite: bool, step: Any
) -> None:
    from optkit.backends.pim.artifact import lower_pim
    from optkit.backends.pim.plots import gantt_png, trace_markdown

    artifact = lower_pim(program, target.split(":", 1)[1], progress=step)
    step("save")
    artifact.save(output, overwrite=overwrite)
    _, trace, _ = artifact.run()
    gantt_png(trace, output / "gantt.png", title=f"{program.name} on {artifact.preset.name} (modeled)")
    (output / "trace.md").write_text(trace_markdown(trace))
    evals = artifact.program.annotations.figures.get("pim", {}).get("evaluations", {})
    summary = {
        "output": str(output),
        "preset": artifact.preset.name,
        "segments": ["pim" if s else "host" for s in artifact.sides],
        "modeled": evals,
        "lowering_seconds": artifact.lowering_seconds,
    }
    if ctx.obj["json"]:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    pim_ops = sum(1 for v in artifact.program.annotations.partition.values() if v)
    click.echo(
        f"lowered {program.name} for pim:{artifact.preset.name} -> {output}/ "
        f"({len(artifact.sides)} segments, {pim_ops} ops on PIM)"
    )
    host, chosen = evals.get("host", {}), evals.get("chosen", {})
    if host and chosen:
        click.echo(
            f"  modeled latency {chosen['latency_us']:.1f} us vs host only {host['latency_us']:.1f} us "
            f"({host['latency_us'] / chosen['latency_us']:.2f}x); energy {chosen['energy_uj']:.1f} uJ vs "
            f"{host['energy_uj']:.1f} uJ (one-shot model estimates)"
        )
    click.echo(f"  per-op trace: {output}/trace.md, Gantt chart: {output}/gantt.png")


@click.command(name="run")
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(path_type=Path),
    required=True,
    help=".npz with one array per model input (by input name, or in order: arr_0, arr_1, ...).",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="Write the outputs as .npz."
)
@click.pass_context
def run(ctx: click.Context, artifact_dir: Path, inputs_path: Path, output: Path | None) -> None:
    """Run the compiled artifact in ARTIFACT_DIR on the arrays in --inputs; print output shapes.
    ARTIFACT_DIR may be what `optimize --target` writes (OUT/artifact, a compiled pipeline): its
    model runs, uncached."""
    import numpy as np

    from optkit.backends import load_artifact
    from optkit.backends.pipeline import MANIFEST as PIPELINE_MANIFEST
    from optkit.backends.pipeline import load_pipeline
    from optkit.fsutil import atomic_file

    held = _read_npz(inputs_path)  # a bad inputs file fails before the library is loaded
    from optkit.backends.pim.artifact import is_pim_artifact

    if is_pim_artifact(artifact_dir):
        _run_pim(ctx, artifact_dir, inputs_path, held, output)
        return
    if (artifact_dir / PIPELINE_MANIFEST).is_file():
        artifact = load_pipeline(artifact_dir).main
    else:
        artifact = load_artifact(artifact_dir)
    arrays = _pick_inputs(inputs_path, held, [s.name for s in artifact.inputs])
    outputs = artifact.run(*arrays)
    if output is not None:
        with atomic_file(output.with_suffix(".npz")) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **{s.name: o for s, o in zip(artifact.outputs, outputs, strict=True)})
    summary: dict[str, Any] = {
        "artifact": str(artifact_dir),
        "target": artifact.target.name,
        "outputs": [
            {"name": s.name, "shape": list(o.shape), "dtype": str(o.dtype)}
            for s, o in zip(artifact.outputs, outputs, strict=True)
        ],
        **({"written": str(output.with_suffix(".npz"))} if output is not None else {}),
    }
    if ctx.obj["json"]:
        click.echo(json.dumps(summary, indent=2))
        return
    for item in summary["outputs"]:
        click.echo(f"{item['name']}: {item['shape']} {item['dtype']}")
    if output is not None:
        click.echo(f"wrote {summary['written']}")


def _run_pim(
    ctx: click.Context, artifact_dir: Path, inputs_path: Path, held: dict[str, Any], output: Path | None
) -> None:
    import numpy as np

    from optkit.backends.pim.artifact import load_pim_artifact
    from optkit.fsutil import atomic_file

    artifact = load_pim_artifact(artifact_dir)
    arrays = _pick_inputs(inputs_path, held, artifact.program.input_names())
    outputs, trace, host_seconds = artifact.run(*arrays)
    if output is not None:
        with atomic_file(output.with_suffix(".npz")) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **{f"output_{i}": o for i, o in enumerate(outputs)})
    summary: dict[str, Any] = {
        "artifact": str(artifact_dir),
        "target": f"pim:{artifact.preset.name}",
        "outputs": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
        "modeled_latency_us": trace.latency_us,
        "modeled_energy_uj": trace.energy_uj,
        "modeled_bytes_moved": trace.bytes_moved,
        "measured_host_ms": host_seconds * 1e3,
        **({"written": str(output.with_suffix(".npz"))} if output is not None else {}),
    }
    if ctx.obj["json"]:
        click.echo(json.dumps(summary, indent=2))
        return
    for i, item in enumerate(summary["outputs"]):
        click.echo(f"output_{i}: {item['shape']} {item['dtype']}")
    click.echo(
        f"pim:{artifact.preset.name}: modeled {trace.latency_us:.1f} us, {trace.energy_uj:.1f} uJ, "
        f"{trace.bytes_moved} bytes host<->PIM; measured host segments {host_seconds * 1e3:.2f} ms (one run)"
    )
    if output is not None:
        click.echo(f"wrote {summary['written']}")


def _read_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"inputs file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path} is not a readable .npz file: {err}") from err


def _pick_inputs(path: Path, arrays: dict[str, Any], names: list[str]) -> list[Any]:
    if set(names) <= set(arrays):
        return [arrays[n] for n in names]
    ordered = [f"arr_{i}" for i in range(len(names))]
    if set(ordered) <= set(arrays):
        return [arrays[n] for n in ordered]
    raise ConfigError(
        f"{path} holds arrays {sorted(arrays)}; the model needs {names} (or arr_0..arr_{len(names) - 1} in order)"
    )


@click.command(name="sample")
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option(
    "--seeds",
    "seeds_text",
    default="0",
    show_default=True,
    help="Comma-separated seeds (integers in [0, 2**63-1]); one batch of samples each.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Write the samples as .npz: `samples` (seeds, *batch shape) and `seeds`.",
)
@click.pass_context
def sample(ctx: click.Context, artifact_dir: Path, seeds_text: str, output: Path) -> None:
    """Sample the compiled pipeline in ARTIFACT_DIR (OUTPUT/artifact of `optkit optimize --target`):
    the workload's sampler, guidance and cache schedule, every denoiser call in compiled code."""
    import time

    import numpy as np

    from optkit.backends.pipeline import load_pipeline
    from optkit.cli.main import _steps
    from optkit.fsutil import atomic_file
    from optkit.native_output import native_stderr_to_file

    seeds = parse_seeds(seeds_text)
    written = output.with_suffix(".npz")
    with _steps(ctx, f"sample {artifact_dir}") as step:
        step("load")
        # TVM's loader warns once per function ("Scope Loaded"); --debug shows those lines.
        quiet_native: AbstractContextManager[list[str]] = (
            native_stderr_to_file() if not ctx.obj["debug"] else nullcontext([])
        )
        with quiet_native:
            pipeline = load_pipeline(artifact_dir)
        samples, seconds = [], []
        for i, seed in enumerate(seeds):
            step(f"seed {seed} ({i + 1}/{len(seeds)})")
            start = time.perf_counter()
            samples.append(pipeline.sample(seed).numpy())
            seconds.append(time.perf_counter() - start)
        with atomic_file(written) as tmp, tmp.open("wb") as fh:
            np.savez(fh, samples=np.stack(samples), seeds=np.array(seeds, dtype=np.int64))
    summary: dict[str, Any] = {
        "artifact": str(artifact_dir),
        "model": pipeline.program.name,
        "target": pipeline.target.name,
        "cached": pipeline.cached,
        "seeds": seeds,
        "shape": [len(seeds), *samples[0].shape],
        "seconds": [round(s, 4) for s in seconds],
        "written": str(written),
    }
    if ctx.obj["json"]:
        click.echo(json.dumps(summary, indent=2))
        return
    how = "block-cached" if pipeline.cached else "uncached"
    click.echo(
        f"sampled {pipeline.program.name} ({how}, {pipeline.target.name}) for seeds "
        f"{', '.join(map(str, seeds))}: {summary['shape']} in {sum(seconds):.2f} s"
    )
    click.echo(f"wrote {written}")


def parse_seeds(text: str) -> list[int]:
    """`0,1,5` -> [0, 1, 5]; a ConfigError names an item that is not an integer in range."""
    from optkit.backends.pipeline import MAX_SEED

    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"--seeds must be comma-separated integers such as 0,1,2; got {text!r}")
    seeds = []
    for item in items:
        try:
            seed = int(item)
        except ValueError:
            raise ConfigError(
                f"--seeds: {item!r} is not an integer (expected integers in [0, {MAX_SEED}])"
            ) from None
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seeds: {seed} is out of range (seeds are integers in [0, {MAX_SEED}])")
        seeds.append(seed)
    return seeds
