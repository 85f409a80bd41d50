"""Each quantized activation is one int8 tensor, read by the next conv and the skip alike."""

import numpy as np
import pytest
from optkit.backends.requant import share_quantized

from tests.backends.conftest import outputs_of

SCALE, ZERO = 0.05, -3


def _module(requantize_scale=None):
    """x -> ReLU -> `act_qdq` twice (as `quantized.py` emits it for a skip and for a conv):
    one float32 copy, one int8 tensor. With `requantize_scale`, the float copy is quantized once
    more at that scale (a conv after a max pool)."""
    from tvm import relax

    op = relax.op
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 32), "float32"))

    def centered(y, scale):
        zero = bb.emit(op.astype(relax.const(ZERO, "int8"), "float32"))
        grid = bb.emit(op.add(bb.emit(op.round(bb.emit(op.divide(y, relax.const(scale, "float32"))))), zero))
        grid = bb.emit(op.minimum(bb.emit(op.maximum(grid, relax.const(-128.0))), relax.const(127.0)))
        return bb.emit(op.subtract(grid, zero)), zero

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(op.nn.relu(x))
            skip, _ = centered(y, SCALE)
            skip = bb.emit(op.multiply(skip, relax.const(SCALE, "float32")))
            conv, zero = centered(y, SCALE)
            q = bb.emit(op.astype(bb.emit(op.add(conv, zero)), "int8"))
            if requantize_scale is not None:
                again, zero = centered(skip, requantize_scale)
                q = bb.emit(op.astype(bb.emit(op.add(again, zero)), "int8"))
            out = bb.emit_output(relax.Tuple([skip, q]))
        bb.emit_func_output(out)
    return bb.get()


def _dequantizes_int8(mod):
    """Whether `mod`'s main casts an int8 tensor to float32."""
    from tvm import relax

    return any(
        isinstance(b.value, relax.Call)
        and getattr(b.value.op, "name", "") == "relax.astype"
        and isinstance(b.value.args[0], relax.Var)
        and str(b.value.args[0].ty.dtype) == "int8"
        and str(b.var.ty.dtype) == "float32"
        for block in mod["main"].body.blocks
        for b in block.bindings
    )


def _run(module, data):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
    return [o.numpy() for o in vm["main"](tvm.runtime.tensor(data))]


def _data():
    return np.random.default_rng(0).normal(0, 3, (4, 32)).astype("float32")


def test_the_skip_reads_the_int8_tensor_the_conv_reads():
    mod = _module()
    shared, count = share_quantized(mod)
    assert count > 0
    text = shared["main"].script()
    assert text.count("R.round(") == 1  # one rounding onto the grid, not two
    assert _dequantizes_int8(shared)  # the skip: astype(q, float32) - zero, from the int8 q
    for got, want in zip(_run(shared, _data()), _run(mod, _data()), strict=True):
        np.testing.assert_array_equal(got, want)


def test_requantizing_at_the_same_scale_is_the_int8_tensor():
    mod = _module(requantize_scale=SCALE)
    shared, _ = share_quantized(mod)
    assert shared["main"].script().count("R.round(") == 1
    assert not _dequantizes_int8(mod) and _dequantizes_int8(shared)
    for got, want in zip(_run(shared, _data()), _run(mod, _data()), strict=True):
        np.testing.assert_array_equal(got, want)


def test_requantizing_at_another_scale_rounds_again():
    mod = _module(requantize_scale=2 * SCALE)
    shared, _ = share_quantized(mod)
    assert shared["main"].script().count("R.round(") == 2
    for got, want in zip(_run(shared, _data()), _run(mod, _data()), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def residual_program():
    from optkit.ir.capture import capture
    from optkit.pipeline import PassManager, build_passes
    from tests import models

    model, inputs = models.residual_net()
    return PassManager(build_passes(["ptq"])).run(capture(model, inputs, name="residual")).program


def test_residual_blocks_lower_to_the_same_outputs(residual_program):
    from optkit.backends import vnni
    from optkit.backends.kernel_profile import lower_with_kernels
    from optkit.backends.targets import resolve_target

    artifact, kernels = lower_with_kernels(residual_program, num_cores=1)
    (got,) = artifact.run(*residual_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(residual_program)[0], rtol=1e-4, atol=1e-4)
    if vnni.int8_arith(resolve_target("cpu").tvm_target()) is None:
        return
    assert artifact.info["shared_quantizes"] > 0
    # every GEMM takes its epilogue, the 1 x 1 skip conv's too (its int8 result is what the
    # residual GEMM reads), and the convs after the stem and the strided block's first conv
    # write their successors' padded inputs
    assert artifact.info["vnni_epilogues"] == artifact.info["vnni_kernels"] == 9
    assert artifact.info["padded_outputs"] >= 2
    # the RGB stem's GEMM reads the image in place, interleaved to 4 channels and padded in one
    # copy: no im2col
    assert not any(name.startswith("im2col") for name in kernels)
    assert any(name.startswith("interleave_channels") for name in kernels)


@pytest.mark.slow  # lowers the network twice (27 s on a 2-core AVX2 machine)
def test_sharing_quantized_activations_keeps_the_outputs_exactly(residual_program, monkeypatch):
    from optkit.backends import lower, requant

    (got,) = lower(residual_program, "cpu", num_cores=1).run(*residual_program.example_inputs)
    monkeypatch.setattr(requant, "share_quantized", lambda mod: (mod, 0))
    (unshared,) = lower(residual_program, "cpu", num_cores=1).run(*residual_program.example_inputs)
    np.testing.assert_array_equal(got, unshared)  # the same float32 arithmetic, exactly
