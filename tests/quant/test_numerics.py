import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optkit.errors import ConfigError
from optkit.quant.numerics import QuantSpec, dequantize, quantize, scale_zero, sqnr_db
from optkit.quant.observers import Observer
from optkit.quant.packing import pack_int4, unpack_int4
from optkit.quant.weights import quantize_gptq, quantize_rtn


@given(st.lists(st.integers(-8, 7), min_size=2, max_size=64).filter(lambda v: len(v) % 2 == 0))
@settings(max_examples=50, deadline=None)
def test_int4_pack_round_trip_signed(values):
    q = torch.tensor(values, dtype=torch.int16).reshape(1, -1)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == q.numel() // 2
    assert torch.equal(unpack_int4(packed, signed=True), q)


def test_int4_pack_layout_is_onnx_low_nibble_first():
    assert pack_int4(torch.tensor([[1, 2]])).item() == 0x21
    assert pack_int4(torch.tensor([[-1, 0]])).item() == 0x0F
    assert torch.equal(
        unpack_int4(pack_int4(torch.tensor([[15, 0, 7, 9]])), signed=False),
        torch.tensor([[15, 0, 7, 9]], dtype=torch.int16),
    )
    with pytest.raises(ConfigError, match="even"):
        pack_int4(torch.zeros(1, 3, dtype=torch.int16))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_error_bounded_by_half_step(bits, symmetric):
    spec = QuantSpec(bits, symmetric, "tensor")
    x = torch.linspace(-1.0, 3.0, 1000)
    scale, zero = scale_zero(x.min(), x.max(), spec)
    q = quantize(x, scale, zero, spec)
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    assert (dequantize(q, scale, zero) - x).abs().max() <= scale / 2 + 1e-6
    assert dequantize(quantize(torch.zeros(1), scale, zero, spec), scale, zero).item() == 0.0


def test_spec_validation():
    with pytest.raises(ConfigError, match="bits must be 4, 7 or 8"):
        QuantSpec(bits=3)
    assert (QuantSpec(bits=7).qmin, QuantSpec(bits=7).qmax) == (-64, 63)  # int8 storage, half the grid
    with pytest.raises(ConfigError, match="multiple of 8"):
        QuantSpec(granularity="group", group_size=12)


@pytest.mark.parametrize("symmetric", [True, False])
def test_short_last_group_is_the_zero_padded_reference(symmetric):
    # 40 input channels in groups of 16: two whole groups and a short one of 8.
    torch.manual_seed(0)
    w = torch.randn(40, 8)
    spec = QuantSpec(4, symmetric, "group", 16)
    short = quantize_rtn(w, spec)
    padded = quantize_rtn(torch.cat([w, torch.zeros(8, 8)]), spec)
    assert short.q.shape == (40, 8) and short.scale.shape == (3, 8)
    assert torch.equal(short.q, padded.q[:40])
    assert torch.equal(short.scale, padded.scale) and torch.equal(short.zero, padded.zero)
    assert torch.equal(short.dequantized(), padded.dequantized()[:40])
    assert (short.dequantized() - w).abs().max() <= short.scale.max() / 2 + 1e-6


def test_gptq_handles_a_short_last_group():
    torch.manual_seed(0)
    w = torch.randn(120, 16) * 0.05  # groups of 32: three whole and one of 24
    x = torch.randn(512, 8) @ torch.randn(8, 120) + 0.1 * torch.randn(512, 120)
    spec = QuantSpec(4, True, "group", 32)
    gptq = quantize_gptq(w, 2 * x.t() @ x, spec)
    assert gptq.q.shape == (120, 16) and gptq.scale.shape == (4, 16)
    rtn = sqnr_db(x @ w, x @ quantize_rtn(w, spec).dequantized())
    assert sqnr_db(x @ w, x @ gptq.dequantized()) > rtn + 3.0


def test_observers():
    x = torch.cat([torch.randn(10000), torch.tensor([50.0])])  # one outlier
    spec = QuantSpec(8, False, "tensor")
    ranges = {}
    for kind in ("minmax", "percentile", "mse"):
        obs = Observer(kind, percentile=99.9)
        obs.update(x)
        ranges[kind] = float(obs.range(spec)[1])
    assert ranges["minmax"] == 50.0
    assert ranges["percentile"] < 5.0
    assert ranges["mse"] < 50.0
    with pytest.raises(ConfigError, match="NaN or Inf"):
        Observer(name="blocks.0.fc").update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ConfigError, match="observer must be"):
        Observer("histogram")  # type: ignore[arg-type]


def test_gptq_beats_rtn_on_correlated_inputs():
    torch.manual_seed(0)
    w = torch.randn(128, 64) * 0.05  # (K, N)
    x = torch.randn(1024, 16) @ torch.randn(16, 128) + 0.1 * torch.randn(1024, 128)
    spec = QuantSpec(4, True, "group", 32)
    rtn = sqnr_db(x @ w, x @ quantize_rtn(w, spec).dequantized())
    gptq = sqnr_db(x @ w, x @ quantize_gptq(w, 2 * x.t() @ x, spec).dequantized())
    assert gptq > rtn + 6.0


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_per_tensor_gives_one_repeated_scale(bits):
    w = torch.randn(32, 6)
    qw = quantize_rtn(w, QuantSpec(bits, True, "tensor"))
    assert qw.scale.shape == (1, 6) and torch.all(qw.scale == qw.scale[0, 0])
    assert float(qw.scale[0, 0]) == pytest.approx(float(w.abs().max()) / (2 ** (bits - 1) - 1))
    assert (qw.dequantized() - w).abs().max() <= qw.scale[0, 0] / 2 + 1e-6


def test_percentile_and_mse_observers_see_every_batch():
    # All-step calibration: the early steps' activations are 10x wider than the late ones'.
    # The range must come from every batch, not from the last ones.
    gen = torch.Generator().manual_seed(0)
    spec = QuantSpec(8, symmetric=False, granularity="tensor")
    for kind in ("percentile", "mse"):
        obs = Observer(kind, 99.0)
        for i in range(40):
            obs.update(torch.randn(20000, generator=gen) * (10.0 if i < 20 else 1.0))
        lo, hi = obs.range(spec)
        assert float(hi) > 10.0 and float(lo) < -10.0, kind
        assert obs.kept_values().numel() <= 1 << 18
