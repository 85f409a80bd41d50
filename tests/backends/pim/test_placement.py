"""Placement: min-cut finds the exhaustive optimum; capacity holds; transfers are paid once."""

import dataclasses
import random

import pytest
from optkit.backends.pim.cost import HostModel
from optkit.backends.pim.ops import PimOp
from optkit.backends.pim.placement import (
    HOST,
    PIM,
    CostTable,
    exhaustive_placement,
    greedy_placement,
    mincut_placement,
    optimal_placement,
)
from optkit.backends.pim.presets import resolve_preset

from optkit.errors import UnknownNameError

HOST_MODEL = HostModel(
    {k: (1.0, 10.0, 5.0, 20.0) for k in ("gemm", "elementwise", "reduction", "gather")}, 5.0, 32 << 20
)


def random_graph(seed: int, n: int = 12) -> tuple[list[PimOp], list[str]]:
    """A random DAG of gathers, GEMMs, elementwise ops, reductions and host-only layout ops."""
    rng = random.Random(seed)
    ops: list[PimOp] = []
    for i in range(n):
        kind = rng.choice(["gather", "gemm", "gemm", "elementwise", "reduction", "layout"]) if i else "gather"
        inputs = ["x"] if i == 0 else rng.sample([o.name for o in ops], k=min(len(ops), rng.randint(1, 2)))
        size = rng.choice([1 << 10, 1 << 14, 1 << 18])
        op = PimOp(
            f"n{i}",
            f"m{i}:{kind}:0",
            kind,
            kind,
            rng.choice([0, 1 << 16, 1 << 22]),
            size,
            size,
            inputs=inputs,
        )
        if kind == "gather":
            op.rows, op.row_bytes, op.lookups = rng.choice([1000, 10**7]), 256, rng.choice([256, 20480])
            op.weight_bytes = op.rows * op.row_bytes
        if kind == "gemm":
            op.weight_bytes, op.batch = rng.choice([1 << 16, 1 << 22]), rng.choice([1, 64])
            op.flops = 2 * op.batch * op.weight_bytes // 4
        ops.append(op)
    return ops, [ops[-1].name]


@pytest.mark.parametrize("preset", ["hbm-pim", "upmem", "aim"])
@pytest.mark.parametrize("objective", ["latency", "energy"])
@pytest.mark.parametrize("seed", range(4))
def test_mincut_equals_the_exhaustive_optimum(preset, objective, seed):
    ops, sinks = random_graph(seed)
    table = CostTable(ops, HOST_MODEL, resolve_preset(preset), {"x": 4096})
    cut = table.evaluate(mincut_placement(table, sinks, objective), sinks).objective(objective)
    best = table.evaluate(exhaustive_placement(table, sinks, objective), sinks).objective(objective)
    assert cut == pytest.approx(best, rel=1e-9)


def test_capacity_is_respected_and_beats_greedy():
    ops, sinks = random_graph(3, n=16)
    tight = dataclasses.replace(resolve_preset("upmem"), capacity_gib=0.004, unit_capacity_mib=0.0)
    table = CostTable(ops, HOST_MODEL, tight, {"x": 4096})
    chosen = table.evaluate(optimal_placement(table, sinks), sinks)
    assert chosen.pim_bytes <= tight.capacity_bytes
    assert table.evaluate(greedy_placement(table, sinks), sinks).pim_bytes <= tight.capacity_bytes
    best = table.evaluate(exhaustive_placement(table, sinks), sinks)
    assert chosen.latency_us <= best.latency_us * 1.02


def test_a_tensor_crosses_once_for_many_consumers():
    producer = PimOp("p", "p:add:0", "add", "elementwise", 1, 4096, 4096, inputs=["x"])
    users = [
        PimOp(f"u{i}", f"u:mul:{i}", "mul", "elementwise", 1, 4096, 4096, inputs=["p"]) for i in range(3)
    ]
    table = CostTable([producer, *users], HOST_MODEL, resolve_preset("hbm-pim"), {"x": 4096})
    placement = {"p": HOST, "u0": PIM, "u1": PIM, "u2": PIM}
    moved = [t for t in table.evaluate(placement, ["u2"]).transfers if t[0] == "p"]
    assert len(moved) == 1


def test_unsupported_ops_stay_on_the_host():
    ops, sinks = random_graph(1)
    table = CostTable(ops, HOST_MODEL, resolve_preset("recnmp"), {"x": 4096})  # gathers and pooling only
    placement = optimal_placement(table, sinks)
    assert all(placement[op.name] == HOST for op in ops if op.kind not in ("gather", "reduction", "view"))
    with pytest.raises(UnknownNameError):
        mincut_placement(table, sinks, "edp")
