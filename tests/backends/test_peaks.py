"""Peak micro-kernels (exact results at tiny iteration counts), kernel op counts, and the per-kernel
profile of a tiny model. Nothing here asserts on a time: only on what was computed and counted."""

import numpy as np
import pytest
from optkit.backends import kernel_profile as kp
from optkit.backends import peaks, vnni
from optkit.backends.targets import resolve_target

from optkit.errors import ConfigError, UnknownNameError
from optkit.pipeline import PassManager, build_passes

HOST = peaks.cpu_info()


def _has(isa):
    return all(f in HOST.flags for f in isa.flags)


FMA = [
    pytest.param(i, marks=pytest.mark.skipif(not _has(i), reason=f"no {i.name}"))
    for i in peaks.FMA_ISAS.values()
]
DOT = [
    pytest.param(i, marks=pytest.mark.skipif(not _has(i), reason=f"no {i.name}"))
    for i in peaks.DOT_ISAS.values()
    if i.name not in peaks.MADD_ISAS  # `madd_func`, below
]


def _tensors(*arrays):
    import tvm

    return [tvm.runtime.tensor(a) for a in arrays]


@pytest.mark.parametrize("isa", FMA, ids=lambda i: i.name)
def test_fma_kernel_does_n_fused_multiply_adds(isa):
    fn = peaks.compile_kernel(peaks.fma_func(isa))
    shape = (isa.accumulators, isa.lanes)
    init = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 9) - 4
    mul = np.full(isa.lanes, 0.5, np.float32)  # powers of two: every step is exact in float32
    add = (np.arange(isa.lanes, dtype=np.float32) % 4) * 0.25
    for n in (0, 1, 3):
        init_t, mul_t, add_t, out = _tensors(init, mul, add, np.zeros(shape, np.float32))
        fn(init_t, mul_t, add_t, out, n)
        np.testing.assert_array_equal(out.numpy(), peaks.fma_reference(init, mul, add, n))


@pytest.mark.parametrize("isa", DOT, ids=lambda i: i.name)
def test_dot_kernel_adds_n_times_the_lane_dot_products(isa):
    fn = peaks.compile_kernel(peaks.dot_func(isa))
    shape, width = (isa.accumulators, isa.lanes), isa.lanes * peaks.DOT_GROUP
    rng = np.random.default_rng(0)
    init = rng.integers(-1000, 1000, shape).astype(np.int32)
    a = rng.integers(0, 256, width).astype(np.uint8)
    b = rng.integers(-128, 128, width).astype(np.int8)
    for n in (0, 1, 5):
        init_t, a_t, b_t, out = _tensors(init, a, b, np.zeros(shape, np.int32))
        fn(init_t, a_t, b_t, out, n)
        expected = init.astype(np.int64) + n * (a.astype(np.int64) * b).reshape(isa.lanes, 4).sum(axis=1)
        np.testing.assert_array_equal(out.numpy(), expected)
        np.testing.assert_array_equal(out.numpy(), peaks.dot_reference(init, a, b, n))


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_micro_kernel_checks_each_call(kind):
    isa = peaks.best_isa(peaks.FMA_ISAS if kind == "fp32" else peaks.DOT_ISAS, HOST)
    if isa is None:
        pytest.skip(f"no {kind} peak kernel for this CPU")
    kernel = peaks.MicroKernel(kind, isa)
    for n in (0, 7, 1000):
        kernel.run(n)  # raises BackendError on a wrong result
        np.testing.assert_array_equal(kernel.result(n), kernel.reference(n))
    with pytest.raises(ConfigError, match="iterations"):
        kernel.run(kernel.max_iterations + 1)


def test_measure_peaks_reports_the_widest_isa_the_flags_allow():
    got = peaks.measure_peaks(seconds=0.002, repeats=2)
    assert got.fp32.isa == peaks.best_isa(peaks.FMA_ISAS, HOST).name
    assert got.fp32.gops > 0 and len(got.fp32.samples) == 2
    assert got.fp32.ops_per_iter == 2 * got.fp32.lanes * got.fp32.accumulators
    dot = peaks.best_isa(peaks.DOT_ISAS, HOST)
    assert (got.int8.isa if got.int8 else None) == (dot.name if dot else None)
    assert got.to_dict()["cpu"] == HOST.name


def test_isa_choice_follows_the_cpu_flags():
    avx2_only = peaks.CpuInfo("test", "haswell", frozenset({"avx2", "fma"}))
    assert peaks.best_isa(peaks.FMA_ISAS, avx2_only).name == "avx2"
    assert peaks.best_isa(peaks.DOT_ISAS, avx2_only).name == "avx2-maddubs"  # vnni.U8S7's instructions
    assert peaks.best_isa(peaks.FMA_ISAS, peaks.CpuInfo("old", "nehalem", frozenset({"sse4_2"}))) is None
    vnni256 = peaks.CpuInfo("test", "alderlake", frozenset({"avx2", "fma", "avx_vnni"}))
    assert peaks.best_isa(peaks.DOT_ISAS, vnni256).name == "avx-vnni"


def test_cpu_flags_come_from_the_first_flags_line(tmp_path):
    from optkit.backends.targets import _mcpu_from_cpuinfo

    from optkit.host import cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse4_2", "avx2", "fma"}
    assert peaks.cpu_info(cpuinfo).flags == cpu_flags(cpuinfo)
    assert _mcpu_from_cpuinfo(cpuinfo) == "haswell"  # LLVM's fallback name when it cannot detect
    assert (
        cpu_flags(tmp_path / "missing") == frozenset()
        and _mcpu_from_cpuinfo(tmp_path / "missing") == "generic"
    )


@pytest.mark.skipif(not _has(peaks.FMA_ISAS["avx2"]), reason="no AVX2")
def test_int8_peak_without_vnni_is_avx2s_maddubs():
    got = peaks.measure_peaks(
        seconds=0.002, repeats=1, cpu=peaks.CpuInfo("no-vnni", "haswell", frozenset({"avx2", "fma"}))
    )
    assert got.fp32.isa == "avx2" and got.int8.isa == "avx2-maddubs"
    assert got.int8.ops_per_iter == 2 * 4 * 8 * 6  # 6 vpmaddubsw of 8 lanes x 4 products
    pair = peaks.measure_peaks(seconds=0.002, repeats=1, dot_isa="avx2-madd", cpu=HOST)
    assert pair.int8.isa == "avx2-madd" and pair.int8.ops_per_iter == 2 * 2 * 8 * 8  # 8 vpmaddwd x 2


@pytest.mark.skipif(not _has(peaks.FMA_ISAS["avx2"]), reason="no AVX2")
def test_int8_peak_is_unavailable_with_a_reason_without_avx2():
    cpu = peaks.CpuInfo("old", "x86-64", frozenset({"fma", "avx512f"}))  # flags for the FMA kernel only
    got = peaks.measure_peaks(seconds=0.002, repeats=1, fma_isa="avx2", cpu=cpu)
    assert got.int8 is None and "AVX2" in got.int8_unavailable and got.peak_for("int8") is None


@pytest.mark.skipif(not _has(peaks.DOT_ISAS["avx2-madd"]), reason="no AVX2")
@pytest.mark.parametrize("name", peaks.MADD_ISAS)
def test_madd_kernels_add_n_times_their_lane_products(name):
    isa = peaks.DOT_ISAS[name]
    group, (a_dtype, b_dtype) = peaks.madd_group(isa), peaks.madd_dtypes(isa)
    assert (group, a_dtype) == ((2, "int16") if name == "avx2-madd" else (4, "uint8"))
    fn = peaks.compile_kernel(peaks.madd_func(isa))
    shape, width = (isa.accumulators, isa.lanes), isa.lanes * group
    rng = np.random.default_rng(1)
    init = rng.integers(-1000, 1000, shape).astype(np.int32)
    # full-range activations; weights of 7 bits, whose u8 x s8 pair sums fit int16
    a = rng.integers(0, 256, (peaks.MADD_ROWS, width)).astype(a_dtype)
    b = rng.integers(-64, 65, (isa.accumulators // peaks.MADD_ROWS, width)).astype(b_dtype)
    for n in (0, 1, 5):
        args = _tensors(init, a, b, np.zeros(width, a_dtype), np.zeros(shape, np.int32))
        fn(*args, n)
        # accumulator j: a[j % rows] times b[j // rows], 8 lanes of `group` products each
        acc, rows = np.arange(isa.accumulators), peaks.MADD_ROWS
        sums = (a[acc % rows].astype(np.int64) * b[acc // rows]).reshape(*shape, group).sum(axis=2)
        np.testing.assert_array_equal(args[-1].numpy(), init + n * sums)
        np.testing.assert_array_equal(args[-1].numpy(), peaks.dot_reference(init, a, b, n, group=group))


def test_unknown_isa_is_refused_with_the_known_names():
    with pytest.raises(UnknownNameError, match="avx512"):
        peaks.measure_peaks(fma_isa="sse9")


# -- operation counts --------------------------------------------------------------------------


def _matmul_func(m, n, k):
    from tvm import te

    a, b = te.placeholder((m, k), name="a"), te.placeholder((k, n), name="b")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
    return te.create_prim_func([a, b, c])


def _conv_func(batch, cin, cout, size, kernel):
    from tvm import te, topi

    x = te.placeholder((batch, cin, size, size), name="x")
    w = te.placeholder((cout, cin, kernel, kernel), name="w")
    return te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 0, 1)])


def test_matmul_and_conv_ops_count_a_multiply_add_as_two():
    assert kp.kernel_ops(_matmul_func(8, 16, 32), []) == 2 * 8 * 16 * 32
    out = 10 - 3 + 1
    assert kp.kernel_ops(_conv_func(2, 4, 8, 10, 3), []) == 2 * 2 * 8 * out * out * 4 * 3 * 3


def test_vnni_kernel_ops_come_from_its_shapes():
    m, n, k = 8, 32, 64
    shapes = [((m, k), "uint8"), ((n // 16, k // 4, 16, 4), "int8"), ((m, n), "int32")]
    assert kp.vnni_ops(shapes) == 2 * m * n * k
    assert kp.kernel_ops(vnni.gemm_func(m, n, k), shapes) == 2 * m * n * k
    madd = [((m, k), "int16"), ((n // 16, k // 4, 16, 4), "int16"), ((m, n), "int32")]  # AVX2's
    assert kp.kernel_ops(vnni.gemm_func(m, n, k, arith=vnni.U8S16), madd) == 2 * m * n * k
    # a 3 x 3 conv read in place from a padded 2 x 4 x 6 x 16 image: 2 x 2 x 4 output pixels
    conv = vnni.Conv(4, 6, 3, 3, (1, 1), 2, 4)
    image = [((2, 4, 6, 16), "uint8"), ((n // 16, 9 * 16 // 4, 16, 4), "int8"), ((16, n), "int32")]
    assert kp.kernel_ops(vnni.gemm_func(16, n, 144, conv=conv), image) == 2 * 16 * n * 144
    # a batched GEMM (Winograd's 16 products): x, w and y hold all products, each counted once
    batched = [((16 * m, k), "float32"), ((16 * n // 16, k, 16, 1), "float32"), ((16 * m, n), "float32")]
    assert kp.kernel_ops(vnni.gemm_func(m, n, k, arith=vnni.F32, batch=16), batched) == 16 * 2 * m * n * k


def test_float16_attention_ops_count_its_two_matmuls_over_the_keys_it_reads():
    from optkit.backends.attention_kernel import half_attention_func

    shapes = [
        ((2, 64, 32), "float32"),
        ((2, 32, 96), "float16"),
        ((2, 96, 64), "float16"),
        ((2, 32, 64), "float32"),
    ]
    func = half_attention_func(2, 64, 96, 32, 64, block=(32, 32, 64))  # rows 32-63 over 64 keys
    assert kp.kernel_ops(func, shapes) == 2 * 2 * 32 * 64 * (32 + 64)


def test_kernel_classes():
    assert kp.kernel_family("fused_packed_conv2d_add_relu") == "conv"
    assert kp.kernel_family("fused_depthwise_conv2d_nhwc_add") == "depthwise"
    assert kp.kernel_family("fused_vnni_gemm1_subtract4") == "gemm"
    assert kp.kernel_family("packed_matmul3") == "gemm"
    assert kp.kernel_family("fast_softmax") == "other"
    assert [kp.precision_of([d]) for d in ("uint8", "int8", "float32", "int32", "int64")] == [
        "int8",
        "int8",
        "fp32",
        "int32",
        "other",
    ]
    assert kp.precision_of(["float32", "float16", "float16", "float32"]) == "fp16"  # float16 attention
    assert kp.precision_of(["int8", "float32", "float32"]) == "fp32"  # a W8A8 depthwise conv
    assert kp.precision_of(["int16", "int16", "int32"]) == "int8"  # AVX2's int8 GEMM, 8-bit values in int16
    assert (
        kp.precision_of(["float32", "uint32", "float32", "uint32", "float32", "float32"]) == "int16"
    )  # int16 attention


# -- the profile of a tiny model -----------------------------------------------------------------


def _fake_peaks(fp32=100.0, int8=400.0):
    def peak(kind, gops):
        return peaks.Peak(kind, "test", 16, 1, 32, 1, gops, (gops,))

    return peaks.CpuPeaks(peaks.CpuInfo("test", "test", frozenset()), peak("fp32", fp32), peak("int8", int8))


def test_conv_ops_count_the_reduction_not_the_epilogue():
    import torch
    from torch import nn

    from optkit.ir.capture import capture

    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32)
    )
    _, funcs = kp.lower_with_kernels(capture(model.eval(), (torch.randn(2, 16, 14, 14),)), num_cores=1)
    volumes = {name: kp.reduction_volume(f.script()) for name, f in funcs.items()}
    dense = next(v for n, v in volumes.items() if "packed_conv2d" in n)
    depthwise = next(v for n, v in volumes.items() if "depthwise" in n)
    assert dense == 2 * 14 * 14 * 32 * 16 * 9  # the bias and ReLU in its write-back add nothing
    assert depthwise == 2 * 14 * 14 * 32 * 9


def test_profile_of_a_tiny_mlp(mlp):
    # mlp: Linear(32, 64) -> GELU -> Linear(64, 16) on a (4, 32) batch
    profile = kp.profile_kernels(mlp, warmup=0, repeats=2, model_repeats=1)
    kernels = profile.kernels
    assert kernels and all(k.calls >= 1 and k.ms_per_call > 0 and k.in_model_ms > 0 for k in kernels)
    assert profile.in_model_ms == pytest.approx(sum(k.in_model_ms for k in kernels))
    assert [k.total_ms for k in kernels] == sorted((k.total_ms for k in kernels), reverse=True)
    assert len(profile.top(5)) == min(5, len(kernels))
    assert sum(profile.share(k) for k in kernels) == pytest.approx(1.0)
    gemms = [k for k in kernels if k.family == "gemm"]
    matmul_ops = 2 * 4 * 32 * 64 + 2 * 4 * 64 * 16
    # the GELU and bias fused into the first GEMM's write-back are not counted as GEMM work
    assert sum(k.ops * k.calls for k in gemms) == matmul_ops
    assert all(k.precision == "fp32" for k in kernels)
    fake = _fake_peaks()
    for k in gemms:
        assert k.percent_of_peak(fake) == pytest.approx(k.gops)  # 100 GFLOP/s peak: % == GFLOP/s
    assert all(k.percent_of_peak(fake) is None for k in kernels if k.family == "other")
    assert set(profile.family_rate(fake)) == {"fp32"}


@pytest.mark.skipif(vnni.int8_arith(resolve_target("cpu").tvm_target()) is None, reason="no int8 tile kernel")
def test_profile_of_a_w8a8_mlp_counts_its_vnni_gemms_as_int8(mlp):
    quantized = PassManager(build_passes(["ptq", "dce"])).run(mlp).program
    profile = kp.profile_kernels(quantized, warmup=0, repeats=1, model_repeats=1)
    int8 = [k for k in profile.kernels if k.precision == "int8" and k.family == "gemm"]
    assert sum(k.ops * k.calls for k in int8) == 2 * 4 * 32 * 64 + 2 * 4 * 64 * 16
    fake = _fake_peaks(int8=200.0)
    assert all(k.percent_of_peak(fake) == pytest.approx(k.gops / 2) for k in int8)
