"""Fused attention: which attentions take the one-kernel path, and that they match PyTorch."""

import math

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.attention import attention_func
from optkit.backends.targets import resolve_target
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of


class SDPA(nn.Module):
    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


class HandWritten(nn.Module):
    """softmax(q k^T / sqrt(d)) v spelled out, as older attention code does."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return scores.softmax(dim=-1) @ v


def _lowered(model, *shapes):
    torch.manual_seed(0)
    inputs = tuple(torch.randn(*s) for s in shapes)
    program = capture(model.eval(), inputs, name="attention")
    artifact = lower(program, "cpu", num_cores=1)
    (got,) = artifact.run(*inputs)
    return artifact, got, outputs_of(program)[0]


@pytest.mark.parametrize(
    ("model", "shapes", "fused"),
    [
        (SDPA(), [(2, 3, 32, 16)] * 3, 1),
        (SDPA(), [(1, 2, 24, 8), (1, 2, 48, 8), (1, 2, 48, 12)], 1),  # cross-attention, Dv != D
        (HandWritten(), [(2, 2, 16, 8)] * 3, 1),
        (SDPA(), [(2, 3, 50, 16)] * 3, 0),  # 50 keys: no whole vector of keys
        (SDPA(causal=True), [(1, 2, 32, 16)] * 3, 0),  # a masked softmax keeps the three kernels
    ],
    ids=["self", "cross", "hand-written-scale", "odd-keys", "causal"],
)
def test_attention_matches_torch(model, shapes, fused):
    artifact, got, want = _lowered(model, *shapes)
    assert artifact.info["fused_attentions"] == fused
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_kernel_subtracts_the_row_maximum():
    # Scores near 100 overflow exp() unless each row's maximum comes off first.
    import tvm

    b, m, n, d = 2, 8, 32, 4
    rng = np.random.default_rng(0)
    q = (10 * rng.standard_normal((b, m, d))).astype(np.float32)
    kt = (10 * rng.standard_normal((b, d, n))).astype(np.float32)
    v = rng.standard_normal((b, n, d)).astype(np.float32)
    func = attention_func(b, m, n, d, d, scale=0.5).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=resolve_target("cpu").tvm_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in (q, kt, v, np.zeros((b, m, d), np.float32))]
    lib["main"](*args)
    s = 0.5 * q @ kt
    p = np.exp(s - s.max(-1, keepdims=True))
    want = p / p.sum(-1, keepdims=True) @ v
    assert np.isfinite(args[3].numpy()).all()
    np.testing.assert_allclose(args[3].numpy(), want, rtol=1e-4, atol=1e-5)
