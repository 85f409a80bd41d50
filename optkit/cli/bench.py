"""`optkit bench`: latency, FLOP rate, memory and output agreement of a model on several runtimes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from optkit.cli import options

if TYPE_CHECKING:
    from optkit.benchmark import BenchResult


@click.command()
@click.argument("model")
@click.option(
    "--targets",
    "targets_text",
    default=None,
    help="Comma-separated targets from eager, compile, ort, tvm-cpu, tvm-cuda "
    "[default: eager,compile,ort,tvm-cpu, plus tvm-cuda when a GPU exists].",
)
@click.option(
    "--repeats",
    default=20,
    show_default=True,
    type=int,
    help="Timed rounds (one call of each target per round; a run of calls filling 1 ms for a faster one).",
)
@click.option("--warmup", default=3, show_default=True, type=int, help="Untimed runs before timing.")
@options.threads
@options.tune_trials
@options.tuner
@options.output
@options.overwrite
@options.trust_pickle
@click.option("--quiet", "-q", "quiet_here", is_flag=True, help="Print only errors (same as optkit --quiet).")
@click.option("--json", "json_here", is_flag=True, help="Print the report as JSON (same as optkit --json).")
@options.require
@options.junit
@click.pass_context
def bench(
    ctx: click.Context,
    model: str,
    targets_text: str | None,
    repeats: int,
    warmup: int,
    threads: int | None,
    tune_trials: int,
    tuner: str,
    output: Path,
    overwrite: bool,
    trust_pickle: bool,
    quiet_here: bool,
    json_here: bool,
    require: tuple[str, ...],
    junit_path: Path | None,
) -> None:
    """Time MODEL on each target and check its outputs against eager; write OUTPUT/report.json,
    report.md and bench.png.

    MODEL is zoo:NAME[:size], a .pt2 file, pkg.module:factory, or a pickled .pt (--trust-pickle).
    """
    from optkit.benchmark import BenchConfig, bench_file, default_targets, parse_targets
    from optkit.budgets import parse_budgets
    from optkit.cli.ci import finish
    from optkit.cli.main import _steps

    as_json = json_here or ctx.obj["json"]
    quiet = quiet_here or as_json or ctx.obj["quiet"]
    ctx.obj = {**ctx.obj, "quiet": quiet, "json": as_json}
    budgets = parse_budgets(require)
    targets = parse_targets(targets_text) if targets_text else default_targets()
    config = BenchConfig(
        targets=targets,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        tune_trials=tune_trials,
        tuner=tuner,
    )
    with _steps(ctx, f"bench {model}") as step:
        result, report = bench_file(
            model,
            output,
            config,
            overwrite=overwrite,
            trust_pickle=trust_pickle,
            progress=step,
            budgets=budgets,
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif not quiet:
        _print_table(result)
        click.echo(f"wrote {output}/ (report.md, report.json, bench.png)")
    finish(ctx, report, junit_path)


def _print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    eager = next((r.median_ms for r in result.targets if r.target == "eager"), None)
    table = Table(
        title=f"{result.name}: {result.flops / 1e6:.3g} MFLOPs per call, {result.threads} thread(s)"
    )
    for column in (
        "target",
        "status",
        "median ms",
        "p10-p90 ms",
        "GFLOP/s",
        "vs eager",
        "build s",
        "max abs err",
    ):
        table.add_column(column, justify="left" if column in ("target", "status") else "right")
    for r in result.targets:
        lat = r.latency
        table.add_row(
            r.target,
            r.status if r.status == "ok" else f"[red]{r.status}[/red]",
            _fmt(lat.get("median")),
            f"{_fmt(lat.get('p10'))}-{_fmt(lat.get('p90'))}" if lat else "",
            _fmt(r.gflops_per_s),
            _fmt(eager / r.median_ms) + "x" if eager and r.median_ms else "",
            _fmt(r.build_s),
            _fmt(r.max_abs_error),
        )
    console = Console()
    console.print(table)
    for r in result.targets:
        if r.status != "ok":
            console.print(f"[red]{r.target} {r.status}[/red]: {r.reason}", highlight=False)
        ran = r.info.get("threads")
        if ran is not None and ran != result.threads:
            console.print(f"[red]{r.target} ran {ran} thread(s), not {result.threads}[/red]", highlight=False)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}"
