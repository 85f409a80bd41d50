"""Options shared by several commands, defined once, and the config-file reader."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from optkit.errors import ConfigError

output = click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output directory (written atomically).",
)
overwrite = click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already exists.")
trust_pickle = click.option(
    "--trust-pickle", is_flag=True, help="Allow loading a pickled .pt model (this runs code from the file)."
)
size = click.option("--size", default="tiny", show_default=True, help="Zoo model size (tiny, small).")
threads = click.option(
    "--threads",
    default=None,
    type=click.IntRange(min=1),
    help="PyTorch, ONNX Runtime and TVM runtime threads for timing, each set to exactly this [default: torch's setting].",
)
tune_trials = click.option(
    "--tune-trials",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Schedule-tuning trials for --tuner (0: untuned).",
)
tuner = click.option(
    "--tuner",
    type=click.Choice(["optkit", "metaschedule"]),
    default="optkit",
    show_default=True,
    help="optkit: tile sizes of optkit's matmul rule; metaschedule: TVM MetaSchedule on the kernels "
    "with a reduction, each kept only where it beats optkit's schedule (recorded in the manifest).",
)
seed = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
workload = click.option(
    "--workload",
    "workload_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file saying how the model is driven: inputs, [diffusion] sampler, [calibration], metric.",
)
calib = click.option(
    "--calib",
    "calib_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Calibration data: a .npz/.safetensors of input batches, a folder of images, or a .npy/.txt of token ids.",
)


require = click.option(
    "--require",
    "require",
    multiple=True,
    metavar="EXPR",
    help="Budget on a report figure, NAME OP NUMBER[UNIT] (e.g. quality_psnr_db>=30, "
    "model_bytes<=2MiB); repeatable. A missed budget exits with code 3 after writing everything.",
)
junit = click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a JUnit XML file with one test case per budget.",
)


pass_option = click.option(
    "-O",
    "--option",
    "pass_options",
    multiple=True,
    metavar="PASS.KEY=VALUE",
    help="A pass option, e.g. -O cache.min_psnr=32 (a TOML value; repeatable; overrides --config).",
)


def parse_pass_options(
    items: Sequence[str], base: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """`base` (a config file's option tables) with each `PASS.KEY=VALUE` laid over it; VALUE is
    read as TOML (`32`, `0.2`, `true`, `"ddim"`, `[0, 1]`) and otherwise kept as a string."""
    options = {name: dict(table) for name, table in base.items()}
    for item in items:
        key, sep, text = item.partition("=")
        name, dot, field_name = key.strip().partition(".")
        if not sep or not dot or not name or not field_name:
            raise ConfigError(f"-O takes PASS.KEY=VALUE (e.g. cache.min_psnr=32), got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        options.setdefault(name, {})[field_name] = value
    return options


def split_passes(value: str | None) -> list[str]:
    """`ptq,cache` -> ['ptq', 'cache'] (blank items dropped)."""
    return [p.strip() for p in (value or "").split(",") if p.strip()]


@dataclass(frozen=True)
class RunConfig:
    """A TOML run config: `passes`, options per pass, and `require`d budgets (docs/ci.md)."""

    passes: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    require: list[str] = field(default_factory=list)


def read_config(path: Path | None) -> RunConfig:
    """Read a TOML run config: optional `passes = [...]` and `require = [...]` (budgets), then
    one table of options per pass."""
    if path is None:
        return RunConfig()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    passes = data.pop("passes", [])
    if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
        raise ConfigError(f"{path}: `passes` must be a list of pass names, got {passes!r}")
    require = data.pop("require", [])
    if not isinstance(require, list) or not all(isinstance(r, str) for r in require):
        raise ConfigError(
            f'{path}: `require` must be a list of budgets such as "quality_psnr_db>=30", got {require!r}'
        )
    options: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: top-level key {key!r} must be a [table] of options for the pass of that name"
            )
        options[key] = value
    return RunConfig(passes, options, require)
