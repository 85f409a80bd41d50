"""Random op graphs for the PIM placement's tests and benchmark: gathers, GEMMs, elementwise
ops, reductions and host-only layout ops in a random DAG, with sizes spanning the cost model's
regimes (tables in and out of cache, GEMV and GEMM, small and large activations)."""

from __future__ import annotations

import random

from optkit.backends.pim.ops import PimOp


def random_op_graph(seed: int, n: int = 12) -> tuple[list[PimOp], list[str]]:
    """`n` ops reading the graph input `x` or earlier ops; returns the ops and the output names."""
    rng = random.Random(seed)
    ops: list[PimOp] = []
    for i in range(n):
        kind = rng.choice(["gather", "gemm", "gemm", "elementwise", "reduction", "layout"]) if i else "gather"
        inputs = ["x"] if i == 0 else rng.sample([o.name for o in ops], k=min(len(ops), rng.randint(1, 2)))
        size = rng.choice([1 << 10, 1 << 14, 1 << 18])
        op = PimOp(f"n{i}", f"m{i}:{kind}:0", kind, kind, 0, size, size, inputs=inputs)
        if kind == "gather":
            op.rows, op.row_bytes, op.lookups = rng.choice([1000, 10**7]), 256, rng.choice([256, 20480])
            op.weight_bytes = op.rows * op.row_bytes
        elif kind == "gemm":
            op.weight_bytes, op.batch = rng.choice([1 << 16, 1 << 22]), rng.choice([1, 64])
            op.flops = 2 * op.batch * op.weight_bytes // 4
        elif kind in ("elementwise", "reduction"):
            op.flops = size // 4
        ops.append(op)
    return ops, [ops[-1].name]
