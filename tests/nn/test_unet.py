import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.nn.unet import (
    Attention,
    ResBlock,
    SpatialTransformer,
    UNet,
    UNetConfig,
    UNetLayer,
    timestep_embedding,
)

SMALL = UNetConfig(in_channels=2, out_channels=3, channels=16, channel_mult=(1, 2), context_dim=12, heads=2)


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialized parameters random values so that every path is live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_layout_and_shapes() -> None:
    model = UNet(SMALL).eval()
    # down: ResBlock(+attn) at level 0, Downsample, ResBlock(+attn) at level 1; up: 2 per level
    assert [isinstance(m, nn.ModuleList) for m in (model.down, model.mid, model.up)] == [True] * 3
    assert len(model.down) == 3 and len(model.mid) == 2 and len(model.up) == 4
    assert model.down[0].attn is None and model.down[2].attn is not None  # attention at level 1 only
    assert model.down[1].res is None and model.down[1].resample is not None
    assert model.up[1].resample is not None and model.up[3].resample is None
    x = torch.randn(2, 2, 8, 12)
    out = model(x, torch.tensor([3.0, 900.0]), torch.randn(2, 5, 12))
    assert out.shape == (2, 3, 8, 12)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialized output conv


def test_zero_init_blocks_start_as_identity() -> None:
    res = ResBlock(8, 8, temb_dim=16, groups=4)
    st = SpatialTransformer(8, heads=2, context_dim=6, groups=4, ff_mult=2)
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(res(x, torch.randn(2, 16)), x)
        assert torch.equal(st(x, torch.randn(2, 3, 6)), x)
        wide = ResBlock(8, 12, temb_dim=16, groups=4)
        assert torch.allclose(wide(x, torch.randn(2, 16)), wide.skip(x))


def test_attention_matches_reference_softmax() -> None:
    torch.manual_seed(0)
    attn = Attention(8, heads=2, context_dim=6)
    x, ctx = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    q = attn.to_q(x).reshape(2, 5, 2, 4).transpose(1, 2)
    k = attn.to_k(ctx).reshape(2, 3, 2, 4).transpose(1, 2)
    v = attn.to_v(ctx).reshape(2, 3, 2, 4).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(head_dim 4) = 2
    expected = attn.to_out((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x, ctx), expected)
    self_attn = Attention(8, heads=2)
    torch.testing.assert_close(self_attn(x), self_attn(x, x))


def test_time_and_context_condition_the_output() -> None:
    model = randomize_zero_init(UNet(SMALL)).eval()
    x, ctx = torch.randn(1, 2, 8, 8), torch.randn(1, 5, 12)
    with torch.no_grad():
        base = model(x, torch.tensor([10.0]), ctx)
        assert (base - model(x, torch.tensor([700.0]), ctx)).abs().max() > 1e-3
        assert (base - model(x, torch.tensor([10.0]), torch.randn(1, 5, 12))).abs().max() > 1e-3
        # batch elements are independent
        both = model(torch.cat([x, torch.randn(1, 2, 8, 8)]), torch.tensor([10.0, 5.0]), ctx.repeat(2, 1, 1))
    torch.testing.assert_close(both[:1], base, atol=1e-5, rtol=1e-5)
    emb = timestep_embedding(torch.tensor([0.0, 500.0]), 16)
    assert emb.shape == (2, 16) and torch.allclose(emb[0, :8], torch.ones(8))


def test_capture_finds_layers_as_blocks() -> None:
    model = randomize_zero_init(UNet(SMALL)).eval()
    inputs = (torch.randn(1, 2, 8, 8), torch.tensor([250.0]), torch.randn(1, 5, 12))
    program = capture(model, inputs, name="unet")
    torch.testing.assert_close(program.run(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
    expected = [f"down.{i}" for i in range(3)] + ["mid.0", "mid.1"] + [f"up.{i}" for i in range(4)]
    assert program.block_paths() == expected
    # self- and cross-attention in the two level-1 layers of each path and the middle
    assert len(program.attention_sites()) == 2 * (1 + 1 + 2)


def test_layer_order_res_attn_resample() -> None:
    layer = UNetLayer(resample=nn.Conv2d(4, 4, 1))
    x = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(layer(x, torch.zeros(1, 8), torch.zeros(1, 1, 4)), layer.resample(x))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="attention level"):
        UNetConfig(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(ConfigError, match="divisible"):
        UNetConfig(channels=20, groups=8)
    with pytest.raises(ConfigError, match="channel_mult"):
        UNetConfig(channel_mult=())
