"""A max pool over dequantized int8 values pools the int8 values, with the same result."""

import numpy as np
from optkit.backends.pools import int8_max_pools


def _module(scale=0.05, rounded=True):
    """x -> `act_qdq` as `quantized.py` emits it (zero point -3) -> a 3 x 3 NHWC max pool."""
    from tvm import relax

    op = relax.op
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 6, 6, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            zero = bb.emit(op.astype(relax.const(-3, "int8"), "float32"))
            scaled = bb.emit(op.divide(x, relax.const(scale, "float32")))
            grid = bb.emit(op.round(scaled)) if rounded else scaled
            q = bb.emit(op.add(grid, zero))
            q = bb.emit(op.minimum(bb.emit(op.maximum(q, relax.const(-128.0))), relax.const(127.0)))
            dq = bb.emit(op.multiply(bb.emit(op.subtract(q, zero)), relax.const(scale, "float32")))
            pooled = op.nn.max_pool2d(dq, pool_size=3, strides=2, padding=1, layout="NHWC")
            out = bb.emit_output(pooled)
        bb.emit_func_output(out)
    return bb.get()


def test_the_pool_reads_int8_and_gives_the_same_values():
    import tvm
    from tvm import relax

    mod = _module()
    rewritten, count = int8_max_pools(mod)
    assert count == 1
    pool_line = next(line for line in rewritten["main"].script().splitlines() if "max_pool2d" in line)
    assert 'dtype="int8"' in pool_line
    data = np.random.default_rng(0).normal(0, 3, (2, 6, 6, 16)).astype("float32")

    def run(module):
        vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(data)).numpy()

    np.testing.assert_array_equal(run(rewritten), run(mod))


def test_a_negative_scale_or_values_off_the_grid_keep_the_float_pool():
    assert int8_max_pools(_module(scale=-0.05))[1] == 0  # decreasing: max would become min
    assert int8_max_pools(_module(rounded=False))[1] == 0  # not integers: no int8 to pool
