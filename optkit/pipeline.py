"""Passes and the PassManager.

A pass is a small class with a frozen config dataclass. `run(program) -> PassResult` returns the
rewritten Program, whether anything changed, and figures. The registry maps the CLI name
(`dce`, `ptq`, `cache`, ...) to the pass class; named pipelines map a name to a list of passes.
The PassManager runs a list of passes on clones of the input, lints the graph after each one
and checks its outputs against the previous Program within the tolerance the pass declares;
on failure it raises a `PassError` naming the pass and the passes before it, and the caller's
Program is left untouched.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import pkgutil
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from optkit.errors import ConfigError, OptkitError, PassError, UnknownNameError
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program, eliminate_dead_code, remove_unused_attributes, weight_versions
from optkit.report import Figure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassConfig:
    """Base of every pass's settings: frozen, versioned, built from a dict with checked keys."""

    version: ClassVar[int] = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PassConfig:
        """Build the config from user data (TOML table, CLI options), naming any bad key or value."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(fields) or '(none)'}"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(cls.__name__, k, v, hints.get(k)) for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(owner: str, key: str, value: Any, hint: Any) -> Any:
    # TOML gives lists where configs hold tuples; ints where floats are allowed.
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{owner}.{key} must be {hint.__name__}, got {value!r}")
    if origin is typing.Literal and value not in typing.get_args(hint):
        allowed = ", ".join(repr(a) for a in typing.get_args(hint))
        raise ConfigError(f"{owner}.{key} must be one of {allowed}, got {value!r}")
    return value


@dataclass(frozen=True)
class Tolerance:
    """How far a pass may move the outputs: `allclose(atol, rtol)`, or SQNR >= `min_sqnr_db`."""

    atol: float = 1e-5
    rtol: float = 1e-4
    min_sqnr_db: float | None = None


@dataclass
class PassResult:
    """What a pass returns: the new Program, whether it changed, and figures (with units).

    `hint`, when set, is called with the pass's input Program only if the outputs miss the
    pass's tolerance; the advice it returns (which layers lose most, which options would help)
    ends the PassError. Lazy, because a useful diagnosis costs model runs.
    """

    program: Program
    modified: bool
    figures: dict[str, Figure] = field(default_factory=dict)
    hint: Callable[[Program], str] | None = None


C = TypeVar("C", bound=PassConfig)


class Pass:
    """Base class of passes. Subclasses set `name`, `config_cls`, optionally `tolerance`, and
    implement `run`; `requires` says why a Program cannot take the pass (None when it can)."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[PassConfig]] = PassConfig
    tolerance: ClassVar[Tolerance] = Tolerance()
    # True when `run` never writes into a tensor of the Program it is given: it registers a new
    # tensor for every weight it rewrites. The manager then hands it a copy that shares the
    # input's weights (copy on write) instead of a deep copy: memory for one more graph, not
    # one more model. Passes that edit weights in place keep the default and get a deep copy.
    shares_weights: ClassVar[bool] = False

    def __init__(self, config: PassConfig | None = None) -> None:
        config = config if config is not None else self.config_cls()
        if not isinstance(config, self.config_cls):
            raise ConfigError(
                f"pass {self.name!r} takes a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def requires(self, program: Program) -> str | None:
        return None

    def run(self, program: Program) -> PassResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, tuple[str, ...]] = {}
_builtins_loaded = False

P = TypeVar("P", bound=type[Pass])


def register_pass(name: str, config_cls: type[PassConfig]) -> Callable[[P], P]:
    """Class decorator: register a pass under its CLI `name` with its config class."""

    def wrap(cls: P) -> P:
        if name in _PASSES and _PASSES[name] is not cls:
            raise OptkitError(
                f"pass name {name!r} is registered twice ({_PASSES[name].__name__}, {cls.__name__})"
            )
        cls.name = name
        cls.config_cls = config_cls
        _PASSES[name] = cls
        return cls

    return wrap


def register_pipeline(name: str, passes: Sequence[str]) -> None:
    """Register a named pipeline: a list of pass names run in order."""
    _PIPELINES[name] = tuple(passes)


def _load_builtins() -> None:
    # Each file in passes/ registers itself on import; importing them all fills the registry.
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import optkit.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"optkit.passes.{info.name}")


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by CLI name."""
    _load_builtins()
    return dict(sorted(_PASSES.items()))


def registered_pipelines() -> dict[str, tuple[str, ...]]:
    """Every named pipeline, by name."""
    _load_builtins()
    return dict(sorted(_PIPELINES.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`, or an error listing the known names."""
    passes = registered_passes()
    if name not in passes:
        raise UnknownNameError(
            "pass", name, list(passes) + [f"{p} (pipeline)" for p in registered_pipelines()]
        )
    return passes[name]


def expand(names: Sequence[str]) -> list[str]:
    """Pass names with pipeline names replaced by their passes."""
    pipelines = registered_pipelines()
    out: list[str] = []
    for name in names:
        out.extend(pipelines.get(name, (name,)))
    return out


def build_passes(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Pass]:
    """Instantiate passes by name (pipelines expanded) with per-pass option tables."""
    options = dict(options or {})
    names = expand(names)
    if not names:
        raise ConfigError("no passes given; see `optkit passes` for the registered ones")
    passes = []
    for name in names:
        cls = get_pass(name)
        passes.append(cls(cls.config_cls.from_dict(options.get(name, {}))))
    stray = sorted(set(options) - set(names))
    if stray:
        raise ConfigError(
            f"options given for pass(es) not in the run: {', '.join(stray)}; running: {', '.join(names)}"
        )
    return passes


@dataclass
class PassRecord:
    """One pass as it ran: result figures, time, and the numerical check against its input."""

    name: str
    modified: bool
    seconds: float
    figures: dict[str, Figure]
    check: dict[str, float]


@dataclass
class PipelineResult:
    """The final Program and one record per pass."""

    program: Program
    records: list[PassRecord]


class PassManager:
    """Run passes in order, verifying the graph after each one.

    `progress(i, n, name)` is called before each pass. With `check_numerics`, each pass's output
    is compared with its input on the example inputs within the pass's `tolerance`.
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        check_numerics: bool = True,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        self.passes = list(passes)
        self.check_numerics = check_numerics
        self.progress = progress

    def run(self, program: Program) -> PipelineResult:
        """Run every pass on a clone of `program`; the input Program is never modified.

        A pass that declares `shares_weights` gets a clone whose weights are its input's own
        tensors (others a deep copy), and is checked afterwards not to have written into any of
        them: the output shares every weight no pass rewrote with the input, and the peak stays
        near one model plus what the passes add.
        """
        current = program.clone(share_weights=True)  # the manager itself writes no weight
        reference = flat_outputs(current.run()) if self.check_numerics else []
        records: list[PassRecord] = []
        for i, p in enumerate(self.passes):
            if self.progress:
                self.progress(i, len(self.passes), p.name)
            before = [r.name for r in records]
            where = f"pass {p.name!r}" + (f" (after {', '.join(before)})" if before else " (first pass)")
            reason = p.requires(current)
            if reason:
                raise PassError(f"{where} cannot run: {reason}")
            start = time.perf_counter()
            versions = weight_versions(current.graph_module) if p.shares_weights else {}
            try:
                result = p.run(current.clone(share_weights=p.shares_weights))
            except OptkitError as err:
                _check_untouched(current, versions, where)
                raise PassError(f"{where} failed: {err}") from err
            except Exception as err:
                _check_untouched(current, versions, where)
                raise PassError(f"{where} crashed: {type(err).__name__}: {err}") from err
            _check_untouched(current, versions, where)
            seconds = time.perf_counter() - start
            new = result.program
            if result.modified:
                _drop_leftovers(new)
            try:
                new.lint()
            except Exception as err:
                raise PassError(f"{where} left a broken graph: {err}") from err
            check: dict[str, float] = {}
            if self.check_numerics:
                try:
                    outputs = flat_outputs(new.run())
                except Exception as err:
                    raise PassError(
                        f"{where} produced a graph that does not run: {type(err).__name__}: {err}"
                    ) from err
                advice = _advice(result.hint, current, where)
                check = _compare(reference, outputs, p.tolerance, where, advice)
                reference = outputs
            new.annotations.history.append(p.name)
            records.append(PassRecord(p.name, result.modified, seconds, dict(result.figures), check))
            log.info("%s: modified=%s in %.2fs %s", p.name, result.modified, seconds, check)
            current = new
        return PipelineResult(current, records)


def _check_untouched(before: Program, versions: dict[str, tuple[int, int]], where: str) -> None:
    # A pass that shares its input's weights must replace, never overwrite, them.
    if not versions:
        return
    now = weight_versions(before.graph_module)
    written = [name for name, v in versions.items() if now.get(name, v) != v]
    if written:
        raise PassError(
            f"{where} wrote into {len(written)} weight(s) of its input in place ({', '.join(written[:5])}) "
            "although it declares shares_weights; register a new tensor instead, or set "
            "shares_weights = False so that it gets a copy of its own"
        )


def _drop_leftovers(program: Program) -> None:
    # A pass that replaces ops (a float Linear by its int8 kernel) may leave the old weights
    # behind; they would still be saved and counted. Dead nodes and unread attributes go.
    gm = program.graph_module
    if eliminate_dead_code(gm):
        gm.recompile()
    remove_unused_attributes(gm)


def _advice(hint: Callable[[Program], str] | None, before: Program, where: str) -> Callable[[], str]:
    # The pass's hint, as text to end a tolerance error with: run only when a tolerance is
    # missed, and a hint that fails must not hide that error.
    def advice() -> str:
        if hint is None:
            return ""
        try:
            return " " + hint(before)
        except Exception as err:
            log.warning("%s: no hint (%s: %s)", where, type(err).__name__, err)
            return ""

    return advice


def _compare(
    expected: list[torch.Tensor],
    got: list[torch.Tensor],
    tol: Tolerance,
    where: str,
    advice: Callable[[], str],
) -> dict[str, float]:
    if len(expected) != len(got):
        raise PassError(f"{where} changed the number of outputs from {len(expected)} to {len(got)}")
    max_err, min_sqnr = 0.0, math.inf
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            raise PassError(f"{where} changed an output shape from {tuple(e.shape)} to {tuple(g.shape)}")
        if not e.is_floating_point():
            if not torch.equal(e, g):
                raise PassError(f"{where} changed an integer output")
            continue
        diff = (e.double() - g.double()).abs()
        max_err = max(max_err, float(diff.max()) if diff.numel() else 0.0)
        noise = float((diff**2).sum())
        signal = float((e.double() ** 2).sum())
        sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
        min_sqnr = min(min_sqnr, sqnr)
        if tol.min_sqnr_db is None and not torch.allclose(g, e, atol=tol.atol, rtol=tol.rtol):
            raise PassError(
                f"{where} changed the outputs: max abs error {max_err:.3g} exceeds atol={tol.atol:g}, "
                f"rtol={tol.rtol:g}.{advice()}"
            )
    if tol.min_sqnr_db is not None and min_sqnr < tol.min_sqnr_db:
        raise PassError(
            f"{where} degraded the outputs to {min_sqnr:.1f} dB SQNR, below its {tol.min_sqnr_db:g} dB floor."
            f"{advice()}"
        )
    return {"max_abs_error": max_err, "min_sqnr_db": min_sqnr}
