"""Reshapes sunk below elementwise ops: the same numbers, and epilogues fused into the GEMMs."""

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.kernel_profile import lower_with_kernels
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import host_float_tiles, outputs_of


class TokenBlock(nn.Module):
    """A transformer-style block on (batch, tokens, dim): every Linear is view -> addmm -> view."""

    def __init__(self, dim: int = 32, hidden: int = 64, tokens: int = 6) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.per_token = nn.Parameter(torch.linspace(0.5, 1.5, tokens).reshape(tokens, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp(x)  # unary GELU, bias and residual adds
        x = x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))  # two reshaped operands
        return self.down(torch.sigmoid(self.up(x)) * self.per_token)  # broadcast over tokens: kept


@pytest.fixture(scope="module")
def block_program():
    torch.manual_seed(0)
    return capture(TokenBlock().eval(), (torch.randn(2, 6, 32),), name="token_block")


def test_sunk_reshapes_keep_the_numbers(block_program):
    artifact = lower(block_program, "cpu", num_cores=1)
    assert artifact.info["sunk_reshapes"] > 0
    (got,) = artifact.run(*block_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(block_program)[0], rtol=1e-4, atol=1e-5)


def test_gelu_and_bias_fuse_into_the_gemm(block_program, scheduled_float_matmuls):
    _, kernels = lower_with_kernels(block_program, num_cores=1)
    names = list(kernels)
    assert any("packed_matmul" in n and "gelu" in n for n in names), names
    assert not any(n.startswith(("gelu", "fused_gelu", "add", "fused_add")) for n in names), names


@pytest.mark.skipif(host_float_tiles() is None, reason="the host CPU has no AVX-512 or AVX2 FMA")
def test_bias_and_residual_adds_join_the_fma_gemms_write_back(block_program):
    artifact, kernels = lower_with_kernels(block_program, num_cores=1)
    names = list(kernels)
    assert artifact.info["fma_kernels"] == 7 and not artifact.info["packed_matmuls"]
    # every GEMM's bias add, the two residual adds and the GELU in its write-back
    assert artifact.info["vnni_epilogues"] == 7 and artifact.info["fast_math_ops"] == 0
    assert not any(n.startswith(("add", "fused_add", "gelu", "fused_gelu")) for n in names), names
    (got,) = artifact.run(*block_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(block_program)[0], rtol=1e-4, atol=1e-5)


def test_a_broadcast_over_reshaped_dims_stays_after_the_reshape():
    # The scale varies along the tokens, a dim the reshape to (batch * tokens, dim) merges: the
    # multiply cannot run on the 2-D GEMM output and must still be right.
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.scale = nn.Parameter(torch.arange(1.0, 5.0).reshape(4, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x) * self.scale

    torch.manual_seed(0)
    program = capture(Scaled().eval(), (torch.randn(3, 4, 16),), name="scaled")
    (got,) = lower(program, "cpu", num_cores=1).run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


class SplitHeads(nn.Module):
    """A fused QKV projection split into heads: Q, K and V are slices of one permuted tensor."""

    def __init__(self, dim: int = 64, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return q * 2.0 + k - v


def test_each_head_slice_reads_the_projection_without_a_shared_copy():
    torch.manual_seed(0)
    program = capture(SplitHeads().eval(), (torch.randn(2, 24, 64),), name="split_heads")
    artifact, kernels = lower_with_kernels(program, num_cores=1)
    assert artifact.info["copied_layouts"] == 3
    # no kernel writes the permuted [3, batch, heads, tokens, dim] tensor any more
    assert not any(n.endswith("transpose") for n in kernels), list(kernels)
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)
