"""Attention on int16 (AVX-512 VNNI `vpdpwssd`): the kernel against float64, its integer bounds,
and which lowerings take it."""

import math

import numpy as np
import pytest
from optkit.backends import attention_int16, lower, vnni
from optkit.backends.attention_kernel import target_has_fp16
from optkit.backends.targets import host_cpu_config

from optkit.errors import ConfigError
from tests.backends.conftest import (
    attention_block_program,
    attention_inputs,
    attention_reference,
    fused_attention_kernels,
    outputs_of,
    sqnr_db,
)


def _host():
    import tvm

    return tvm.target.Target(host_cpu_config(num_cores=1))


needs_vnni = pytest.mark.skipif(not vnni.target_has_vnni(_host()), reason="this CPU has no AVX-512 VNNI")


def _int16_attention(q, kt, v, mask, scale, keys, block=None):
    """The kernel on float inputs, K and V quantized by `quantized_keys` / `quantized_values`,
    all in one Relax function as `lower` builds it."""
    import tvm
    from tvm import relax

    (b, m, d), n, dv = q.shape, kt.shape[2], v.shape[2]
    inputs = [q, kt, v, *([mask] if mask is not None else [])]
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(a.shape, "float32")) for i, a in enumerate(inputs)]
    rows = block[1] if block else m
    with bb.function("main", params):
        with bb.dataflow():
            operands = [
                *attention_int16.quantized_keys(bb, params[1]),
                *attention_int16.quantized_values(bb, params[2]),
            ]
            mask_batch = 1 if mask is not None else None
            func = attention_int16.int16_attention_func(
                b, m, n, d, dv, scale, keys=keys, mask_batch=mask_batch, block=block
            )
            call = relax.call_tir(
                bb.add_func(func, "int16_attention"),
                [params[0], *operands, *params[3:]],
                relax.TensorType([b, rows, dv], "float32"),
            )
            out = bb.emit_output(call)
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    vm = relax.VirtualMachine(tvm.compile(mod, target=_host()), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in inputs)).numpy()


@needs_vnni
@pytest.mark.parametrize(
    ("b", "m", "n", "d", "dv", "keys", "masked", "block"),
    [
        (4, 256, 256, 32, 32, 256, False, None),  # a UNet's heads of 32
        (6, 72, 224, 64, 64, 197, False, None),  # ViT's 197 tokens: keys padded
        (2, 20, 32, 16, 32, 20, False, None),  # 4-row tiles, fewer keys than a chunk
        (2, 64, 288, 32, 48, 270, False, None),  # a chunk and a partial one; three value registers
        (3, 128, 128, 64, 64, 128, True, None),  # causal mask, and a row masked whole
        (3, 128, 128, 64, 64, 128, True, (64, 64, 128)),  # the second causal block
    ],
    ids=["unet", "vit-padded", "small", "chunks-dv48", "masked", "block"],
)
def test_the_int16_kernel_matches_float64_attention(b, m, n, d, dv, keys, masked, block):
    q, kt, v, mask = attention_inputs(b, m, n, d, dv, masked)
    kt[:, :, 5] = 0.0  # a key of zeros and a value column of zeros: scale 0, no NaN
    v[:, :, 0] = 0.0
    first, rows, _ = block or (0, m, n)
    scale = 1 / math.sqrt(d)
    got = _int16_attention(q, kt, v, mask, scale, keys, block)
    want = attention_reference(q, kt, v, scale, keys, mask)[:, first : first + rows]
    assert np.all(np.isfinite(got))
    assert sqnr_db(got, want) > 50, sqnr_db(got, want)  # 59-63 dB measured: 12-bit Q, K, V and weights
    if masked and first == 0:
        assert np.all(got[:, 3] == 0)


@needs_vnni
def test_the_int16_sums_stay_within_int32_at_the_largest_head_and_chunk():
    # every logit at its largest integer sum (MAX_HEAD x QMAX^2) and every weight at WEIGHT_MAX
    # over two whole chunks of values at QMAX: no int32 sum overflows
    b, m, n, d, dv = 1, 8, 2 * attention_int16.CHUNK, attention_int16.MAX_HEAD, 16
    q = np.full((b, m, d), 3.0, np.float32)
    kt = np.full((b, d, n), -2.0, np.float32)
    v = np.full((b, n, dv), 5.0, np.float32)
    v[:, :, 1] = -5.0
    got = _int16_attention(q, kt, v, None, 1.0, n)
    np.testing.assert_allclose(got[..., 0], 5.0, rtol=1e-6)
    np.testing.assert_allclose(got[..., 1], -5.0, rtol=1e-6)


@needs_vnni
def test_quantized_programs_take_reduced_attention_and_float_ones_keep_float32():
    reduced = "float16" if target_has_fp16(_host()) else "int16"
    for quantized in (False, True):
        program = attention_block_program(quantized)
        artifact = lower(program, "cpu", num_cores=1)
        (got,) = artifact.run(*program.example_inputs)
        want = np.asarray(outputs_of(program)[0])
        assert artifact.info["fused_attentions"] == 1
        assert artifact.info["reduced_attentions"] == int(quantized)
        assert artifact.info["attention_precision"] == (reduced if quantized else "float32")
        assert sqnr_db(np.asarray(got), want) > (40 if quantized else 80)

    forced = lower(attention_block_program(False), "cpu", num_cores=1, attention_precision="int16")
    assert forced.info["reduced_attentions"] == 1 and forced.info["attention_precision"] == "int16"
    (got,) = forced.run(*attention_block_program(False).example_inputs)
    assert sqnr_db(np.asarray(got), np.asarray(outputs_of(attention_block_program(False))[0])) > 45


def test_int16_attention_needs_avx512_vnni(monkeypatch):
    monkeypatch.setattr(vnni, "target_has_vnni", lambda _target: False)
    with pytest.raises(ConfigError, match="AVX-512 VNNI"):
        lower(attention_block_program(False), "cpu", attention_precision="int16")


@pytest.mark.parametrize(
    ("shape", "causal", "kernels"),
    [
        ((1, 2, 160, 32), False, ["int16_attention"]),
        ((1, 2, 20, 32), False, ["int16_attention"]),  # 20 keys, padded to 32
        ((1, 2, 160, 8), False, ["attention"]),  # heads of 8: half an int32 register of values
        ((1, 2, 512, 32), True, ["int16_attention"] * 8),  # causal blocks of 64 rows
    ],
    ids=["int16", "few-keys", "narrow-heads", "causal-blocks"],
)
def test_which_attentions_take_the_int16_kernel(shape, causal, kernels):
    fused, reduced, names = fused_attention_kernels(shape, causal, "int16")
    assert fused == 1 and reduced == (kernels[0] == "int16_attention")
    assert names == kernels


def test_int16_heads_fit_whole_pairs_and_registers():
    assert attention_int16.fits(32, 32) and attention_int16.fits(256, 16)
    assert not attention_int16.fits(31, 32)  # pairs of the head dim
    assert not attention_int16.fits(512, 32)  # a logit's int32 sum could overflow
    assert not attention_int16.fits(32, 40)  # value columns in whole registers
