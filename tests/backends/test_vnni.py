"""The AVX-512 VNNI int8 GEMM: exact against numpy, and used for W8A8 linears and convs."""

import numpy as np
import pytest
from optkit.backends import lower, vnni
from optkit.backends.targets import resolve_target

from optkit.pipeline import PassManager, build_passes
from tests.backends.conftest import outputs_of

HOST = resolve_target("cpu", num_cores=1)
pytestmark = pytest.mark.skipif(
    not vnni.target_has_vnni(HOST.tvm_target()), reason="the host CPU has no AVX-512 VNNI"
)


def test_packed_layout():
    w = np.arange(8 * 32, dtype=np.int64).reshape(8, 32).astype(np.int8)
    packed = vnni.pack(w)
    assert packed.shape == (2, 2, 16, 4)
    k, n = 6, 19
    assert packed[n // 16, k // 4, n % 16, k % 4] == w[k, n]


@pytest.mark.parametrize(("m", "n", "k"), [(16, 32, 64), (6, 16, 8), (3, 48, 12)])
def test_gemm_is_exact(m, n, k):
    import tvm

    lib = tvm.compile(
        tvm.IRModule({"main": vnni.gemm_func(m, n, k).with_attr("global_symbol", "main")}),
        target=HOST.tvm_target(),
    ).jit()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(vnni.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), x.astype(np.int64) @ w.astype(np.int64))


@pytest.mark.slow
def test_w8a8_linear_and_conv_use_vnni(mlp, conv_program):
    # conv_program: 3 -> 8 -> 8 channels, so K = 27 is padded to 28 and N = 8 to 16.
    for program in (mlp, conv_program):
        quantized = PassManager(build_passes(["ptq"])).run(program).program
        artifact = lower(quantized, "cpu", num_cores=1)
        assert artifact.info["vnni_kernels"] >= 1
        (got,) = artifact.run(*quantized.example_inputs)
        np.testing.assert_allclose(got, outputs_of(quantized)[0], rtol=1e-4, atol=1e-4)
