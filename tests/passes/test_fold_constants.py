import math

import pytest
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes


class Before(nn.Module):
    """Recomputes a sinusoidal position table and a transposed weight on every call."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        pos = torch.arange(4, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, 8, 2, dtype=torch.float32) * (-math.log(10000.0) / 8))
        table = torch.cat([(pos * freq).sin(), (pos * freq).cos()], dim=-1)  # (4, 8)
        noise = torch.rand(4, 8) * 0  # random: never folded
        return (x + table + noise) @ self.w.t()


class Expected(nn.Module):
    def __init__(self, table, wt):
        super().__init__()
        self.register_buffer("_folded_0", table)
        self.register_buffer("_folded_1", wt)

    def forward(self, x):
        noise = torch.rand(4, 8) * 0
        return (x + self._folded_0 + noise) @ self._folded_1


def test_fold_constants_before_expected():
    x = torch.randn(2, 4, 8)
    model = Before()
    before = capture(model, (x,))
    result = PassManager(build_passes(["cleanup"])).run(before)
    after = result.program
    ops = after.op_counts()
    for gone in ("arange", "exp", "sin", "cos", "cat", "t"):
        assert gone not in ops
    assert "rand" in ops  # random ops stay
    buffers = dict(after.graph_module.named_buffers())
    table = buffers["_folded_0"]
    expected = capture(Expected(table, model.w.detach().t().contiguous()), (x,))
    assert ops == expected.op_counts()
    assert "w" not in dict(after.graph_module.named_parameters())  # dce dropped the original weight
    assert torch.allclose(after.run(), before.run(), atol=1e-6)
    assert result.records[0].figures["values_folded"].value == 2


def test_large_expansions_are_not_folded():
    class Expand(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.randn(1, 256))

        def forward(self, x):
            return x + self.b.expand(2048, 256).clone()

    before = capture(Expand(), (torch.randn(2048, 256),))
    result = PassManager(build_passes(["fold-constants"], {"fold-constants": {"min_bytes": 0}})).run(before)
    assert not result.records[0].modified


def test_config_range():
    with pytest.raises(ConfigError, match="max_growth must be >= 1.0"):
        build_passes(["fold-constants"], {"fold-constants": {"max_growth": 0.5}})


class Buckets(nn.Module):
    """Relative position buckets built in place (`buckets += ...`), as T5 builds them."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(32, 4)

    def forward(self, x):
        pos = torch.arange(8)
        buckets = (pos > 3).to(torch.long) * 16
        buckets += torch.where(pos < 2, pos, torch.full_like(pos, 7))
        return x + self.table(buckets).sum(-1)


def test_values_written_in_place_are_not_folded():
    """Folded, the buckets would be a buffer that each call adds to again (past the table)."""
    torch.manual_seed(0)
    model, x = Buckets().eval(), torch.randn(8)
    program = capture(model, (x,), name="buckets")
    assert any(str(n.target) == "aten.add_.Tensor" for n in program.graph_module.graph.nodes)
    folded = PassManager(build_passes(["fold-constants"])).run(program).program
    for _ in range(3):
        torch.testing.assert_close(folded.run(), model(x))
