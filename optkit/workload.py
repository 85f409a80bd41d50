"""Workload: how a model is driven and calibrated, typed and serializable.

Passes see how a model is used only through its Workload: calibration, sensitivity over
timesteps and cache schedules read it, for zoo and user models alike. A Workload says

- `inputs`: the names of the Program's inputs, in order (checked against the graph);
- `diffusion`: for a denoiser `model(x, t, *cond)`, the sampler and its noise schedule, the
  number of steps, the classifier-free guidance scale and how to make the null condition;
- `calibration`: where calibration batches come from: the example inputs, a file of input
  batches (`.npz` / `.safetensors`), a folder of images with a preprocessing spec, a token file,
  or batches given in Python (kept in memory, not saved);
- `metric`: the quality figure that says what an optimization cost (`sqnr`, `psnr`, `top1`,
  `perplexity`; empty for the default, output SQNR).

It is saved in `model.pt2.json` beside the graph and read from a TOML file
(`optkit optimize --workload FILE.toml`):

```toml
inputs = ["sample", "timestep", "encoder_hidden_states"]
metric = "psnr"

[diffusion]
sampler = "ddim"            # or a table: { name = "diffusers", scheduler = { _class_name = ... } }
steps = 20
guidance_scale = 2.0
null_cond = ["zeros"]       # per conditioning input: "zeros", "keep" or "fill:VALUE"

[calibration]
source = "file"             # example | file | images | tokens
path = "calib.npz"
```
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optkit.errors import ConfigError
from optkit.sampling import SamplerSpec

Batch = tuple[torch.Tensor, ...]

METRICS = ("", "sqnr", "psnr", "top1", "perplexity")
SOURCES = ("example", "file", "images", "tokens", "memory")
NULL_FORMS = "'zeros', 'keep' or 'fill:VALUE'"


def _check_keys(owner: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{owner}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )


def _table(owner: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{owner} must be a table of keys, got {type(value).__name__} {value!r:.60}")
    return value


def _number(owner: str, value: Any, kind: type[int] | type[float]) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{owner} must be {'an integer' if kind is int else 'a number'}, got {value!r:.60}")
    return kind(value)


def _string(owner: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{owner} must be a string, got {value!r:.60}")
    return value


def _items(owner: str, value: Any, kind: type[str] | type[float] = str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{owner} must be a list, got {value!r:.60}")
    if kind is str:
        return tuple(_string(f"{owner} entry", v) for v in value)
    return tuple(_number(f"{owner} entry", v, float) for v in value)


def null_value(spec: str, cond: torch.Tensor) -> torch.Tensor:
    """The null (unconditional) version of one conditioning tensor under `spec`."""
    if spec == "zeros":
        return torch.zeros_like(cond)
    if spec == "keep":
        return cond
    if spec.startswith("fill:"):
        return torch.full_like(cond, float(spec[5:]))
    raise ConfigError(f"null condition {spec!r}: expected {NULL_FORMS}")


def null_condition(specs: Sequence[str], cond: Sequence[torch.Tensor]) -> Batch:
    """The null version of each conditioning tensor, one spec per tensor (`zeros` when empty)."""
    if specs and len(specs) != len(cond):
        raise ConfigError(f"null_cond has {len(specs)} entries for {len(cond)} conditioning inputs")
    return tuple(null_value(s, c) for s, c in zip(specs or ("zeros",) * len(cond), cond, strict=True))


@dataclass(frozen=True)
class Diffusion:
    """How a denoiser `model(x, t, *cond)` is sampled: sampler, steps, guidance, null condition.

    `null_cond` has one entry per conditioning input (`zeros` when empty): `zeros`, `keep`
    (the same tensor in both branches, e.g. a source image) or `fill:VALUE` (a null class or
    token id).
    """

    sampler: SamplerSpec
    steps: int = 20
    guidance_scale: float = 1.0
    null_cond: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"diffusion.steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1.0):
            raise ConfigError(
                f"diffusion.guidance_scale must be >= 1 (1 = no guidance), got {self.guidance_scale}"
            )
        for spec in self.null_cond:
            bad = spec not in ("zeros", "keep") and not spec.startswith("fill:")
            if not bad and spec.startswith("fill:"):
                try:
                    float(spec[5:])
                except ValueError:
                    bad = True
            if bad:
                raise ConfigError(f"diffusion.null_cond entry {spec!r}: expected {NULL_FORMS}")

    def null_condition(self, cond: Sequence[torch.Tensor]) -> Batch:
        """The unconditional inputs of classifier-free guidance for `cond`."""
        return null_condition(self.null_cond, cond)

    def guidance(
        self, cond: Sequence[torch.Tensor], scale: float | None = None
    ) -> tuple[float, Batch | None]:
        """(guidance scale, null condition), or (1.0, None) when sampling without guidance."""
        scale = self.guidance_scale if scale is None else scale
        if scale <= 1.0 or not cond:
            return 1.0, None
        return scale, self.null_condition(cond)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.to_dict(),
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "null_cond": list(self.null_cond),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diffusion:
        data = _table("diffusion", data)
        _check_keys("diffusion", data, ("sampler", "steps", "guidance_scale", "null_cond"))
        if "sampler" not in data:
            raise ConfigError("diffusion needs a `sampler` (ddim, dpm++2m, flow-euler, or a diffusers table)")
        sampler = data["sampler"]
        if not isinstance(sampler, str):
            sampler = _table("diffusion.sampler", sampler)
        try:
            spec = SamplerSpec.from_dict(sampler)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:  # a value of the wrong kind inside the table
            raise ConfigError(f"diffusion.sampler: {err}") from err
        return cls(
            spec,
            _number("diffusion.steps", data.get("steps", 20), int),
            _number("diffusion.guidance_scale", data.get("guidance_scale", 1.0), float),
            _items("diffusion.null_cond", data.get("null_cond", ())),
        )


@dataclass(frozen=True)
class Calibration:
    """Where calibration batches come from (see `optkit.calib_data` for the file formats).

    Images are resized to the model's input size, scaled to [0, 1] and normalized with
    `mean` / `std` (one value, or one per channel). `batches` holds tensors given in Python
    (`source = "memory"`); they are not saved. How many batches a pass uses is the pass's
    option (`calibration_batches`).
    """

    source: str = "example"
    path: str = ""
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    batches: tuple[Batch, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"calibration.source {self.source!r}: expected one of {', '.join(SOURCES)}")
        if self.source in ("file", "images", "tokens") and not self.path:
            raise ConfigError(f"calibration.source {self.source!r} needs a `path`")
        if self.source == "memory" and not self.batches:
            raise ConfigError("in-memory calibration needs at least one batch")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"calibration.std must be positive, got {list(self.std)}")

    @classmethod
    def from_batches(cls, batches: Iterable[Batch | torch.Tensor]) -> Calibration:
        """Calibration from tensors given in Python (an iterable of input tuples or tensors)."""
        held = tuple((b,) if isinstance(b, torch.Tensor) else tuple(b) for b in batches)
        return cls("memory", batches=held)

    @classmethod
    def from_path(cls, path: str | Path) -> Calibration:
        """Calibration from a path as `--calib` gives it: a folder of images, a `.npz` /
        `.safetensors` of input batches, or a `.npy` / `.txt` of token ids."""
        path = Path(path).resolve()  # saved with the model: valid from any working directory
        if path.is_dir():
            return cls("images", str(path))
        if not path.is_file():
            raise ConfigError(f"no such calibration file or folder: {path}")
        suffix = path.suffix.lower()
        if suffix in (".npz", ".safetensors"):
            return cls("file", str(path))
        if suffix in (".npy", ".txt"):
            return cls("tokens", str(path))
        raise ConfigError(
            f"calibration {path.name}: expected a folder of images, a .npz or .safetensors of input batches, "
            "or a .npy or .txt of token ids"
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source}
        if self.path:
            data["path"] = self.path
        if self.source == "images":
            data.update(mean=list(self.mean), std=list(self.std))
        if self.source == "memory":
            data["batches"] = len(self.batches)  # a count: the tensors are not saved
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> Calibration:
        """From `to_dict` output or a TOML table; a relative `path` is taken from `base`."""
        data = _table("calibration", data)
        _check_keys("calibration", data, ("source", "path", "mean", "std", "batches"))
        source = _string("calibration.source", data.get("source", "example"))
        if source == "memory":  # saved from Python: the tensors did not travel with the model
            return cls()
        path = _string("calibration.path", data.get("path", ""))
        if path and base is not None and not Path(path).is_absolute():
            path = str(base / path)
        return cls(
            source,
            path,
            _items("calibration.mean", data.get("mean", (0.0,)), float),
            _items("calibration.std", data.get("std", (1.0,)), float),
        )


@dataclass(frozen=True)
class Workload:
    """How a model is driven (see the module docstring)."""

    inputs: tuple[str, ...] = ()
    diffusion: Diffusion | None = None
    calibration: Calibration = field(default_factory=Calibration)
    metric: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            allowed = ", ".join(repr(m) for m in METRICS)
            raise ConfigError(f"metric {self.metric!r}: expected one of {allowed}")
        if len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"workload inputs must be distinct names, got {list(self.inputs)}")

    def replace(self, **changes: Any) -> Workload:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"inputs": list(self.inputs), "calibration": self.calibration.to_dict()}
        if self.diffusion is not None:
            data["diffusion"] = self.diffusion.to_dict()
        if self.metric:
            data["metric"] = self.metric
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> Workload:
        """From `to_dict` output or a parsed TOML file, naming any unknown key or bad value."""
        data = _table("workload", data)
        _check_keys("workload", data, ("inputs", "diffusion", "calibration", "metric"))
        diffusion = data.get("diffusion")
        return cls(
            _items("workload inputs", data.get("inputs", ())),
            Diffusion.from_dict(diffusion) if diffusion else None,
            Calibration.from_dict(data.get("calibration", {}), base),
            _string("metric", data.get("metric", "")),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> Workload:
        """Read a workload file; relative calibration paths are taken from the file's folder."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no such workload file: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        return cls.from_dict(data, base=path.parent)

    def check(self, names: Sequence[str], example_inputs: Sequence[torch.Tensor]) -> None:
        """Raise `ConfigError` unless this workload fits a model with inputs `names` / `example_inputs`."""
        described = ", ".join(
            f"{n}: {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            for n, t in zip(names, example_inputs, strict=True)
        )
        if self.inputs and tuple(self.inputs) != tuple(names):
            raise ConfigError(
                f"workload inputs {list(self.inputs)} do not match the model's inputs ({described})"
            )
        if self.diffusion is not None:
            if len(example_inputs) < 2:
                raise ConfigError(
                    f"a diffusion workload needs a denoiser taking (x, t, *cond); the model takes ({described})"
                )
            if not example_inputs[0].is_floating_point():
                raise ConfigError(
                    f"a diffusion workload's first input must be the float latent x; got ({described})"
                )
            cond = len(example_inputs) - 2
            if self.diffusion.null_cond and len(self.diffusion.null_cond) != cond:
                raise ConfigError(
                    f"diffusion.null_cond has {len(self.diffusion.null_cond)} entries; the model has {cond} "
                    f"conditioning input(s) after (x, t) ({described})"
                )
