"""Constant pads sink below the scalar elementwise ops, casts and transposes after them."""

import numpy as np
from optkit.backends.pads import sink_pads


def _module(shared_pad=False, divide_int=False):
    """x (float, NCHW) -> pad(0) -> + zero point -> int8 -> NHWC: what `quantized.py` emits."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 3, 4), "float32"))
    op = relax.op
    with bb.function("main", [x]):
        with bb.dataflow():
            zero = bb.emit(op.astype(relax.const(-5, "int8"), "float32"))
            padded = bb.emit(op.nn.pad(x, (0, 0, 0, 0, 1, 0, 2, 1), pad_value=0.0))
            shifted = bb.emit(op.add(padded, zero))
            cast = bb.emit(op.astype(shifted, "int32" if divide_int else "int8"))
            if divide_int:
                cast = bb.emit(op.floor_divide(cast, relax.const(2, "int32")))
            nhwc = bb.emit(op.permute_dims(cast, (0, 2, 3, 1)))
            outputs = (nhwc, padded) if shared_pad else (nhwc,)
            out = bb.emit_output(relax.Tuple(outputs) if shared_pad else nhwc)
        bb.emit_func_output(out)
    return bb.get()


def test_pad_ends_up_last_with_its_value_carried_through():
    import tvm
    from tvm import relax

    mod = _module()
    sunk, moved = sink_pads(mod)
    assert moved == 3  # below the add, the cast and the transpose
    text = sunk["main"].script()
    last = [line for line in text.splitlines() if "R.nn.pad" in line]
    assert len(last) == 1 and "pad_value=-5" in last[0] and 'dtype="int8"' in last[0]
    data = np.random.default_rng(0).uniform(-60, 60, (1, 2, 3, 4)).round().astype("float32")

    def run(module):
        vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(data)).numpy()

    want = np.pad(data, ((0, 0), (0, 0), (1, 0), (2, 1))) - 5
    np.testing.assert_array_equal(run(sunk), want.astype(np.int8).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(run(sunk), run(mod))


def test_a_pad_with_other_readers_stays():
    _, moved = sink_pads(_module(shared_pad=True))
    assert moved == 0


def test_a_pad_stops_at_an_op_it_does_not_commute_with():
    # floor_divide is not in the table: the pad sinks below the add and the cast, not further.
    sunk, moved = sink_pads(_module(divide_int=True))
    assert moved == 2
    lines = sunk["main"].script().splitlines()
    pad_line = next(i for i, line in enumerate(lines) if "R.nn.pad" in line)
    divide_line = next(i for i, line in enumerate(lines) if "R.floor_divide" in line)
    assert pad_line < divide_line
