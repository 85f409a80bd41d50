"""Placement: min-cut finds the exhaustive optimum; capacity holds; transfers are paid once."""

import dataclasses

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
from optkit.testing.pim_graphs import random_op_graph

HOST_MODEL = HostModel(
    {k: (1.0, 10.0, 5.0, 20.0) for k in ("gemm", "elementwise", "reduction", "gather")}, 5.0, 32 << 20
)


@pytest.mark.parametrize("preset", ["hbm-pim", "upmem", "aim"])
@pytest.mark.parametrize("objective", ["latency", "energy"])
@pytest.mark.parametrize("seed", range(4))
def test_mincut_equals_the_exhaustive_optimum(preset, objective, seed):
    ops, sinks = random_op_graph(seed)
    table = CostTable(ops, HOST_MODEL, resolve_preset(preset), {"x": 4096})
    cut = table.evaluate(mincut_placement(table, sinks, objective), sinks).objective(objective)
    best = table.evaluate(exhaustive_placement(table, sinks, objective), sinks).objective(objective)
    assert cut == pytest.approx(best, rel=1e-9)


def test_capacity_is_respected_and_beats_greedy():
    ops, sinks = random_op_graph(3, n=16)
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
    ops, sinks = random_op_graph(1)
    table = CostTable(ops, HOST_MODEL, resolve_preset("recnmp"), {"x": 4096})  # gathers and pooling only
    placement = optimal_placement(table, sinks)
    assert all(placement[op.name] == HOST for op in ops if op.kind not in ("gather", "reduction", "view"))
    with pytest.raises(UnknownNameError):
        mincut_placement(table, sinks, "edp")
