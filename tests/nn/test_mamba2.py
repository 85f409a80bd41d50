import pytest
import torch

from optkit.errors import ConfigError
from optkit.nn.mamba2 import BidirectionalMamba2, Mamba2, Mamba2Config, segsum, ssd_chunked, ssd_sequential


def _ssm_inputs(length: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    b, h, p, n = 2, 3, 4, 5
    x = torch.randn(b, length, h, p, generator=gen, dtype=dtype)
    a = -torch.rand(b, length, h, generator=gen, dtype=dtype) * 0.7  # log-decays dt * A < 0
    bm = torch.randn(b, length, n, generator=gen, dtype=dtype)
    cm = torch.randn(b, length, n, generator=gen, dtype=dtype)
    return x, a, bm, cm


@pytest.mark.parametrize("chunk", [1, 2, 3, 8, 16, 37, 64])
def test_chunked_matches_sequential_scan(chunk: int) -> None:
    x, a, b, c = _ssm_inputs(37)
    ref = ssd_sequential(x, a, b, c)
    got = ssd_chunked(x, a, b, c, chunk)
    assert got.shape == ref.shape == (2, 37, 3, 4)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("length", [4, 8, 20, 64, 68, 300])
def test_chunk_state_scan_for_any_chunk_count(length: int) -> None:
    # chunk 4: 1, 2, 5, 16, 17 and 75 chunks: one block, a full block, a block and a chunk
    # (one recursion level, padded), and 5 blocks (75 > SCAN_BLOCK chunks, padded to 80).
    x, a, b, c = _ssm_inputs(length, seed=length)
    torch.testing.assert_close(ssd_chunked(x, a, b, c, 4), ssd_sequential(x, a, b, c), atol=1e-10, rtol=1e-10)


def test_chunk_state_scan_two_levels_deep() -> None:
    # chunk 1 on 600 tokens: 600 chunks = 38 blocks of 16 (padded), scanned again in 3 blocks.
    x, a, b, c = _ssm_inputs(600, seed=3)
    torch.testing.assert_close(ssd_chunked(x, a, b, c, 1), ssd_sequential(x, a, b, c), atol=1e-10, rtol=1e-10)


def test_float32_tolerance_on_long_sequence() -> None:
    x, a, b, c = _ssm_inputs(300, dtype=torch.float32)
    ref = ssd_sequential(x.double(), a.double(), b.double(), c.double()).float()
    torch.testing.assert_close(ssd_chunked(x, a, b, c, 32), ref, atol=1e-4, rtol=1e-4)


def test_segsum_definition() -> None:
    a = torch.tensor([1.0, 2.0, 4.0, 8.0])
    s = segsum(a)
    for i in range(4):
        for j in range(4):
            expected = float(a[j + 1 : i + 1].sum()) if j <= i else 0.0
            assert s[i, j].item() == expected


def test_layer_chunk_size_does_not_change_output() -> None:
    torch.manual_seed(0)
    small = Mamba2(Mamba2Config(d_model=32, headdim=16, chunk_size=8))
    large = Mamba2(Mamba2Config(d_model=32, headdim=16, chunk_size=64))
    large.load_state_dict(small.state_dict())
    u = torch.randn(2, 50, 32)
    torch.testing.assert_close(small(u), large(u), atol=1e-5, rtol=1e-5)


def test_layer_is_causal_and_bidirectional_is_not() -> None:
    torch.manual_seed(0)
    cfg = Mamba2Config(d_model=32, headdim=16, chunk_size=8)
    u = torch.randn(1, 40, 32)
    v = u.clone()
    v[:, 30] += 1.0
    uni = Mamba2(cfg)
    diff = (uni(u) - uni(v)).abs().amax(dim=-1)[0]
    assert diff[:30].max() == 0 and diff[30:].max() > 0
    bi = BidirectionalMamba2(cfg)
    diff = (bi(u) - bi(v)).abs().amax(dim=-1)[0]
    assert diff[:30].max() > 0


def test_capture_has_no_token_level_loop() -> None:
    layer = Mamba2(Mamba2Config(d_model=32, headdim=16, chunk_size=16)).eval()
    sizes = {}
    for length in (128, 2048):
        u = torch.randn(1, length, 32)
        ep = torch.export.export(layer, (u,), strict=False)
        torch.testing.assert_close(ep.module()(u), layer(u), atol=1e-5, rtol=1e-5)
        sizes[length] = len(ep.graph.nodes)
    # 8 -> 128 chunks: only the blocked state scan grows (one more level of ~20 ops).
    assert sizes[2048] - sizes[128] <= 30 and sizes[2048] < 200


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="headdim"):
        Mamba2Config(d_model=30, headdim=16)
    with pytest.raises(ConfigError, match="chunk_size"):
        Mamba2Config(d_model=32, chunk_size=0)
    x, a, b, c = _ssm_inputs(8)
    with pytest.raises(ConfigError):
        ssd_chunked(x, a, b, c, 0)
