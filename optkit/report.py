"""Reports: figures with units, tables and PNG plots, written as JSON and Markdown.

Every optkit run leaves a Report in its output directory (`report.json`, `report.md`, plots
as PNG beside them). `Report.load(dir)` reads one back for `optkit report DIR`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optkit.errors import ArtifactError
from optkit.fsutil import atomic_file

REPORT_FORMAT = 1
_PREFIXED = frozenset({"bytes", "FLOPs", "params", "nodes"})


@dataclass(frozen=True)
class Figure:
    """A measured or counted value with its unit (`ms`, `FLOPs`, `bytes`, `dB`, ...)."""

    value: float | int | str
    unit: str = ""

    def __str__(self) -> str:
        return f"{format_value(self.value, self.unit)}"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit}


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
        for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {prefix}{unit}"
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


@dataclass
class Report:
    """Figures, tables and plots of one run; `write(dir)` saves JSON, Markdown and PNGs."""

    title: str
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # caption -> PNG file name in the report dir
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float | int | str, unit: str = "") -> None:
        """Record a figure."""
        self.figures[name] = Figure(value, unit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "title": self.title,
            "figures": {k: v.to_dict() for k, v in self.figures.items()},
            "tables": [t.to_dict() for t in self.tables],
            "plots": dict(self.plots),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if data.get("format") != REPORT_FORMAT:
            raise ArtifactError(f"report format {data.get('format')!r} is not {REPORT_FORMAT}")
        return cls(
            title=data["title"],
            figures={k: Figure(v["value"], v.get("unit", "")) for k, v in data.get("figures", {}).items()},
            tables=[
                Table(t["title"], t["columns"], t["rows"], t.get("units", {})) for t in data.get("tables", [])
            ],
            plots=dict(data.get("plots", {})),
            notes=list(data.get("notes", [])),
        )

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.figures:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in self.figures.items()]
            lines.append("")
        for table in self.tables:
            lines += [table.to_markdown(), ""]
        for caption, png in self.plots.items():
            lines += [f"![{caption}]({png})", ""]
        for note in self.notes:
            lines.append(f"- {note}")
        return "\n".join(lines).rstrip() + "\n"

    def summary(self) -> str:
        """A few lines for the terminal: the title and the figures."""
        width = max((len(k) for k in self.figures), default=0)
        return "\n".join([self.title] + [f"  {k:<{width}}  {v}" for k, v in self.figures.items()])

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
