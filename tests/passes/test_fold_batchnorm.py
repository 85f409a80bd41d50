import torch
from torch import nn

from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes


def _randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=gen))
                m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


class Before(nn.Module):
    """Conv-BN-ReLU6, depthwise conv (no bias)-BN, a BN without affine, a BN read twice, and
    Linear-BN1d: every BN but the shared one can fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8, affine=False)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.shared = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.fc_bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.bn(self.conv(x)))
        x = self.dw_bn(self.dw(x))
        y = self.pw(x)
        x = self.shared(y) + y  # the conv output is read twice: its BN stays
        return self.fc_bn(self.fc(x.mean(dim=(2, 3))))


class Expected(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.shared = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.conv(x))
        x = self.dw(x)
        y = self.pw(x)
        x = self.shared(y) + y
        return self.fc(x.mean(dim=(2, 3)))


def test_fold_batchnorm_structure_and_numerics():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = _randomize_bn(Before())
    before = capture(model, (x,))
    result = PassManager(build_passes(["fold-batchnorm", "dce"])).run(before)
    after = result.program
    assert after.op_counts() == capture(Expected().eval(), (x,)).op_counts()
    assert result.records[0].figures["batchnorms_folded"].value == 3
    assert result.records[0].figures["batchnorms_left"].value == 1
    torch.testing.assert_close(after.run(), model(x), atol=1e-5, rtol=1e-4)
    params = dict(after.graph_module.named_parameters())
    assert "bn.weight" not in params and "dw_bn.running_mean" not in dict(after.graph_module.named_buffers())


def test_ptq_folds_batchnorm_before_quantizing():
    # The ONNX side (no BatchNormalization left, every conv a QLinearConv) is checked in
    # tests/quant/test_residuals.py.
    torch.manual_seed(0)
    model = _randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
            nn.BatchNorm2d(16),
        )
    )
    program = capture(model, (torch.randn(2, 3, 8, 8),))
    result = PassManager(build_passes(["ptq", "dce"])).run(program)
    ops = result.program.op_counts()
    assert "batch_norm" not in ops and ops["conv2d_w8a8"] == 2
    assert result.records[0].figures["batchnorms_folded"].value == 2
    kept = PassManager(build_passes(["ptq"], {"ptq": {"fold_batchnorm": False}})).run(program).program
    assert kept.op_counts()["batch_norm"] == 2
