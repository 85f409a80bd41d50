from dataclasses import replace

import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.ir.flops import flops_by_block
from optkit.ir.onnx_io import export_onnx
from optkit.nn.mate import MATE
from optkit.zoo.lingen import build, lingen_tiny
from optkit.zoo.moviegen import VideoTransformer, VideoTransformerConfig, example_inputs
from optkit.zoo.registry import get_model
from tests.zoo.test_moviegen import randomize_zero_init, training_reduces_loss


def test_registry_entry() -> None:
    entry = get_model("lingen")
    assert entry.task == "diffusion-video" and entry.sampler == "flow-euler"
    model = entry.create("tiny", pretrained=False)
    assert all(isinstance(block.mixer, MATE) for block in model.blocks)
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    # the same backbone as moviegen: only the mixers differ
    movie = get_model("moviegen").create("tiny", pretrained=False)
    assert {k for k in model.state_dict() if ".mixer." not in k} == {
        k for k in movie.state_dict() if ".mixer." not in k
    }
    with pytest.raises(ConfigError, match="mate"):
        build(VideoTransformerConfig.tiny())


def test_scan_orders_and_shifts_rotate_over_blocks() -> None:
    model = build(lingen_tiny())
    assert [b.mixer.order for b in model.blocks] == ["thw", "hwt", "wth", "thw"]
    assert [any(b.mixer.tesa.shift) for b in model.blocks] == [False, True, False, True]


def _program(config: VideoTransformerConfig):
    model = randomize_zero_init(build(config)).eval()
    inputs = example_inputs(model, 2, seed=0)
    with torch.no_grad():
        expected = model(*inputs)
    assert expected.shape == inputs[0].shape
    program = capture(model, inputs, name="lingen")
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    return program


@pytest.mark.slow
def test_shapes_and_capture_match_eager() -> None:
    program = _program(lingen_tiny())
    assert [p for p in program.block_paths() if p.startswith("blocks.")][:4] == [
        f"blocks.{i}" for i in range(4)
    ]


@pytest.mark.slow
def test_onnx_matches_eager(tmp_path) -> None:
    # Two blocks (T- and H-major scans, plain and shifted windows) keep the export quick; the
    # four-block tiny model has the same ops.
    program = _program(replace(lingen_tiny(), depth=2))
    assert export_onnx(program, tmp_path / "lingen.onnx")["max_abs_error"] < 1e-4


@pytest.mark.slow
def test_block_flops_grow_linearly_unlike_moviegen() -> None:
    def per_block(mixer: str, frames: int, resolution: int) -> int:
        cfg = VideoTransformerConfig(
            frames=frames, resolution=resolution, depth=1, dim=32, heads=2, mixer=mixer
        )
        model = VideoTransformer(cfg)
        return flops_by_block(capture(model, example_inputs(model, 1, 0)))["blocks.0"]

    # 4x more tokens: (4, 8, 8) -> (8, 16, 16) grid
    lingen_ratio = per_block("mate", 16, 32) / per_block("mate", 8, 16)
    movie_ratio = per_block("attention", 16, 32) / per_block("attention", 8, 16)
    assert lingen_ratio < 8 * 1.1 and movie_ratio > 8 * 1.5


@pytest.mark.slow
def test_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    before, after = training_reduces_loss(build(lingen_tiny()), steps=20, batch=4)
    assert after < 0.8 * before
