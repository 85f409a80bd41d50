import torch
from torch import nn

from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes


class WithDeadCode(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        _ = self.unused(x) * 3  # computed, never used
        return self.used(x)


class Expected(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


def test_dce_before_expected():
    before = capture(WithDeadCode(), (torch.randn(2, 4),))
    expected = capture(Expected(), (torch.randn(2, 4),))
    result = PassManager(build_passes(["dce"])).run(before)
    after = result.program
    assert after.op_counts() == expected.op_counts() == {"linear": 1}
    assert sorted(after.parameters()) == ["used.bias", "used.weight"]
    record = result.records[0]
    assert record.modified
    assert record.figures["nodes_removed"].value == 2 + 2  # linear, mul and their two weight reads
    assert record.figures["parameter_bytes_freed"].value == 4 * (16 + 4)
    assert torch.equal(after.run(), before.run())


def test_dce_on_clean_graph_changes_nothing(conv_program):
    result = PassManager(build_passes(["dce"])).run(conv_program)
    assert not result.records[0].modified
    assert result.program.op_counts() == conv_program.op_counts()
