"""The session caches behind the `optkit_capture` and `optkit_optimize` fixtures: capture or
load a model, and run a pass pipeline, once per test session."""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.api import optimize
from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.program import Program
from optkit.pipeline import PipelineResult
from optkit.refs import load_program_ref, parse_model_ref

log = logging.getLogger(__name__)


class CaptureCache:
    """Programs captured or loaded once per test session: the `optkit_capture` fixture.

    `cache(module, example_inputs)` captures a module; `cache("zoo:dit")`, `cache("pkg.mod:factory")`
    or `cache("model.pt2")` loads a model reference. A module is keyed by its identity and its
    inputs' shapes and dtypes (the cache keeps the module alive, so its `id()` is not reused), a
    reference by its text (a file by its resolved path) and load options; `key=` names the model
    yourself, and then must name the same model on every call. The same Program object comes back
    each time: treat it as read-only (`clone()` it before editing; passes never edit their input).
    """

    def __init__(self) -> None:
        self._programs: dict[Hashable, Program] = {}
        self._sources: dict[Hashable, Any] = {}  # key -> the module or reference text it stands for
        self.loads = 0  # captures and loads actually done (the rest came from the cache)

    def __call__(
        self,
        model_or_ref: nn.Module | str | Path,
        example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        key: Hashable | None = None,
        name: str | None = None,
        batch: int | None = None,
        seed: int = 0,
        trust_pickle: bool = False,
    ) -> Program:
        """The Program for `model_or_ref`, captured (a module, on `example_inputs`) or loaded
        (a reference, with `batch`, `seed`, `trust_pickle` as in `optkit.load_model`) on first use."""
        if isinstance(model_or_ref, nn.Module):
            if example_inputs is None:
                raise ConfigError(
                    f"capturing a {type(model_or_ref).__name__} needs example_inputs (a tensor or a tuple of tensors)"
                )
            inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
            source: Any = model_or_ref
            auto_key: Hashable = ("module", id(model_or_ref), _signature(inputs))
        elif isinstance(model_or_ref, (str, Path)):
            if example_inputs is not None:
                raise ConfigError(
                    f"{str(model_or_ref)!r} is a model reference, which brings its own example inputs; "
                    "give example_inputs only with an nn.Module"
                )
            source = _canonical_ref(str(model_or_ref))
            auto_key = ("ref", source, batch, seed, trust_pickle)
        else:
            raise ConfigError(
                f"optkit_capture takes an nn.Module or a model reference (zoo:NAME, pkg.module:factory, "
                f"a .pt2 path), got {type(model_or_ref).__name__}"
            )
        cache_key = ("key", key) if key is not None else auto_key
        if cache_key in self._programs:
            if key is not None and not _same(self._sources[cache_key], source):
                raise ConfigError(f"key {key!r} already names another model in this session; give a new key")
            return self._programs[cache_key]
        if isinstance(model_or_ref, nn.Module):
            program = capture(model_or_ref, inputs, name=name or type(model_or_ref).__name__)
        else:
            program = load_program_ref(str(model_or_ref), batch=batch, seed=seed, trust_pickle=trust_pickle)
        log.info("optkit_capture: captured %s once for this session", program.name)
        self.loads += 1
        self._programs[cache_key], self._sources[cache_key] = program, source
        return program


class OptimizeCache:
    """Pass pipelines run once per test session: the `optkit_optimize` fixture.

    `cache(program, "ptq")` or `cache(program, ["ptq", "cache"], {"ptq": {...}})` runs
    `optkit.optimize` the first time and returns the same `PipelineResult` afterwards, keyed by
    the Program's identity (the cache keeps it alive), the passes and the options.
    """

    def __init__(self) -> None:
        self._results: dict[Hashable, tuple[Program, PipelineResult]] = {}
        self.runs = 0  # pipelines actually run

    def __call__(
        self,
        program: Program,
        passes: str | Sequence[str],
        options: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        check_numerics: bool = True,
    ) -> PipelineResult:
        """`optkit.optimize(program, passes, options)`, once per session; `passes` may be `"ptq,cache"`."""
        if not isinstance(program, Program):
            raise ConfigError(
                f"optkit_optimize takes a Program (from optkit_capture), got {type(program).__name__}"
            )
        names = (
            [p.strip() for p in passes.split(",") if p.strip()] if isinstance(passes, str) else list(passes)
        )
        if not names:
            raise ConfigError(
                "optkit_optimize needs at least one pass or pipeline name (see `optkit passes`)"
            )
        cache_key = (
            id(program),
            tuple(names),
            json.dumps(options or {}, sort_keys=True, default=repr),
            check_numerics,
        )
        if cache_key not in self._results:
            self._results[cache_key] = (program, optimize(program, names, options, check_numerics))
            self.runs += 1
        return self._results[cache_key][1]


def _signature(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        (tuple(t.shape), str(t.dtype)) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs
    )


def _canonical_ref(text: str) -> str:
    ref = parse_model_ref(text)
    return text.strip() if ref.kind in ("zoo", "factory") else str(ref.path.resolve())


def _same(a: Any, b: Any) -> bool:
    return a is b if isinstance(a, nn.Module) or isinstance(b, nn.Module) else a == b
