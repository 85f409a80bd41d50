import math

import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.nn.autoencoder import AutoencoderConfig
from optkit.zoo.data import apply_action
from optkit.zoo.lego import (
    ACTION_PROMPTS,
    VOCAB,
    Lego,
    LegoConfig,
    action_tokens,
    example_inputs,
    null_action,
    undo_view,
)
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model

MICRO = LegoConfig(autoencoder=AutoencoderConfig(channels=8), channels=16, context_dim=16, heads=2)


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialized parameters random values so that every path is live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_registry_entry_and_sizes() -> None:
    entry = get_model("lego")
    assert entry.task == "diffusion-image" and entry.sampler == "ddim"
    assert entry.sizes == ("tiny", "small") and "LEGO" in entry.paper
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, Lego)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert 300_000 <= n_tiny <= 620_000
    assert 3 <= sum(p.numel() for p in entry.build(entry.configs["small"]).parameters()) / n_tiny <= 10
    assert entry.extra["action_prompts"] == ACTION_PROMPTS


def test_action_tokens_and_null_prompt() -> None:
    tokens = action_tokens(torch.tensor([0, 3, 1]))
    assert tokens.shape == (3, 4) and tokens.dtype == torch.int64
    words = [" ".join(VOCAB[i] for i in row if i) for row in tokens.tolist()]
    assert words == [ACTION_PROMPTS[0], ACTION_PROMPTS[3], ACTION_PROMPTS[1]]
    before = torch.randn(3, 2, 8, 8)
    same, null = null_action((before, tokens))
    assert same is before and torch.equal(null, torch.zeros_like(tokens))


def test_undo_view_inverts_rotate_and_flip() -> None:
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    action = torch.tensor([0, 1, 2, 3])
    undone = undo_view(apply_action(images, action), action)
    assert torch.equal(undone[1:3], images[1:3])


def test_image_and_action_condition_the_output() -> None:
    model = randomize_zero_init(Lego(MICRO)).eval()
    z, t, before, action = example_inputs(model, 2, seed=1)
    assert z.shape == before.shape == (2, 2, 8, 8) and action.shape == (2, 4)
    action, other = action_tokens(torch.tensor([0, 1])), action_tokens(torch.tensor([2, 3]))
    with torch.no_grad():
        eps = model(z, t, before, action)
        assert eps.shape == z.shape
        assert (eps - model(z, t, before, other)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        assert (eps - model(z, t, torch.randn_like(before), action)).abs().max() > 1e-4
        context = model.context(before, action)
    assert context.shape == (2, 4 + 16, 16)


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = randomize_zero_init(Lego(LegoConfig.tiny())).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="lego")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    unet_blocks = [p for p in program.block_paths() if p.startswith(("down.", "mid.", "up."))]
    assert unet_blocks == ["down.0", "down.1", "down.2", "mid.0", "mid.1"] + [f"up.{i}" for i in range(4)]
    figures = export_onnx(program, tmp_path / "lego.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-2


@pytest.mark.slow
def test_training_reduces_loss_and_evaluates(monkeypatch) -> None:
    import optkit.zoo.lego as lego

    monkeypatch.setattr(lego, "TRAIN_PAIRS", 200)
    entry = get_model("lego")
    torch.manual_seed(0)
    model = entry.build(MICRO)
    losses: list[float] = []
    settings = TrainSettings(
        steps=50, batch_size=16, lr=2e-3, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    figures = entry.train(model, settings)
    assert len(losses) == 60 and figures["autoencoder_steps"] == 10
    unet = losses[10:]
    assert sum(unet[-10:]) / 10 < 0.8 * unet[0]
    result = entry.evaluate(model, EvalSettings(num_samples=8, steps=2, batch_size=4))
    assert {"psnr_db", "identity_accuracy", "identity_accuracy_reference"} <= set(result)
    assert all(math.isfinite(v) for v in result.values())
    assert result["identity_accuracy_reference"] >= 0.5  # true after-images, views undone


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="image_patch"):
        LegoConfig(image_patch=3)
    with pytest.raises(ConfigError, match="divisible"):
        LegoConfig(channels=20)
