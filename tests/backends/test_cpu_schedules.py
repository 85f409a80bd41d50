"""The default GEMM schedule's register tile: its height, and that the kernel it makes is right."""

import numpy as np
import pytest
from optkit.backends.cpu_schedules import CPUMatmul
from optkit.backends.targets import resolve_target


def _packed_gemm(m, k, n):
    from tvm import te

    a = te.placeholder((m, k), name="a")
    w = te.placeholder((n // 32, k, 32), name="w")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * w[j // 32, r, j % 32], axis=r), name="c")
    return te.create_prim_func([a, w, c])


@pytest.mark.parametrize(
    ("m", "k", "params", "height"),
    [
        (448, 64, None, 7),  # 8 x 32 accumulators are 1 KiB, a workspace per tile: 7 rows if 7 divides
        (512, 512, None, 8),  # else the full tile over a long reduction
        (512, 32, None, 4),  # and 4 rows over a short one
        (448, 64, {"rows": 8}, 8),  # a tile given (tuning's) is taken as given
    ],
    ids=["seven-divides", "long-k", "short-k", "exact"],
)
def test_default_tile_height(m, k, params, height):
    sch = CPUMatmul(params=params).apply(_packed_gemm(m, k, 64), resolve_target("cpu").tvm_target(), False)
    script = sch.mod.script()
    assert f"T.unroll({height})" in script
    assert f"T.parallel({m // height * 2})" in script  # row tiles x two 32-column panels


def test_seven_row_tiles_compute_the_product():
    import tvm

    m, k, n = 56, 24, 64
    target = resolve_target("cpu", num_cores=1).tvm_target()
    lib = tvm.tirx.build(CPUMatmul().apply(_packed_gemm(m, k, n), target, False).mod, target=target)
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    packed = np.ascontiguousarray(w.reshape(k, n // 32, 32).transpose(1, 0, 2))
    args = [tvm.runtime.tensor(x, tvm.cpu()) for x in (a, packed, np.zeros((m, n), np.float32))]
    lib(*args)
    np.testing.assert_allclose(args[2].numpy(), a @ w, rtol=1e-5, atol=1e-5)
