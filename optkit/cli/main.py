"""The `optkit` command. The click layer parses options, calls the library, and prints.

Library errors (`OptkitError`) become one line on stderr and their exit code: 2 for bad input
(`--debug` shows the traceback instead), 3 for a missed budget or, with
`compare --fail-on-regression`, a regression (`BudgetMissed`: everything was written).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click

from optkit.cli import ci, options
from optkit.errors import BudgetMissed, OptkitError
from optkit.ir.onnx_int8 import INT8_WEIGHT_FORMS


class _Group(click.Group):
    """Turns library errors into clean CLI errors with their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BudgetMissed as err:
            click.echo(f"optkit: check failed: {err}", err=True)
            ctx.exit(err.exit_code)
        except OptkitError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"optkit: error: {err}", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=_Group)
@click.option("--quiet", "-q", is_flag=True, help="Print only results and errors.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="optkit")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, as_json: bool, debug: bool) -> None:
    """optkit: capture, optimize, lower and measure PyTorch models."""
    ctx.obj = {"quiet": quiet or as_json, "json": as_json, "debug": debug}
    if not debug:
        # Upstream deprecation chatter (torch.export, onnxscript) is not the user's business.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    level = logging.DEBUG if debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("torch", "onnxscript", "torch.onnx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not debug else logging.INFO)


@contextmanager
def _steps(ctx: click.Context, title: str) -> Iterator[Any]:
    """A rich spinner on stderr showing the current step; silent with --quiet/--json."""
    if ctx.obj["quiet"]:
        yield lambda _msg: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(title)
        yield lambda msg: bar.update(task, description=f"{title}: {msg}")


def _emit(ctx: click.Context, report: Any, output: Path | None = None) -> None:
    if ctx.obj["json"]:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    click.echo(report.summary())
    if output is not None:
        click.echo(f"wrote {output}/ (report.md, report.json, plots)")


@cli.command()
@click.argument("model")
@click.option(
    "--passes", "passes_text", default=None, help="Comma-separated passes or pipelines, e.g. ptq,cache."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file with pass options.",
)
@options.output
@options.overwrite
@options.trust_pickle
@options.workload
@options.calib
@click.option("--no-onnx", is_flag=True, help="Skip the ONNX export and its check in ONNX Runtime.")
@click.option(
    "--onnx-int8-weights",
    type=click.Choice(INT8_WEIGHT_FORMS),
    default="auto",
    show_default=True,
    help="How model.onnx stores int8 weights: s8 (ONNX Runtime's fast U8S8 kernels, exact with VNNI "
    "or on ARM, and everywhere for ptq.wbits=7), u8 (U8U8, exact on every CPU, slower), auto (u8 where "
    "this CPU lacks VNNI, unless the weights fit 7 bits).",
)
@click.option(
    "--repeats", default=20, show_default=True, type=int, help="Timed runs for each latency figure."
)
@click.option(
    "--target",
    default=None,
    help="Also lower the result through TVM for cpu or cuda into OUTPUT/artifact/ (every cache step "
    "variant; run it with `optkit sample`) and time the compiled pipeline.",
)
@options.pass_option
@options.threads
@options.require
@options.junit
@click.pass_context
def optimize(
    ctx: click.Context,
    model: str,
    passes_text: str | None,
    config_path: Path | None,
    output: Path,
    overwrite: bool,
    trust_pickle: bool,
    workload_path: Path | None,
    calib_path: Path | None,
    no_onnx: bool,
    onnx_int8_weights: str,
    repeats: int,
    target: str | None,
    pass_options: tuple[str, ...],
    threads: int | None,
    require: tuple[str, ...],
    junit_path: Path | None,
) -> None:
    """Run PASSES on MODEL; write the optimized model, its ONNX export and a report to OUTPUT.

    MODEL is zoo:NAME[:size], a .pt2 file, pkg.module:factory, or a pickled .pt (--trust-pickle).
    """
    from optkit.api import optimize_file
    from optkit.budgets import parse_budgets
    from optkit.native_output import native_stderr_to_file, write_log

    config = options.read_config(config_path)
    budgets = parse_budgets([*config.require, *require])
    passes = options.split_passes(passes_text) or config.passes
    if not passes:
        raise click.UsageError("give --passes (see `optkit passes`) or a config file with `passes = [...]`")
    # With --target, TVM's C++ warnings go to OUTPUT/artifact/native.log (--debug shows them).
    quiet_native: AbstractContextManager[list[str]] = (
        native_stderr_to_file() if target and not ctx.obj["debug"] else nullcontext([])
    )
    with _steps(ctx, f"optimize {model}") as step, quiet_native as native_lines:
        report = optimize_file(
            model,
            passes,
            output,
            options=options.parse_pass_options(pass_options, config.options),
            trust_pickle=trust_pickle,
            overwrite=overwrite,
            onnx=not no_onnx,
            onnx_int8_weights=onnx_int8_weights,
            repeats=repeats,
            progress=step,
            workload=workload_path,
            calib=calib_path,
            budgets=budgets,
            target=target,
            threads=threads,
        )
    native_log = write_log(native_lines, output / "artifact" / "native.log") if target else None
    _emit(ctx, report, output)
    if target and not ctx.obj["quiet"]:
        click.echo(
            f"wrote {output}/artifact/ (compiled for {target}; run it with `optkit run`, "
            "or for a diffusion workload sample it with `optkit sample`)"
        )
        if native_log is not None:
            click.echo(f"  {len(native_lines)} lines of TVM's own messages in {native_log}")
    ci.finish(ctx, report, junit_path)


@cli.command()
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="Write report and plots here."
)
@click.option(
    "--blocks", "block_pattern", default=None, help="Regex for block module paths (default: automatic)."
)
@click.option(
    "--sensitivity", is_flag=True, help="Add SQNR sensitivity per layer and block (and per sampler step)."
)
@click.option(
    "--wbits", type=click.Choice(["4", "7", "8"]), default="8", show_default=True, help="Weight bits probed."
)
@click.option(
    "--abits", type=click.Choice(["8", "16"]), default="8", show_default=True, help="Activation bits probed."
)
@click.option(
    "--calibration",
    type=click.Choice(["auto", "example", "data", "single-step", "all-steps"]),
    default="auto",
    show_default=True,
    help="Inputs for sensitivity (auto: --calib data if given, else all sampler steps if the workload samples, else example).",
)
@options.overwrite
@options.trust_pickle
@options.workload
@options.calib
@options.require
@options.junit
@click.pass_context
def analyze(
    ctx: click.Context,
    model: str,
    output: Path | None,
    block_pattern: str | None,
    sensitivity: bool,
    wbits: str,
    abits: str,
    calibration: str,
    overwrite: bool,
    trust_pickle: bool,
    workload_path: Path | None,
    calib_path: Path | None,
    require: tuple[str, ...],
    junit_path: Path | None,
) -> None:
    """Summarize MODEL: FLOPs, bytes and parameters per block, op counts (also .onnx files)."""
    from optkit.api import analyze_file
    from optkit.budgets import parse_budgets

    budgets = parse_budgets(require)
    probe: dict[str, Any] | None = None
    if sensitivity:
        probe = {"wbits": int(wbits), "abits": int(abits), "calibration": calibration}
    with _steps(ctx, f"analyze {model}") as step:
        step("capture" + (" + sensitivity" if sensitivity else ""))
        report = analyze_file(
            model,
            output,
            trust_pickle=trust_pickle,
            block_pattern=block_pattern,
            overwrite=overwrite,
            sensitivity=probe,
            workload=workload_path,
            calib=calib_path,
            budgets=budgets,
        )
    if ctx.obj["json"]:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.to_markdown())
    ci.finish(ctx, report, junit_path, show=False)


@cli.command(name="passes")
@click.pass_context
def list_passes(ctx: click.Context) -> None:
    """List the registered passes with their options, and the named pipelines."""
    import dataclasses

    from optkit.pipeline import registered_passes, registered_pipelines

    passes = registered_passes()
    pipelines = registered_pipelines()
    if ctx.obj["json"]:
        data = {
            "passes": {
                name: {
                    "doc": (cls.__doc__ or "").strip(),
                    "options": {f.name: _default(f) for f in dataclasses.fields(cls.config_cls)},
                }
                for name, cls in passes.items()
            },
            "pipelines": {k: list(v) for k, v in pipelines.items()},
        }
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for name, cls in passes.items():
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for f in dataclasses.fields(cls.config_cls):
            click.echo(f"    {f.name} = {_default(f)!r}")
    for name, members in pipelines.items():
        click.echo(f"pipeline {name}: {', '.join(members)}")


def _default(f: Any) -> Any:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.pass_context
def report(ctx: click.Context, directory: Path) -> None:
    """Print the report that a run wrote into DIRECTORY."""
    from optkit.report import Report

    loaded = Report.load(directory)
    if ctx.obj["json"]:
        click.echo(json.dumps(loaded.to_dict(), indent=2, default=str))
    else:
        click.echo(loaded.to_markdown())


from optkit.cli.zoo import zoo  # noqa: E402  (registers the `zoo` group on `cli`)

cli.add_command(zoo)
from optkit.cli.bench import bench  # noqa: E402

cli.add_command(bench)

from optkit.cli.lower import lower, run, sample  # noqa: E402  (`optkit lower`, `run`, `sample`)

cli.add_command(lower)
cli.add_command(run)
cli.add_command(sample)
cli.add_command(ci.compare)
from optkit.cli.search import search  # noqa: E402  (`optkit search`)

cli.add_command(search)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="optkit")
