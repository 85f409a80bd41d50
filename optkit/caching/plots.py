"""The cache pass's plot: the change profile (blocks x steps) beside the schedule it gave.

Block Caching (Wimbauer et al., CVPR 2024) shows the same two pictures: per-block relative L1
change over the sampler's steps, and the resulting cache lifetimes. The report code calls
`schedule_heatmap(directory, program)` when `program.annotations.figures["cache"]` is set.
"""

from __future__ import annotations

from pathlib import Path

from optkit.fsutil import atomic_file
from optkit.ir.program import Program

FILENAME = "cache_schedule.png"
TITLE = "Block caching: change profile and schedule (blocks x sampler steps)"


def schedule_heatmap(directory: str | Path, program: Program) -> dict[str, str]:
    """Write `cache_schedule.png` into `directory` (two heatmaps: relative L1 change per block
    and step; recompute (1) / reuse (0) per block and step) and return {title: filename}, or {}
    when the Program has no cache annotations."""
    data = program.annotations.figures.get("cache")
    schedule = program.annotations.cache_schedule
    if not data or not schedule:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks = list(schedule)
    change = np.array([data["change"][b] for b in blocks], dtype=float)  # (blocks, steps)
    flags = np.array([[float(f) for f in schedule[b]] for b in blocks])  # (blocks, schedule steps)
    fig, axes = plt.subplots(
        1, 2, figsize=(max(8.0, 0.5 * change.shape[1] + 4), max(3.0, 0.35 * len(blocks) + 1.5))
    )
    image = axes[0].imshow(change, aspect="auto", cmap="viridis")
    axes[0].set_title("relative L1 change of block value", fontsize=9)
    fig.colorbar(image, ax=axes[0])
    axes[1].imshow(flags, aspect="auto", cmap="Greys", vmin=0, vmax=1)
    saved = data.get("evaluations_saved_pct", float("nan"))
    axes[1].set_title(
        f"{data.get('policy', '')} schedule: black = recompute ({saved:.0f}% evaluations saved)", fontsize=9
    )
    for ax in axes:
        ax.set_yticks(range(len(blocks)))
        ax.set_yticklabels(blocks, fontsize=8)
        ax.set_xlabel("sampler step")
    fig.tight_layout()
    path = Path(directory) / FILENAME
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {TITLE: FILENAME}
