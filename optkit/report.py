"""Reports: figures with units, tables and PNG plots, written as JSON and Markdown.

Every optkit run leaves a Report in its output directory (`report.json`, `report.md`, plots
as PNG beside them). `Report.load(dir)` reads one back for `optkit report DIR`.

Each figure has a stable machine name (`latency_eager_after`, `quality_psnr_db`: lower-case
snake_case; budgets, `optkit compare` and scripts use it), a unit kept apart from the name, and
a label a person reads (`latency eager (after)`). Timings also keep their spread (p10, p90 and
the number of runs) so that a comparison can tell a change from noise. docs/ci.md lists the
names.

Format 2 keys figures by name. Format 1 reports (optkit 0.1 before budgets; figures keyed by
label) are still read: each label becomes the name optkit gives that figure now, or a slug of
the label; `format` on the loaded Report says which format it came from.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optkit.budgets import BudgetResult
from optkit.errors import ArtifactError, ConfigError
from optkit.fsutil import atomic_file

REPORT_FORMAT = 2
READABLE_FORMATS = (1, 2)
_PREFIXED = frozenset({"bytes", "FLOPs", "params", "nodes"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# Format 1 labels -> the names optkit gives those figures now (first match wins).
_FORMAT_1_NAMES: tuple[tuple[str, str], ...] = (
    (r"(samples|output) PSNR vs input .*", "quality_psnr_db"),
    (r"output SQNR vs input .*", "quality_sqnr_db"),
    (r"top-1 agreement with input .*", "quality_top1_pct"),
    (r"perplexity (before|after) .*", r"perplexity_\1"),
    (r"FLOPs per call \((before|after)\)", r"flops_\1"),
    (r"FLOPs per call( \(MatMul/Gemm/Conv\))?", "flops"),
    (r"parameter memory \((before|after)\)", r"parameter_bytes_\1"),
    (r"parameter memory", "parameter_bytes"),
    (r"peak activation memory", "peak_activation_bytes"),
    (r"model\.pt2 size", "model_bytes"),
    (r"model\.onnx size", "onnx_bytes"),
    (r"ONNX Runtime max abs error vs optimized", "onnx_max_abs_error"),
    (r"output max abs value .*", "output_abs_max"),
    (r"([\w-]+) latency \(median\)", r"latency_\1"),
    (r"sampling latency \((before|after)\)", r"latency_sampling_\1"),
    (r"sampling speed-up \(measured\)", "speedup_sampling"),
    (r"timed runs per target", "repeats"),
    (r"warm-up runs per target", "warmup"),
    (r"TVM tuning trials", "tune_trials"),
)


def slug(label: str) -> str:
    """`latency eager (before)` -> `latency_eager_before`: the default machine name of a label."""
    name = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"figure_{name}".rstrip("_")
    return name


def _format_1_name(label: str) -> str:
    for pattern, name in _FORMAT_1_NAMES:
        if match := re.fullmatch(pattern, label):
            return slug(match.expand(name))
    return slug(label)


@dataclass(frozen=True)
class Figure:
    """A measured or counted value with its unit (`ms`, `FLOPs`, `bytes`, `dB`, ...) and the
    label a person reads; a timing also has its spread: `p10`, `p90` over `samples` runs."""

    value: float | int | str
    unit: str = ""
    label: str = ""
    p10: float | None = None
    p90: float | None = None
    samples: int | None = None

    @property
    def has_spread(self) -> bool:
        """Whether the figure carries p10 and p90 (a timing of repeated runs)."""
        return self.p10 is not None and self.p90 is not None

    def __str__(self) -> str:
        text = format_value(self.value, self.unit)
        if self.has_spread:
            runs = f", {self.samples} runs" if self.samples is not None else ""
            text += f" (p10 {self.p10:.4g}, p90 {self.p90:.4g}{runs})"
        return text

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label} if self.label else {}
        data.update(value=self.value, unit=self.unit)
        for key in ("p10", "p90", "samples"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], label: str = "") -> Figure:
        return cls(
            data["value"],
            data.get("unit", ""),
            data.get("label", label),
            data.get("p10"),
            data.get("p90"),
            data.get("samples"),
        )


def format_value(value: Any, unit: str = "") -> str:
    """Human-readable value: SI prefixes for FLOPs, binary for bytes, 3 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value} {unit}".strip()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return f"{value} {unit}".strip()
    if unit == "bytes":
        for scale, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {prefix}"
        return f"{int(value)} B"
    if unit in ("FLOPs", "params", "nodes") and abs(value) >= 1000:
        for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= factor:
                return f"{value / factor:.3g} {prefix}{unit}"
    if isinstance(value, int):
        return f"{value} {unit}".strip()
    return f"{value:.4g} {unit}".strip()


@dataclass
class Table:
    """Rows of a table; `units` maps a column to its unit (shown in the header)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    units: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "units": self.units}

    def to_markdown(self) -> str:
        # Units with SI/binary prefixes go in the cells (1.5 MFLOPs); the others in the header.
        in_cells = {c for c, u in self.units.items() if u in _PREFIXED}
        head = [
            f"{c} ({self.units[c]})" if self.units.get(c) and c not in in_cells else c for c in self.columns
        ]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cells = [
                format_value(v, self.units.get(c, "") if c in in_cells else "")
                for c, v in zip(self.columns, row, strict=False)
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def budget_table(results: Sequence[BudgetResult], title: str = "Budgets") -> Table:
    """Budgets met and missed, as a table: the budget, its figure, the value, the outcome."""
    rows = [
        [f"`{b.budget}`", b.label, format_value(b.value, b.unit), "met" if b.met else "**MISSED**"]
        for b in results
    ]
    return Table(title, ["budget", "figure", "value", "result"], rows)


@dataclass
class Report:
    """Figures (by machine name), tables and plots of one run; `write(dir)` saves JSON, Markdown
    and PNGs. `model` and `kind` (`optimize`, `analyze`, `bench`) say what the run measured;
    `budgets` holds the budgets it was checked against (`optkit.budgets`)."""

    title: str
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # caption -> PNG file name in the report dir
    notes: list[str] = field(default_factory=list)
    model: str = ""
    kind: str = ""
    budgets: list[BudgetResult] = field(default_factory=list)
    format: int = REPORT_FORMAT  # the format it was read from; `write` always writes REPORT_FORMAT

    def add(
        self,
        label: str,
        value: float | int | str,
        unit: str = "",
        name: str | None = None,
        *,
        p10: float | None = None,
        p90: float | None = None,
        samples: int | None = None,
    ) -> Figure:
        """Record a figure under `name` (default: a slug of `label`); a name already used by
        another label is a ConfigError, because budgets and comparisons select figures by name."""
        name = name or slug(label)
        if not _NAME.match(name):
            raise ConfigError(f"figure name {name!r} is not lower-case snake_case")
        if name in self.figures and self.figures[name].label != label:
            raise ConfigError(f"figure name {name!r} is already used by {self.figures[name].label!r}")
        figure = Figure(value, unit, label, p10, p90, samples)
        self.figures[name] = figure
        return figure

    def add_timing(self, label: str, stats: Mapping[str, float], name: str, unit: str = "ms") -> Figure:
        """Record a timing from `optkit.timing.latency_ms`-style stats: the median with its
        p10, p90 and number of runs."""
        return self.add(
            label,
            stats["median"],
            unit,
            name,
            p10=stats["p10"],
            p90=stats["p90"],
            samples=int(stats["repeats"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "title": self.title,
            "model": self.model,
            "kind": self.kind,
            "figures": {k: v.to_dict() for k, v in self.figures.items()},
            "budgets": [b.to_dict() for b in self.budgets],
            "tables": [t.to_dict() for t in self.tables],
            "plots": dict(self.plots),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read a format 2 report, or a format 1 one (see the module docstring)."""
        version = data.get("format")
        if version not in READABLE_FORMATS:
            raise ArtifactError(
                f"report format {version!r} is not one this optkit reads "
                f"({', '.join(map(str, READABLE_FORMATS))}); write it again with this optkit"
            )
        raw = data.get("figures", {})
        if version == 1:
            figures = {_format_1_name(k): Figure.from_dict(v, label=k) for k, v in raw.items()}
        else:
            figures = {k: Figure.from_dict(v) for k, v in raw.items()}
        return cls(
            title=data["title"],
            figures=figures,
            tables=[
                Table(t["title"], t["columns"], t["rows"], t.get("units", {})) for t in data.get("tables", [])
            ],
            plots=dict(data.get("plots", {})),
            notes=list(data.get("notes", [])),
            model=data.get("model", ""),
            kind=data.get("kind", ""),
            budgets=[BudgetResult.from_dict(b) for b in data.get("budgets", [])],
            format=version,
        )

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.budgets:
            lines += [budget_table(self.budgets).to_markdown(), ""]
        if self.figures:
            lines += ["| figure | value | name |", "|---|---|---|"]
            lines += [f"| {v.label or k} | {v} | `{k}` |" for k, v in self.figures.items()]
            lines.append("")
        for table in self.tables:
            lines += [table.to_markdown(), ""]
        for caption, png in self.plots.items():
            lines += [f"![{caption}]({png})", ""]
        for note in self.notes:
            lines.append(f"- {note}")
        return "\n".join(lines).rstrip() + "\n"

    def lead(self, names: Sequence[str]) -> None:
        """Put the figures named `names` (those present, in that order) first: what a reader
        should see before the rest."""
        first = {n: self.figures[n] for n in names if n in self.figures}
        self.figures = {**first, **{k: v for k, v in self.figures.items() if k not in first}}

    def summary(self) -> str:
        """A few lines for the terminal: the title and the figures."""
        labels = {k: v.label or k for k, v in self.figures.items()}
        width = max((len(t) for t in labels.values()), default=0)
        return "\n".join([self.title] + [f"  {labels[k]:<{width}}  {v}" for k, v in self.figures.items()])

    def write(self, directory: str | Path) -> Path:
        """Write report.json and report.md into `directory` (plots are written by their makers)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / "report.json") as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        with atomic_file(directory / "report.md") as tmp:
            tmp.write_text(self.to_markdown())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Report:
        """Read `directory/report.json`."""
        path = Path(directory) / "report.json"
        if not path.is_file():
            raise ArtifactError(f"no report in {directory}: {path.name} is missing")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ArtifactError(f"{path} is not an optkit report: {err}") from err


def bar_plot(path: str | Path, labels: list[str], values: list[float], title: str, ylabel: str) -> Path:
    """A bar chart PNG (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels) + 2), 4))
    ax.bar(range(len(values)), values, color="#3a7bd5")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def heatmap_plot(
    path: str | Path, rows: list[str], columns: list[str], values: list[list[float]], title: str, label: str
) -> Path:
    """A heatmap PNG (rows x columns), e.g. blocks x sampler steps, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    data = np.array(values, dtype=float)
    finite = data[np.isfinite(data)]
    cap = float(finite.max()) if finite.size else 1.0
    data = np.where(np.isfinite(data), data, cap)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(columns) + 3), max(3.0, 0.3 * len(rows) + 1.5)))
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    step = max(1, len(columns) // 20)
    ax.set_xticks(range(0, len(columns), step))
    ax.set_xticklabels(columns[::step], fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
