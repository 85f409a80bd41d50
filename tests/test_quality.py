import math

import pytest
import torch
from torch import nn

from optkit import quality
from optkit.api import optimize
from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.workload import Calibration, Workload
from tests import models
from tests.caching.conftest import capture_tiny_denoiser


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(ids))))  # (B, T, V)


def test_default_metric_is_output_sqnr_and_matches_the_ptq_check(conv_program):
    assert quality.metric_of(conv_program) == "sqnr"
    result = optimize(conv_program, ["ptq"], {"ptq": {"min_sqnr_db": 0.0}})
    ((name, figure),) = quality.compare(conv_program, result.program).items()
    assert name == "quality_sqnr_db" and figure.unit == "dB"
    assert figure.label == "output SQNR vs input (1 batch(es))"
    assert figure.value == pytest.approx(result.records[0].check["min_sqnr_db"], rel=1e-4)
    assert quality.compare(conv_program, conv_program.clone()) == {
        name: quality.Figure(math.inf, "dB", figure.label)
    }


def test_top1_agreement_on_the_workloads_data(conv_program):
    data = [(torch.randn(2, 3, 8, 8),) for _ in range(3)]
    program = conv_program.clone().with_workload(
        Workload(calibration=Calibration.from_batches(data), metric="top1")
    )
    assert len(quality.evaluation_batches(program)) == 3
    assert quality.compare(program, program.clone()) == {
        "quality_top1_pct": quality.Figure(100.0, "%", "top-1 agreement with input (3 batch(es))")
    }


def test_perplexity_of_both_models():
    torch.manual_seed(0)
    program = capture(TinyLM(), (torch.randint(0, 32, (2, 12)),), name="lm").with_workload(
        Workload(metric="perplexity")
    )
    figures = quality.compare(program, program.clone())
    assert list(figures) == ["perplexity_before", "perplexity_after"]
    before, after = figures.values()
    assert before.value == after.value and 1.0 < before.value < 1000.0
    image = capture(*models.conv_net(), name="conv").with_workload(Workload(metric="perplexity"))
    with pytest.raises(ConfigError, match="token ids"):
        quality.compare(image, image)


def test_samples_psnr_for_a_sampled_workload():
    program = capture_tiny_denoiser(models.diffusion_workload(steps=4))
    assert quality.metric_of(program) == "psnr"
    same = quality.compare(program, program.clone())
    assert same == {"quality_psnr_db": quality.Figure(math.inf, "dB", "samples PSNR vs input (1 seed(s))")}
    noisy = program.clone()
    with torch.no_grad():
        noisy.graph_module.get_parameter("head.weight").add_(
            0.01 * torch.randn_like(noisy.graph_module.get_parameter("head.weight"))
        )
    (figure,) = quality.compare(program, noisy).values()
    assert math.isfinite(figure.value)  # an untrained denoiser: any change shows in the samples


def test_onnx_runtime_sampler_matches_the_eager_one(tmp_path):
    from optkit.ir.onnx_io import export_onnx, onnx_session

    workload = models.diffusion_workload(guidance_scale=2.0, null_cond=("fill:10",), steps=3)
    program = capture_tiny_denoiser(workload)
    export_onnx(program, tmp_path / "m.onnx")
    eager = quality.sampler_for(program)(0)
    ort = quality.sampler_for(program, quality.onnx_denoiser(program, onnx_session(tmp_path / "m.onnx")))(0)
    assert ort.shape == eager.shape
    torch.testing.assert_close(ort, eager, rtol=1e-3, atol=1e-3)
