"""Memory estimates from the graph, and the refusal of a run that cannot fit (issue 16)."""

import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from optkit.cli.main import cli
from optkit.errors import ResourceError
from optkit.ir.capture import capture
from optkit.ir.memory import check_memory, estimate_memory, winograd_weight_bytes


class Outer(nn.Module):
    """(B, N) -> the (B, N, N) outer product, summed: an activation N times the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :, None] * x[:, None, :]).relu().sum(-1)


def test_estimate_counts_weights_inputs_and_the_peak_activation():
    program = capture(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)), (torch.randn(4, 16),))
    est = estimate_memory(program)
    assert est.weight_bytes == 4 * (16 * 64 + 64 + 64 * 8 + 8)
    assert est.input_bytes == 4 * 4 * 16
    # linear -> relu: both (4, 64) float32 alive at once is the peak.
    assert est.peak_activation_bytes == 2 * 4 * 4 * 64


def test_check_memory_refuses_what_cannot_fit():
    program = capture(Outer(), (torch.randn(2, 256),), name="outer")
    est = check_memory(program, available_bytes=1 << 30)
    assert est.peak_activation_bytes >= 2 * 256 * 256 * 4
    with pytest.raises(ResourceError, match="cannot run outer: it needs about .* available"):
        check_memory(program, available_bytes=est.run_bytes - 1)


def test_winograd_weights_count_in_the_lowering_estimate():
    """Only float32 3 x 3 convs with channels in multiples of 16 may take Winograd's larger weights."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 32, 1), nn.Conv2d(32, 8, 3)
    )
    program = capture(model, (torch.randn(1, 3, 12, 12),), name="convs")
    assert winograd_weight_bytes(program) == 4 * 32 * 16 * 9
    est = check_memory(program, available_bytes=1 << 30)
    with pytest.raises(ResourceError, match="Winograd weights") as refused:
        check_memory(program, available_bytes=est.run_bytes + est.weight_bytes, copies=1, extra_bytes=1 << 30)
    assert "--no-winograd" in str(refused.value)


def test_optimize_refuses_a_model_larger_than_the_machine(tmp_path, monkeypatch):
    # A (1, 300000, 300000) float32 activation: 335 GiB, captured without being allocated.
    (tmp_path / "huge.py").write_text(
        textwrap.dedent(
            """
            import torch
            from tests.ir.test_memory import Outer

            def net():
                return Outer(), (torch.randn(1, 300_000),)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["--quiet", "optimize", "huge:net", "--passes", "cleanup", "-o", "out"])
    assert result.exit_code == 2, (result.exception, result.stderr)
    assert "cannot optimize" in result.stderr and "GiB" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_lower_refuses_before_compiling_and_the_estimate_scales_with_the_step():
    # Issue 20: `optkit lower` checks the measured factor for lowering (weights released as packed).
    from optkit.ir.memory import EXTRA_WEIGHTS, peak_message

    program = capture(nn.Sequential(nn.Linear(256, 256)), (torch.randn(1, 256),), name="lin")
    weights = estimate_memory(program).weight_bytes
    releasing = EXTRA_WEIGHTS["lower, releasing the weights"]
    check_memory(program, copies=releasing, available_bytes=2 * weights)
    with pytest.raises(ResourceError, match=r"cannot lower lin: .* x 0\.6"):
        check_memory(program, copies=releasing, available_bytes=weights // 2, what="lower")
    assert "estimated peak" in peak_message(program, "optimize")
    assert releasing < EXTRA_WEIGHTS["lower"]
