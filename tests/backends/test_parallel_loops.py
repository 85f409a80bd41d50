"""Small kernels run on the calling thread, big ones on TVM's thread pool (`parallel_loops`)."""

import math

import numpy as np
import pytest
import torch
from optkit.backends import lower, parallel_loops, vnni
from optkit.backends.kernel_profile import lower_with_kernels
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import host_float_tiles, outputs_of


def _elementwise(rows, cols=64):
    from tvm import te

    x = te.placeholder((rows, cols), "float32", name="x")
    y = te.compute(x.shape, lambda i, j: x[i, j] * 2.0 + 1.0, name="y")
    return te.create_prim_func([x, y])


def test_thresholds_on_work_and_bytes():
    assert not parallel_loops.worth_parallel(parallel_loops.MIN_FLOPS - 1, parallel_loops.MIN_BYTES - 1)
    assert parallel_loops.worth_parallel(parallel_loops.MIN_FLOPS, 0)
    assert parallel_loops.worth_parallel(0, parallel_loops.MIN_BYTES)
    small, big = _elementwise(64), _elementwise(1024)
    assert parallel_loops.buffer_bytes(small) == 2 * 64 * 64 * 4
    assert parallel_loops.func_flops(small) == 2 * 64 * 64  # a multiply and an add per element
    assert not parallel_loops.func_worth_parallel(small)
    assert parallel_loops.func_worth_parallel(big)  # 512 KiB of buffers


def test_symbolic_shape_counts_as_big():
    from tvm import te, tirx

    n = tirx.Var("n", "int64")
    x = te.placeholder((n, 64), "float32", name="x")
    y = te.compute(x.shape, lambda i, j: x[i, j] + 1.0, name="y")
    func = te.create_prim_func([x, y])
    assert parallel_loops.buffer_bytes(func) == math.inf
    assert parallel_loops.func_worth_parallel(func)


@pytest.mark.parametrize("m,parallel", [(4, False), (256, True)])
def test_tile_gemm_loop_follows_its_work(m, parallel):
    script = vnni.gemm_func(m, 64, 64, arith=vnni.F32_AVX2).script()
    assert ("T.parallel" in script) is parallel  # 4 x 64 x 64: 32 KFLOP; 256 x 64 x 64: 2 MFLOP


def _mlp(width, batch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)).eval()
    return capture(model, (torch.randn(batch, width),), name=f"mlp{width}")


def test_lowering_keeps_a_small_model_serial_and_a_big_one_parallel():
    small, big = _mlp(32, 2), _mlp(512, 256)
    _, small_funcs = lower_with_kernels(small, num_cores=2)
    _, big_funcs = lower_with_kernels(big, num_cores=2)
    assert small_funcs and not any("T.parallel" in f.script() for f in small_funcs.values())
    gemms = [f for f in big_funcs.values() if vnni.KERNEL_ATTR in (f.attrs or {})]
    if host_float_tiles() is not None:  # the tile GEMM: 256 x 512 x 512, 134 MFLOP
        assert gemms and all("T.parallel" in f.script() for f in gemms)
    else:
        assert any("T.parallel" in f.script() for f in big_funcs.values())


def test_serial_kernels_compute_what_parallel_ones_do(monkeypatch):
    program = _mlp(48, 3)
    x = program.example_inputs[0].numpy()
    serial = lower(program, "cpu", num_cores=2).run(x)[0]
    monkeypatch.setattr(parallel_loops, "MIN_FLOPS", 0)
    monkeypatch.setattr(parallel_loops, "MIN_BYTES", 0)
    everything_parallel = lower(program, "cpu", num_cores=2).run(x)[0]
    np.testing.assert_array_equal(np.asarray(serial), np.asarray(everything_parallel))
    np.testing.assert_allclose(np.asarray(serial), outputs_of(program)[0], rtol=1e-5, atol=1e-5)
