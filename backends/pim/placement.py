"""Placing ops on the host or a PIM device: optimal (min-cut), greedy, exhaustive.

The placement problem: every op runs on the host or the PIM device; an op costs what
`cost.py` says on the side it runs; a tensor crosses the link once in each direction in which
some consumer needs it on the other side; the model's inputs arrive on the host and its
outputs leave from it; tables and weights placed on PIM must fit its capacity. The objective
(`latency` in microseconds or `energy` in microjoules) adds up.

Without the capacity limit this is a binary labelling with submodular pairwise terms, solved
exactly by one s-t minimum cut (networkx). A transfer paid once however many consumers need
the tensor is exact too: per tensor, one auxiliary node says "present on PIM" (forced by any
PIM consumer, paid if the producer is on the host) and one "present on the host". The
capacity limit is a knapsack constraint on top: a Lagrange multiplier on the bytes placed on
PIM is found by bisection, then the placement is repaired greedily (least benefit per byte
leaves first). `greedy_placement` is the rule PIMFlow-style tools start from (every embedding
lookup to PIM, largest tables first while they fit); `exhaustive_placement` enumerates every
labelling of the ops PIM can run (for graphs with up to `EXHAUSTIVE_LIMIT` of them), to check
the optimum.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
from optkit.backends.pim.cost import INF, Cost, HostModel, pim_cost, transfer_cost
from optkit.backends.pim.ops import PimOp, program_ops
from optkit.backends.pim.presets import PimPreset

from optkit.errors import ConfigError, UnknownNameError
from optkit.ir.program import Program

OBJECTIVES = ("latency", "energy")
HOST, PIM = 0, 1
EXHAUSTIVE_LIMIT = 20
BISECTIONS = 20  # of the capacity multiplier: 1e-6 of its bracket, enough for bytes
EVICTION_LIMIT = 12  # weight-holding ops on PIM up to which greedy eviction is tried


@dataclass
class Evaluation:
    """A placement's totals and per-op costs."""

    placement: dict[str, int]
    latency_us: float
    energy_uj: float
    transfer_bytes: int
    pim_bytes: int  # weights and tables resident on PIM
    ops: dict[str, Cost] = field(default_factory=dict)  # op name -> cost on its side
    transfers: list[tuple[str, int, Cost]] = field(default_factory=list)  # (tensor, direction, cost)

    def objective(self, name: str) -> float:
        return self.latency_us if name == "latency" else self.energy_uj


class CostTable:
    """Host and PIM costs of every op of a graph, with its edges, for one preset."""

    def __init__(
        self, ops: list[PimOp], host: HostModel, preset: PimPreset, input_bytes: dict[str, int] | None = None
    ) -> None:
        self.ops = ops
        self.host_model = host
        self.input_bytes = dict(input_bytes or {})
        self.preset = preset
        self.names = {op.name for op in ops}
        self.host = {op.name: host.cost(op) for op in ops}
        self.pim = {op.name: pim_cost(op, preset) for op in ops}
        producers = {op.name: op for op in ops}
        for op in ops:  # pooling over a sharded table: partial sums go through the host
            src = [producers[i] for i in op.inputs if i in producers]
            if op.kind == "reduction" and not preset.unit_to_unit and any(s.kind == "gather" for s in src):
                shards = max(
                    1, int(max(s.weight_bytes for s in src) // max(preset.unit_capacity_mib * 2**20, 1)) + 1
                )
                self.pim[op.name] = self.pim[op.name] + transfer_cost(op.out_bytes * min(shards, 64), preset)
        self.consumers: dict[str, list[str]] = {}
        for op in ops:
            for i in op.inputs:
                self.consumers.setdefault(i, []).append(op.name)
        self.out_bytes = {op.name: op.out_bytes for op in ops}
        self.resident = {op.name: op.weight_bytes if op.kind in ("gather", "gemm") else 0 for op in ops}

    def can_pim(self, name: str) -> bool:
        return self.pim[name].us < INF

    def evaluate(self, placement: dict[str, int], sinks: Iterable[str] = ()) -> Evaluation:
        """Exact totals of `placement` (op name -> HOST/PIM); inputs live on the host and the
        ops in `sinks` (graph outputs) must deliver to it."""
        sinks = set(sinks)
        ev = Evaluation(dict(placement), 0.0, 0.0, 0, 0)
        for op in self.ops:
            side = placement.get(op.name, HOST)
            cost = self.pim[op.name] if side == PIM else self.host[op.name]
            ev.ops[op.name] = cost
            ev.latency_us += cost.us
            ev.energy_uj += cost.uj
            if side == PIM:
                ev.pim_bytes += self.resident[op.name]
        sides_needed: dict[str, set[int]] = {}
        for op in self.ops:
            for i in op.inputs:
                sides_needed.setdefault(i, set()).add(placement.get(op.name, HOST))
        for name in sinks:
            sides_needed.setdefault(name, set()).add(HOST)
        for tensor, sides in sides_needed.items():
            where = placement.get(tensor, HOST) if tensor in self.names else HOST
            for side in sides - {where}:
                cost = transfer_cost(self.tensor_bytes(tensor), self.preset)
                ev.transfers.append((tensor, side, cost))
                ev.transfer_bytes += self.tensor_bytes(tensor)
                ev.latency_us += cost.us
                ev.energy_uj += cost.uj
        return ev

    def tensor_bytes(self, tensor: str) -> int:
        """Bytes of the value `tensor` (an op output or a graph input)."""
        if tensor in self.out_bytes:
            return self.out_bytes[tensor]
        return self.input_bytes.get(tensor, 0)


def sinks_of(program: Program) -> list[str]:
    """Names of the nodes whose values the graph returns."""
    out = next(n for n in program.graph.nodes if n.op == "output")
    return [n.name for n in out.all_input_nodes]


def program_table(program: Program, preset: PimPreset, host: HostModel) -> CostTable:
    """The host / PIM cost table of `program`'s ops on `preset`, with `host` for the host side."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    inputs = {
        n.name: int(t.numel()) * t.element_size()
        for n, t in zip(placeholders, program.example_inputs, strict=False)
    }
    return CostTable(program_ops(program), host, preset, inputs)


def co_locate(table: CostTable, placement: dict[str, int]) -> dict[str, int]:
    """`placement` with every `getitem` on the side of the multi-output op it reads from."""
    out = dict(placement)
    for op in table.ops:
        if op.op == "getitem" and op.inputs and op.inputs[0] in out:
            out[op.name] = out[op.inputs[0]]
    return out


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise UnknownNameError("PIM placement objective", objective, OBJECTIVES)
    return objective


def _value(cost: Cost, objective: str) -> float:
    return cost.us if objective == "latency" else cost.uj


def mincut_placement(
    table: CostTable,
    sinks: Iterable[str],
    objective: str = "latency",
    penalty: float = 0.0,
    pinned: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """The optimal placement without the capacity limit (`penalty` per resident byte on PIM;
    the ops in `pinned` are kept on the host)."""
    check_objective(objective)
    g = nx.DiGraph()
    s, t = "__host__", "__pim__"

    def add(u: str, v: str, cap: float) -> None:
        # networkx reads an edge without a capacity as infinite: exact, unlike a large number
        if cap <= 0:
            return
        if cap == INF:
            g.add_edge(u, v)
            g[u][v].pop("capacity", None)
        elif not g.has_edge(u, v):
            g.add_edge(u, v, capacity=cap)
        elif "capacity" in g[u][v]:
            g[u][v]["capacity"] += cap

    for op in table.ops:
        n = op.name
        on_pim_cost = INF if n in pinned else _value(table.pim[n], objective) + penalty * table.resident[n]
        add(s, n, on_pim_cost)  # paid if n on PIM
        add(n, t, _value(table.host[n], objective))  # paid if n on the host
    tensors: dict[str, list[str]] = {k: list(v) for k, v in table.consumers.items()}
    sinks = list(sinks)
    for name in sinks:
        tensors.setdefault(name, []).append("__output__")
    for tensor, users in tensors.items():
        move = _value(transfer_cost(table.tensor_bytes(tensor), table.preset), objective)
        on_pim, on_host = f"{tensor}@pim", f"{tensor}@host"
        producer = tensor if tensor in table.names else s  # graph inputs sit on the host
        # "present on PIM": forced by any PIM consumer, costs `move` when the producer is on the host.
        add(producer, on_pim, move)
        # "present on the host": forced by any host consumer, costs `move` when the producer is on PIM.
        add(on_host, producer, move)
        for user in users:
            if user == "__output__":
                add(s, on_host, INF)  # the output is read on the host
                continue
            add(on_pim, user, INF)
            add(user, on_host, INF)
    if len(g) == 0 or s not in g or t not in g:
        return {op.name: HOST for op in table.ops}
    _, (host_side, _) = nx.minimum_cut(g, s, t)
    return {op.name: HOST if op.name in host_side else PIM for op in table.ops}


def optimal_placement(table: CostTable, sinks: Iterable[str], objective: str = "latency") -> dict[str, int]:
    """Min-cut placement within the preset's capacity.

    Exact when the unconstrained optimum fits. Otherwise the best feasible placement among: the
    min-cuts met while bisecting a Lagrange multiplier on resident bytes; for graphs with at most
    `EVICTION_LIMIT` weight-holding ops on PIM, greedy eviction (force the op whose move to the
    host costs least per byte freed, re-cut, repeat); each then improved by single-op moves.
    """
    sinks = list(sinks)
    capacity = table.preset.capacity_bytes
    placement = mincut_placement(table, sinks, objective)
    if table.evaluate(placement, sinks).pim_bytes <= capacity:
        return placement
    feasible: list[dict[str, int]] = []

    def cut(penalty: float, forced: frozenset[str] = frozenset()) -> tuple[dict[str, int], bool]:
        found = mincut_placement(table, sinks, objective, penalty, forced)
        fits = table.evaluate(found, sinks).pim_bytes <= capacity
        if fits:
            feasible.append(found)
        return found, fits

    lo, hi = 0.0, 1.0
    while not cut(hi)[1] and hi < 1e12:
        hi *= 4
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        if cut(mid)[1]:
            hi = mid
        else:
            lo = mid
    resident = [op.name for op in table.ops if table.resident[op.name] and placement[op.name] == PIM]
    if len(resident) <= EVICTION_LIMIT:
        forced: frozenset[str] = frozenset()
        current = placement
        while table.evaluate(current, sinks).pim_bytes > capacity:
            options = []
            for name in resident:
                if name in forced or current[name] != PIM:
                    continue
                trial, _ = cut(0.0, forced | {name})
                ev = table.evaluate(trial, sinks)
                options.append((ev.objective(objective) / max(table.resident[name], 1), name, trial))
            if not options:
                break
            _, name, current = min(options)
            forced = forced | {name}
    scored = sorted(feasible, key=lambda p: table.evaluate(p, sinks).objective(objective))[:3]
    if not scored:
        return host_only(table)
    polished = [_fill(table, sinks, objective, p, capacity) for p in scored]
    return min(polished, key=lambda p: table.evaluate(p, sinks).objective(objective))


def _fill(
    table: CostTable, sinks: list[str], objective: str, placement: dict[str, int], capacity: int
) -> dict[str, int]:
    # Greedy improvement under the capacity limit: move single ops while the objective drops.
    best = table.evaluate(placement, sinks)
    improved = True
    while improved:
        improved = False
        for op in table.ops:
            trial = dict(placement)
            trial[op.name] = PIM if placement[op.name] == HOST else HOST
            if trial[op.name] == PIM and not table.can_pim(op.name):
                continue
            ev = table.evaluate(trial, sinks)
            if ev.pim_bytes <= capacity and ev.objective(objective) < best.objective(objective) - 1e-9:
                placement, best, improved = trial, ev, True
    return placement


def greedy_placement(table: CostTable, sinks: Iterable[str] = ()) -> dict[str, int]:
    """Every embedding lookup the device can run goes to PIM, largest tables first, while they fit."""
    placement = {op.name: HOST for op in table.ops}
    used = 0
    for op in sorted((o for o in table.ops if o.kind == "gather"), key=lambda o: -o.weight_bytes):
        if table.can_pim(op.name) and used + op.weight_bytes <= table.preset.capacity_bytes:
            placement[op.name] = PIM
            used += op.weight_bytes
    return placement


def exhaustive_placement(
    table: CostTable, sinks: Iterable[str], objective: str = "latency"
) -> dict[str, int]:
    """The best of every labelling of the ops PIM can run (at most `EXHAUSTIVE_LIMIT` of them)."""
    sinks = list(sinks)
    # Views cost nothing and follow their input; every other op PIM can run is a free choice.
    free = [op.name for op in table.ops if table.can_pim(op.name) and op.kind != "view"]
    if len(free) > EXHAUSTIVE_LIMIT:
        raise ConfigError(
            f"exhaustive placement enumerates 2^{len(free)} labellings; it is limited to {EXHAUSTIVE_LIMIT} PIM-capable ops"
        )
    base = {op.name: HOST for op in table.ops}
    best, best_value = dict(base), INF
    for labels in itertools.product((HOST, PIM), repeat=len(free)):
        trial = dict(base)
        trial.update(zip(free, labels, strict=True))
        for op in table.ops:
            if op.kind == "view" and op.inputs and op.inputs[0] in trial:
                trial[op.name] = trial[op.inputs[0]]
        ev = table.evaluate(trial, sinks)
        if ev.pim_bytes <= table.preset.capacity_bytes and ev.objective(objective) < best_value:
            best, best_value = trial, ev.objective(objective)
    return best


def host_only(table: CostTable) -> dict[str, int]:
    return {op.name: HOST for op in table.ops}
