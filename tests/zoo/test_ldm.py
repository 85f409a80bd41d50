import dataclasses
import math

import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.nn.autoencoder import Autoencoder, AutoencoderConfig, latent_std, train_autoencoder
from optkit.zoo.ldm import LatentDiffusion, LDMConfig, example_inputs, null_labels
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model

MICRO = LDMConfig(
    autoencoder=AutoencoderConfig(channels=8), channels=16, context_dim=16, heads=2, context_tokens=2
)


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialized parameters random values so that every path is live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_registry_entry_and_sizes() -> None:
    entry = get_model("ldm")
    assert entry.task == "diffusion-image" and entry.sampler == "ddim"
    assert entry.sizes == ("tiny", "small")
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, LatentDiffusion) and isinstance(tiny.first_stage, Autoencoder)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert 300_000 <= n_tiny <= 600_000  # fits the 2.5 MB checkpoint budget in float32
    small = entry.build(entry.configs["small"])
    assert 3 <= sum(p.numel() for p in small.parameters()) / n_tiny <= 10
    diffusion = entry.workload().diffusion
    assert diffusion.guidance_scale == 2.0
    assert torch.equal(diffusion.null_condition((torch.tensor([3, 4]),))[0], torch.tensor([10, 10]))
    assert {"encode", "decode"} <= set(entry.extra)


def test_shapes_labels_and_first_stage() -> None:
    entry = get_model("ldm")
    model = randomize_zero_init(entry.build(MICRO)).eval()
    z, t, y = example_inputs(model, 2, seed=3)
    assert z.shape == (2, 2, 8, 8) and t.shape == (2,) and y.dtype == torch.int64
    for a, b in zip((z, t, y), example_inputs(model, 2, seed=3), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        eps = model(z, t, y)
        null = model(z, t, null_labels((y,))[0])
    assert eps.shape == z.shape and (eps - null).abs().max() > 1e-4  # cross-attention sees the label
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    latents = entry.extra["encode"](model, images)
    assert latents.shape == (3, 2, 8, 8)
    with torch.no_grad():
        model.latent_scale.fill_(4.0)
    torch.testing.assert_close(entry.extra["encode"](model, images), 4.0 * latents)
    decoded = entry.extra["decode"](model, 4.0 * latents)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1.0
    torch.testing.assert_close(decoded, model.first_stage(images).clamp(-1, 1))


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = randomize_zero_init(LatentDiffusion(LDMConfig.tiny())).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="ldm")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert program.block_paths() == ["down.0", "down.1", "down.2", "mid.0", "mid.1"] + [
        f"up.{i}" for i in range(4)
    ]
    # the denoiser graph never uses the first stage's weights
    reads = {str(n.target) for n in program.graph.nodes if n.op == "get_attr" and n.users}
    assert reads and not any(r.startswith("first_stage") for r in reads)
    figures = export_onnx(program, tmp_path / "ldm.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-2


def test_autoencoder_learns_and_kl_regularizes() -> None:
    gen = torch.Generator().manual_seed(0)
    images = -torch.ones(64, 1, 8, 8)
    for i in range(64):  # bright squares at random places
        r, c = torch.randint(0, 5, (2,), generator=gen).tolist()
        images[i, 0, r : r + 3, c : c + 3] = 1.0
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=8))
    with torch.no_grad():
        before = float(((ae(images) - images) ** 2).mean())
    figures = train_autoencoder(ae, images, steps=80, batch_size=16, lr=3e-3, seed=0)
    assert figures["recon_mse"] < 0.5 * before
    mean, logvar = ae.moments(images)
    assert mean.shape == logvar.shape == (64, 2, 4, 4)
    assert math.isfinite(latent_std(ae, images))
    plain = Autoencoder(AutoencoderConfig(channels=8, regularizer="none"))
    assert torch.equal(plain.moments(images)[1], torch.zeros(64, 2, 4, 4))


@pytest.mark.slow
def test_training_reduces_loss_and_evaluates(monkeypatch) -> None:
    import optkit.zoo.data as data

    entry = get_model("ldm")
    torch.manual_seed(0)
    model = entry.build(MICRO)
    # 200 training digits instead of 4,000 keep the test short; the recipe is the same.
    full = data.digits

    def few_digits(split: str = "train", resolution: int = 16, seed: int = 0):
        x, y = full(split, resolution, seed)
        return x[:200], y[:200]

    monkeypatch.setattr(data, "digits", few_digits)
    losses: list[tuple[int, int, float]] = []
    settings = TrainSettings(
        steps=60, batch_size=16, lr=2e-3, seed=0, progress=lambda s, n, loss: losses.append((s, n, loss))
    )
    figures = entry.train(model, settings)
    assert [s for s, _, _ in losses] == list(range(1, 73)) and {n for _, n, _ in losses} == {72}
    unet_losses = [loss for _, _, loss in losses[12:]]
    assert sum(unet_losses[-10:]) / 10 < 0.8 * unet_losses[0]
    assert figures["autoencoder_steps"] == 12 and figures["latent_scale"] > 0
    assert all(p.requires_grad for p in model.parameters())
    result = entry.evaluate(model, EvalSettings(num_samples=10, steps=2, batch_size=5))
    assert set(result) == {
        "fd_digits",
        "class_accuracy",
        "autoencoder_fd_digits",
        "autoencoder_class_accuracy",
    }
    assert all(math.isfinite(v) for v in result.values())


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="resolution"):
        LDMConfig(resolution=12, channel_mult=(1, 2, 2))
    with pytest.raises(ConfigError, match="regularizer"):
        AutoencoderConfig(regularizer="vq")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="divisible"):
        dataclasses.replace(LDMConfig.tiny(), channels=20)
