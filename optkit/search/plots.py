"""The search's Pareto front as a picture: AUC against modeled latency, energy as colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_png(trials: list[dict[str, Any]], front: list[int], path: str | Path, title: str = "") -> Path:
    """Scatter of every scored trial (AUC vs latency, colour = energy) with the front marked.

    `trials`: dicts with `auc`, `latency_us`, `energy_uj`; `front`: indices into `trials`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optkit.fsutil import atomic_file

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lat = [t["latency_us"] for t in trials]
    auc = [t["auc"] for t in trials]
    energy = [t["energy_uj"] for t in trials]
    dots = ax.scatter(lat, auc, c=energy, cmap="viridis", s=14, alpha=0.6, label="trials")
    fig.colorbar(dots, ax=ax, label="modeled energy per inference (uJ)")
    f = sorted(front, key=lambda i: lat[i])
    ax.scatter(
        [lat[i] for i in f],
        [auc[i] for i in f],
        facecolors="none",
        edgecolors="red",
        s=60,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("modeled latency per batch (us, log)")
    ax.set_ylabel("validation AUC (inherited weights)")
    ax.set_title(title or f"{len(trials)} trials, {len(front)} on the front")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
