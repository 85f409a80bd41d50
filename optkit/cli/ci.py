"""CI gates on the command line: what `--require` and `--junit` do after a report-writing command
(optimize, analyze, bench), and `optkit compare`. See docs/ci.md.

Exit codes: 0 when every budget is met (and, with `--fail-on-regression`, nothing regressed);
3 when the run finished and wrote everything but missed one (`BudgetMissed`); 2 for bad input
(a malformed budget, an unknown figure, a unit that does not fit), with nothing written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from optkit.budgets import BudgetResult, missed
from optkit.cli import options
from optkit.errors import BudgetMissed
from optkit.report import Report


def finish(ctx: click.Context, report: Report, junit_path: Path | None, show: bool = True) -> None:
    """After a command wrote `report`: print its budgets (unless `show` is off because the
    command printed the report's Markdown, which has them), write the JUnit file, and raise
    BudgetMissed (exit 3) when one was missed."""
    if show:
        show_budgets(ctx, report.budgets)
    if junit_path is not None:
        from optkit.junit import budget_cases, write_junit

        classname = f"optkit.{report.kind}.{report.model}"
        write_junit(junit_path, {report.title: budget_cases(report.budgets, classname)})
    raise_if_missed(report.budgets)


def show_budgets(ctx: click.Context, results: Sequence[BudgetResult]) -> None:
    """Budgets met and missed, one line each (not with --quiet or --json: the JSON has them)."""
    if not results or ctx.obj["quiet"]:
        return
    click.echo(f"budgets: {len(results) - len(missed(results))} of {len(results)} met")
    width = max(len(str(r.budget)) for r in results)
    for r in results:
        click.echo(f"  {'met' if r.met else 'MISSED':<6}  {str(r.budget):<{width}}  {r.message}")


def raise_if_missed(results: Sequence[BudgetResult]) -> None:
    """BudgetMissed naming the missed budgets, if any."""
    failed = missed(results)
    if failed:
        raise BudgetMissed(
            f"{len(failed)} of {len(results)} budget(s) missed: " + "; ".join(r.message for r in failed)
        )


@click.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@options.require
@options.junit
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Write compare.md and compare.json into this directory (atomically).",
)
@options.overwrite
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="Exit with code 3 when a figure got slower or worse beyond noise.",
)
@click.option(
    "--noise-floor",
    default=10.0,
    show_default=True,
    type=float,
    help="Timings within this % of each other are noise; raise it on shared machines (docs/ci.md).",
)
@click.option(
    "--json", "json_here", is_flag=True, help="Print the comparison as JSON (same as optkit --json)."
)
@click.pass_context
def compare(
    ctx: click.Context,
    baseline: Path,
    new: Path,
    require: tuple[str, ...],
    junit_path: Path | None,
    output: Path | None,
    overwrite: bool,
    fail_on_regression: bool,
    noise_floor: float,
    json_here: bool,
) -> None:
    """Compare the report in NEW with the one in BASELINE (two runs of the same command on the same
    model): old, new and change per figure, with a verdict that tells timing noise from a change.
    Prints Markdown for a pull-request comment (or JSON); budgets (--require) apply to NEW."""
    from optkit.budgets import parse_budgets
    from optkit.compare import compare_reports

    budgets = parse_budgets(require)
    comparison = compare_reports(
        Report.load(baseline),
        Report.load(new),
        budgets,
        noise_floor=noise_floor / 100,
        sources=(str(baseline), str(new)),
    )
    if output is not None:
        comparison.write(output, overwrite)
    if json_here or ctx.obj["json"]:
        click.echo(json.dumps(comparison.to_dict(), indent=2, default=str))
    else:
        click.echo(comparison.to_markdown())
    if junit_path is not None:
        from optkit.junit import budget_cases, regression_cases, write_junit

        classname = f"optkit.compare.{comparison.new.model}"
        suites = {"budgets": budget_cases(comparison.budgets, classname)} if comparison.budgets else {}
        if fail_on_regression:
            suites["regressions"] = regression_cases(comparison.changes, classname)
        write_junit(junit_path, suites)
    raise_if_missed(comparison.budgets)
    if fail_on_regression and comparison.regressions:
        raise BudgetMissed(
            f"{len(comparison.regressions)} regression(s): "
            + "; ".join(c.summary for c in comparison.regressions)
        )
