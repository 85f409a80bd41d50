"""Memory a Program needs to run, estimated from its graph before anything runs.

`estimate_memory` reads the shapes torch.export recorded on every node: weight bytes, the bytes
of the example inputs, and the peak of the activations alive at once when the nodes run in graph
order (a value is freed after its last user; views allocate nothing). `check_memory` refuses a
run that cannot fit in the machine's available memory with `ResourceError`, instead of letting the
operating system kill the process half-way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from optkit.errors import ResourceError
from optkit.ir.program import Program

# Ops whose output shares its input's storage: they allocate nothing.
VIEW_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "transpose",
        "permute",
        "expand",
        "slice",
        "select",
        "squeeze",
        "unsqueeze",
        "getitem",
        "t",
        "alias",
        "as_strided",
        "detach",
        "unflatten",
        "flatten",
        "split",
        "chunk",
        "unbind",
        "narrow",
    }
)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a Program needs: weights, example inputs, and peak live activations of one call."""

    weight_bytes: int
    input_bytes: int
    peak_activation_bytes: int

    @property
    def run_bytes(self) -> int:
        """What one forward call allocates beyond the weights already in memory."""
        return self.input_bytes + self.peak_activation_bytes


def _tensor_bytes(value: object) -> int:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def _allocates(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return name not in VIEW_OPS


def estimate_memory(program: Program) -> MemoryEstimate:
    """Estimate the memory of one forward call of `program` from the shapes recorded on its
    graph; nodes without recorded shapes count as zero."""
    gm = program.graph_module
    seen: set[int] = set()
    weights = 0
    for t in [*gm.parameters(), *gm.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            weights += t.numel() * t.element_size()
    inputs = _tensor_bytes(program.example_inputs)
    nodes = list(gm.graph.nodes)
    last_use = {n: i for i, node in enumerate(nodes) for n in node.all_input_nodes}
    live: dict[fx.Node, int] = {}
    current = peak = 0
    for i, node in enumerate(nodes):
        if node.op == "call_function" and _allocates(node):
            size = _tensor_bytes(node.meta.get("val"))
            live[node] = size
            current += size
            peak = max(peak, current)
        for arg in node.all_input_nodes:
            if last_use.get(arg) == i and arg in live:
                current -= live.pop(arg)
    return MemoryEstimate(weights, inputs, peak)


def available_memory() -> int:
    """Bytes of memory the machine can still give a process (psutil's `available`)."""
    import psutil

    return int(psutil.virtual_memory().available)


# What a step adds to a loaded Program, in float weights' worth, measured by
# benchmarks/bench_scale.py (docs/benchmarks.md, section bench_scale) on diffusers UNets of
# 37M-860M parameters, rounded up. Passes share the weights they do not rewrite (copy on
# write), so `ptq` added 0.3-0.8x (the quantized copies, calibration's transients). `lower`
# adds the packed panels and the compiler's transients: 1.44x at 314M parameters while the
# Program keeps its weights, 0.44x when packing frees each weight it replaces (`optkit lower`:
# `release_weights`). Writing the artifact streams the weights to weights.bin and adds
# nothing (it embedded them in the library before, +6.4x).
EXTRA_WEIGHTS = {"optimize": 1.0, "lower": 1.5, "lower, releasing the weights": 0.6}
# Winograd F(4 x 4, 3 x 3) stores a 3 x 3 conv's weight as 36 values per 9 (`backends/winograd.py`):
# 3 more of its copies, on top of the panels `EXTRA_WEIGHTS` counts (the 3 x 3 weight a saved
# artifact stores instead waits in a temporary file, `backends/weights.SpillFile`)
WINOGRAD_GROWTH = 3.0


def winograd_weight_bytes(program: Program) -> int:
    """Bytes of the float32 3 x 3 conv weights whose output and input channels are multiples of
    16: those lowering may run as Winograd transforms (`backends/winograd.py`; their stride and
    padding are not looked at, so this is an upper bound)."""
    gm = program.graph_module
    seen: set[int] = set()
    total = 0
    for t in gm.parameters():
        if id(t) in seen:
            continue
        seen.add(id(t))
        shape = tuple(t.shape)
        if len(shape) == 4 and shape[2:] == (3, 3) and shape[0] % 16 == 0 and shape[1] % 16 == 0:
            total += t.numel() * t.element_size() if t.dtype == torch.float32 else 0
    return total


def check_memory(
    program: Program,
    *,
    copies: float = 1,
    available_bytes: int | None = None,
    what: str = "run",
    extra_bytes: int = 0,
) -> MemoryEstimate:
    """Raise `ResourceError` unless `copies` extra weights' worth of memory (what the step adds
    to the loaded Program; `EXTRA_WEIGHTS` has measured values), `extra_bytes` (Winograd's
    larger weights: `WINOGRAD_GROWTH`) and one forward call fit in `available_bytes` (the
    machine's available memory by default); returns the estimate."""
    estimate = estimate_memory(program)
    need = int(copies * estimate.weight_bytes) + extra_bytes + estimate.run_bytes
    have = available_memory() if available_bytes is None else available_bytes
    if need > have:
        winograd = f", Winograd weights {_gib(extra_bytes)}" if extra_bytes else ""
        raise ResourceError(
            f"cannot {what} {program.name}: it needs about {_gib(need)} more (weights {_gib(estimate.weight_bytes)} "
            f"x {copies:g}{winograd}, peak activations {_gib(estimate.peak_activation_bytes)} and inputs "
            f"{_gib(estimate.input_bytes)} for the example batch) but {_gib(have)} of memory is "
            "available; use a smaller batch or input size, or a machine with more memory"
            + (", or keep the direct convs (`optkit lower --no-winograd`)" if extra_bytes else "")
        )
    return estimate


def peak_message(program: Program, what: str, extra_bytes: int = 0) -> str:
    """One line for the user before a long step: the estimated peak of `what` (a key of
    `EXTRA_WEIGHTS`, plus `extra_bytes`) over the memory in use now, and the memory available."""
    estimate = estimate_memory(program)
    extra = int(EXTRA_WEIGHTS[what] * estimate.weight_bytes) + extra_bytes + estimate.run_bytes
    return (
        f"{what.split(',')[0]} {program.name}: weights {_gib(estimate.weight_bytes)}, estimated peak {_gib(extra)} "
        f"above what is in use now, {_gib(available_memory())} available"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"
