"""Registry of the zoo's models: `zoo:NAME[:size]` resolves here.

Each model file in `optkit/zoo/` registers one `ZooModel` at import time with
`register_model(...)`. The entry knows how to build the module at a named size, how to make
example inputs for capture, and where its trained `tiny` checkpoint lives (if it ships one).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.errors import ConfigError, UnknownNameError
from optkit.sampling import SamplerSpec
from optkit.workload import Calibration, Diffusion, Workload

log = logging.getLogger(__name__)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

# Model files imported on first use of the registry; each registers itself.
_MODEL_MODULES = (
    "dit",
    "ldm",
    "moviegen",
    "lingen",
    "instamanip",
    "scenetextgen",
    "lego",
    "efficientsam",
    "recsys",
    "textlm",
)


@dataclass(frozen=True)
class TrainSettings:
    """How `optkit zoo train` trains a model: seeded, with a progress callback.

    `progress(step, total, loss)` is called after every optimizer step; the CLI draws a bar.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    progress: Callable[[int, int, float], None] | None = None


@dataclass(frozen=True)
class EvalSettings:
    """How `optkit zoo eval` measures a model's quality: fixed seeds, a sample count."""

    num_samples: int = 256
    steps: int = 50
    seed: int = 0
    batch_size: int = 64


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry.

    `configs` maps a size name (`tiny`, `small`) to the config dataclass instance that `build`
    turns into an `nn.Module`. `example_inputs(model, batch, seed)` returns the positional tensors
    that `model(*inputs)` takes: the tensors capture and export use. `task` is one of
    `diffusion-image`, `diffusion-video`, `segmentation`, `recommendation`, `multimodal`,
    `language-model`;
    `sampler` names the zoo sampler a diffusion model is trained for (`ddim`, `dpm++2m`,
    `flow-euler`), empty for models that are not sampled; `guidance_scale` and `null_cond` (see
    `optkit.workload.Diffusion`) say how it samples with classifier-free guidance, and
    `workload()` hands all of it to passes as a Workload. `train(model, settings)` trains the
    model in place on data that ships offline and returns figures (final loss, seconds);
    `evaluate(model, settings)` returns the quality figures named in docs/zoo.md.
    `train_defaults` are the settings `optkit zoo train NAME` uses when no option overrides
    them: the recipe of the shipped `tiny` checkpoint. A model that is not sampled may name its
    Workload's quality `metric` (`perplexity`, `top1`; see `optkit.workload`) and give
    `calibration(model)`, the input batches its Workload calibrates on (kept in memory).
    """

    name: str
    paper: str
    task: str
    configs: dict[str, Any]
    build: Callable[[Any], nn.Module]
    example_inputs: Callable[[nn.Module, int, int], tuple[torch.Tensor, ...]]
    sampler: str = ""
    guidance_scale: float = 1.0
    null_cond: tuple[str, ...] = ()
    train: Callable[[nn.Module, TrainSettings], dict[str, float]] | None = None
    evaluate: Callable[[nn.Module, EvalSettings], dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    metric: str = ""
    calibration: Callable[[nn.Module], tuple[tuple[torch.Tensor, ...], ...]] | None = None
    train_defaults: TrainSettings = field(default_factory=TrainSettings)

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(self.configs)

    def workload(self, steps: int = 20, model: nn.Module | None = None) -> Workload:
        """How passes drive this model: its sampler, guidance and null condition (if sampled),
        or its metric and the calibration batches for `model` (built at `tiny` if not given)."""
        if not self.sampler:
            if self.calibration is None:
                return Workload(metric=self.metric)
            held = self.calibration(model if model is not None else self.build(self.configs["tiny"]))
            return Workload(calibration=Calibration.from_batches(held), metric=self.metric)
        return Workload(
            diffusion=Diffusion(SamplerSpec(self.sampler), steps, self.guidance_scale, self.null_cond),
            metric=self.metric,
        )

    def checkpoint_path(self, size: str) -> Path:
        return CHECKPOINT_DIR / f"{self.name}_{size}.safetensors"

    def create(self, size: str = "tiny", pretrained: bool = True) -> nn.Module:
        """Build the model at `size`, loading the shipped checkpoint when there is one."""
        if size not in self.configs:
            raise ConfigError(f"zoo model {self.name!r} has no size {size!r}; sizes: {', '.join(self.sizes)}")
        model = self.build(self.configs[size])
        path = self.checkpoint_path(size)
        if pretrained and path.exists():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(path)))
            log.info("loaded %s", path)
        return model.eval()


_REGISTRY: dict[str, ZooModel] = {}
_loaded = False


def register_model(entry: ZooModel) -> ZooModel:
    """Add `entry` to the registry (called by each model file at import)."""
    _REGISTRY[entry.name] = entry
    return entry


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(f"optkit.zoo.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"optkit.zoo.{mod}":
                raise


def get_model(name: str) -> ZooModel:
    """Return the registered zoo model `name`, or fail listing the known names."""
    _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError("zoo model", name, list(_REGISTRY))
    return _REGISTRY[name]


def list_models() -> list[ZooModel]:
    """Every registered zoo model, sorted by name."""
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
