"""Running a partitioned Program: host ops on the CPU, PIM ops in the device's numerics, with a
trace of every op (device, start, duration, cycles, bytes moved, energy).

The graph is interpreted node by node. A node placed on PIM runs on its inputs rounded to the
preset's numerics (fp16 / bf16: cast and back; int8: symmetric per-tensor activations and
per-row weights and tables, int32 accumulation), and its output is rounded the same way, so the
partitioned model's outputs differ from the host run exactly as the device's arithmetic makes
them differ. Host nodes run in float32, either eagerly or, when `host_segments` are given, as
TVM-compiled segments (`backends/pim/artifact.py`).

Timing of the trace is the cost model's (`cost.py`), scheduled as a list: an op starts when its
inputs are on its side and its lane (host, PIM, link) is free, so independent host and PIM work
overlaps. The trace's `latency_us` is that schedule's makespan; `serial_us` adds every op and
transfer one after another (the placement objective).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from optkit.backends.pim.cost import Cost, transfer_cost
from optkit.backends.pim.ops import PimOp, program_ops
from optkit.backends.pim.placement import HOST, PIM, CostTable
from optkit.backends.pim.presets import PimPreset

from optkit.ir.program import Program

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TraceEvent:
    """One op or transfer of one inference."""

    key: str
    op: str
    lane: str  # host | pim | link
    start_us: float
    duration_us: float
    energy_uj: float
    bytes: int
    cycles: int = 0


@dataclass
class Trace:
    """Every op and transfer of one inference, with totals."""

    preset: str
    events: list[TraceEvent] = field(default_factory=list)

    @property
    def latency_us(self) -> float:
        return max((e.start_us + e.duration_us for e in self.events), default=0.0)

    @property
    def serial_us(self) -> float:
        return sum(e.duration_us for e in self.events)

    @property
    def energy_uj(self) -> float:
        return sum(e.energy_uj for e in self.events)

    @property
    def bytes_moved(self) -> int:
        return sum(e.bytes for e in self.events if e.lane == "link")

    def by_lane(self) -> dict[str, float]:
        lanes: dict[str, float] = {}
        for e in self.events:
            lanes[e.lane] = lanes.get(e.lane, 0.0) + e.duration_us
        return lanes

    def rows(self) -> list[dict[str, Any]]:
        return [e.__dict__ for e in self.events]


def round_to(t: torch.Tensor, numerics: str, per_row: bool = False) -> torch.Tensor:
    """`t` as the device stores it, back in float32 (integers and float64 pass through)."""
    if not t.is_floating_point() or t.dtype == torch.float64 or numerics == "fp32":
        return t
    if numerics in _DTYPES:
        return t.to(_DTYPES[numerics]).to(t.dtype)
    # int8, symmetric: per row for 2-D weights and tables, per tensor otherwise
    if per_row and t.dim() == 2:
        scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    else:
        scale = t.abs().amax().clamp_min(1e-12) / 127
    return (t / scale).round().clamp(-127, 127) * scale


def schedule(table: CostTable, placement: dict[str, int], sinks: list[str]) -> Trace:
    """The list schedule of one inference under `placement`, from the cost table."""
    preset = table.preset
    trace = Trace(preset.name)
    ready: dict[tuple[str, int], float] = {}  # (tensor, side) -> time it is available there
    free = {"host": 0.0, "pim": 0.0, "link": 0.0}
    ops = {op.name: op for op in table.ops}

    def available(tensor: str, side: int) -> float:
        if (tensor, side) in ready:
            return ready[(tensor, side)]
        home = placement.get(tensor, HOST) if tensor in ops else HOST
        at_home = ready.get((tensor, home), 0.0)
        if home == side:
            return at_home
        cost = transfer_cost(table.tensor_bytes(tensor), preset)
        start = max(at_home, free["link"])
        free["link"] = start + cost.us
        trace.events.append(
            TraceEvent(
                tensor,
                "transfer " + ("to pim" if side == PIM else "to host"),
                "link",
                start,
                cost.us,
                cost.uj,
                table.tensor_bytes(tensor),
            )
        )
        ready[(tensor, side)] = start + cost.us
        return start + cost.us

    for op in table.ops:
        side = placement.get(op.name, HOST)
        lane = "pim" if side == PIM else "host"
        cost: Cost = table.pim[op.name] if side == PIM else table.host[op.name]
        inputs_at = max((available(i, side) for i in op.inputs), default=0.0)
        start = max(inputs_at, free[lane]) if op.kind != "view" else inputs_at
        if op.kind != "view":
            free[lane] = start + cost.us
            cycles = int(cost.us * preset.clock_mhz) if side == PIM else 0
            trace.events.append(
                TraceEvent(
                    op.key,
                    op.op,
                    lane,
                    start,
                    cost.us,
                    cost.uj,
                    op.lookups * op.row_bytes if op.kind == "gather" else op.in_bytes + op.out_bytes,
                    cycles,
                )
            )
        ready[(op.name, side)] = start + (cost.us if op.kind != "view" else 0.0)
    for name in sinks:
        available(name, HOST)
    return trace


class PartitionedRunner(fx.Interpreter):
    """Interprets a Program with its PIM-placed nodes in the device's numerics."""

    def __init__(self, program: Program, placement: dict[str, int], preset: PimPreset) -> None:
        super().__init__(program.graph_module)
        self.placement = placement
        self.numerics = preset.numerics

    def run_node(self, n: fx.Node) -> Any:
        if n.op != "call_function" or self.placement.get(n.name, HOST) != PIM:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        weights = {a.name for a in n.all_input_nodes if a.op == "get_attr"}
        names = [a.name if isinstance(a, fx.Node) else None for a in n.args]

        def device(value: Any, name: str | None) -> Any:
            if isinstance(value, torch.Tensor):
                return round_to(value, self.numerics, per_row=name in weights)
            return value

        args = tuple(
            device(a, nm) for a, nm in zip(args, names + [None] * (len(args) - len(names)), strict=True)
        )
        out = getattr(self, n.op)(n.target, args, kwargs)
        return device(out, None) if isinstance(out, torch.Tensor) else out


def placement_of(program: Program, ops: list[PimOp] | None = None) -> dict[str, int]:
    """The Program's `annotations.partition` (stable op keys) as node name -> HOST/PIM."""
    ops = ops if ops is not None else program_ops(program)
    part = program.annotations.partition
    return {op.name: int(part.get(op.key, HOST)) for op in ops}


def run_partitioned(program: Program, preset: PimPreset, *inputs: torch.Tensor) -> Any:
    """Run `program` with its partition on `preset`'s numerics (eager host ops)."""
    runner = PartitionedRunner(program, placement_of(program), preset)
    with torch.no_grad():
        return runner.run(*(inputs or program.example_inputs))
