"""The default GEMM schedule's register tile: its height, and that the kernel it makes is right;
elementwise kernels that round stay vectorized."""

import numpy as np
import pytest
from optkit.backends.cpu_schedules import CPUElementwise, CPUMatmul
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
    import tvm

    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    sch = CPUMatmul(params=params).apply(_packed_gemm(m, k, 64), avx512, False)
    script = sch.mod.script()
    assert f"T.unroll({height})" in script
    assert f"T.parallel({m // height * 2})" in script  # row tiles x two 32-column panels


@pytest.mark.parametrize(("m", "height"), [(96, 6), (448, 4)])
def test_avx2_tiles_fit_its_sixteen_registers(m, height):
    import tvm

    sch = CPUMatmul().apply(
        _packed_gemm(m, 64, 64), tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}), False
    )
    script = sch.mod.script()
    assert f"T.unroll({height})" in script  # 6 rows x 16 lanes where 6 divides M, else 4
    assert f"T.parallel({m // height * 4})" in script  # row tiles x four 16-column panels


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


def test_a_quantize_keeps_its_vector_rounding():
    """`nearbyint` (Relax's `round`) no longer scalarizes the loop: the LLVM IR rounds whole vectors
    and reads the input without per-lane gathers; ties still round to even."""
    import tvm
    from tvm import te, tirx

    x = te.placeholder((4, 64), name="x")
    q = te.compute(
        x.shape,
        lambda i, j: tirx.Cast("int8", tirx.min(tirx.max(tirx.nearbyint(x[i, j] / 0.5), -128.0), 127.0)),
        name="q",
    )
    target = resolve_target("cpu", num_cores=1).tvm_target()
    lib = tvm.tirx.build(
        CPUElementwise().apply(te.create_prim_func([x, q]), target, False).mod, target=target
    )
    ir = lib.inspect_source("ll")
    assert "@llvm.nearbyint.v" in ir
    assert "masked.gather" not in ir
    values = (np.arange(256, dtype=np.float32) - 128.0) * 0.25  # x / 0.5 hits every .5 tie in range
    args = [
        tvm.runtime.tensor(values.reshape(4, 64), tvm.cpu()),
        tvm.runtime.tensor(np.zeros((4, 64), np.int8)),
    ]
    lib(*args)
    np.testing.assert_array_equal(
        args[1].numpy().ravel(), np.clip(np.round(values / 0.5), -128, 127).astype(np.int8)
    )


@pytest.mark.parametrize(
    ("out_shape", "transposed", "tiled"),
    [((4, 32, 48), True, True), ((4, 48, 32), False, False), ((4, 24, 48), True, False)],
    ids=["transposed", "same-order", "ragged"],
)
def test_a_transposing_kernel_runs_in_tiles(out_shape, transposed, tiled):
    """An elementwise kernel that reads its input with the last two axes swapped (K^T) runs in
    16 x 16 tiles; one that reads in its own order, or whose axes do not split into 16, does not."""
    import tvm
    from tvm import te

    b, rows, cols = out_shape
    x = te.placeholder((b, cols, rows) if transposed else out_shape, name="x")
    y = te.compute(
        out_shape,
        lambda i, r, c: (x[i, c, r] if transposed else x[i, r, c]) * 2.0 + 1.0,
        name="y",
    )
    target = resolve_target("cpu", num_cores=1).tvm_target()
    sch = CPUElementwise().apply(te.create_prim_func([x, y]), target, False)
    assert ("T.unroll(16)" in sch.mod.script()) == tiled
    lib = tvm.tirx.build(sch.mod, target=target)
    data = np.random.default_rng(0).standard_normal([int(d) for d in x.shape]).astype(np.float32)
    args = [tvm.runtime.tensor(data, tvm.cpu()), tvm.runtime.tensor(np.zeros(out_shape, np.float32))]
    lib(*args)
    expected = (data.transpose(0, 2, 1) if transposed else data) * 2.0 + 1.0
    np.testing.assert_allclose(args[1].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("condition", "cuts"),
    [
        (lambda i, c: c >= 32, [32]),  # a rotary embedding's halves (`rotate_half`'s concatenation)
        (lambda i, c: c < 50, [50]),  # a pad's edge, within the last vector
        (lambda i, c: i + c < 40, []),  # mixed with another axis: not split
    ],
    ids=["halves", "pad", "mixed"],
)
def test_lazy_conditions_along_the_vector_split_its_loop(condition, cuts):
    """An `if_then_else` whose condition turns along the vectorized axis is split there
    (`_lane_cuts`), so that each piece vectorizes; the values stay those of the naive loop."""
    import tvm
    from optkit.backends import cpu_schedules
    from tvm import s_tir, te, tirx

    x = te.placeholder((4, 64), name="x")
    y = te.compute(
        (4, 64),
        lambda i, c: tirx.if_then_else(condition(i, c), x[i, c] * 2.0, x[i, (c + 32) % 64] - 1.0),
        name="y",
    )
    func = te.create_prim_func([x, y])
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("y")
    assert cpu_schedules._lane_cuts(sch, block, sch.get_loops(block)) == cuts
    target = resolve_target("cpu", num_cores=1).tvm_target()
    scheduled = CPUElementwise().apply(func, target, False)
    assert ("partition" in scheduled.mod.script()) == bool(cuts)
    lib = tvm.tirx.build(scheduled.mod, target=target)
    data = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    args = [tvm.runtime.tensor(data, tvm.cpu()), tvm.runtime.tensor(np.zeros((4, 64), np.float32))]
    lib(*args)
    i, c = np.meshgrid(np.arange(4), np.arange(64), indexing="ij")
    expected = np.where(condition(i, c), data * 2.0, data[i, (c + 32) % 64] - 1.0)
    np.testing.assert_array_equal(args[1].numpy(), expected)
