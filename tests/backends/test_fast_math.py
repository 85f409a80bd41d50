"""Fast transcendental functions and the vectorized row-reduction schedule."""

import numpy as np
import pytest
import torch
from optkit.backends import lower
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of, scheduled_funcs


class _Transcendental(nn.Module):
    def forward(self, x):
        a = torch.softmax(x * 3, dim=-1) + nn.functional.gelu(x) + nn.functional.gelu(x, approximate="tanh")
        b = torch.sigmoid(x) + nn.functional.silu(x) + torch.tanh(x) + torch.exp(-x * x)
        return a * b + torch.erf(x)


@pytest.fixture
def transcendental():
    torch.manual_seed(0)
    return capture(_Transcendental().eval(), (torch.randn(4, 64) * 4,))


@pytest.mark.parametrize("fast", [True, False])
def test_fast_math_matches_torch(transcendental, fast):
    artifact = lower(transcendental, "cpu", num_cores=1, fast_math=fast)
    assert (artifact.info["fast_math_ops"] >= 7) if fast else artifact.info["fast_math_ops"] == 0
    (got,) = artifact.run(*transcendental.example_inputs)
    np.testing.assert_allclose(got, outputs_of(transcendental)[0], rtol=1e-5, atol=1e-5)


def test_row_reductions_are_vectorized():
    # softmax and layer norm: each reduction is split into vector partial results (an `_rf`
    # block under a vectorized loop) instead of one serial chain per row.
    from optkit.backends.targets import resolve_target
    from optkit.backends.tvm_import import import_program

    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Softmax(dim=-1)).eval()
    program = capture(model, (torch.randn(8, 64),))
    funcs = scheduled_funcs(import_program(program).mod, resolve_target("cpu", num_cores=1))
    scripts = [f.script() for f in funcs.values()]
    reductions = [s for s in scripts if "T.axis.reduce" in s]
    assert reductions and all("_rf" in s and "T.vectorized" in s for s in reductions)
    (got,) = lower(program, "cpu", num_cores=1).run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-6)


def test_divisions_by_a_constant_multiply_by_its_reciprocal():
    # Only a scalar constant divisor with a normal float32 reciprocal: not a tensor, not one
    # whose reciprocal overflows. The product is within one ulp of the quotient.
    import tvm
    from optkit.backends.fast_math import reciprocal_divisions
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1000,), "float32"))
    y = relax.Var("y", relax.TensorType((1000,), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            a = bb.emit(relax.op.divide(x, relax.const(0.3, "float32")))
            b = bb.emit(relax.op.divide(a, y))
            out = bb.emit_output(relax.op.divide(b, relax.const(1e-39, "float32")))
        bb.emit_func_output(out)
    mod, count = reciprocal_divisions(bb.get())
    assert count == 1
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(1000) * 100).astype(np.float32)
    ones = np.ones(1000, np.float32)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data), tvm.runtime.tensor(ones)).numpy()
    quotient = data / np.float32(0.3)
    with np.errstate(over="ignore"):
        want = data * (np.float32(1) / np.float32(0.3)) / np.float32(1e-39)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_max_ulp(data * (np.float32(1) / np.float32(0.3)), quotient, maxulp=1)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu", "sigmoid"])
def test_write_back_expressions_follow_their_functions(name):
    # The tile GEMMs' write-back activations (`unary_expr`: erf and tanh by rational fits)
    # against float64, over the range where they bend and past the clamps.
    import math

    import tvm
    from optkit.backends.fast_math import unary_expr
    from tvm import te

    data = np.concatenate([np.linspace(-20, 20, 40001), [-1e4, -30.0, 30.0, 1e4]]).astype(np.float32)
    x = te.placeholder(data.shape, "float32", name="x")
    y = te.compute(data.shape, lambda i: unary_expr(name, x[i]), name="y")
    mod = tvm.IRModule({"main": te.create_prim_func([x, y]).with_attr("global_symbol", "main")})
    got = tvm.runtime.tensor(np.zeros_like(data))
    tvm.compile(mod, target="llvm")["main"](tvm.runtime.tensor(data), got)
    v = data.astype(np.float64)
    sigmoid = 1 / (1 + np.exp(-np.clip(v, -700, 700)))
    want = {
        "gelu": np.array([a * (1 + math.erf(a / math.sqrt(2))) / 2 for a in v]),
        "gelu_tanh": v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) / 2,
        "silu": v * sigmoid,
        "sigmoid": sigmoid,
    }[name]
    # the fits' error (4e-7) scaled by |x| where x multiplies it, and float32 rounding
    assert np.all(np.abs(got.numpy() - want) <= 4e-7 * np.maximum(np.abs(data), 1))
    assert np.all(got.numpy()[data == 0.0] == want[data == 0.0])
