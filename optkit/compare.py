"""Two reports of the same model, figure by figure: old, new, change, and a verdict that tells a
timing change from noise (`optkit compare BASELINE NEW`).

Verdicts:

| figure                                       | verdict                                         |
|----------------------------------------------|-------------------------------------------------|
| with a spread (p10, p90) in both reports:    | `noise` when the p10-p90 intervals overlap or   |
| timings and the speed-ups made from them     | the larger median is at most `1 + noise_floor`  |
|                                              | times the smaller; else `faster` / `slower`     |
| a time measured once (`capture_time`)        | `same` or `changed`: one run cannot tell noise  |
| a measured memory peak (`peak_*`)            | `noise` within `noise_floor`, else `better` /   |
|                                              | `worse`                                         |
| a number in a unit with a direction          | `same`, `better` or `worse`                     |
| a number without one (perplexity, errors)    | `same` or `changed`                             |
| text                                         | `same` or `changed`                             |
| in one report only                           | `added` / `removed`                             |

Higher is better for dB, %, x (speed-ups) and GFLOP/s; lower is better for times, bytes,
parameters, FLOPs and nodes. `slower` and `worse` are regressions.

The spread says how much one run's timings scatter, not how much two runs differ: on a shared
machine a second run of the same model can take twice as long throughout (measured on the 2-core
machines optkit is developed on: 0.04 ms one run, 0.09 ms the next). The speed-ups, whose two
sides are timed interleaved within one run, stay within about 10% there; absolute times need a
`noise_floor` as large as the machine's run-to-run drift (docs/ci.md).

Two reports are comparable when both are format 2 and record the same `kind` (the command:
optimize, analyze, bench) and the same `model` (the captured model's name: the factory's name
for `pkg.module:factory`, `NAME-size` for the zoo, the file's stem for .pt2/.onnx), whatever the
passes or options: comparing a run with others is what the command is for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optkit.budgets import Budget, BudgetResult, check_budgets
from optkit.errors import ArtifactError, ConfigError
from optkit.fsutil import atomic_dir
from optkit.report import REPORT_FORMAT, Figure, Report, Table, budget_table, format_value

NOISE_FLOOR = 0.10  # timings within 10% of each other are noise (a quiet, dedicated machine)
HIGHER_IS_BETTER = frozenset({"dB", "%", "x", "GFLOP/s"})
LOWER_IS_BETTER = frozenset({"ns", "us", "ms", "s", "bytes", "params", "FLOPs", "nodes"})
TIME_UNITS = frozenset({"ns", "us", "ms", "s"})
REGRESSIONS = frozenset({"slower", "worse"})


@dataclass(frozen=True)
class FigureChange:
    """One figure in both reports (or in one: `old` or `new` is None) and its `verdict`."""

    name: str
    label: str
    unit: str
    old: Figure | None
    new: Figure | None
    verdict: str

    @property
    def delta(self) -> float | None:
        """new - old, for two numbers in the same unit."""
        a, b = _number(self.old), _number(self.new)
        if a is None or b is None or self.old is None or self.new is None or self.old.unit != self.new.unit:
            return None
        return 0.0 if a == b else b - a  # inf == inf: no change

    @property
    def delta_pct(self) -> float | None:
        """The change in % of the old value (None when the old value is 0)."""
        a, delta = _number(self.old), self.delta
        if delta is None or a is None or a == 0 or not math.isfinite(delta / a):
            return None
        return 100.0 * delta / abs(a)

    @property
    def regression(self) -> bool:
        """Whether the figure got slower or worse beyond noise."""
        return self.verdict in REGRESSIONS

    @property
    def summary(self) -> str:
        """`latency_eager_after: 0.171 ms -> 0.283 ms (+65.4%), slower`."""
        old = format_value(self.old.value, self.unit) if self.old else "-"
        new = format_value(self.new.value, self.unit) if self.new else "-"
        pct = f" ({self.delta_pct:+.3g}%)" if self.delta_pct is not None else ""
        return f"{self.name}: {old} -> {new}{pct}, {self.verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "old": self.old.to_dict() if self.old else None,
            "new": self.new.to_dict() if self.new else None,
            "delta": self.delta,
            "delta_pct": self.delta_pct,
            "verdict": self.verdict,
            "regression": self.regression,
        }


@dataclass
class Comparison:
    """The changes from `baseline` to `new`, and the budgets checked on `new`."""

    baseline: Report
    new: Report
    changes: list[FigureChange]
    budgets: list[BudgetResult] = field(default_factory=list)
    noise_floor: float = NOISE_FLOOR
    sources: tuple[str, str] = ("baseline", "new")  # where the reports came from, for display

    @property
    def regressions(self) -> list[FigureChange]:
        """The figures that got slower or worse beyond noise."""
        return [c for c in self.changes if c.regression]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.new.model,
            "kind": self.new.kind,
            "baseline": {"source": self.sources[0], "title": self.baseline.title},
            "new": {"source": self.sources[1], "title": self.new.title},
            "noise_floor": self.noise_floor,
            "regressions": [c.name for c in self.regressions],
            "budgets": [b.to_dict() for b in self.budgets],
            "figures": [c.to_dict() for c in self.changes],
        }

    def to_markdown(self) -> str:
        """Markdown for a pull-request comment: the verdict first, then budgets and figures."""
        base, new = self.sources
        lines = [
            f"## optkit compare: {self.new.model} ({self.new.kind})",
            "",
            f"- baseline `{base}`: {self.baseline.title}",
            f"- new `{new}`: {self.new.title}",
            "",
        ]
        if self.regressions:
            lines.append(f"**{len(self.regressions)} regression(s)**:")
            lines += [f"- {c.summary}" for c in self.regressions]
        else:
            lines.append("**No regressions.**")
        lines += [
            "",
            f"Timings are judged against their p10-p90 spread and a {100 * self.noise_floor:g}% noise floor; "
            "on a shared machine absolute times of two runs drift further, speed-ups (timed interleaved) do not.",
            "",
        ]
        if self.budgets:
            lines += [budget_table(self.budgets, "Budgets (on the new report)").to_markdown(), ""]
        rows = [
            [
                c.label,
                f"`{c.name}`",
                str(c.old) if c.old else "-",
                str(c.new) if c.new else "-",
                format_value(c.delta, c.unit) if c.delta is not None else "",
                f"{c.delta_pct:+.3g}" if c.delta_pct is not None else "",
                f"**{c.verdict}**" if c.regression else c.verdict,
            ]
            for c in self.changes
        ]
        table = Table("Figures", ["figure", "name", "baseline", "new", "change", "change %", "verdict"], rows)
        return "\n".join([*lines, table.to_markdown()]).rstrip() + "\n"

    def write(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write compare.md and compare.json into `directory`, atomically."""
        with atomic_dir(directory, overwrite) as tmp:
            (tmp / "compare.md").write_text(self.to_markdown())
            (tmp / "compare.json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return Path(directory)


def check_comparable(baseline: Report, new: Report) -> None:
    """Refuse two reports that cannot be compared (see the module docstring)."""
    for which, report in (("baseline", baseline), ("new", new)):
        if report.format != REPORT_FORMAT:
            raise ArtifactError(
                f"the {which} report is format {report.format}; compare reads format {REPORT_FORMAT} "
                "reports (figure names and timing spreads): run it again with this optkit"
            )
    if baseline.kind != new.kind:
        raise ConfigError(
            f"the baseline is an `optkit {baseline.kind}` report, the new one `optkit {new.kind}`; "
            "compare reads two reports of the same command"
        )
    if baseline.model != new.model:
        raise ConfigError(
            f"the baseline measured model {baseline.model!r}, the new report {new.model!r}; compare "
            "reads two reports of the same model (its captured name)"
        )


def compare_reports(
    baseline: Report,
    new: Report,
    budgets: Sequence[str | Budget] = (),
    *,
    noise_floor: float = NOISE_FLOOR,
    sources: tuple[str, str] = ("baseline", "new"),
) -> Comparison:
    """Compare `new` with `baseline` figure by figure and check `budgets` on `new`; refuses two
    reports of different models, commands or formats (a ConfigError or ArtifactError)."""
    if not noise_floor >= 0:
        raise ConfigError(f"noise_floor must be >= 0, got {noise_floor}")
    check_comparable(baseline, new)
    results = check_budgets(new, budgets)
    changes = []
    for name in [*new.figures, *(n for n in baseline.figures if n not in new.figures)]:
        old, fig = baseline.figures.get(name), new.figures.get(name)
        some = fig or old
        assert some is not None
        changes.append(
            FigureChange(name, some.label or name, some.unit, old, fig, verdict(old, fig, noise_floor, name))
        )
    return Comparison(baseline, new, changes, results, noise_floor, sources)


def verdict(old: Figure | None, new: Figure | None, noise_floor: float = NOISE_FLOOR, name: str = "") -> str:
    """The verdict on one figure's change (see the module docstring); `name` tells a measured
    memory peak (`peak_*`, judged against the noise floor) from exact sizes."""
    if old is None or new is None:
        return "added" if old is None else "removed"
    a, b = _number(old), _number(new)
    if a is None or b is None or old.unit != new.unit:
        return "same" if old.value == new.value and old.unit == new.unit else "changed"
    if math.isnan(a) or math.isnan(b):
        return "same" if math.isnan(a) and math.isnan(b) else "changed"
    higher = True if new.unit in HIGHER_IS_BETTER else False if new.unit in LOWER_IS_BETTER else None
    if old.has_spread and new.has_spread:
        if _is_noise(old, new, noise_floor):
            return "noise"
        if higher is None:
            return "changed"
        return "faster" if (b > a) == higher else "slower"
    if a == b or math.isclose(a, b, rel_tol=1e-9):
        return "same"
    if name.startswith("peak_") and max(a, b) <= (1 + noise_floor) * min(a, b):
        return "noise"
    if higher is None or new.unit in TIME_UNITS:
        return "changed"
    return "better" if (b > a) == higher else "worse"


def _is_noise(old: Figure, new: Figure, floor: float) -> bool:
    assert old.p10 is not None and old.p90 is not None and new.p10 is not None and new.p90 is not None
    # Overlap rather than "medians closer than the spread": with few runs p10/p90 are the
    # extremes, and one preempted run would widen the spread over any change.
    a, b = float(old.value), float(new.value)
    overlap = old.p10 <= new.p90 and new.p10 <= old.p90
    return overlap or (a > 0 and b > 0 and max(a, b) <= (1 + floor) * min(a, b))


def _number(figure: Figure | None) -> float | None:
    if figure is None or isinstance(figure.value, bool) or not isinstance(figure.value, (int, float)):
        return None
    return float(figure.value)
