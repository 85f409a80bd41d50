"""Assertions for users' tests whose failure messages carry the figures: output SQNR and PSNR
against a reference, latency against a baseline measured in the same interleaved rounds, and a
report's figure against a budget.

A failed check raises `AssertionError` (its message: the measured figure, the bound and what was
compared); a bad argument raises an `OptkitError`, so a typo never reads as a regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optkit.budgets import OPS, Budget, check_budgets, parse_budget
from optkit.errors import ConfigError, UnknownNameError
from optkit.ir.program import Program
from optkit.metrics import psnr_db, sqnr_db
from optkit.report import Report
from optkit.timing import interleaved_latency_ms

# What assert_sqnr / assert_psnr compare: a model run on inputs, or an output given as is.
Operand = Program | nn.Module | Callable[..., Any] | torch.Tensor | np.ndarray
# One batch (a tensor, or a tuple/list of tensors) or several (a list of tuples/lists of tensors).
Inputs = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]]


def assert_sqnr(reference: Operand, candidate: Operand, min_db: float, inputs: Inputs | None = None) -> float:
    """Assert the SQNR of `candidate`'s output against `reference`'s is at least `min_db` dB.

    Each of `reference` and `candidate` is a Program, an nn.Module or another callable (run on
    `inputs`, else on the example inputs of whichever is a Program, without grad; its first output
    tensor or array is compared, so a wrapper around an ONNX Runtime session fits too), or a
    tensor/array taken as the output itself. `inputs` is one batch (a tensor or a tuple of
    tensors) or a list of batches; outputs of several batches are concatenated. Returns the
    measured SQNR.
    """
    __tracebackhide__ = True
    _check_bound("min_db", min_db)
    ref, out, where = _outputs_pair(reference, candidate, inputs)
    value = sqnr_db(ref, out)
    if not value >= min_db:
        raise AssertionError(f"SQNR {_db(value)} < {_db(min_db)} required ({where}{_error(ref, out)})")
    return value


def assert_psnr(
    reference: Operand,
    candidate: Operand,
    min_db: float,
    inputs: Inputs | None = None,
    data_range: float | None = None,
) -> float:
    """Assert the PSNR of `candidate`'s output against `reference`'s is at least `min_db` dB.

    Operands and `inputs` as in `assert_sqnr`. `data_range` is the signal's max - min (2.0 for
    images in [-1, 1]); by default the reference output's span, as `optkit optimize` measures
    output PSNR. Returns the measured PSNR.
    """
    __tracebackhide__ = True
    _check_bound("min_db", min_db)
    if data_range is not None:
        _check_bound("data_range", data_range, positive=True)
    ref, out, where = _outputs_pair(reference, candidate, inputs)
    span = data_range if data_range is not None else float(ref.max() - ref.min()) or 1.0
    value = psnr_db(ref, out, data_range=span)
    if not value >= min_db:
        raise AssertionError(
            f"PSNR {_db(value)} < {_db(min_db)} required ({where}, data range {span:.4g}{_error(ref, out)})"
        )
    return value


def _outputs_pair(
    reference: Operand, candidate: Operand, inputs: Inputs | None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Both outputs, checked finite and of one shape, and the words that say what was compared."""
    __tracebackhide__ = True
    given = [_is_output(reference), _is_output(candidate)]
    labels = f"reference {_label(reference)} vs candidate {_label(candidate)}"
    if all(given):
        if inputs is not None:
            raise ConfigError("inputs were given but reference and candidate are both outputs (tensors)")
        batches: list[tuple[torch.Tensor, ...]] = []
        where = labels
    elif inputs is not None:
        batches = _batches(inputs)
        where = f"{labels} on {_count(len(batches), 'batch')}"
    else:
        program = next((x for x in (reference, candidate) if isinstance(x, Program)), None)
        if program is None:
            raise ConfigError(
                "give inputs: neither reference nor candidate is a Program with example inputs "
                f"({_label(reference)}, {_label(candidate)})"
            )
        batches = [program.example_inputs]
        where = f"{labels} on 1 batch of example inputs"
    ref, out = _output(reference, batches), _output(candidate, batches)
    for side, tensor in (("reference", ref), ("candidate", out)):
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise AssertionError(
                f"{side} output has {bad} NaN or infinite values of {tensor.numel()} ({where})"
            )
    if ref.shape != out.shape:
        raise AssertionError(
            f"outputs differ in shape: reference {tuple(ref.shape)} vs candidate {tuple(out.shape)} ({where})"
        )
    return ref, out, f"{where}, output {tuple(ref.shape)}"


def _is_output(x: Operand) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _batches(inputs: Inputs) -> list[tuple[torch.Tensor, ...]]:
    if isinstance(inputs, torch.Tensor):
        return [(inputs,)]
    items = list(inputs)
    if items and all(isinstance(i, torch.Tensor) for i in items):
        return [tuple(items)]  # type: ignore[arg-type]
    if items and all(
        isinstance(i, (tuple, list)) and i and all(isinstance(t, torch.Tensor) for t in i) for i in items
    ):
        return [tuple(i) for i in items]  # type: ignore[arg-type]
    raise ConfigError(
        "inputs must be a tensor, a tuple of tensors (one batch) or a list of tuples of tensors (batches), "
        f"got {type(inputs).__name__} of {[type(i).__name__ for i in items][:4]}"
    )


def _output(operand: Operand, batches: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    if isinstance(operand, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(operand).detach().to("cpu", torch.float64)
    if not callable(operand):
        raise ConfigError(f"expected a Program, nn.Module, callable or tensor, got {type(operand).__name__}")
    firsts = []
    with torch.no_grad():
        for batch in batches:
            # Arrays count too: an ONNX Runtime session returns a list of numpy arrays.
            leaves, _ = torch.utils._pytree.tree_flatten(operand(*batch))
            arrays = [x for x in leaves if isinstance(x, (torch.Tensor, np.ndarray))]
            if not arrays:
                raise ConfigError(f"{_label(operand)} returned no tensor or array")
            firsts.append(torch.as_tensor(arrays[0]).detach().to("cpu", torch.float64))
    if len(firsts) == 1:
        return firsts[0]
    return torch.cat([t if t.dim() else t[None] for t in firsts])


def _label(x: Any) -> str:
    if isinstance(x, Program):
        return f"Program {x.name!r}"
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"{type(x).__name__} {tuple(x.shape)}"
    if isinstance(x, nn.Module):
        return type(x).__name__
    return getattr(x, "__name__", None) or type(x).__name__


def _error(ref: torch.Tensor, out: torch.Tensor) -> str:
    err = float((ref - out).abs().max()) if ref.numel() else 0.0
    return (
        f"; max abs error {err:.4g} at reference abs max {float(ref.abs().max()) if ref.numel() else 0.0:.4g}"
    )


def _db(value: float) -> str:
    return f"{value:.1f} dB" if math.isfinite(value) else f"{value} dB"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es"


def _check_bound(name: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


# -- latency -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyComparison:
    """Median latencies (ms) of a baseline and a candidate measured in the same interleaved rounds."""

    baseline_ms: float
    candidate_ms: float
    repeats: int
    warmup: int

    @property
    def speedup(self) -> float:
        """baseline / candidate: how many times faster the candidate is."""
        return self.baseline_ms / self.candidate_ms if self.candidate_ms > 0 else math.inf

    @property
    def ratio(self) -> float:
        """candidate / baseline: the candidate's latency as a fraction of the baseline's."""
        return self.candidate_ms / self.baseline_ms if self.baseline_ms > 0 else math.inf

    def __str__(self) -> str:
        return (
            f"baseline {self.baseline_ms:.4g} ms, candidate {self.candidate_ms:.4g} ms "
            f"(medians of {self.repeats} interleaved rounds after {self.warmup} warm-up)"
        )


def measure_latency(
    baseline_fn: Callable[..., Any],
    candidate_fn: Callable[..., Any],
    *,
    args: Sequence[Any] = (),
    repeats: int = 20,
    warmup: int = 3,
) -> LatencyComparison:
    """Median latency of `baseline_fn(*args)` and `candidate_fn(*args)`, measured against each
    other with `optkit.timing.interleaved_latency_ms`: each round calls both once, in turn, so a
    slow spell of the machine falls on both alike. A Program needs no `args` (it runs its
    example inputs)."""
    for name, fn in (("baseline_fn", baseline_fn), ("candidate_fn", candidate_fn)):
        if not callable(fn):
            raise ConfigError(f"{name} must be callable, got {type(fn).__name__}")
    timing = interleaved_latency_ms(
        {"baseline": lambda: baseline_fn(*args), "candidate": lambda: candidate_fn(*args)},
        warmup=warmup,
        repeats=repeats,
    )
    return LatencyComparison(timing["baseline"]["median"], timing["candidate"]["median"], repeats, warmup)


def assert_latency_ratio(
    baseline_fn: Callable[..., Any],
    candidate_fn: Callable[..., Any],
    *,
    max_ratio: float | None = None,
    min_speedup: float | None = None,
    args: Sequence[Any] = (),
    repeats: int = 20,
    warmup: int = 3,
) -> LatencyComparison:
    """Assert `candidate_fn` is fast enough against `baseline_fn`, measured by `measure_latency`.

    Give exactly one bound: `min_speedup` (baseline / candidate >= it) or `max_ratio`
    (candidate / baseline <= it; `max_ratio=1.1` allows 10 % slower). Wall-clock checks are only
    as steady as the machine: on shared CI runners, use generous bounds, pin threads with
    `--optkit-threads`, and raise `repeats`. Returns the measurement.
    """
    __tracebackhide__ = True
    if (max_ratio is None) == (min_speedup is None):
        raise ConfigError(
            f"give exactly one of max_ratio and min_speedup, got max_ratio={max_ratio!r}, min_speedup={min_speedup!r}"
        )
    bound_name, bound = ("max_ratio", max_ratio) if max_ratio is not None else ("min_speedup", min_speedup)
    _check_bound(bound_name, bound, positive=True)
    measured = measure_latency(baseline_fn, candidate_fn, args=args, repeats=repeats, warmup=warmup)
    if min_speedup is not None and not measured.speedup >= min_speedup:
        raise AssertionError(f"speed-up {measured.speedup:.3g}x < {min_speedup:.3g}x required: {measured}")
    if max_ratio is not None and not measured.ratio <= max_ratio:
        raise AssertionError(
            f"latency ratio candidate/baseline {measured.ratio:.3g} > {max_ratio:.3g} allowed: {measured}"
        )
    return measured


# -- report figures ----------------------------------------------------------------------------------
def assert_report_figure(
    report_or_dir: Report | str | Path,
    name: str,
    op: str | None = None,
    value: float | None = None,
    unit: str = "",
) -> float:
    """Assert a report's figure meets a bound, as `optkit optimize --require` checks it.

    `report_or_dir` is a Report, an output directory of `optkit optimize`, or its `report.json`.
    `name` is a figure's machine name (`optkit report DIR` lists them), `op` one of >=, <=, >, <,
    ==, and `value` the bound, in `unit` when given (`"MiB"` for a figure in bytes), else in the
    figure's unit: `assert_report_figure("out/model", "quality_sqnr_db", ">=", 30)`. A budget
    expression does the same: `assert_report_figure("out/model", "model_bytes<=2MiB")`.
    Returns the figure's value.
    """
    __tracebackhide__ = True
    if op is None and value is None:
        budget = parse_budget(name)
    elif op is None or value is None:
        raise ConfigError(f"give op and value, or a budget expression such as {name}>=30; got op={op!r}")
    elif op not in OPS:
        raise UnknownNameError("comparison", op, list(OPS))
    else:
        _check_bound("value", value)
        budget = Budget(name, op, float(value), unit)
    report, where = _report(report_or_dir)
    (result,) = check_budgets(report, [budget])
    if not result.met:
        what = f"{result.label}; {where}" if result.label else where
        raise AssertionError(f"{result.message} ({what})")
    return result.value


def _report(report_or_dir: Report | str | Path) -> tuple[Report, str]:
    if isinstance(report_or_dir, Report):
        return report_or_dir, f"report {report_or_dir.title!r}"
    if not isinstance(report_or_dir, (str, Path)):
        raise ConfigError(
            f"expected a Report, a report directory or a report.json path, got {type(report_or_dir).__name__}"
        )
    path = Path(report_or_dir)
    directory = path.parent if path.name == "report.json" else path
    return Report.load(directory), str(directory / "report.json")
