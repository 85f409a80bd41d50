"""One inference on a PIM target, drawn and tabulated: a Gantt chart (host, PIM and link lanes)
and a per-op table, from a `Trace`."""

from __future__ import annotations

from pathlib import Path

from optkit.backends.pim.simulate import Trace

_COLORS = {"host": "#4c72b0", "pim": "#dd8452", "link": "#8c8c8c"}


def gantt_png(trace: Trace, path: str | Path, title: str = "") -> Path:
    """Write the trace as a Gantt chart: one lane each for the host, the PIM device and the link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optkit.fsutil import atomic_file

    lanes = ["host", "pim", "link"]
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for row, lane in enumerate(lanes):
        spans = [(e.start_us, e.duration_us) for e in trace.events if e.lane == lane and e.duration_us > 0]
        if spans:
            ax.broken_barh(
                spans, (row - 0.35, 0.7), facecolors=_COLORS[lane], edgecolor="white", linewidth=0.3
            )
    ax.set_yticks(range(len(lanes)), ["host", f"PIM ({trace.preset})", "host <-> PIM"])
    ax.set_xlabel("modeled time (us)")
    ax.set_xlim(0, max(trace.latency_us, 1e-9) * 1.02)
    ax.set_title(
        title or f"one inference on {trace.preset}: {trace.latency_us:.1f} us, {trace.energy_uj:.1f} uJ"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def trace_markdown(trace: Trace, limit: int = 0) -> str:
    """The per-op table of a trace (the `limit` longest events when `limit` > 0), in Markdown."""
    events = sorted(trace.events, key=lambda e: -e.duration_us)[:limit] if limit else trace.events
    lines = [
        "| op | kind | lane | start (us) | time (us) | cycles | bytes | energy (uJ) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in events:
        lines.append(
            f"| `{e.key}` | {e.op} | {e.lane} | {e.start_us:.2f} | {e.duration_us:.2f} | {e.cycles} | {e.bytes} "
            f"| {e.energy_uj:.3f} |"
        )
    lines.append(
        f"| **total** | | | | {trace.latency_us:.2f} (overlapped), {trace.serial_us:.2f} (serial) | | "
        f"{trace.bytes_moved} moved | {trace.energy_uj:.3f} |"
    )
    return "\n".join(lines) + "\n"
