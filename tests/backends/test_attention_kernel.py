"""Attention in float16 (AVX512-FP16): the kernel against float64, and which lowerings take it."""

import math

import numpy as np
import pytest
from optkit.backends import attention_kernel, lower
from optkit.backends.attention import causal_blocks
from optkit.backends.attention_kernel import half_attention_func
from optkit.backends.targets import host_cpu_config

from optkit.errors import ConfigError, UnknownNameError
from tests.backends.conftest import (
    attention_block_program,
    attention_inputs,
    attention_reference,
    fused_attention_kernels,
    outputs_of,
    sqnr_db,
)


def _host_fp16() -> bool:
    import tvm

    return attention_kernel.target_has_fp16(tvm.target.Target(host_cpu_config(num_cores=1)))


needs_fp16 = pytest.mark.skipif(not _host_fp16(), reason="this CPU has no AVX512-FP16")


@needs_fp16
@pytest.mark.parametrize(
    ("b", "m", "n", "d", "dv", "keys", "masked", "block"),
    [
        (4, 256, 256, 32, 32, 256, False, None),  # a UNet's heads of 32
        (6, 72, 224, 64, 64, 197, False, None),  # ViT's 197 tokens: keys padded, a partial chunk
        (2, 20, 32, 16, 32, 20, False, None),  # 4-row tiles, fewer keys than a chunk
        (2, 64, 96, 32, 96, 96, False, None),  # three value registers: a pair and a single
        (3, 128, 128, 64, 64, 128, True, None),  # causal mask, and a row masked whole
        (3, 128, 128, 64, 64, 128, True, (64, 64, 128)),  # the second causal block
    ],
    ids=["unet", "vit-padded", "small", "dv96", "masked", "block"],
)
def test_the_float16_kernel_matches_float64_attention(b, m, n, d, dv, keys, masked, block):
    import tvm

    q, kt, v, mask = attention_inputs(b, m, n, d, dv, masked)
    first, rows, _ = block or (0, m, n)
    scale = 1 / math.sqrt(d)
    mask_batch = 1 if masked else None
    func = half_attention_func(b, m, n, d, dv, scale, keys=keys, mask_batch=mask_batch, block=block)
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
        target=tvm.target.Target(host_cpu_config(num_cores=1)),
    )
    args = [q, kt.astype(np.float16), v.astype(np.float16), *([mask] if masked else [])]
    out = tvm.runtime.tensor(np.zeros((b, rows, dv), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
    got = out.numpy()
    want = attention_reference(q, kt, v, scale, keys, mask)[:, first : first + rows]
    assert sqnr_db(got, want) > 44, sqnr_db(got, want)  # 47-57 dB measured; float16 has 11 significant bits
    if masked and first == 0:
        assert np.all(got[:, 3] == 0)


@needs_fp16
def test_quantized_programs_take_float16_attention_and_float_ones_keep_float32():
    for quantized in (False, True):
        program = attention_block_program(quantized)
        artifact = lower(program, "cpu", num_cores=1)
        (got,) = artifact.run(*program.example_inputs)
        want = np.asarray(outputs_of(program)[0])
        assert artifact.info["fused_attentions"] == 1
        assert artifact.info["reduced_attentions"] == int(quantized)
        assert artifact.info["attention_precision"] == ("float16" if quantized else "float32")
        assert sqnr_db(np.asarray(got), want) > (40 if quantized else 80)

    forced = lower(attention_block_program(False), "cpu", num_cores=1, attention_precision="float16")
    assert forced.info["reduced_attentions"] == 1
    kept = lower(attention_block_program(True), "cpu", num_cores=1, attention_precision="float32")
    assert kept.info["reduced_attentions"] == 0


def test_float16_attention_needs_the_cpu_feature_and_a_known_precision(monkeypatch):
    program = attention_block_program(False)
    with pytest.raises(UnknownNameError, match="attention precision"):
        lower(program, "cpu", attention_precision="bfloat16")
    monkeypatch.setattr(attention_kernel, "target_has_fp16", lambda _target: False)
    with pytest.raises(ConfigError, match="AVX512-FP16"):
        lower(program, "cpu", attention_precision="float16")


@pytest.mark.parametrize(
    ("shape", "causal", "kernels"),
    [
        ((1, 2, 160, 32), False, ["half_attention"]),
        ((1, 2, 20, 32), False, ["half_attention"]),  # 20 keys, padded to 32
        ((1, 2, 160, 16), False, ["attention"]),  # heads of 16: half a float16 register
        ((1, 2, 512, 32), True, ["half_attention"] * 8),  # causal blocks of 64 rows
    ],
    ids=["half", "few-keys", "narrow-heads", "causal-blocks"],
)
def test_which_attentions_take_the_float16_kernel(shape, causal, kernels):
    fused, reduced, names = fused_attention_kernels(shape, causal, "float16")
    assert fused == 1 and reduced == (kernels[0] == "half_attention")
    assert names == kernels


def test_causal_blocks_of_the_float16_kernel_read_whole_registers_of_keys():
    mask = np.where(np.tril(np.ones((496, 496))) > 0, 0.0, -np.inf)  # keys padded to 512, not 496
    blocks = causal_blocks(mask, [1, 496, 496], 496, 512, attention_kernel.KEYS)
    assert blocks == [(0, 248, 256), (248, 248, 512)]
