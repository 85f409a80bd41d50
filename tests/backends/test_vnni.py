"""The int8 tile GEMM (AVX-512 VNNI, and AVX2's `vpmaddwd`, or `vpmaddubsw` for 7-bit weights):
exact against numpy, and used for W8A8 linears and convs. Kernel tests run each arithmetic the
host CPU runs (`arith`), on weights over all that it multiplies exactly."""

import numpy as np
import pytest
from optkit.backends import lower, vnni
from optkit.backends.targets import resolve_target

from optkit.pipeline import PassManager, build_passes
from tests.backends.conftest import (
    host_int8_ariths,
    host_lowers_seven_bit_to_maddubs,
    int8_weights,
    outputs_of,
)

HOST = resolve_target("cpu", num_cores=1)


@pytest.fixture(params=host_int8_ariths(), ids=lambda a: a.key)
def arith(request):
    return request.param


def test_packed_layout():
    w = np.arange(8 * 32, dtype=np.int64).reshape(8, 32).astype(np.int8)
    packed = vnni.pack(w)
    assert packed.shape == (2, 2, 16, 4)
    k, n = 6, 19
    assert packed[n // 16, k // 4, n % 16, k % 4] == w[k, n]


def test_madd_layout_holds_pairs_of_k_per_half_panel():
    w = np.random.default_rng(0).integers(-128, 128, (8, 32)).astype(np.int8)
    packed = vnni.U8S16.pack(w)
    assert packed.shape == (2, 2, 16, 4) and packed.dtype == np.int16
    quads = packed.reshape(2, 2, 4, 16)  # (panel, 4 k) -> (pair, half) x (8 columns x 2 k)
    k, n = 6, 27  # word 1, pair 1 (k 6 and 7), panel 1, half 1 (columns 24-31), column 3 of it
    assert quads[n // 16, k // 4, (k % 4 // 2) * 2 + n % 16 // 8, (n % 8) * 2 + k % 2] == w[k, n]
    assert quads[1, 1, 3, 7] == w[7, 27]


def _compile(funcs):
    import tvm

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=HOST.tvm_target())


def _check_exact(lib, name, m, n, k, arith, seed=0):
    import tvm

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (m, k)).astype(arith.x)
    w = int8_weights(rng, (k, n), arith)
    n16 = -(-n // 16) * 16
    wide = np.concatenate([w, int8_weights(rng, (k, n16 - n), arith)], axis=1)
    out = tvm.runtime.tensor(np.full((m, n), -1, np.int32))
    lib[name](tvm.runtime.tensor(x), tvm.runtime.tensor(arith.pack(wide)), out)
    np.testing.assert_array_equal(out.numpy(), x.astype(np.int64) @ w.astype(np.int64), err_msg=name)


# M and N / 16 that the tiles do not divide (the last tile overlaps), K from one step to long;
# then N that is no multiple of 16 (the packed weight's extra columns are not stored).
REMAINDER_SHAPES = [(m, n, k) for m in (1, 7, 49, 128, 200) for n in (16, 48, 80) for k in (4, 64, 192, 516)]
REMAINDER_SHAPES += [(m, n, k) for m in (1, 49) for n in (3, 24, 344) for k in (4, 72)]


def test_gemm_is_exact_with_remainders(arith):
    names = {f"gemm_{m}x{n}x{k}": (m, n, k) for m, n, k in REMAINDER_SHAPES}
    lib = _compile({name: vnni.gemm_func(*shape, arith=arith) for name, shape in names.items()})
    for name, shape in names.items():
        _check_exact(lib, name, *shape, arith)


@pytest.mark.parametrize(
    "tile",
    [vnni.Tile(6, 4), vnni.Tile(4, 6, rows_inner=False), vnni.Tile(7, 3), vnni.Tile(1, 1), vnni.Tile(15, 1)],
)
def test_each_tile_and_order_is_exact(tile, arith):
    shapes = [(16, 32, 64), (6, 16, 8), (3, 48, 12), (49, 96, 576), (50, 112, 20), (9, 40, 8)]
    lib = _compile(
        {f"gemm{i}": vnni.gemm_func(*shape, tile=tile, arith=arith) for i, shape in enumerate(shapes)}
    )
    for i, shape in enumerate(shapes):
        _check_exact(lib, f"gemm{i}", *shape, arith, seed=i)


@pytest.mark.parametrize(("m", "n", "k"), [(49, 96, 576), (196, 192, 1152), (200, 80, 64), (128, 768, 192)])
def test_tile_fills_the_registers_without_one_row_tiles(m, n, k):
    tile = vnni.choose_tile(m, n, k)
    assert tile.registers <= vnni.VECTOR_REGISTERS
    assert tile.rows >= 4 and tile.rows * tile.panels >= 20


def test_offset_starts_the_accumulators(arith):
    import tvm

    m, n, k = 49, 40, 64  # N = 40: the offset and weight have 48 columns, y 40
    lib = _compile({"main": vnni.gemm_func(m, n, k, offset=True, arith=arith)})
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (m, k)).astype(arith.x)
    w = int8_weights(rng, (k, 48), arith)
    offset = rng.integers(-(2**20), 2**20, 48).astype(np.int32)
    out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
    args = (tvm.runtime.tensor(a) for a in (x, arith.pack(w), offset))
    lib["main"](*args, out)
    want = offset + x.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(out.numpy(), want[:, :n])


def test_epilogue_runs_in_the_write_back(arith):
    import tvm

    # N = 40: two whole panels and one stored lane by lane; parameters per column, per row and
    # scalar, a left operand (subtract from), rounding and casts down to int8.
    m, n, k = 49, 40, 64
    epilogue = vnni.Epilogue(
        steps=(
            ("astype", "float32"),
            ("multiply", 0, False),
            ("add", 1, False),
            ("subtract", 2, True),
            ("maximum", 2, False),
            ("round",),
            ("astype", "int8"),
        ),
        params=((1, n, "float32"), (m, 1, "float32"), (1, 1, "float32")),
        dtype="int8",
    )
    lib = _compile({"main": vnni.gemm_func(m, n, k, offset=True, epilogue=epilogue, arith=arith)})
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (m, k)).astype(arith.x)
    w = int8_weights(rng, (k, 48), arith)
    offset = rng.integers(-(2**12), 2**12, 48).astype(np.int32)
    scale = rng.uniform(1e-4, 2e-4, (1, n)).astype(np.float32)
    row = rng.uniform(-5, 5, (m, 1)).astype(np.float32)
    floor = np.full((1, 1), -100.0, np.float32)
    out = tvm.runtime.tensor(np.zeros((m, n), np.int8))
    args = (tvm.runtime.tensor(a) for a in (x, arith.pack(w), offset, scale, row, floor))
    lib["main"](*args, out)
    acc = (offset + x.astype(np.int64) @ w.astype(np.int64))[:, :n].astype(np.float32)
    want = np.round(np.maximum(floor - (acc * scale + row), floor)).astype(np.int8)
    np.testing.assert_array_equal(out.numpy(), want)


def test_an_int8_residual_is_dequantized_in_the_write_back(arith):
    import tvm

    m, n, k = 21, 32, 16
    zero, scale = -5.0, 0.03
    epilogue = vnni.Epilogue(
        steps=(("astype", "float32"), ("multiply", 0, False), ("add", 1, False)),
        params=((1, 1, "float32"), (m, n, "int8")),
        dtype="float32",
        loads=(None, (zero, scale)),
    )
    lib = _compile({"main": vnni.gemm_func(m, n, k, offset=True, epilogue=epilogue, arith=arith)})
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (m, k)).astype(arith.x)
    w = int8_weights(rng, (k, n), arith)
    offset = rng.integers(-100, 100, n).astype(np.int32)
    skip = rng.integers(-128, 128, (m, n)).astype(np.int8)
    unit = np.full((1, 1), 1e-3, np.float32)
    out = tvm.runtime.tensor(np.zeros((m, n), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, arith.pack(w), offset, unit, skip)), out)
    acc = (offset + x.astype(np.int64) @ w.astype(np.int64)).astype(np.float32)
    want = acc * unit + (skip.astype(np.float32) - np.float32(zero)) * np.float32(scale)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)  # LLVM may fuse a * b + c


def test_the_write_back_can_write_a_padded_image(arith):
    import tvm

    b, h, w, n, k = 2, 5, 6, 40, 32  # a last panel stored lane by lane, unequal pads
    pad = vnni.OutPad(h, w, top=1, bottom=2, left=1, right=1, value=3.0)
    epilogue = vnni.Epilogue(steps=(("astype", "float32"),), params=(), dtype="float32")
    lib = _compile(
        {"main": vnni.gemm_func(b * h * w, n, k, offset=True, epilogue=epilogue, out_pad=pad, arith=arith)}
    )
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (b * h * w, k)).astype(arith.x)
    wt = int8_weights(rng, (k, 48), arith)
    offset = rng.integers(-100, 100, 48).astype(np.int32)
    out = tvm.runtime.tensor(np.zeros(pad.image(b * h * w, n), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, arith.pack(wt), offset)), out)
    acc = (offset + x.astype(np.int64) @ wt.astype(np.int64))[:, :n].astype(np.float32)
    want = np.pad(acc.reshape(b, h, w, n), [(0, 0), (1, 2), (1, 1), (0, 0)], constant_values=3.0)
    np.testing.assert_array_equal(out.numpy(), want)


def test_tiles_follow_the_weight_panels_size():
    assert vnni.choose_tile(128, 768, 192) == vnni.Tile(4, 6, rows_inner=True)  # 6 panels x 192 k: 18 KiB
    assert vnni.choose_tile(49, 96, 576) == vnni.Tile(7, 3, rows_inner=True)  # 49 = 7 x 7, 6 panels = 2 x 3
    assert not vnni.choose_tile(196, 192, 1152).rows_inner  # 6 panels x 1152 k: 108 KiB, past L1
    assert vnni.choose_tile(1, 16, 64) == vnni.Tile(1, 1, rows_inner=True)
    # 2.4 MB of weights past L2, 0.6 MB of activations within it: rows inner, weights read once
    assert vnni.choose_tile(128, 512, 4608).rows_inner
    # neither fits L2: rows inner read the weights once and the activations once per tile column
    assert vnni.choose_tile(1024, 1280, 1280).rows_inner


def test_accumulators_need_no_workspace(arith):
    # a local buffer in TVM's parallel loop becomes a TVMBackendAllocWorkspace call per tile,
    # which cost more than the tile's own work for short K
    lib = _compile({"main": vnni.gemm_func(128, 768, 192, arith=arith)})
    source = lib.mod.inspect_source("ll")
    assert {"vnni": "vpdpbusd", "madd": "pmadd.wd", "maddubs": "pmadd.ub.sw"}[arith.name] in source
    assert "TVMBackendAllocWorkspace" not in source


def test_avx2_tiles_fit_sixteen_registers():
    for m, n, k in [(512, 512, 512), (49, 96, 576), (1, 1000, 1280), (25088, 96, 16)]:
        tile = vnni.choose_tile(m, n, k, 4, width=8)
        assert 2 * tile.panels * (tile.rows + 1) + 1 <= vnni.AVX2_REGISTERS
    assert vnni.choose_tile(512, 512, 512, 4, width=8) == vnni.Tile(6, 1, rows_inner=True)
    # int8 on `vpmaddwd`: 4 weight registers per panel, 4 for pairs and products: 4 rows; on
    # `vpmaddubsw` (7-bit weights, 1 byte each) the same
    assert vnni.choose_tile(128, 512, 4608, 2, width=8) == vnni.Tile(4, 1, rows_inner=True)
    assert vnni.choose_tile(128, 512, 4608, 1, width=8) == vnni.Tile(4, 1, rows_inner=True)
    # an RGB stem's GEMM in float32: 16.9 MB of activations, 4 panels; each row tile's
    # activations stay in L1 while the panels run, rather than streaming once per panel
    assert not vnni.choose_tile(25088, 64, 168, 4, width=8).rows_inner


def test_seven_bit_weights_take_maddubs_and_stay_exact_at_the_extremes():
    import tvm

    seven, eight = np.array([[-64, 64, 3]], np.int8), np.array([[-65, 64, 3]], np.int8)
    assert vnni.for_weight(vnni.U8S16, seven) == vnni.U8S7
    assert vnni.for_weight(vnni.U8S16, eight) == vnni.U8S16
    assert vnni.for_weight(vnni.U8S8, seven) == vnni.U8S8  # VNNI multiplies any int8 exactly
    assert vnni.for_weight(None, seven) is None
    if vnni.U8S7 not in host_int8_ariths():
        return
    # every pair sum at its largest magnitude, 2 * 255 * 64 = 32640 (int16 holds 32767): one
    # column of +64, one of -64, the rest mixed
    m, n, k = 8, 32, 64
    x = np.full((m, k), 255, np.uint8)
    w = np.where(np.arange(n) % 2 == 0, 64, -64) * np.ones((k, 1), np.int64)
    w[:, 2:] *= np.where(np.arange(k)[:, None] % 3 == 0, -1, 1)
    w = w.astype(np.int8)
    out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
    lib = _compile({"main": vnni.gemm_func(m, n, k, arith=vnni.U8S7)})
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(vnni.U8S7.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), x.astype(np.int64) @ w.astype(np.int64))
    assert out.numpy()[0, 0] == 255 * 64 * k


@pytest.mark.skipif(
    not host_lowers_seven_bit_to_maddubs(), reason="7-bit weights run on vpmaddubsw only without VNNI"
)
def test_seven_bit_weights_lower_to_the_maddubs_kernels(conv_program):
    from optkit.backends.kernel_profile import lower_with_kernels

    # without VNNI, ptq's wbits=7 convs and Linear run on `vpmaddubsw` (8-bit ones on `vpmaddwd`)
    quantized = PassManager(build_passes(["ptq"], {"ptq": {"wbits": 7}})).run(conv_program).program
    artifact, kernels = lower_with_kernels(quantized, num_cores=1)
    ariths = {str(f.attrs[vnni.ARITH_ATTR]) for f in kernels.values() if vnni.ARITH_ATTR in f.attrs}
    assert ariths == {vnni.U8S7.key}
    (got,) = artifact.run(*quantized.example_inputs)
    np.testing.assert_allclose(got, outputs_of(quantized)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_w8a8_linear_and_conv_use_vnni(mlp, conv_program):
    # conv_program: 3 -> 8 -> 8 channels, so K = 27 is padded to 28 and N = 8 to 16.
    for program in (mlp, conv_program):
        quantized = PassManager(build_passes(["ptq"])).run(program).program
        artifact = lower(quantized, "cpu", num_cores=1)
        assert artifact.info["vnni_kernels"] >= 1
        (got,) = artifact.run(*quantized.example_inputs)
        np.testing.assert_allclose(got, outputs_of(quantized)[0], rtol=1e-4, atol=1e-4)


def _relax_call(build, *inputs):
    """Run `build(bb, *vars)` (it emits Relax and returns the output) on numpy `inputs`."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=HOST.tvm_target()), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in inputs)).numpy()


def _conv_reference(x_nhwc, w_oihw, stride, pad, fill):
    """int64 conv of an NHWC image padded with `fill`: [B, OH, OW, Co]."""
    top, left, bottom, right = pad
    xp = np.pad(x_nhwc.astype(np.int64), ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    co, _, kh, kw = w_oihw.shape
    oh = (xp.shape[1] - kh) // stride[0] + 1
    ow = (xp.shape[2] - kw) // stride[1] + 1
    out = np.zeros((x_nhwc.shape[0], oh, ow, co), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky : ky + stride[0] * oh : stride[0], kx : kx + stride[1] * ow : stride[1], :]
            out += patch @ w_oihw[:, :, ky, kx].T.astype(np.int64)
    return out


def test_im2col_pads_inside_the_copy():
    # 6 channels (padded to 8 columns per tap), stride 2 x 1, uneven padding filled with 7.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 5, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (5, 6, 3, 2)).astype(np.int8)
    pad, stride = (1, 2, 0, 1), [2, 1]
    cols = _relax_call(lambda bb, v: vnni.im2col(bb, v, 3, 2, stride, [1, 1], pad, 7), x)
    got = cols.astype(np.int64) @ vnni.conv_weight(w).astype(np.int64)
    want = _conv_reference(x, w, stride, pad, 7)
    np.testing.assert_array_equal(got, want.reshape(-1, 5))


def test_an_rgb_image_copies_by_kernel_rows():
    # 3 channels, a 7 x 7 stride-2 stem: each kernel row is 21 bytes, padded to 24.
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, 11, 13, 3)).astype(np.uint8)
    w = rng.integers(-128, 128, (16, 3, 7, 7)).astype(np.int8)
    pad, stride = (3, 3, 3, 3), [2, 2]

    def build(bb, v):
        from tvm import relax

        rows = bb.emit(relax.op.reshape(v, (2, 11, 13 * 3)))
        return vnni.im2col_rows(bb, rows, 3, 7, 7, stride, pad, 128)

    cols = _relax_call(build, x)
    assert cols.shape[1] == 7 * 24
    got = cols.astype(np.int64) @ vnni.conv_weight_rows(w).astype(np.int64)
    np.testing.assert_array_equal(got, _conv_reference(x, w, stride, pad, 128).reshape(-1, 16))


@pytest.mark.parametrize("arith", [vnni.U8S8, vnni.U8S16, vnni.U8S7], ids=lambda a: a.key)
def test_nchw_int8_interleaves_into_shifted_rows(arith):
    x = np.random.default_rng(5).integers(-128, 128, (2, 3, 4, 32)).astype(np.int8)
    got = _relax_call(lambda bb, v: vnni.interleave_channels(bb, v, arith), x)
    want = (x.astype(np.int32) + 128).transpose(0, 2, 3, 1).reshape(2, 4, 96)
    assert got.dtype == np.dtype(arith.x)  # AVX2's GEMM reads its 8-bit values as int16
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("arith", [vnni.U8S8, vnni.U8S16, vnni.U8S7], ids=lambda a: a.key)
def test_an_int8_image_interleaves_padded_to_four_channels(arith):
    x = np.random.default_rng(7).integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    got = _relax_call(lambda bb, v: vnni.interleave_channels(bb, v, arith, (1, 2, 0, 1), -3, 4), x)
    padded = np.pad(x.astype(np.int32), ((0, 0), (0, 1), (1, 0), (2, 1)), constant_values=-3)
    assert got.dtype == np.dtype(arith.x)
    np.testing.assert_array_equal(got, (padded + 128).transpose(0, 2, 3, 1).reshape(2, 5, 8 * 4))


def test_a_float_image_interleaves_into_padded_rows():
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 9)).astype(np.float32)
    got = _relax_call(lambda bb, v: vnni.interleave_channels(bb, v, pad=(1, 3, 2, 0)), x)
    want = np.pad(x, ((0, 0), (0, 0), (1, 2), (3, 0))).transpose(0, 2, 3, 1).reshape(2, 8, 12 * 3)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("arith", [vnni.U8S8, vnni.U8S16, vnni.U8S7], ids=lambda a: a.key)
def test_shifted_activations_take_the_kernels_dtype(arith):
    x = np.array([[-128, -1, 0, 127]], np.int8)
    got = _relax_call(lambda bb, v: vnni.to_unsigned(bb, v, arith), x)
    assert got.dtype == np.dtype(arith.x)
    np.testing.assert_array_equal(got, [[0, 127, 128, 255]])


@pytest.mark.parametrize(("stride", "kernel"), [((1, 1), (3, 3)), ((2, 2), (3, 3)), ((2, 1), (1, 2))])
def test_conv_read_in_place_matches_an_int64_conv(stride, kernel, arith):
    import tvm

    # a padded 2 x 7 x 9 image of 8 channels; 40 output channels (a panel stored lane by lane)
    rng = np.random.default_rng(6)
    (kh, kw), (b, h, w, c, co) = kernel, (2, 7, 9, 8, 40)
    image = rng.integers(0, 256, (b, h, w, c)).astype(arith.x)
    weight = int8_weights(rng, (co, c, kh, kw), arith)
    oh, ow = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
    conv = vnni.Conv(h, w, kh, kw, stride, oh, ow)
    m, k = conv.gemm_shape([b, h, w, c])
    lib = _compile(
        {"main": vnni.gemm_func(m, co, k, vnni.Tile(5, 2), conv=conv, arith=arith)}
    )  # tiles overlap
    cols = vnni.conv_weight(weight)
    wide = np.concatenate([cols, np.zeros((k, 48 - co), np.int8)], axis=1)
    out = tvm.runtime.tensor(np.zeros((m, co), np.int32))
    lib["main"](tvm.runtime.tensor(image), tvm.runtime.tensor(arith.pack(wide)), out)
    want = _conv_reference(image, weight, list(stride), (0, 0, 0, 0), 0)
    np.testing.assert_array_equal(out.numpy(), want.reshape(m, co))
    assert vnni.Conv.of(vnni.gemm_func(m, co, k, conv=conv)) == conv  # recorded for `epilogues.py`
    assert vnni.Conv.of(vnni.gemm_func(m, co, k)) is None


@pytest.mark.skipif(vnni.int8_arith(HOST.tvm_target()) is None, reason="the host CPU has no int8 tile kernel")
@pytest.mark.parametrize(
    ("kernel", "stride", "copied"), [(7, 2, False), (4, 4, True)], ids=["overlapping", "patches"]
)
def test_an_int8_rgb_stem_is_read_in_place_unless_that_widens_k(kernel, stride, copied):
    """A 7 x 7 stride-2 stem (each pixel in ~12 of im2col's rows) reads the 4-channel image in
    place; 4 x 4 patches (each pixel in one row; 12 columns a kernel row copied, 16 in place)
    keep `im2col_rows`."""
    import torch
    from optkit.backends.kernel_profile import lower_with_kernels

    from optkit.ir.capture import capture

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, kernel, stride, kernel // 2 if stride == 2 else 0)
    ).eval()
    x = torch.randn(2, 3, 20, 20)
    program = PassManager(build_passes(["ptq"])).run(capture(model, (x,), name="stem")).program
    artifact, kernels = lower_with_kernels(program, num_cores=1)
    assert any(name.startswith("im2col_rows") for name in kernels) == copied
    (got,) = artifact.run(x)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)
