"""What to try when quantization misses its SQNR floor: the layers that lose most, and options.

The quantization passes return this as a `PassResult.hint`, which the PassManager calls only
when the output falls below the pass's `min_sqnr_db`: ranking layers costs one float run of
the calibration batches plus one partial run per layer (`optkit.quant.sensitivity.measure`,
each layer quantized alone with the plan the pass gave it, round-to-nearest, no SmoothQuant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optkit.ir.program import Program
from optkit.quant.calibration import Batch
from optkit.quant.observers import ObserverKind
from optkit.quant.rewrite import LayerPlan, collect_act_stats
from optkit.quant.sensitivity import measure
from optkit.quant.sites import find_sites


def worst_layers(
    program: Program,
    plans: Mapping[str, LayerPlan],
    batches: Sequence[Batch],
    count: int = 3,
    observer: ObserverKind = "minmax",
    percentile: float = 99.99,
) -> list[tuple[str, float]]:
    """The `count` layers of the float `program` (module path -> plan) whose quantization alone
    lowers the output SQNR most, as (module path, dB), lowest first."""
    sites = [s for s in find_sites(program)[0] if s.path in plans]
    observed = [s for s in sites if plans[s.path].abits == 8]
    stats = collect_act_stats(program, observed, batches, observer, percentile) if observed else {}
    candidates: dict[str, list[str]] = {}
    for s in sites:
        candidates.setdefault(s.path, []).append(s.node.name)
    result = measure(program, candidates, lambda s: plans[s.path], stats, batches, naive_probe=0)
    return sorted(result.sqnr.items(), key=lambda kv: kv[1])[:count]


def sqnr_floor_hint(worst: Sequence[tuple[str, float]], options: Sequence[str]) -> str:
    """One sentence naming the worst layers (from `worst_layers`) and the options to try."""
    layers = ", ".join(f"{path} ({db:.1f} dB)" for path, db in worst)
    found = f"Lowest output SQNR with one layer quantized alone: {layers}. " if worst else ""
    return f"{found}Options that may help: {'; '.join(options)}."
