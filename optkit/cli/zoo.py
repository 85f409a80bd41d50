"""`optkit zoo`: list, train and evaluate the zoo's models."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optkit.cli import options
from optkit.errors import ConfigError


@click.group()
def zoo() -> None:
    """The zoo: one small model per paper, trained on data that ships offline."""


@zoo.command(name="list")
@click.pass_context
def list_models(ctx: click.Context) -> None:
    """List the zoo's models, their sizes and whether a trained checkpoint ships."""
    from optkit.zoo.registry import list_models as entries

    rows = [
        {
            "name": e.name,
            "task": e.task,
            "paper": e.paper,
            "sizes": list(e.sizes),
            "trained": [s for s in e.sizes if e.checkpoint_path(s).exists()],
        }
        for e in entries()
    ]
    if ctx.obj["json"]:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        trained = ", ".join(r["trained"]) or "none"
        click.echo(
            f"{r['name']:<14} {r['task']:<16} sizes: {', '.join(r['sizes']):<12} trained: {trained:<10} {r['paper']}"
        )


@zoo.command()
@click.argument("name")
@options.size
@options.seed
@click.option(
    "--steps", default=None, type=int, help="Optimizer steps (default: the shipped checkpoint's recipe)."
)
@click.option(
    "--batch-size", default=None, type=int, help="Batch size (default: the shipped checkpoint's recipe)."
)
@click.option(
    "--lr", default=None, type=float, help="Learning rate (default: the shipped checkpoint's recipe)."
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="Checkpoint file (.safetensors)."
)
@click.pass_context
def train(
    ctx: click.Context,
    name: str,
    size: str,
    seed: int,
    steps: int | None,
    batch_size: int | None,
    lr: float | None,
    output: Path | None,
) -> None:
    """Train zoo model NAME reproducibly (seeded) and save its weights as safetensors."""
    import dataclasses

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from optkit.fsutil import atomic_file
    from optkit.zoo.registry import get_model

    entry = get_model(name)
    if entry.train is None:
        raise ConfigError(f"zoo model {name!r} has no training recipe")
    output = output or Path(f"{name}_{size}.safetensors")
    if output.suffix != ".safetensors":
        raise ConfigError(f"checkpoint must be a .safetensors file, got {output.name!r}")
    given = {"steps": steps, "batch_size": batch_size, "lr": lr}
    overrides = {k: v for k, v in given.items() if v is not None}
    if any(v <= 0 for v in overrides.values()):
        raise ConfigError(f"steps, batch size and learning rate must be positive, got {overrides}")
    defaults = entry.train_defaults
    settings = dataclasses.replace(
        defaults,
        seed=seed,
        steps=defaults.steps if steps is None else steps,
        batch_size=defaults.batch_size if batch_size is None else batch_size,
        lr=defaults.lr if lr is None else lr,
    )
    model = entry.create(size, pretrained=False)
    with Progress(
        TextColumn(f"train {name}:{size}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        disable=ctx.obj["quiet"],
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=settings.steps, loss=float("nan"))
        settings = dataclasses.replace(
            settings, progress=lambda s, n, loss: bar.update(task, completed=s, total=n, loss=loss)
        )
        figures = entry.train(model, settings)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(output) as tmp:
        save_file(state, str(tmp), metadata={"model": name, "size": size, "seed": str(seed)})
    shown: dict[str, object] = {**figures, "checkpoint": str(output)}
    click.echo(
        json.dumps(shown, indent=2) if ctx.obj["json"] else "\n".join(f"{k}: {v}" for k, v in shown.items())
    )


@zoo.command(name="eval")
@click.argument("name")
@options.size
@options.seed
@click.option("--samples", default=256, show_default=True, type=int, help="Samples to generate or evaluate.")
@click.option("--steps", default=50, show_default=True, type=int, help="Sampler steps (diffusion models).")
@click.option(
    "--checkpoint", type=click.Path(path_type=Path, exists=True), default=None, help="Weights to evaluate."
)
@click.pass_context
def evaluate(
    ctx: click.Context, name: str, size: str, seed: int, samples: int, steps: int, checkpoint: Path | None
) -> None:
    """Measure zoo model NAME's quality with its metric (FD-digits, accuracy, mIoU, AUC, ...)."""
    from optkit.zoo.registry import EvalSettings, get_model

    entry = get_model(name)
    if entry.evaluate is None:
        raise ConfigError(f"zoo model {name!r} has no evaluation recipe")
    if samples <= 0 or steps <= 0:
        raise ConfigError(f"--samples and --steps must be positive, got {samples} and {steps}")
    model = entry.create(size, pretrained=checkpoint is None)
    if checkpoint is not None:
        from safetensors.torch import load_file

        try:
            model.load_state_dict(load_file(str(checkpoint)))
        except Exception as err:
            raise ConfigError(f"{checkpoint} does not hold weights of {name}:{size}: {err}") from err
    figures = entry.evaluate(model, EvalSettings(num_samples=samples, steps=steps, seed=seed))
    click.echo(
        json.dumps(figures, indent=2)
        if ctx.obj["json"]
        else "\n".join(f"{k}: {v}" for k, v in figures.items())
    )
