import math

import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.nn.autoencoder import AutoencoderConfig
from optkit.nn.text_encoder import TextEncoder
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model
from optkit.zoo.scenetextgen import (
    SceneTextGen,
    SceneTextGenConfig,
    char_ids,
    example_inputs,
    glyph_cells,
    null_chars,
)

MICRO = SceneTextGenConfig(autoencoder=AutoencoderConfig(channels=8), channels=16, context_dim=16, heads=2)


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialized parameters random values so that every path is live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_registry_entry_and_sizes() -> None:
    entry = get_model("scenetextgen")
    assert entry.task == "diffusion-image" and entry.sampler == "ddim"
    assert entry.sizes == ("tiny", "small") and "SceneTextGen" in entry.paper
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, SceneTextGen)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert 300_000 <= n_tiny <= 620_000
    assert 3 <= sum(p.numel() for p in entry.build(entry.configs["small"]).parameters()) / n_tiny <= 10
    ids = char_ids(torch.tensor([[3, 0, 9]]))
    assert torch.equal(ids, torch.tensor([[4, 1, 10]]))
    assert torch.equal(
        entry.workload().diffusion.null_condition((ids,))[0], torch.zeros(1, 3, dtype=torch.int64)
    )


def test_shapes_and_text_conditioning() -> None:
    model = randomize_zero_init(SceneTextGen(MICRO)).eval()
    z, t, chars = example_inputs(model, 2, seed=1)
    assert z.shape == (2, 2, 8, 24) and chars.shape == (2, 3) and int(chars.min()) >= 1
    text = char_ids(torch.tensor([[1, 2, 3], [7, 7, 4]]))
    with torch.no_grad():
        eps = model(z, t, text)
        swapped = model(z, t, text.flip(1))  # same characters, other order
        null = model(z, t, null_chars((text,))[0])
    assert eps.shape == z.shape
    assert (eps - swapped).abs().amax(dim=(1, 2, 3)).min() > 1e-4 and (eps - null).abs().max() > 1e-4
    # the character encoder is position-aware: one token per character, order matters
    enc = TextEncoder(11, 3, 16, 2)
    a, b = enc(torch.tensor([[1, 2, 3]])), enc(torch.tensor([[3, 2, 1]]))
    assert a.shape == (1, 3, 16) and (a[0, 0] - b[0, 2]).abs().max() > 1e-4


def test_glyph_cells_follow_the_layout() -> None:
    canvas = torch.arange(2 * 4 * 12, dtype=torch.float32).reshape(2, 1, 4, 12)
    cells = glyph_cells(canvas, 3)
    assert cells.shape == (6, 1, 4, 4)
    assert torch.equal(cells[0], canvas[0, :, :, 0:4]) and torch.equal(cells[5], canvas[1, :, :, 8:12])


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = randomize_zero_init(SceneTextGen(SceneTextGenConfig.tiny())).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="scenetextgen")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert [p for p in program.block_paths() if p.startswith(("down.", "mid.", "up."))] == [
        "down.0",
        "down.1",
        "down.2",
        "mid.0",
        "mid.1",
        "up.0",
        "up.1",
        "up.2",
        "up.3",
    ]
    figures = export_onnx(program, tmp_path / "scenetextgen.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-2


@pytest.mark.slow
def test_training_reduces_loss_and_evaluates(monkeypatch) -> None:
    import optkit.zoo.scenetextgen as stg

    monkeypatch.setattr(stg, "TRAIN_IMAGES", 120)
    entry = get_model("scenetextgen")
    torch.manual_seed(0)
    model = entry.build(MICRO)
    losses: list[float] = []
    settings = TrainSettings(
        steps=50, batch_size=8, lr=2e-3, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    figures = entry.train(model, settings)
    assert len(losses) == 60 and figures["autoencoder_steps"] == 10
    unet = losses[10:]
    assert sum(unet[-10:]) / 10 < 0.8 * unet[0]
    result = entry.evaluate(model, EvalSettings(num_samples=4, steps=2, batch_size=2))
    assert set(result) == {"char_accuracy", "word_accuracy", "fd_digits_cells", "autoencoder_char_accuracy"}
    assert all(math.isfinite(v) for v in result.values())
    assert 0.0 <= result["word_accuracy"] <= result["char_accuracy"] <= 1.0


def test_null_chars_and_config_errors() -> None:
    assert torch.equal(
        null_chars((torch.ones(2, 3, dtype=torch.int64),))[0], torch.zeros(2, 3, dtype=torch.int64)
    )
    with pytest.raises(ConfigError, match="multiples"):
        SceneTextGenConfig(width=42)
    with pytest.raises(ConfigError, match="cells"):
        SceneTextGenConfig(length=9)
