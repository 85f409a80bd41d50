"""Residual adds and float readers of quantized convs on the int8 grid: what the graph holds,
and an ONNX export that ONNX Runtime runs as int8 from the first conv to the classifier."""

import collections

import numpy as np
import pytest
import torch
from torch import nn

from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx, onnx_session
from optkit.ir.ops import op_name
from optkit.metrics import sqnr_db
from optkit.pipeline import PassManager, build_passes
from optkit.report import Figure


class TinyResidualCNN(nn.Module):
    """Stem conv-BN-ReLU6-max pool, an inverted residual (expand, depthwise, project, add), mean, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(), nn.MaxPool2d(3, 2, 1)
        )
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6())
        self.project = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.head(x.mean(dim=(2, 3)))


def _quantized():
    torch.manual_seed(0)
    model = TinyResidualCNN().eval()
    program = capture(model, (torch.randn(4, 3, 12, 12),))
    result = PassManager(build_passes(["ptq", "dce"], {"ptq": {"quantize_head": True}})).run(program)
    return program, result


def test_residual_and_mean_inputs_are_quantized():
    program, result = _quantized()
    graph = result.program.graph
    add = next(n for n in graph.nodes if op_name(n) == "add")
    mean = next(n for n in graph.nodes if op_name(n) == "mean")
    assert [op_name(a) for a in add.args] == ["act_qdq", "act_qdq"]
    assert op_name(mean.args[0]) == "act_qdq"
    # The skip input is the expand conv's input: it reuses that conv's scale (one quantizer),
    # which is the grid of the max pool's input (the pool runs on uint8 in ONNX Runtime).
    pool = next(n for n in graph.nodes if op_name(n) == "max_pool2d")
    assert op_name(pool.args[0]) == "act_qdq" and pool.args[0].args[1].target == add.args[0].args[1].target
    expand = next(n for n in graph.nodes if op_name(n) == "conv2d_w8a8" and n.args[0] is add.args[0].args[0])
    assert add.args[0].args[1].target == expand.args[1].target
    # The stem's output (read by the max pool), the add's two inputs, its output (read by the mean).
    assert result.records[0].figures["int8_edges_added"].value == 4


@pytest.mark.parametrize(("option", "quantized"), [("auto", False), (True, True)])
def test_a_sampled_model_keeps_its_residual_adds_float_unless_asked(option, quantized):
    """Sampling feeds every step's error into the next step (zoo:ldm: 24.8 -> 7.3 dB with int8
    residual adds), so "auto" leaves them alone for a model whose workload samples."""
    from tests import models

    program, _ = _quantized()
    sampled = program.clone()
    sampled.workload = models.diffusion_workload()  # set directly: only the workload matters here
    options = {"quantize_head": True, "quantize_residuals": option, "calibration": "example"}
    passes = build_passes(["ptq"], {"ptq": options})
    figures = passes[0].run(sampled).figures
    assert (figures.get("int8_edges_added", Figure(0, "")).value > 0) == quantized


def test_onnx_runtime_runs_every_layer_in_int8(tmp_path):
    import onnx
    import onnxruntime as ort

    program, result = _quantized()
    path = tmp_path / "w8a8.onnx"
    export_onnx(result.program, path, check=False)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QLinearConv"] == 4 and ops["QLinearAdd"] == 1 and ops["QGemm"] == 1
    assert not {"Conv", "FusedConv", "Add", "Gemm", "MatMul", "BatchNormalization", "MaxPool"} & set(ops)
    session = onnx_session(path, 1)
    (got,) = session.run(None, {session.get_inputs()[0].name: program.example_inputs[0].numpy()})
    eager = result.program.run().numpy()
    assert sqnr_db(torch.from_numpy(eager), torch.from_numpy(np.asarray(got))) > 30
