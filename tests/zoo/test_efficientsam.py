import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.zoo.efficientsam import (
    EfficientSAM,
    EfficientSAMConfig,
    PromptAttention,
    example_inputs,
    make_prompts,
    mask_iou,
)
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model

MICRO = EfficientSAMConfig(
    resolution=16, encoder_dim=32, encoder_depth=2, encoder_heads=2, dim=32, decoder_mlp_dim=64
)


def test_registry_entry_and_sizes() -> None:
    entry = get_model("efficientsam")
    assert entry.task == "segmentation" and entry.sampler == ""
    assert entry.sizes == ("tiny", "small")
    tiny = entry.create("tiny", pretrained=False)
    assert isinstance(tiny, EfficientSAM)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert 300_000 <= n_tiny <= 600_000
    small = entry.build(entry.configs["small"])
    assert sum(p.numel() for p in small.parameters()) > 4 * n_tiny
    assert isinstance(tiny.encoder.blocks, nn.ModuleList) and len(tiny.encoder.blocks) == 4


def test_shapes_and_deterministic_example_inputs() -> None:
    model = EfficientSAM(EfficientSAMConfig.tiny()).eval()
    image, points, labels = example_inputs(model, 2, seed=3)
    assert image.shape == (2, 3, 32, 32) and points.shape == (2, 3, 2) and labels.dtype == torch.int64
    assert torch.equal(labels, torch.tensor([[1, 2, 3], [1, 2, 3]]))
    for a, b in zip((image, points, labels), example_inputs(model, 2, seed=3), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        masks, iou = model(image, points, labels)
    assert masks.shape == (2, 1, 32, 32) and iou.shape == (2, 1)
    # A patch that does not give 4G == R is resized inside the model.
    odd = EfficientSAM(
        EfficientSAMConfig(resolution=16, patch=2, encoder_dim=32, encoder_heads=2, dim=32)
    ).eval()
    with torch.no_grad():
        assert odd(*example_inputs(odd, 1, 0))[0].shape == (1, 1, 16, 16)


def test_prompts_modes_and_unused_slots() -> None:
    points = torch.tensor([[[0.3, 0.4]], [[0.6, 0.5]]])
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]])
    coords, labels = make_prompts(points, boxes, torch.tensor([0, 1]))
    assert torch.equal(coords[0], torch.tensor([[0.3, 0.4], [0.1, 0.2], [0.5, 0.6]]))
    assert labels.tolist() == [[-1, 2, 3], [1, -1, -1]]
    assert make_prompts(points, boxes, "box+point")[1].tolist() == [[1, 2, 3], [1, 2, 3]]
    with pytest.raises(ConfigError, match="prompt mode"):
        make_prompts(points, boxes, "mask")
    # An unused slot's coordinates must not matter; a used slot's must.
    model = EfficientSAM(MICRO).eval()
    image = example_inputs(model, 2, seed=0)[0]
    moved = coords.clone()
    moved[0, 0] = torch.tensor([0.9, 0.9])  # row 0's point slot is unused (box mode)
    moved[1, 0] = torch.tensor([0.1, 0.9])  # row 1's point slot is used
    with torch.no_grad():
        a, _ = model(image, coords, labels)
        b, _ = model(image, moved, labels)
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_prompt_attention_downsample_matches_manual() -> None:
    torch.manual_seed(0)
    attn = PromptAttention(16, heads=2, downsample=2)
    q, k = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    qh = attn.q_proj(q).reshape(1, 3, 2, 4).transpose(1, 2)
    kh = attn.k_proj(k).reshape(1, 5, 2, 4).transpose(1, 2)
    vh = attn.v_proj(k).reshape(1, 5, 2, 4).transpose(1, 2)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(head dim 4) = 2
    expected = attn.out_proj((weights @ vh).transpose(1, 2).reshape(1, 3, 8))
    torch.testing.assert_close(attn(q, k, k), expected)


@pytest.mark.slow
def test_capture_and_onnx_match_eager(tmp_path) -> None:
    model = EfficientSAM(EfficientSAMConfig.tiny()).eval()
    inputs = example_inputs(model, 2, seed=0)
    program = capture(model, inputs, name="efficientsam")
    with torch.no_grad():
        expected = model(*inputs)
    for got, want in zip(program.run(*inputs), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    blocks = [p for p in program.block_paths() if p.startswith("encoder.blocks.")]
    assert blocks == [f"encoder.blocks.{i}" for i in range(4)]
    figures = export_onnx(program, tmp_path / "efficientsam.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-2


def test_training_reduces_loss_and_evaluate_is_finite() -> None:
    entry = get_model("efficientsam")
    model = EfficientSAM(MICRO)
    losses: list[float] = []
    settings = TrainSettings(
        steps=40, batch_size=8, lr=3e-3, seed=0, progress=lambda s, n, loss: losses.append(loss)
    )
    figures = entry.train(model, settings)
    assert len(losses) == 40 and figures["final_loss"] == pytest.approx(losses[-1])
    assert losses[-1] < 0.9 * losses[0]
    scores = entry.evaluate(model, EvalSettings(num_samples=6, batch_size=4))
    assert set(scores) == {"miou_box", "miou_point", "miou_box_point", "iou_pred_error"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_mask_iou() -> None:
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 1
    masks[1, :, :1] = 1
    logits = torch.full((3, 4, 4), -1.0)
    logits[0, :1] = 1.0  # half of the mask
    logits[1, :, :1] = 2.0  # exact
    assert mask_iou(logits, masks).tolist() == pytest.approx([0.5, 1.0, 1.0])  # both empty -> 1


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="patch"):
        EfficientSAMConfig(patch=3)
    with pytest.raises(ConfigError, match="multiple of 8"):
        EfficientSAMConfig(dim=60)
    with pytest.raises(ConfigError, match="decoder_heads"):
        EfficientSAMConfig(decoder_heads=5)


def test_shipped_checkpoint_segments_held_out_shapes() -> None:
    entry = get_model("efficientsam")
    assert entry.checkpoint_path("tiny").stat().st_size <= 2_500_000
    model = entry.create("tiny")  # loads the shipped checkpoint
    scores = entry.evaluate(model, EvalSettings(num_samples=48, batch_size=48))
    assert scores["miou_box"] > 0.7 and scores["miou_point"] > 0.6
