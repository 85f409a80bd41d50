"""`ptq` with SVDQuant's low-rank branch (`lowrank`): W4A8 on weights with outliers."""

import pytest
import torch

from optkit.errors import ConfigError, PassError
from optkit.ir.onnx_io import export_onnx
from optkit.pipeline import PassManager, build_passes
from optkit.quant.numerics import sqnr_db
from optkit.quant.ops import dequantize_weight

W4A8 = {"wbits": 4, "abits": 8, "granularity": "group", "group_size": 16, "min_sqnr_db": 0.0}


def run(program, **opts):
    return PassManager(build_passes(["ptq", "dce"], {"ptq": {**W4A8, **opts}})).run(program)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_branch_beats_plain_w4_on_outlier_weights(outlier_program, method):
    reference = outlier_program.run()
    plain = sqnr_db(reference, run(outlier_program, method=method).program.run())
    branch = sqnr_db(reference, run(outlier_program, method=method, lowrank=4).program.run())
    assert branch > plain + 3.0  # measured +12 dB (RTN), +5 dB (GPTQ)
    assert branch > 25.0


def test_output_matches_the_svdquant_formula(outlier_program):
    """y = Q(x) Q(W - L1 L2)^T + b + (x L2^T) L1^T, computed from the stored tensors."""
    result = run(outlier_program, lowrank=4)
    program = result.program
    buf = dict(program.graph_module.named_buffers())
    x = outlier_program.example_inputs[0]
    for layer in ("0", "2"):
        w = dequantize_weight(
            buf[f"q_{layer}_w_packed"], buf[f"q_{layer}_w_scale"], buf[f"q_{layer}_w_zero"], 4, 16, True
        )  # (K, N)
        scale, zero = buf[f"q_{layer}_x_scale"], buf[f"q_{layer}_x_zero"].float()
        xq = (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale
        down, up = buf[f"q_{layer}_lowrank_down"].float(), buf[f"q_{layer}_lowrank_up"].float()
        x = xq @ w + buf[f"q_{layer}_bias"] + (x @ down.t()) @ up.t()
        if layer == "0":
            x = torch.nn.functional.gelu(x)
    torch.testing.assert_close(program.run(), x, atol=1e-5, rtol=1e-5)


def test_structure_branch_beside_each_quantized_kernel(outlier_program):
    result = run(outlier_program, lowrank=4)
    program, figures = result.program, result.records[0].figures
    ops = program.op_counts()
    assert ops["linear_wq"] == 2 and ops["act_qdq"] == 2
    assert ops["linear"] == 4 and ops["add"] == 2 and ops["_to_copy"] == 4
    assert program.annotations.precision == {"0": "w4g16a8+lr4", "2": "w4g16a8+lr4"}
    for node in program.graph.nodes:
        if node.target is torch.ops.optkit.linear_wq.default:
            (add,) = node.users  # the quantized kernel's output goes only to the branch's add
            assert add.target is torch.ops.aten.add.Tensor
            up = add.args[1]
            down = up.args[0]
            assert up.target is down.target is torch.ops.aten.linear.default
            qdq = node.args[0]  # the kernel reads int8-rounded x, the branch the float x
            assert qdq.target is torch.ops.optkit.act_qdq.default and down.args[0] is qdq.args[0]
    factors = (96 * 4 + 4 * 64) * 2 * 2  # two layers, float16
    assert figures["lowrank_layers"].value == 2 and figures["lowrank_bytes"].value == factors
    plain = run(outlier_program).records[0].figures["weight_bytes_after"].value
    assert figures["weight_bytes_after"].value == plain + factors
    assert "0: " in figures["lowrank_gain"].value and "2: " in figures["lowrank_gain"].value


def test_fraction_and_skip_choose_layers(outlier_program):
    half = run(outlier_program, lowrank=4, lowrank_fraction=0.5).program
    assert sum(label.endswith("+lr4") for label in half.annotations.precision.values()) == 1
    skipped = run(outlier_program, lowrank=4, lowrank_skip=("2",)).program
    assert skipped.annotations.precision == {"0": "w4g16a8+lr4", "2": "w4g16a8"}


def test_branch_with_smoothquant_and_int8_gemm(outlier_program):
    # The split is taken after SmoothQuant scaled the weight; W8A8's int8 GEMM gets a branch too.
    reference = outlier_program.run()
    smooth = run(outlier_program, lowrank=2, smoothquant=0.5, smooth_threshold=0.0)
    assert smooth.program.op_counts()["mul"] == 2 and smooth.program.op_counts()["linear"] == 4
    assert sqnr_db(reference, smooth.program.run()) > 20.0
    w8 = run(outlier_program, wbits=8, granularity="channel", lowrank=2).program
    assert w8.op_counts()["linear_w8a8"] == 2 and w8.op_counts()["linear"] == 4
    assert sqnr_db(reference, w8.run()) > 30.0


def test_onnx_export_runs_the_branch_and_matches(tmp_path, outlier_program):
    program = run(outlier_program, lowrank=4).program
    figures = export_onnx(program, tmp_path / "lowrank.onnx")  # checks in ONNX Runtime
    assert figures["max_abs_error"] < 1e-4 * figures["output_abs_max"]


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"lowrank": -1}, r"lowrank \(the branch's rank\) must be an integer >= 0 \(0 = off\), got -1"),
        ({"lowrank": True}, "lowrank .* must be an integer"),
        ({"lowrank_fraction": 0.0}, r"lowrank_fraction must be in \(0, 1\]"),
        ({"lowrank_fraction": 1.5}, r"lowrank_fraction must be in \(0, 1\].*got 1.5"),
    ],
)
def test_bad_lowrank_config(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_passes(["ptq"], {"ptq": opts})


def test_rank_larger_than_a_layer_is_a_config_error(outlier_program):
    with pytest.raises(
        PassError, match=r"lowrank=65 exceeds min\(out, in\) of 0 \(96 x 64\), 2 \(64 x 96\)"
    ) as err:
        run(outlier_program, lowrank=65)
    assert isinstance(err.value.__cause__, ConfigError)


def test_tied_linear_stores_one_copy_of_the_factors():
    from torch import nn

    from optkit.ir.capture import capture

    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    program = capture(nn.Sequential(shared, nn.GELU(), shared), (torch.randn(8, 32),))
    result = run(program, lowrank=4)
    names = [n for n, _ in result.program.graph_module.named_buffers() if "lowrank" in n]
    assert sorted(names) == ["q_0_lowrank_down", "q_0_lowrank_up"]
    assert result.records[0].figures["lowrank_bytes"].value == (32 * 4 + 4 * 32) * 2
    assert result.program.op_counts()["linear"] == 4
    assert sqnr_db(program.run(), result.program.run()) > 15.0
