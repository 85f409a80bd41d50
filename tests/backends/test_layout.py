"""Channels-last float convs and the depthwise kernel: structure of the rewritten module, and
outputs that match PyTorch."""

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.layout import cancel_transposes, channels_last
from optkit.backends.packing import pack_weights
from optkit.backends.tvm_import import import_program
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of


class DepthwiseBlock(nn.Module):
    """1x1 expand + ReLU6, three depthwise convs (stride 1, stride 2 with padding, dilation 2),
    1x1 projection, residual over the last two."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 1)
        self.dw1 = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.dw2 = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False)
        self.dw3 = nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32)
        self.project = nn.Conv2d(32, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.expand(x))
        x = nn.functional.relu6(self.dw1(x))
        x = self.dw2(x)
        return self.project(x + self.dw3(x))


def _ops(mod) -> list[str]:
    from tvm import relax

    names: list[str] = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            names.append(str(expr.op.name))

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def test_channels_last_leaves_transposes_only_at_the_ends():
    torch.manual_seed(0)
    program = capture(DepthwiseBlock().eval(), (torch.randn(2, 8, 10, 10),))
    mod, converted = channels_last(import_program(program).mod)
    assert converted == 5
    ops = _ops(mod)
    assert "relax.clip" not in ops  # spelled as maximum / minimum, which carry layouts
    assert ops.count("relax.permute_dims") == 2  # the NCHW input and the NCHW output
    packed, counts = pack_weights(mod)
    assert counts["depthwise"] == 3 and counts["conv2d"] == 2
    packed, _ = cancel_transposes(packed)
    # The expand conv reads the NCHW input in place: one transpose left, at the output.
    assert _ops(packed).count("relax.permute_dims") == 1


def test_cancel_transposes_keeps_non_inverse_pairs():
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 3, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.permute_dims(x, (0, 2, 3, 1)))
            b = bb.emit(relax.op.permute_dims(a, (0, 3, 1, 2)))  # inverse: cancels
            c = bb.emit(relax.op.permute_dims(b, (0, 2, 3, 1)))
            d = bb.emit(relax.op.permute_dims(c, (0, 2, 3, 1)))  # not an inverse: stays
            out = bb.emit_output(d)
        bb.emit_func_output(out)
    mod, cancelled = cancel_transposes(bb.get())
    assert cancelled == 1
    assert _ops(mod).count("relax.permute_dims") == 2
    data = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    expected = data.transpose(0, 2, 3, 1).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(data)).numpy(), expected)


@pytest.mark.parametrize("batch", [3])
def test_depthwise_block_matches_torch(batch):
    torch.manual_seed(0)
    program = capture(DepthwiseBlock().eval(), (torch.randn(batch, 8, 10, 10),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["depthwise_convs"] == 3
    assert artifact.info["channels_last_convs"] == 5
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


def test_w8a8_depthwise_block_matches_its_program():
    # The int8 depthwise convs compute in float32 (exact: their sums stay below 2^24) on the
    # NHWC depthwise kernel; the 1x1 int8 convs stay int8 and take the NHWC layout with them.
    from optkit.backends.targets import resolve_target
    from optkit.backends.vnni import int8_arith

    from optkit.pipeline import PassManager, build_passes

    torch.manual_seed(0)
    program = capture(DepthwiseBlock().eval(), (torch.randn(2, 8, 10, 10),))
    quantized = PassManager(build_passes(["ptq"])).run(program).program
    assert quantized.op_counts().get("conv2d_w8a8", 0) == 5
    artifact = lower(quantized, "cpu", num_cores=1)
    assert artifact.info["depthwise_convs"] == 3
    assert artifact.info["int8_depthwise_inputs"] == 3  # each reads its int8 input
    if int8_arith(resolve_target("cpu").tvm_target()) is not None:
        assert artifact.info["vnni_kernels"] == 2
    (got,) = artifact.run(*quantized.example_inputs)
    np.testing.assert_allclose(got, outputs_of(quantized)[0], rtol=1e-4, atol=1e-4)


def test_cancel_transposes_across_a_padded_quantize():
    """NHWC -> NCHW, pad, re-add a zero point, cast, NCHW -> NHWC (a W8A8 conv's input around
    `nn.pad`, which ConvertLayout leaves in NCHW) becomes the pad in NHWC: no transpose left."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 5, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.permute_dims(x, (0, 3, 1, 2)))
            b = bb.emit(relax.op.nn.pad(a, [0, 0, 0, 0, 1, 1, 2, 0]))
            c = bb.emit(relax.op.add(b, relax.const(3.0, "float32")))
            d = bb.emit(relax.op.astype(c, "int8"))
            out = bb.emit_output(relax.op.permute_dims(d, (0, 2, 3, 1)))
        bb.emit_func_output(out)
    mod, cancelled = cancel_transposes(bb.get())
    assert cancelled == 1
    assert "relax.permute_dims" not in _ops(mod)
    data = np.random.default_rng(0).standard_normal((1, 4, 5, 3)).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    nchw = np.pad(data.transpose(0, 3, 1, 2), [(0, 0), (0, 0), (1, 1), (2, 0)])
    expected = (nchw + 3.0).astype(np.int8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(data)).numpy(), expected)
