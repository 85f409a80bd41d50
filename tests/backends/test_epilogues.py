"""The VNNI GEMM's requantization joins its write-back: which chains fuse, and that the W8A8
models still match their Programs."""

import numpy as np
import pytest
import torch
from optkit.backends import lower, vnni
from optkit.backends.targets import resolve_target
from torch import nn

from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes
from tests.backends.conftest import host_float_tiles, outputs_of

pytestmark = pytest.mark.skipif(
    vnni.int8_arith(resolve_target("cpu").tvm_target()) is None, reason="the host CPU has no int8 tile kernel"
)


class _Residual(nn.Module):
    """The last GEMM's epilogue adds a full [M, N] matrix (the residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 96), nn.Linear(96, 40), nn.Linear(40, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(torch.relu(self.a(x)))
        return self.c(y) + y


class _TwoUses(nn.Module):
    """The GEMM's output feeds two branches: no epilogue past the fork."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return torch.relu(y) * torch.sigmoid(y)


def _inverted_residual() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(16, 32, 1),
        nn.ReLU6(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU6(),
        nn.Conv2d(32, 24, 1),
    )


@pytest.mark.parametrize(
    ("model", "shape", "fused"),
    [
        (lambda: nn.Sequential(nn.Linear(64, 96), nn.ReLU6(), nn.Linear(96, 40)), (50, 64), 2),  # N = 40
        (_Residual, (2, 24, 64), 3),
        (_inverted_residual, (2, 16, 14, 14), 2),  # the depthwise conv runs in float32, not VNNI
        (_TwoUses, (8, 64), 1),
    ],
    ids=["mlp", "residual", "inverted-residual", "two-uses"],
)
def test_w8a8_models_match_with_fused_epilogues(model, shape, fused):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    program = PassManager(build_passes(["ptq"])).run(capture(model().eval(), (x,))).program
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["vnni_epilogues"] == fused
    (got,) = artifact.run(x)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)


class _ResidualRelu(nn.Module):
    """ResNet's block ending: `relu(linear(x) + x)`, the ReLU after the residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) + x)


def test_relu_after_the_residual_joins_the_write_back():
    from optkit.backends.kernel_profile import lower_with_kernels

    torch.manual_seed(0)
    x = torch.randn(48, 64)
    program = PassManager(build_passes(["ptq"])).run(capture(_ResidualRelu().eval(), (x,))).program
    artifact, kernels = lower_with_kernels(program, num_cores=1)
    assert artifact.info["vnni_epilogues"] == 1
    assert not [name for name in kernels if "relu" in name]
    (got,) = artifact.run(x)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-5, atol=1e-5)
    assert got.min() == 0.0


class _GEGLU(nn.Module):
    """diffusers' feed-forward: the projection's halves, one times the GELU of the other."""

    def __init__(
        self, hidden: int = 48, gated_first: bool = False, gate_left: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        self.proj, self.out = nn.Linear(64, 2 * hidden, bias=bias), nn.Linear(hidden, 64)
        self.gated_first, self.gate_left = gated_first, gate_left

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj(x).chunk(2, dim=-1)
        plain, gate = (b, a) if self.gated_first else (a, b)
        gate = nn.functional.gelu(gate)
        return self.out(gate * plain if self.gate_left else plain * gate)


class _SwiGLU(nn.Module):
    """A Llama MLP: `down(silu(gate(x)) * up(x))`, two GEMMs' chains meeting in one multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(64, 96, bias=False), nn.Linear(64, 96, bias=False)
        self.down = nn.Linear(96, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def _activation_kernels(precision, model, fast_math=True, rows=(2, 25)):
    """(the lowering's report, its kernels with an activation in their name, its output and the
    Program's) for `model` on `rows` (50: tiles overlap), in float32 or W8A8."""
    from optkit.backends.kernel_profile import lower_with_kernels

    if precision == "float" and host_float_tiles() is None:
        pytest.skip("float32 GEMMs take epilogues on the FMA tile kernel (AVX-512)")
    torch.manual_seed(0)
    x = torch.randn(*rows, 64)
    program = capture(model.eval(), (x,))
    if precision == "w8a8":
        program = PassManager(build_passes(["ptq"])).run(program).program
    artifact, kernels = lower_with_kernels(program, num_cores=1, fast_math=fast_math)
    named = [k for k in kernels if any(a in k for a in ("gelu", "sigmoid", "silu", "tanh", "erf"))]
    return artifact.info, named, artifact.run(x)[0], outputs_of(program)[0]


@pytest.mark.parametrize("precision", ["float", "w8a8"])
@pytest.mark.parametrize(
    ("hidden", "gated_first", "gate_left", "geglus"),
    [(48, False, False, 1), (32, True, True, 1), (40, False, False, 0)],  # 2 x 40: no 16-column halves
    ids=["second-half-gated", "first-half-gated", "halves-not-panels"],
)
def test_geglu_joins_the_projections_write_back(precision, hidden, gated_first, gate_left, geglus):
    info, named, got, want = _activation_kernels(precision, _GEGLU(hidden, gated_first, gate_left))
    assert info["geglu_epilogues"] == geglus
    assert bool(named) == (geglus == 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["float", "w8a8"])
def test_one_row_geglu_without_a_bias(precision):
    # one pair of panels, no step before the product in float, a single row
    info, named, got, want = _activation_kernels(precision, _GEGLU(16, bias=False), rows=(1, 1))
    assert info["geglu_epilogues"] == 1 and not named
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


_ACTIVATIONS = {
    "gelu": nn.GELU(),
    "gelu-tanh": nn.GELU(approximate="tanh"),
    "silu": nn.SiLU(),
    "sigmoid": nn.Sigmoid(),
    "swiglu": None,
}


@pytest.mark.parametrize(
    ("activation", "precision"),
    [
        # the default tier: every activation in float, GELU and SwiGLU in W8A8 too (each case
        # lowers twice: 4-6 s on a 2-core AVX2 machine); the other W8A8 cases are `slow`
        pytest.param(
            act,
            precision,
            id=f"{name}-{precision}",
            marks=pytest.mark.slow if precision == "w8a8" and name not in ("gelu", "swiglu") else (),
        )
        for name, act in _ACTIVATIONS.items()
        for precision in ("float", "w8a8")
    ],
)
def test_activations_join_the_write_back(activation, precision):
    model = (
        _SwiGLU() if activation is None else nn.Sequential(nn.Linear(64, 96), activation, nn.Linear(96, 64))
    )
    info, named, got, want = _activation_kernels(precision, model)
    assert not named and info["fast_math_ops"] == 0
    # each GEMM with a chain after it: the SwiGLU's bias-free float down projection has none
    assert info["vnni_epilogues"] == (3 if activation is None and precision == "w8a8" else 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # exact math keeps libm's functions, in kernels of their own
    info, named, got, _ = _activation_kernels(precision, model, fast_math=False)
    assert named
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_interleaved_panels_pair_the_halves():
    packed = np.arange(4 * 3 * 16 * 4).reshape(4, 3, 16, 4)
    np.testing.assert_array_equal(vnni.interleave_panels(packed), packed[[0, 2, 1, 3]])
    offset = np.arange(64)
    halves = np.concatenate([offset[:16], offset[32:48], offset[16:32], offset[48:]])
    np.testing.assert_array_equal(vnni.interleave_panels(offset), halves)


def _run_steps(steps, x):
    """An `Epilogue`'s immediate steps on float32 `x`, in float32 as the kernel computes them."""
    ops = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}
    ops |= {"maximum": np.maximum, "minimum": np.minimum}
    for op, *rest in steps:
        x = np.rint(x) if op == "round" else ops[op](x, np.float32(rest[0])).astype(np.float32)
    return x


RELU6_QUANT = [("maximum", 0.0, False), ("minimum", 6.0, False), ("multiply", 679.6624, False), ("round",)]
INT8 = [("add", -128.0, False), ("maximum", -128.0, False), ("minimum", 127.0, False)]


@pytest.mark.parametrize(
    ("steps", "merged"),
    [
        (RELU6_QUANT + INT8, 5),  # ReLU6's clamp falls inside the int8 range: only that is left
        ([("maximum", 0.0, False), ("multiply", 0.37, False), ("round",), ("add", 3.0, False)] + INT8[1:], 5),
        ([("minimum", 6.0, False), ("maximum", 0.0, False), ("divide", 0.05, False), ("round",)] + INT8, 5),
        (RELU6_QUANT[:2] + [("multiply", 10.0, False), ("round",), ("maximum", 100.0, False)], 5),  # disjoint
        (RELU6_QUANT[:2] + [("multiply", 3.0, False), ("add", 1.0, False)] + INT8[1:], 6),  # an FMA
        (RELU6_QUANT[:2] + [("divide", 3.0, True), ("round",)] + INT8[1:], 6),  # 3 / x decreases
    ],
    ids=["relu6", "relu", "divide", "disjoint", "fma", "decreasing"],
)
def test_clamps_merge_into_the_quantize_step_exactly(steps, merged):
    from optkit.backends.epilogues import merge_clamps

    rng = np.random.default_rng(0)
    edges = [-0.0, 0.0, 6.0, np.nextafter(np.float32(6), np.float32(7)), 1e30, -1e30]
    x = np.concatenate(
        [rng.normal(0, 4, 100_000), rng.uniform(-1e4, 1e4, 1000), edges, np.arange(-2, 8, 0.001)]
    )
    x = x.astype(np.float32)
    got = merge_clamps(steps, "float32")
    assert len(got) == merged and all(isinstance(s[1], float) for s in got if len(s) > 1)
    np.testing.assert_array_equal(_run_steps(got, x), _run_steps(steps, x))
    assert merge_clamps(steps, "int32") == steps  # clamps on integers are not moved


def test_merged_clamps_keep_the_lowered_model_exact(monkeypatch):
    from optkit.backends import epilogues

    torch.manual_seed(0)
    x = torch.randn(2, 16, 14, 14)
    program = PassManager(build_passes(["ptq"])).run(capture(_inverted_residual().eval(), (x,))).program
    merge, shortened = epilogues.merge_clamps, []

    def recorded(steps, dtype):
        merged = merge(steps, dtype)
        shortened.append(len(merged) < len(steps))
        return merged

    monkeypatch.setattr(epilogues, "merge_clamps", recorded)
    (got,) = lower(program, "cpu", num_cores=1).run(x)
    assert any(shortened)  # the expansion's ReLU6 before the depthwise conv's int8 input
    monkeypatch.setattr(epilogues, "merge_clamps", lambda steps, dtype: list(steps))
    (unmerged,) = lower(program, "cpu", num_cores=1).run(x)
    np.testing.assert_array_equal(got, unmerged)
