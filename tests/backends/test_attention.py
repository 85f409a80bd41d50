"""Fused attention: which attentions take the one-kernel path, and that they match PyTorch."""

import math

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.attention import attention_func, causal_blocks
from optkit.backends.targets import resolve_target
from torch import nn

from optkit.ir.capture import capture
from tests.backends.conftest import call_tir_names, outputs_of


class SDPA(nn.Module):
    def __init__(self, causal: bool = False, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.causal = causal
        self.register_buffer("mask", mask)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal)


class HandWritten(nn.Module):
    """softmax(q k^T / sqrt(d) [+ mask]) v spelled out, as older attention code does."""

    def __init__(self, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if self.mask is not None:
            scores = scores + self.mask
        return scores.softmax(dim=-1) @ v


def _keep_mask() -> torch.Tensor:
    """A boolean mask (True: attend) over 32 queries x 48 keys; query 5 attends to nothing."""
    keep = torch.rand(32, 48, generator=torch.Generator().manual_seed(3)) > 0.3
    keep[5] = False
    return keep


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
        (SDPA(), [(1, 2, 24, 8), (1, 2, 48, 8), (1, 2, 48, 16)], 1),  # cross-attention, Dv != D
        (SDPA(), [(2, 2, 30, 8), (2, 2, 77, 8), (2, 2, 77, 8)], 1),  # a text condition's 77 tokens
        (HandWritten(), [(2, 2, 16, 8)] * 3, 1),
        (SDPA(), [(2, 3, 50, 16)] * 3, 1),  # 50 queries and keys: padded to 56 and 64
        (SDPA(causal=True), [(1, 2, 32, 16)] * 3, 1),
        (SDPA(causal=True), [(2, 2, 50, 16)] * 3, 1),  # causal, padded
        (SDPA(mask=_keep_mask()), [(2, 3, 32, 16), (2, 3, 48, 16), (2, 3, 48, 8)], 1),  # a row all masked
        (SDPA(mask=torch.randn(2, 1, 32, 48)), [(2, 3, 32, 16), (2, 3, 48, 16), (2, 3, 48, 8)], 1),
        (HandWritten(torch.randn(1, 1, 1, 40)), [(2, 2, 24, 16), (2, 2, 40, 16), (2, 2, 40, 16)], 1),
        (SDPA(), [(2, 2, 16, 20)] * 3, 0),  # heads of 20: the three kernels are faster
        (SDPA(), [(2, 2, 16, 8), (2, 2, 5, 8), (2, 2, 5, 8)], 0),  # 5 keys: less than one vector
    ],
    ids=[
        "self",
        "cross",
        "text-tokens",
        "hand-written-scale",
        "padded",
        "causal",
        "causal-padded",
        "boolean-mask",
        "mask-per-batch",
        "hand-written-mask",
        "heads-of-20",
        "five-keys",
    ],
)
def test_attention_matches_torch(model, shapes, fused):
    artifact, got, want = _lowered(model, *shapes)
    assert artifact.info["fused_attentions"] == fused
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _kernel_output(q, kt, v, scale, keys, mask=None, lanes=16):
    import tvm

    (b, m, d), n = q.shape, kt.shape[2]
    mask_batch = None if mask is None else mask.shape[0]
    func = attention_func(
        b, m, n, d, v.shape[2], scale=scale, keys=keys, mask_batch=mask_batch, lanes=lanes
    ).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=resolve_target("cpu").tvm_target())
    inputs = (q, kt, v) if mask is None else (q, kt, v, mask)
    args = [tvm.runtime.tensor(x, tvm.cpu()) for x in (*inputs, np.zeros((b, m, v.shape[2]), np.float32))]
    lib["main"](*args)
    return args[-1].numpy()


def _softmax_attention(q, kt, v, scale):
    s = scale * q @ kt
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True) @ v


def test_the_kernel_subtracts_the_row_maximum():
    # Scores near 100 overflow exp() unless each row's maximum comes off first.
    rng = np.random.default_rng(0)
    q, kt = ((10 * rng.standard_normal(s)).astype(np.float32) for s in ((2, 8, 4), (2, 4, 32)))
    v = rng.standard_normal((2, 32, 4)).astype(np.float32)
    got = _kernel_output(q, kt, v, 0.5, keys=None)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _softmax_attention(q, kt, v, 0.5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize(("queries", "dv", "masked"), [(16, 32, False), (24, 8, True), (12, 16, False)])
def test_each_register_tiling_matches_numpy(lanes, queries, dv, masked):
    # lanes 8 (AVX2): 8-row tiles run as 4-row sub-tiles, the weighted sum too where its 16
    # columns are two registers (dv 32); 12 queries: 4-row tiles, no sub-tiles
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, queries, 16)).astype(np.float32)
    kt = rng.standard_normal((2, 16, 48)).astype(np.float32)
    v = rng.standard_normal((2, 48, dv)).astype(np.float32)
    mask = np.where(rng.random((1, queries, 48)) < 0.3, -np.inf, 0.0).astype(np.float32) if masked else None
    mask_row = mask[0] if masked else 0.0
    got = _kernel_output(q, kt, v, 0.25, keys=None, mask=mask, lanes=lanes)
    s = 0.25 * q.astype(np.float64) @ kt + mask_row
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(got, p / p.sum(-1, keepdims=True) @ v, rtol=1e-4, atol=1e-5)


def test_padded_keys_get_no_weight():
    # Every real score is far below 0, the score of a zero-padded key: were the padding in the
    # row maximum, every real exp() would hit fast_exp's floor and all keys weigh the same.
    rng = np.random.default_rng(1)
    q = np.abs(10 * rng.standard_normal((1, 4, 8))).astype(np.float32)
    kt = -np.abs(10 * rng.standard_normal((1, 8, 32))).astype(np.float32)
    kt[:, :, 27:] = 0.0  # the padding the lowering appends
    v = rng.standard_normal((1, 32, 8)).astype(np.float32)
    v[:, 27:] = 0.0
    got = _kernel_output(q, kt, v, 1.0, keys=27)
    want = _softmax_attention(q, kt[:, :, :27], v[:, :27], 1.0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lanes", [8, 16])
def test_padded_keys_are_masked_by_a_vector_select(lanes):
    # a lazy if_then_else on the key index would be computed lane by lane (the module's note)
    script = attention_func(2, 16, 32, 8, 8, keys=27, lanes=lanes).script()
    assert "T.if_then_else" not in script and script.count("T.Select(") == 2  # row maximum, exp
    assert "T.vectorized" in script


def test_masked_keys_get_exactly_no_weight():
    # A masked key's weight must be exactly 0 (TOPI's fast_exp gives 0 below -88, but 1e-38
    # just above): times a value of 1e38, any weight left shows in the output.
    rng = np.random.default_rng(2)
    q, kt = (rng.standard_normal(s).astype(np.float32) for s in ((1, 8, 8), (1, 8, 32)))
    v = rng.standard_normal((1, 32, 8)).astype(np.float32)
    mask = np.zeros((1, 8, 32), np.float32)
    mask[:, :, 20:] = -np.inf
    v[:, 20:] = 1e38
    got = _kernel_output(q, kt, v, 0.5, keys=None, mask=mask)
    want = _softmax_attention(q, kt[:, :, :20], v[:, :20], 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _causal(tokens: int) -> np.ndarray:
    return np.triu(np.full((tokens, tokens), -np.inf, np.float32), k=1)


def test_a_causal_mask_splits_into_query_blocks_over_the_keys_they_see():
    blocks = causal_blocks(_causal(512), [1, 8, 512, 512], 512, 512)
    assert blocks == [(r, 64, r + 64) for r in range(0, 512, 64)]
    # Padded: 250 tokens are 256 rows and 256 keys in the kernel; each block sees its last
    # real row's keys, rounded up to a vector, the last block all of them.
    blocks = causal_blocks(_causal(250)[None], [2, 250, 250], 256, 256)
    assert blocks is not None and len(blocks) == 4 and blocks[-1] == (192, 64, 256)
    seen = (_causal(250) != -np.inf).sum(axis=1)
    for first, rows, width in blocks:
        assert width % 16 == 0 and width >= seen[first : first + rows].max()


@pytest.mark.parametrize(
    ("mask", "why"),
    [
        (_causal(64), "blocks of fewer than 64 rows cost more than they skip"),
        (np.zeros((512, 512), np.float32), "every key is seen"),
        (
            np.where(_causal(512) == 0, 0.0, -1e9).astype(np.float32),
            "-1e9 is not -inf: a row of it weighs all keys",
        ),
    ],
)
def test_no_split_where_it_would_not_pay_or_not_be_exact(mask, why):
    n = mask.shape[-1]
    assert causal_blocks(mask, [1, n, n], n, n) is None, why


def test_query_blocks_give_the_whole_kernels_result_bit_for_bit():
    import tvm

    rng = np.random.default_rng(4)
    b, m, d = 2, 128, 16
    q, kt = (
        rng.standard_normal((b, m, d)).astype(np.float32),
        rng.standard_normal((b, d, m)).astype(np.float32),
    )
    v = rng.standard_normal((b, m, d)).astype(np.float32)
    mask = _causal(m)[None]
    whole = _kernel_output(q, kt, v, 0.25, keys=None, mask=mask)
    target = resolve_target("cpu").tvm_target()
    parts = []
    for first, rows, width in causal_blocks(mask, [b, m, m], m, m):
        func = attention_func(b, m, m, d, d, 0.25, mask_batch=1, block=(first, rows, width))
        lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        args = [
            tvm.runtime.tensor(x, tvm.cpu()) for x in (q, kt, v, mask, np.zeros((b, rows, d), np.float32))
        ]
        lib["main"](*args)
        parts.append(args[-1].numpy())
    assert len(parts) == 2
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_a_causal_decoder_attention_runs_in_blocks_and_matches_torch():
    from optkit.backends.attention import fuse_attention
    from optkit.backends.tvm_import import import_program

    artifact, got, want = _lowered(SDPA(causal=True), *[(1, 2, 256, 16)] * 3)
    assert artifact.info["fused_attentions"] == 1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    program = capture(SDPA(causal=True).eval(), tuple(torch.randn(1, 2, 256, 16) for _ in range(3)), name="a")
    mod, fused, _ = fuse_attention(import_program(program).mod)
    calls = call_tir_names(mod)
    assert fused == 1 and sum(name.startswith("attention") for name in calls) == 4  # 4 blocks of 64 rows
