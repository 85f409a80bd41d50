"""Constant-index `take`s become slices that fuse into their readers; other `take`s stay."""

import numpy as np
import torch
from optkit.backends import lower
from optkit.backends.slices import constant_takes_as_slices
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of


def _take_module(index):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 4), "float32"))
    rows = relax.Var("rows", relax.TensorType((2,), "int64"))
    with bb.function("main", [x, rows]):
        with bb.dataflow():
            picked = bb.emit(relax.op.take(x, relax.const(index, "int64"), axis=2))  # [2, 3]
            gathered = bb.emit(relax.op.take(picked, rows, axis=0))  # a run-time index: stays
            out = bb.emit_output(relax.op.multiply(gathered, relax.const(2.0, "float32")))
        bb.emit_func_output(out)
    return bb.get()


def test_constant_take_becomes_a_slice_with_the_same_values():
    import tvm
    from tvm import relax

    mod, count = constant_takes_as_slices(_take_module(3))
    assert count == 1
    assert mod["main"].script().count("R.take") == 1  # the run-time one
    assert "R.strided_slice" in mod["main"].script()
    data = np.arange(24, dtype="float32").reshape(2, 3, 4)
    rows = np.array([1, 0], dtype="int64")
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data), tvm.runtime.tensor(rows)).numpy()
    np.testing.assert_array_equal(got, data[:, :, 3][rows] * 2)


def test_out_of_range_take_is_left_to_take():
    _, count = constant_takes_as_slices(_take_module(7))
    assert count == 0


class InterleavedRotary(nn.Module):
    """Rotate channel pairs (2k, 2k+1) by fixed angles: `x.reshape(..., -1, 2)[..., 0]`."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        angles = torch.arange(tokens)[:, None] * torch.rand(dim // 2)
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, x):
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([even * self.cos - odd * self.sin, even * self.sin + odd * self.cos], dim=-1)
        return rotated.flatten(-2)


def test_lowered_rotary_embedding_has_no_take_and_matches_torch():
    torch.manual_seed(0)
    program = capture(InterleavedRotary(16, 32).eval(), (torch.randn(2, 4, 16, 32),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["sliced_takes"] == 2
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-6)
