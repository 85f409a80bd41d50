"""Weight packing: panel layouts, and packed matmul / conv kernels that match PyTorch."""

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.packing import pack_conv, pack_dense, panel_width
from torch import nn

from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes
from tests.backends.conftest import float_matmul_kernels, outputs_of


def test_dense_panels_hold_the_weight():
    w = np.arange(6 * 64, dtype=np.float32).reshape(6, 64)
    packed = pack_dense(w, 32)
    assert packed.shape == (2, 6, 32)
    k, n = 5, 45
    assert packed[n // 32, k, n % 32] == w[k, n]


def test_conv_panels_hold_the_weight():
    w = np.random.default_rng(0).standard_normal((32, 3, 3, 2)).astype(np.float32)
    packed = pack_conv(w, 16)
    assert packed.shape == (2, 3, 3, 2, 16)
    assert packed[21 // 16, 2, 1, 0, 21 % 16] == w[21, 2, 1, 0]


def test_panel_width_is_the_widest_divisor():
    assert [panel_width(n) for n in (64, 48, 40, 12)] == [32, 16, 8, None]


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 16, 3, padding=1),
        nn.Conv2d(4, 32, 3, stride=2, padding=(1, 2)),
        nn.Conv2d(4, 16, 3, dilation=2, padding=2, bias=False),
        nn.Conv2d(4, 8, 1),
    ],
    ids=["pad1", "stride2-asym-pad", "dilation2", "pointwise"],
)
def test_packed_conv_matches_torch(conv):
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    program = capture(model, (torch.randn(2, 4, 9, 9),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["packed_convs"] == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "packed"),
    [(nn.ConvTranspose2d(8, 4, 2, stride=2), 1), (nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1), 0)],
    ids=["kernel-equals-stride", "overlapping"],
)
def test_transposed_conv_matches_torch(layer, packed):
    # Kernel == stride (no overlap): a packed matmul per input pixel; otherwise TVM's own kernel.
    torch.manual_seed(0)
    program = capture(nn.Sequential(layer, nn.GELU()).eval(), (torch.randn(2, 8, 5, 6),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["packed_matmuls"] == packed
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


def test_nhwc_convs_on_narrow_images_match_torch(scheduled_float_matmuls):
    # After the first conv the activations are NHWC. A 7-pixel image row splits by no register
    # tile height, so the 3 x 3 convs tile their flattened pixels (`packed_conv2d_rows`; 49
    # pixels, computed as 56 rows of which the last 7 are not stored); their
    # weights (2.3 MiB) outgrow the cache and the pixels (49, then 16) are fewer than the
    # output channels (256), so their schedules sweep the weight panel by panel.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 256, 1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, 2, 1),
    ).eval()
    program = capture(model, (torch.randn(1, 4, 7, 7),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["packed_convs"] == 3
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-4)


def test_big_weight_with_more_rows_than_columns_matches_torch():
    # A Llama MLP's down projection: 2.75 MiB of weight, above the cache, so the GEMM sweeps it
    # panel by panel although its 1,024 rows outnumber its 512 columns.
    torch.manual_seed(0)
    program = capture(nn.Linear(1408, 512).eval(), (torch.randn(1024, 1408),))
    artifact = lower(program, "cpu", num_cores=1)
    assert float_matmul_kernels(artifact.info) == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-4)


class _Scores(nn.Module):
    # Not a softmax: a softmax attention takes the fused kernel (`attention.py`) instead.
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(q @ k.transpose(-1, -2) / 4.0) @ v


def test_activation_matmul_of_odd_width_is_padded_and_matches_torch():
    # 19 tokens: no vector width divides the score matrix's rows, so the keys get zero columns.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 19, 16) for _ in range(3))
    program = capture(_Scores().eval(), (q, k, v))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["padded_matmuls"] == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


def test_unpackable_layers_keep_the_generic_kernels():
    # 5 output channels: no panel width divides it; grouped conv: not packed. Both still match.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    program = capture(model, (torch.randn(2, 4, 8, 8),))
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["packed_convs"] == 0 and artifact.info["packed_matmuls"] == 0
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_int8_panel_kernels_without_int8_tiles(mlp, conv_program, monkeypatch):
    # On a CPU without AVX2 the int8 matmul and conv use the int32-accumulating panel kernels.
    from optkit.backends import vnni

    monkeypatch.setattr(vnni, "int8_arith", lambda _target: None)
    for program in (mlp, conv_program):
        quantized = PassManager(build_passes(["ptq"])).run(program).program
        artifact = lower(quantized, "cpu", num_cores=1)
        assert artifact.info["vnni_kernels"] == 0
        assert artifact.info["packed_matmuls"] + artifact.info["packed_convs"] >= 2
        (got,) = artifact.run(*quantized.example_inputs)
        np.testing.assert_allclose(got, outputs_of(quantized)[0], rtol=1e-4, atol=1e-4)


def test_a_linear_after_attention_packs_its_weight_once():
    # The export spells this projection as bmm(x, expand(W.T)): a batch of copies of the weight.
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(32, 32)

        def forward(self, q: torch.Tensor) -> torch.Tensor:
            b, h, t, d = q.shape
            att = nn.functional.scaled_dot_product_attention(q, q, q)
            return self.proj(att.transpose(1, 2).reshape(b, t, h * d))

    torch.manual_seed(0)
    program = capture(Attention().eval(), (torch.randn(3, 2, 8, 16),), name="attention_proj")
    artifact = lower(program, "cpu", num_cores=1)
    assert float_matmul_kernels(artifact.info) == 1
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_int8_depthwise_kernel_computes_the_float_kernels_sums(stride):
    # The kernel on int8 values q with zero point z: the float kernel's sums over q - z, bit for
    # bit (padding counts as q = z), scheduled as the build does.
    import tvm
    from optkit.backends.build import schedule_pass
    from optkit.backends.packing import _depthwise_nhwc_te
    from optkit.backends.targets import resolve_target
    from tvm import te

    spec = resolve_target("cpu", num_cores=1)
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (2, 9, 9, 48)).astype(np.int8)
    w = rng.integers(-127, 128, (3, 3, 48)).astype(np.float32)
    outs = []
    for dtype, zero, data in (("int8", -7.0, q), ("float32", None, q.astype(np.float32) + 7)):
        x = te.placeholder(q.shape, dtype, name="x")
        wt = te.placeholder(w.shape, "float32", name="w")
        y = _depthwise_nhwc_te([stride] * 2, [1, 1], [1, 1, 1, 1], zero)(x, wt)
        mod = tvm.IRModule({"main": te.create_prim_func([x, wt, y]).with_attr("global_symbol", "main")})
        with spec.tvm_target():
            mod = schedule_pass(spec)(mod)
        out = tvm.runtime.tensor(np.zeros([int(d) for d in y.shape], np.float32))
        tvm.compile(mod, target=spec.tvm_target())["main"](
            tvm.runtime.tensor(data), tvm.runtime.tensor(w), out
        )
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    reference = nn.functional.conv2d(
        torch.from_numpy(q.astype(np.float32) + 7).permute(0, 3, 1, 2),
        torch.from_numpy(w).permute(2, 0, 1)[:, None],
        stride=stride,
        padding=1,
        groups=48,
    )
    np.testing.assert_array_equal(outs[0], reference.permute(0, 2, 3, 1).numpy())
