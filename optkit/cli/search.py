"""`optkit search`: recommender architecture x PIM hardware co-design (optkit.search)."""

from __future__ import annotations

from pathlib import Path

import click

from optkit.cli import options
from optkit.errors import ConfigError, ModelRefError


def _problem(model: str) -> object:
    # The zoo layer hands the supernet and data to the generic search.
    parts = model.split(":")
    if len(parts) not in (2, 3) or parts[0] != "zoo" or parts[1] != "recsys":
        raise ModelRefError(
            f"optkit search needs a weight-sharing supernet: zoo:recsys[:tiny|small], got {model!r}"
        )
    from optkit.zoo.recsys import search_problem

    return search_problem(parts[2] if len(parts) == 3 else "tiny")


@click.command()
@click.argument("model")
@click.option(
    "--objectives",
    default="auc,latency,energy",
    show_default=True,
    help="Comma-separated: auc, latency, energy.",
)
@click.option("--target", default="pim:hbm-pim", show_default=True, help="pim:PRESET or pim:FILE.toml.")
@click.option("--trials", default=64, show_default=True, type=int, help="Trials (candidates scored) in all.")
@click.option(
    "--searcher", default="nsga2", show_default=True, help="nsga2, tpe, evolution (regularized) or random."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="Trials scored at once: Ray tasks if Ray is installed, else a local process pool.",
)
@click.option(
    "--ray", "ray_address", default=None, help="Run trials on the Ray cluster at ADDRESS (host:port)."
)
@click.option("--supernet-steps", default=1500, show_default=True, type=int, help="Supernet training steps.")
@click.option(
    "--retrain",
    default=2,
    show_default=True,
    type=int,
    help="Front candidates trained alone (0: skip, with baselines).",
)
@click.option(
    "--retrain-steps", default=2000, show_default=True, type=int, help="Steps of each stand-alone training."
)
@click.option(
    "--calibration",
    default="auto",
    show_default=True,
    help="Host side of the cost model: auto (this machine's full calibration if cached, else quick), "
    "quick, full, or FILE.json, a saved host model (e.g. OUT/host_model.json of an earlier search) "
    "so that the same seed gives the same front on another machine.",
)
@options.seed
@options.output
@click.pass_context
def search(
    ctx: click.Context,
    model: str,
    objectives: str,
    target: str,
    trials: int,
    searcher: str,
    workers: int,
    ray_address: str | None,
    supernet_steps: int,
    retrain: int,
    retrain_steps: int,
    calibration: str,
    seed: int,
    output: Path,
) -> None:
    """Search architectures of MODEL (zoo:recsys) jointly with the knobs of a PIM device.

    Writes OUTPUT/journal.log (resume by running the same command again), trials.json,
    pareto.json, pareto.png, retrained.json, and supernet.pt and host_model.json, the weights
    and the host cost model that a resumed search reuses.
    """
    from optkit.cli.main import _emit, _steps
    from optkit.search.api import SearchConfig, preflight, run_search

    if not target.startswith("pim:") or target == "pim:":
        raise ConfigError(
            f"optkit search needs --target pim:PRESET (hbm-pim, aim, upmem, recnmp or FILE.toml), got {target!r}"
        )
    config = SearchConfig(
        objectives=tuple(objectives.split(",")),
        preset=target[len("pim:") :],
        trials=trials,
        searcher=searcher,
        workers=workers,
        ray_address=ray_address,
        seed=seed,
        supernet_steps=supernet_steps,
        retrain=retrain,
        retrain_steps=retrain_steps,
        calibration=calibration,
    )
    preflight(config)  # an unreachable --ray address fails here, in seconds
    problem = _problem(model)
    with _steps(ctx, f"search {model}") as step:
        result = run_search(problem, config, output, progress=step)  # type: ignore[arg-type]
    _emit(ctx, result)
    if not ctx.obj["json"]:
        click.echo(f"wrote {output}/ (pareto.json, pareto.png, trials.json, journal.log)")
