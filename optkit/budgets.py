"""Budgets: bounds a run's report figures must meet, such as `quality_psnr_db>=30`.

A budget is `NAME OP NUMBER[UNIT]`: NAME a figure's machine name (`optkit report DIR` shows
them), OP one of `>=`, `<=`, `>`, `<`, `==`, and an optional unit that must fit the figure's:
`model_bytes<=2MiB` is converted to bytes, `latency_eager_after<=2dB` is refused. Without a
unit the number is in the figure's own unit. A figure whose value is NaN meets no budget.

`parse_budget` checks the grammar (before a run, so that a typo costs nothing);
`check_budgets` checks names and units against a finished report and says which were met.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optkit.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:  # report.py imports this module to read and write budget results
    from optkit.report import Report

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
_BUDGET = re.compile(
    r"^\s*(?P<name>[a-z][a-z0-9_]*)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[A-Za-zµ%/]*)\s*$"
)


def _prefixed(base: str) -> dict[str, float]:
    return {
        base: 1.0,
        **{p + base: s for p, s in (("K", 1e3), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))},
    }


# Units a bound may be written in, by family, with their scale; a unit outside these families
# (dB, %, x, GFLOP/s, ...) fits only itself.
UNIT_FAMILIES: tuple[Mapping[str, float], ...] = (
    {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0},
    {
        "B": 1.0,
        "bytes": 1.0,
        "KB": 1e3,
        "kB": 1e3,
        "MB": 1e6,
        "GB": 1e9,
        "TB": 1e12,
        "KiB": 2.0**10,
        "MiB": 2.0**20,
        "GiB": 2.0**30,
        "TiB": 2.0**40,
    },
    _prefixed("FLOPs"),
    _prefixed("params"),
    _prefixed("nodes"),
)


@dataclass(frozen=True)
class Budget:
    """One parsed budget: figure `name`, comparison `op`, `bound` as written, in `unit` (empty:
    the figure's own unit)."""

    name: str
    op: str
    bound: float
    unit: str = ""

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "bound": self.bound, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        return cls(data["name"], data["op"], float(data["bound"]), data.get("unit", ""))


@dataclass(frozen=True)
class BudgetResult:
    """A budget checked against a report: the figure's `value` and the `bound` converted to the
    figure's `unit`, and whether it was `met`."""

    budget: Budget
    label: str
    value: float
    bound: float
    unit: str
    met: bool

    @property
    def message(self) -> str:
        """`quality_psnr_db = 24.1 dB, required >= 30 dB`: what a CI log shows (the bound as
        written, the value in the figure's unit)."""
        unit = f" {self.unit}" if self.unit else ""
        bound = f"{self.budget.bound:g}" + (
            f" {self.budget.unit or self.unit}" if self.budget.unit or self.unit else ""
        )
        return f"{self.budget.name} = {self.value:.6g}{unit}, required {self.budget.op} {bound}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": str(self.budget),
            **self.budget.to_dict(),
            "label": self.label,
            "value": self.value,
            "bound_in_unit": self.bound,
            "figure_unit": self.unit,
            "met": self.met,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetResult:
        return cls(
            Budget.from_dict(data),
            data.get("label", ""),
            float(data["value"]),
            float(data["bound_in_unit"]),
            data.get("figure_unit", ""),
            bool(data["met"]),
        )


def parse_budget(text: str | Budget) -> Budget:
    """`quality_psnr_db>=30` -> Budget('quality_psnr_db', '>=', 30.0). A malformed expression is
    a ConfigError that shows the grammar."""
    if isinstance(text, Budget):
        return text
    match = _BUDGET.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(
            f"malformed budget {text!r}: expected NAME OP NUMBER[UNIT] with NAME a figure name "
            f"(lower-case snake_case) and OP one of {', '.join(OPS)}, e.g. quality_psnr_db>=30 or "
            "model_bytes<=2MiB"
        )
    number = float(match["number"])
    if not math.isfinite(number):
        raise ConfigError(f"budget {text!r}: the bound must be a finite number")
    return Budget(match["name"], match["op"], number, match["unit"])


def parse_budgets(texts: Iterable[str | Budget]) -> list[Budget]:
    """Parse several budgets (see `parse_budget`), keeping their order."""
    return [parse_budget(t) for t in texts]


def convert_bound(budget: Budget, figure_unit: str) -> float:
    """`budget.bound` in `figure_unit`; a unit that does not fit the figure's is a ConfigError
    naming the figure's unit and the units allowed."""
    if not budget.unit or budget.unit == figure_unit:
        return budget.bound
    for family in UNIT_FAMILIES:
        if figure_unit in family and budget.unit in family:
            return budget.bound * family[budget.unit] / family[figure_unit]
    if not figure_unit:
        raise ConfigError(f"budget {budget}: figure {budget.name} has no unit; write a plain number")
    family = next((f for f in UNIT_FAMILIES if figure_unit in f), {figure_unit: 1.0})
    raise ConfigError(
        f"budget {budget}: unit {budget.unit!r} does not fit figure {budget.name}, measured in "
        f"{figure_unit}; write the bound in {', '.join(family)} or as a plain number"
    )


def check_budgets(report: Report, budgets: Sequence[str | Budget]) -> list[BudgetResult]:
    """Check `budgets` against `report`'s figures, in order. An unknown figure name (the error
    lists the report's names), a unit that does not fit, or a figure that is not a number is a
    ConfigError; a missed budget is not an error, only a result with `met=False`."""
    results = []
    for budget in parse_budgets(budgets):
        figure = report.figures.get(budget.name)
        if figure is None:
            raise UnknownNameError("figure", budget.name, list(report.figures))
        if isinstance(figure.value, bool) or not isinstance(figure.value, (int, float)):
            raise ConfigError(f"budget {budget}: figure {budget.name} is not a number ({figure.value!r})")
        bound = convert_bound(budget, figure.unit)
        value = float(figure.value)
        met = not math.isnan(value) and OPS[budget.op](value, bound)
        results.append(BudgetResult(budget, figure.label, value, bound, figure.unit, met))
    return results


def missed(results: Iterable[BudgetResult]) -> list[BudgetResult]:
    """The results that missed their budget."""
    return [r for r in results if not r.met]
