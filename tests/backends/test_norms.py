"""Channels-last group norms split into a statistics kernel and a multiply-add: the same values as
TOPI's group norm, and only where the channel is the last axis."""

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.norms import split_group_norms
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of


def _affine(channels):
    rng = np.random.default_rng(1)
    return rng.standard_normal(channels).astype("float32"), rng.standard_normal(channels).astype("float32")


def _group_norm_module(shape, groups, channel_axis, scale=True, center=True):
    from tvm import relax

    gamma, beta = (relax.const(v) for v in _affine(shape[channel_axis]))
    axes = [a for a in range(1, len(shape)) if a != channel_axis]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(
                relax.op.nn.group_norm(x, gamma, beta, groups, channel_axis, axes, 1e-5, center, scale)
            )
            out = bb.emit_output(relax.op.multiply(y, relax.op.sigmoid(y)))  # SiLU, as in a UNet
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, data):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(data)).numpy()


@pytest.mark.parametrize(
    ("shape", "groups", "scale", "center"),
    [
        ((2, 6, 5, 64), 32, True, True),  # 64 channels: four 16-lane vectors
        ((1, 4, 3, 24), 8, True, True),  # 24 channels: not a whole number of vectors
        ((2, 3, 3, 32), 4, False, False),  # no affine parameters
    ],
    ids=["vectors", "ragged", "plain"],
)
def test_split_group_norm_computes_the_norm(shape, groups, scale, center):
    split, count = split_group_norms(_group_norm_module(shape, groups, 3, scale, center))
    assert count == 1
    assert "R.nn.group_norm" not in split["main"].script()
    data = (np.random.default_rng(0).standard_normal(shape) * 3 + 1).astype("float32")
    grouped = data.astype(np.float64).reshape(*shape[:3], groups, -1)
    mean, var = grouped.mean(axis=(1, 2, 4), keepdims=True), grouped.var(axis=(1, 2, 4), keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(shape)
    gamma, beta = _affine(shape[3])
    # (TVM 0.27's own group norm applies gamma and beta even when `scale` / `center` say not to.)
    normed = normed * (gamma if scale else 1.0) + (beta if center else 0.0)
    np.testing.assert_allclose(_run(split, data), normed / (1 + np.exp(-normed)), rtol=1e-5, atol=2e-5)


def test_channels_first_group_norm_is_left_alone():
    mod = _group_norm_module((2, 64, 6, 5), 32, 1)
    same, count = split_group_norms(mod)
    assert count == 0
    assert "R.nn.group_norm" in same["main"].script()


class ConvNormBlock(nn.Module):
    """conv -> GroupNorm -> SiLU -> conv: the UNet's resnet block, whose convs go channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 32, 3, padding=1)
        self.norm = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv2d(32, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(nn.functional.silu(self.norm(self.conv1(x))))


def test_lowered_unet_block_splits_its_norm_and_matches_torch():
    torch.manual_seed(0)
    program = capture(ConvNormBlock().eval(), (torch.randn(2, 4, 8, 8),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["channels_last_convs"] == 2
    assert artifact.info["split_group_norms"] == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)
