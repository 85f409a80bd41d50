import math

import pytest
import torch

from optkit.errors import ConfigError
from optkit.quality import compare
from optkit.refs import load_model
from optkit.zoo.data import TEXT_CHUNK, _reference_bytes, reference_text
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model
from optkit.zoo.textlm import TextLM, TextLMConfig, calibration_data, perplexity, windows

SMALL = TextLMConfig(dim=32, depth=1, heads=2, hidden=64, context=16)


def test_reference_text_splits_are_fixed_disjoint_chunks():
    train, test = reference_text("train"), reference_text("test")
    assert train.dtype == torch.int64 and int(train.min()) >= 0 and int(train.max()) < 256
    assert test.numel() > 40_000 and train.numel() > 9 * test.numel() - 10 * TEXT_CHUNK
    # Train starts with chunks 1-9 of the whole text, test with its 10th, which train never holds.
    whole = _reference_bytes()
    assert bytes(train[: 9 * TEXT_CHUNK].tolist()) == whole[: 9 * TEXT_CHUNK]
    assert bytes(test[:TEXT_CHUNK].tolist()) == whole[9 * TEXT_CHUNK : 10 * TEXT_CHUNK]
    assert whole[9 * TEXT_CHUNK : 10 * TEXT_CHUNK] not in bytes(train.tolist())
    torch.testing.assert_close(reference_text("test"), test)
    with pytest.raises(ConfigError, match="split must be"):
        reference_text("valid")


def test_registry_entry_has_a_perplexity_workload_with_calibration_text():
    entry = get_model("textlm")
    assert entry.task == "language-model" and entry.sampler == ""
    model = entry.build(SMALL)
    workload = entry.workload(model=model)
    assert workload.metric == "perplexity" and workload.calibration.source == "memory"
    (ids,) = workload.calibration.batches[0]
    assert ids.shape == (8, SMALL.context) and ids.dtype == torch.int64
    assert [b[0].tolist() for b in calibration_data(model)] == [
        b[0].tolist() for b in workload.calibration.batches
    ]


def test_forward_is_causal():
    torch.manual_seed(0)
    model = TextLM(SMALL).eval()
    ids = windows(reference_text("train"), 2, SMALL.context, torch.Generator().manual_seed(0))
    logits = model(ids)
    assert logits.shape == (2, SMALL.context, 256)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])  # earlier bytes see no later one
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])


def test_training_lowers_the_loss_and_evaluate_reports_perplexity():
    torch.manual_seed(0)
    model = TextLM(SMALL)
    before = evaluate_small(model)
    figures = get_model("textlm").train(model, TrainSettings(steps=30, batch_size=8, lr=3e-3))
    after = evaluate_small(model)
    assert figures["steps"] == 30 and math.isfinite(figures["final_loss"])
    assert after["perplexity"] < before["perplexity"] < 300  # starts near uniform over 256 bytes
    assert after["bits_per_byte"] == pytest.approx(math.log2(after["perplexity"]))


def evaluate_small(model):
    return get_model("textlm").evaluate(model, EvalSettings(num_samples=16, batch_size=8))


def test_perplexity_of_a_uniform_model_is_the_vocabulary():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 256)

    assert perplexity(Uniform(), reference_text("test"), 16, 4, 2) == pytest.approx(256.0)
    with pytest.raises(ConfigError, match="holds no window"):
        perplexity(Uniform(), torch.arange(10), 16, 4, 2)


def test_zoo_reference_captures_with_its_workload_and_quality_is_perplexity():
    program = load_model("zoo:textlm", pretrained=False)
    assert program.workload.metric == "perplexity"
    figures = compare(program, program)
    assert figures["perplexity_before"].value == pytest.approx(figures["perplexity_after"].value)


def test_shipped_checkpoint_loads_and_is_small():
    entry = get_model("textlm")
    path = entry.checkpoint_path("tiny")
    if not path.exists():
        pytest.skip("no textlm checkpoint shipped")
    assert path.stat().st_size <= 8_000_000
    model = entry.create("tiny")
    assert evaluate_small(model)["perplexity"] < 8.0


@pytest.mark.slow
def test_capture_onnx_and_tvm_match_eager(tmp_path):
    from optkit.ir.capture import capture
    from optkit.ir.onnx_io import export_onnx

    torch.manual_seed(0)
    model = TextLM(SMALL).eval()
    inputs = (windows(reference_text("train"), 2, SMALL.context, torch.Generator().manual_seed(1)),)
    program = capture(model, inputs, name="textlm")
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(program.run(*inputs), expected, atol=1e-5, rtol=1e-5)
    assert program.block_paths() == ["layers.0"]
    figures = export_onnx(program, tmp_path / "textlm.onnx")
    assert figures["max_abs_error"] < 1e-4 and figures["output_abs_max"] > 1e-3
    pytest.importorskip("tvm")
    from optkit.backends import lower

    (got,) = lower(program, "cpu", num_cores=1).run(*inputs)
    torch.testing.assert_close(torch.as_tensor(got), expected, atol=1e-4, rtol=1e-4)
