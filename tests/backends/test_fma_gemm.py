"""The tile GEMM in float32 (`vnni.F32`): against numpy, and used for float Linears on AVX-512."""

import numpy as np
import pytest
import torch
from optkit.backends import lower, vnni
from optkit.backends.kernel_profile import lower_with_kernels
from optkit.backends.targets import resolve_target
from torch import nn

from optkit.errors import BackendError
from optkit.ir.capture import capture
from tests.backends.conftest import host_float_tiles, outputs_of

HOST = resolve_target("cpu", num_cores=1)


def _compile(funcs):
    import tvm

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=HOST.tvm_target())


def _check(lib, name, m, n, k, seed=0, offset=False):
    import tvm

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    n16 = -(-n // 16) * 16
    w = rng.standard_normal((k, n16)).astype(np.float32)  # columns past N: computed, never stored
    c = rng.standard_normal(n16).astype(np.float32)
    out = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32))
    args = [x, vnni.pack(w, 1)] + ([c] if offset else [])
    lib[name](*(tvm.runtime.tensor(a) for a in args), out)
    want = x.astype(np.float64) @ w[:, :n].astype(np.float64) + (c[:n] if offset else 0)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4 * np.sqrt(k), err_msg=name)


def test_float_packed_layout():
    w = np.arange(3 * 32, dtype=np.float32).reshape(3, 32)
    packed = vnni.pack(w, 1)
    assert packed.shape == (2, 3, 16, 1)
    assert packed[19 // 16, 2, 19 % 16, 0] == w[2, 19]


# M and N / 16 that the tiles do not divide, N no multiple of 16, K of one step up to long
SHAPES = [(m, n, k) for m in (1, 7, 64, 200) for n in (16, 40, 344) for k in (1, 3, 64, 517)]


def test_float_gemm_matches_numpy_with_remainders():
    names = {f"gemm_{m}x{n}x{k}": (m, n, k) for m, n, k in SHAPES}
    lib = _compile({name: vnni.gemm_func(*shape, arith=vnni.F32) for name, shape in names.items()})
    for name, shape in names.items():
        _check(lib, name, *shape)


def test_a_batched_float_gemm_computes_each_product_with_its_own_weights():
    """`batch` products one after another in x, the packed weights and y (`winograd.py`'s 16)."""
    import tvm

    batch, m, n, k = 3, 13, 40, 20
    lib = _compile({"batched": vnni.gemm_func(m, n, k, arith=vnni.F32, batch=batch)})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, m, k)).astype(np.float32)
    w = rng.standard_normal((batch, k, 48)).astype(np.float32)  # columns past N: never stored
    packed = np.concatenate([vnni.pack(w[i], 1) for i in range(batch)])
    out = tvm.runtime.tensor(np.full((batch * m, n), np.nan, np.float32))
    lib["batched"](tvm.runtime.tensor(x.reshape(batch * m, k)), tvm.runtime.tensor(packed), out)
    want = np.einsum("bmk,bkn->bmn", x.astype(np.float64), w[:, :, :n].astype(np.float64))
    np.testing.assert_allclose(out.numpy().reshape(batch, m, n), want, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    with pytest.raises(BackendError, match="batched"):
        vnni.gemm_func(m, n, k, arith=vnni.F32, batch=batch, offset=True)


@pytest.mark.parametrize("tile", [vnni.Tile(6, 4), vnni.Tile(4, 6, rows_inner=False), vnni.Tile(12, 2)])
def test_each_float_tile_and_order_with_an_offset(tile):
    shapes = [(64, 512, 64), (13, 96, 40), (50, 112, 20)]
    funcs = {
        f"g{i}": vnni.gemm_func(*s, tile=tile, offset=True, arith=vnni.F32) for i, s in enumerate(shapes)
    }
    lib = _compile(funcs)
    for i, shape in enumerate(shapes):
        _check(lib, f"g{i}", *shape, seed=i, offset=True)


def test_rows_inner_prefetches_the_next_columns_weights_without_a_workspace():
    # 24 float32 accumulators (6 rows x 4 panels): 1.5 KiB, in six buffers under TVM's 1 KiB
    # stack limit; rows inner over 8 tile columns, each prefetching the next column's panels
    tile = vnni.Tile(6, 4, rows_inner=True)
    lib = _compile({"main": vnni.gemm_func(64, 512, 256, tile=tile, arith=vnni.F32)})
    source = lib.mod.inspect_source("ll")
    assert "llvm.prefetch" in source and "llvm.fmuladd.v16f32" in source
    assert "TVMBackendAllocWorkspace" not in source
    one_column = _compile({"main": vnni.gemm_func(64, 64, 256, tile=tile, arith=vnni.F32)})
    assert "llvm.prefetch" not in one_column.mod.inspect_source("ll")  # no next column


def test_tiles_keep_weights_past_l2_from_being_read_once_per_row_tile():
    # a Llama down projection at 512 tokens in float32: 2.75 MiB of weights and of activations,
    # neither within L2; rows inner read the weights once and the activations once per column
    assert vnni.choose_tile(512, 512, 1408, 4).rows_inner
    assert not vnni.choose_tile(512, 512, 512, 4).rows_inner  # 1 MiB of weights: from L2 per row tile


@pytest.mark.skipif(host_float_tiles() is None, reason="the host CPU has no AVX-512 or AVX2 FMA")
def test_float_linears_use_the_fma_kernel_with_their_epilogues():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down, self.narrow = nn.Linear(32, 96), nn.Linear(96, 32), nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.down(torch.relu(self.up(x)))
            return self.narrow(x)

    torch.manual_seed(0)
    program = capture(Block().eval(), (torch.randn(3, 10, 32),), name="fma_block")
    artifact = lower(program, "cpu", num_cores=1)
    # up (bias, ReLU) and down (bias, residual) in the FMA kernel with their epilogues; the
    # 4-wide layer, narrower than a register, on the generic schedule
    assert artifact.info["fma_kernels"] == 2 and artifact.info["vnni_epilogues"] == 2
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(host_float_tiles() is None, reason="the host CPU has no AVX-512 or AVX2 FMA")
def test_pointwise_convs_run_as_fma_gemms_with_their_epilogues():
    class InvertedResidual(nn.Module):
        """MobileNetV2's block after a stem conv: NHWC activations, 1 x 1 convs around a
        depthwise one, ReLU6, a residual."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 2, 1)
            self.expand, self.project = nn.Conv2d(16, 64, 1), nn.Conv2d(64, 16, 1)
            self.depthwise = nn.Conv2d(64, 64, 3, 1, 1, groups=64)
            self.strided = nn.Conv2d(16, 32, 1, 2)  # strided: stays a scheduled conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            y = nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(x))))
            return self.strided(x + self.project(y))

    torch.manual_seed(0)
    program = capture(InvertedResidual().eval(), (torch.randn(2, 3, 18, 14),), name="inverted_residual")
    artifact = lower(program, "cpu", num_cores=1)
    # expand (bias, ReLU6) and project (bias, residual) on the FMA kernel with their epilogues;
    # on AVX-512 the stem (reading the NCHW image in place) and the strided 1 x 1 conv stay
    # scheduled, on AVX2 they take the tile kernel too (the stem by kernel rows)
    tiles = 2 if host_float_tiles().width == vnni.LANES else 4
    assert artifact.info["fma_kernels"] == tiles and artifact.info["vnni_epilogues"] == tiles
    assert artifact.info["packed_convs"] == 4 - tiles and artifact.info["depthwise_convs"] == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    vnni.float_arith(HOST.tvm_target()) != vnni.F32_AVX2, reason="the host CPU is no AVX2-only one"
)
def test_avx2_runs_every_float_conv_on_the_tile_kernel():
    class Stem(nn.Module):
        """A ResNet's stem and first block: a 7 x 7 stride-2 RGB conv, 3 x 3 convs padded and
        strided, a residual."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 7, 2, 3)
            self.a, self.b = nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 32, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            return self.b(torch.relu(x + self.a(x)))

    torch.manual_seed(0)
    program = capture(Stem().eval(), (torch.randn(2, 3, 23, 20),), name="stem")
    artifact, kernels = lower_with_kernels(program, num_cores=1)
    assert artifact.info["fma_kernels"] == 3 and artifact.info["packed_convs"] == 0
    # the stem reads its padded NHWC image by kernel rows: no im2col copy
    assert not any(name.startswith("im2col") for name in kernels)
    assert sum(bool((g := vnni.Conv.of(f)) and g.runs) for f in kernels.values()) == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kernel, stride, pad",
    [((7, 7), (2, 2), (3, 3, 3, 3)), ((3, 5), (2, 1), (1, 0, 2, 3))],
    ids=["7x7", "3x5"],
)
def test_a_conv_read_by_kernel_row_runs_matches_torch(kernel, stride, pad):
    """`Conv.runs`: each kernel row's KW taps of 3 channels are one run of the NHWC row, K in
    HWIO order, on both tile arithmetics."""
    import tvm

    (kh, kw), (top, left, bottom, right) = kernel, pad
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    w = rng.standard_normal((20, 3, kh, kw)).astype(np.float32)
    image = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).transpose(0, 2, 3, 1).copy()
    height, width = image.shape[1:3]
    oh, ow = (height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1
    geometry = vnni.Conv(height, width, kh, kw, stride, oh, ow, runs=True)
    want = nn.functional.conv2d(
        nn.functional.pad(torch.from_numpy(x), (left, right, top, bottom)), torch.from_numpy(w), stride=stride
    )
    want = want.permute(0, 2, 3, 1).reshape(-1, 20).numpy()
    packed = vnni.pack(np.pad(w.transpose(2, 3, 1, 0).reshape(kh * kw * 3, 20), ((0, 0), (0, 12))), 1)
    for arith in (vnni.F32, vnni.F32_AVX2):
        funcs = {"g": vnni.gemm_func(2 * oh * ow, 20, kh * kw * 3, conv=geometry, arith=arith)}
        assert vnni.Conv.of(funcs["g"]) == geometry  # recorded for `epilogues.py`'s rebuild
        out = tvm.runtime.tensor(np.full((2 * oh * ow, 20), np.nan, np.float32))
        _compile(funcs)["g"](tvm.runtime.tensor(image), tvm.runtime.tensor(packed), out)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4, err_msg=arith.key)
