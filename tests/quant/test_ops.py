import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx, onnx_session
from optkit.quant import ops
from optkit.quant.numerics import QuantSpec
from optkit.quant.weights import pack_weight, quantize_rtn


def test_linear_w8a8_int_gemm_equals_reference():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 32)
    w_q = torch.randint(-127, 128, (32, 16), dtype=torch.int8)
    w_scale = torch.rand(16) * 0.01
    x_scale, x_zero = torch.tensor(0.03), torch.tensor(-5, dtype=torch.int8)
    bias = torch.randn(16)
    y = torch.ops.optkit.linear_w8a8(
        x,
        x_scale,
        x_zero,
        w_q,
        w_scale,
        torch.zeros(16, dtype=torch.int8),
        w_q.sum(0, dtype=torch.int32),
        bias,
    )
    xq = torch.clamp(torch.round(x / x_scale) - 5, -128, 127)
    ref = ((xq + 5) * x_scale) @ (w_q.float() * w_scale) + bias
    assert torch.allclose(y, ref, atol=1e-4)


@pytest.mark.parametrize("int_mm", [False, True], ids=["float32-gemms", "torch-int-mm"])
@pytest.mark.parametrize("k", [8, 1024, 1032, 3000])
def test_int8_matmul_is_the_exact_integer_product(monkeypatch, k, int_mm):
    # both ways `int8_matmul` may take (`int_mm_is_fast` picks per CPU); every product at its
    # largest, (-128) * (-128), in some columns: K = 1024 sums to 2^24 exactly in float32, past
    # 1024 the sum runs in chunks
    monkeypatch.setattr(ops, "_INT_MM_FAST", int_mm)
    rng = np.random.default_rng(k)
    a = torch.from_numpy(rng.integers(-128, 128, (9, k)).astype(np.int8))
    b = torch.from_numpy(rng.integers(-128, 128, (k, 5)).astype(np.int8))
    a[0], b[:, 0] = -128, -128
    got = ops.int8_matmul(a, b)
    want = a.numpy().astype(np.int64) @ b.numpy().astype(np.int64)
    assert got.dtype == torch.int32 and np.array_equal(got.numpy(), want)
    assert int(got[0, 0]) == k * 128 * 128


@pytest.mark.parametrize("k", [64, 40])  # 40: a short last group of 8
@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_linear_wq_matches_dequantized_weight_and_onnx(tmp_path, bits, symmetric, k):
    torch.manual_seed(0)
    w = torch.randn(k, 32)  # (K, N)
    qw = quantize_rtn(w, QuantSpec(bits, symmetric, "group", 16))
    buffers = pack_weight(qw)
    assert buffers["w_packed"].numel() == (k * 32 // 2 if bits == 4 else k * 32)
    assert buffers["w_scale"].shape == (-(-k // 16), 32)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in buffers.items():
                self.register_buffer(k, v)
            self.register_buffer("bias", torch.zeros(32))

        def forward(self, x):
            return torch.ops.optkit.linear_wq(
                x, self.w_packed, self.w_scale, self.w_zero, self.bias, bits, 16, symmetric
            )

    x = torch.randn(3, k)
    program = capture(M(), (x,))
    assert torch.allclose(program.run(), x @ qw.dequantized(), atol=1e-4)
    figures = export_onnx(program, tmp_path / "q.onnx")
    model = onnx.load(tmp_path / "q.onnx")
    four_bit = [
        t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    ]
    assert len(four_bit) == (0 if bits == 8 else 1 if symmetric else 2)
    # ONNX Runtime may fuse DQ + MatMul into MatMulNBits, which computes with int8 activations.
    assert figures["max_abs_error"] < 0.05 * float(program.run().abs().max())


def test_conv2d_w8a8_matches_fake_quant_reference(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    w_q = torch.randint(-127, 128, (6, 4, 3, 3), dtype=torch.int8)
    w_scale = torch.rand(6) * 0.01
    xs, xz = torch.tensor(0.02), torch.tensor(0, dtype=torch.int8)
    bias = torch.randn(6)
    y = torch.ops.optkit.conv2d_w8a8(
        x, xs, xz, w_q, w_scale, torch.zeros(6, dtype=torch.int8), bias, [1, 1], [1, 1], [1, 1], 1
    )
    xd = torch.clamp(torch.round(x / xs), -128, 127) * xs
    ref = F.conv2d(xd, w_q.float() * w_scale.reshape(-1, 1, 1, 1), bias, padding=1)
    assert torch.allclose(y, ref, atol=1e-4)

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.ops.optkit.conv2d_w8a8(
                x, xs, xz, w_q, w_scale, torch.zeros(6, dtype=torch.int8), bias, [1, 1], [1, 1], [1, 1], 1
            )

    program = capture(M(), (x,))
    export_onnx(program, tmp_path / "c.onnx")
    session = onnx_session(tmp_path / "c.onnx")
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, y.numpy(), atol=2e-2)
