import re

import pytest
import torch

from optkit.errors import ConfigError, PassError
from optkit.ir.onnx_io import export_onnx
from optkit.pipeline import PassManager, build_passes
from optkit.quant.numerics import sqnr_db
from tests import models
from tests.passes.tiny_lm import lm_program


def run(program, passes=("ptq", "dce"), **opts):
    return PassManager(build_passes(list(passes), {"ptq": opts})).run(program)


def test_w8a8_uses_int8_gemm_and_conv_kernels(transformer_program, conv_program):
    t = run(transformer_program).program
    assert t.op_counts()["linear_w8a8"] == 5
    c = run(conv_program).program
    assert c.op_counts()["conv2d_w8a8"] == 2 and c.op_counts()["linear_w8a8"] == 1
    assert t.annotations.precision["out"] == "w8ca8"
    int8 = [b for n, b in t.graph_module.named_buffers() if n.endswith("w_q")]
    assert len(int8) == 5 and all(b.dtype == torch.int8 for b in int8)


def test_seven_bit_weights_run_the_int8_kernels_on_half_the_grid(transformer_program, conv_program):
    # wbits=7: int8 storage of values in [-64, 63], convs too, on the same int8 kernels
    reference = transformer_program.run()
    for program, ops in ((transformer_program, {"linear_w8a8": 5}), (conv_program, {"conv2d_w8a8": 2})):
        seven = run(program, wbits=7).program
        assert all(seven.op_counts()[op] == count for op, count in ops.items())
        weights = [b for n, b in seven.graph_module.named_buffers() if n.endswith("w_q")]
        assert weights and all(b.dtype == torch.int8 for b in weights)
        assert max(int(b.abs().max()) for b in weights) == 63  # each channel's largest |w| maps to 63
        assert set(seven.annotations.precision.values()) == {"w7ca8"}
    w8a8 = sqnr_db(reference, run(transformer_program).program.run())
    w7a8 = sqnr_db(reference, run(transformer_program, wbits=7).program.run())
    assert 25.0 < w7a8 < w8a8  # half the weight grid costs some dB, not the model


def test_precisions_order_by_sqnr(transformer_program):
    reference = transformer_program.run()
    w8a8 = sqnr_db(reference, run(transformer_program).program.run())
    w4a8 = sqnr_db(
        reference, run(transformer_program, wbits=4, granularity="group", group_size=16).program.run()
    )
    w4a16 = sqnr_db(
        reference,
        run(transformer_program, wbits=4, abits=16, granularity="group", group_size=16).program.run(),
    )
    assert w8a8 > 30.0
    assert w8a8 > w4a16 >= w4a8 - 0.5
    assert w4a8 > 12.0


def test_w4a8_structure(transformer_program):
    ops = run(transformer_program, wbits=4, granularity="group", group_size=16).program.op_counts()
    assert ops["linear_wq"] == 5 and ops["act_qdq"] == 5


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_observers_all_work(transformer_program, observer):
    out = run(transformer_program, observer=observer).program.run()
    assert sqnr_db(transformer_program.run(), out) > 25.0


def test_smoothquant_inserts_scaling_and_keeps_function(transformer_program):
    result = run(transformer_program, smoothquant=0.5, smooth_threshold=0.0)
    assert result.records[0].figures["layers_smoothed"].value == 5
    assert result.program.op_counts()["mul"] >= 5
    assert sqnr_db(transformer_program.run(), result.program.run()) > 15.0


def test_smoothquant_helps_when_activations_have_outlier_channels():
    from torch import nn

    from optkit.ir.capture import capture

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(32, 64)
    x[:, 3] *= 60.0  # an outlier channel, as in LLM and DiT activations
    program = capture(model, (x,))
    reference = program.run()
    plain = sqnr_db(reference, run(program, observer="minmax").program.run())
    smooth = sqnr_db(reference, run(program, observer="minmax", smoothquant=0.5).program.run())
    assert smooth > plain + 3.0


def test_smoothquant_calibrates_a_layer_after_a_smoothed_one_on_its_true_inputs():
    from torch import nn

    from optkit.ir.capture import capture
    from optkit.quant.sites import find_sites
    from optkit.quant.smoothing import insert_smoothing, smoothing_factors

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    x = torch.randn(32, 64)
    x[:, 3] *= 60.0
    program = capture(model, (x,))
    reference = program.run()
    # Smoothing alone leaves the function unchanged: the layer reads the rebalanced weight.
    smoothed = program.clone()
    site = find_sites(smoothed)[0][0]
    insert_smoothing(smoothed.graph_module, site, smoothing_factors(x.abs().amax(0), site.weight.t(), 0.5))
    smoothed.graph_module.recompile()
    torch.testing.assert_close(smoothed.run(), reference, rtol=1e-4, atol=1e-4)
    # Both layers smoothed and W8A8 static: the second layer's scale fits what it really reads.
    plain = sqnr_db(reference, run(program, observer="minmax").program.run())
    both = sqnr_db(
        reference, run(program, observer="minmax", smoothquant=0.5, smooth_threshold=0.0).program.run()
    )
    assert both > plain


def _outlier_channel_program():
    from torch import nn

    from optkit.ir.capture import capture

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    x = torch.randn(32, 64)
    x[:, 3] *= 60.0
    return capture(model, (x,))


def test_smoothquant_search_picks_each_layers_alpha_by_its_output_sqnr():
    from optkit.quant.numerics import QuantSpec
    from optkit.quant.sites import find_sites
    from optkit.quant.smoothing import sample_input_rows, search_alpha

    program = _outlier_channel_program()
    site = find_sites(program)[0][0]
    rows = sample_input_rows(program, [site], [program.example_inputs], rows=16)[site.node.name]
    assert rows.shape == (16, 64)
    x = program.example_inputs[0]
    alpha, scores = search_alpha(site, x, x.abs().amax(0), QuantSpec(8, True, "channel"), (0.5, 0.8))
    assert set(scores) == {0.0, 0.5, 0.8} and alpha == max(scores, key=scores.get)
    assert alpha > 0 and scores[alpha] > scores[0.0] + 3.0  # the outlier channel is worth moving


def test_smoothquant_search_reports_the_alphas_and_beats_no_smoothing():
    program = _outlier_channel_program()
    reference = program.run()
    result = run(program, observer="minmax", smoothquant_search=(0.25, 0.5, 0.75), smooth_threshold=0.0)
    figures = result.records[0].figures
    counts = dict(part.split(": ") for part in figures["smooth_alphas"].value.split(", "))
    assert sum(int(n) for n in counts.values()) == 2
    assert figures["layers_smoothed"].value == sum(int(n) for a, n in counts.items() if a != "0")
    plain = sqnr_db(reference, run(program, observer="minmax").program.run())
    assert sqnr_db(reference, result.program.run()) > plain


def test_mixed_precision_meets_budget_and_reports_allocation(transformer_program):
    result = run(transformer_program, average_bits=6.0, min_sqnr_db=5.0)
    figures = result.records[0].figures
    assert figures["average_weight_bits"].value <= 6.0
    assert "blocks.0" in figures["mixed_precision"].value
    labels = set(result.program.annotations.precision.values())
    assert labels <= {"w4ca8", "w8ca8"} and "w4ca8" in labels


def test_time_embedding_modules_stay_float():
    from torch import nn

    from optkit.ir.capture import capture

    class Denoiser(nn.Module):
        def __init__(self):
            super().__init__()
            self.t_embedder = nn.Linear(1, 16)
            self.body = nn.Linear(16, 16)

        def forward(self, x, t):
            return self.body(x + self.t_embedder(t[:, None]))

    program = capture(Denoiser(), (torch.randn(4, 16), torch.rand(4)))
    result = run(program)
    assert "t_embedder" not in result.program.annotations.precision
    assert "t_embedder: skipped by configuration" in result.records[0].figures["kept_float"].value


def test_onnx_runs_quantized_program(tmp_path, conv_program, transformer_program):
    for program in (conv_program, transformer_program):
        q = run(program).program
        assert export_onnx(q, tmp_path / "q.onnx")["max_abs_error"] < 1e-3


def test_sqnr_floor_is_enforced_and_the_error_says_what_to_try(transformer_program):
    from optkit.passes.ptq import TIME_MODULES

    with pytest.raises(PassError, match="below its 60 dB floor") as err:
        run(transformer_program, wbits=4, granularity="group", group_size=16, min_sqnr_db=60.0)
    message = str(err.value)
    worst = re.search(r"one layer quantized alone: (.*?)\. Options", message).group(1)
    paths = re.findall(r"([\w.]+) \(\d+\.\d dB\)", worst)
    assert len(paths) == 3 and set(paths) <= {
        "out",
        *(f"blocks.{i}.attn.{m}" for i in (0, 1) for m in ("qkv", "proj")),
    }
    # keep_float keeps its defaults (the timestep modules) and adds the worst layers.
    assert f"keep_float={list(TIME_MODULES) + paths}" in message
    for option in ("smoothquant=0.5", "abits=16", "wbits=8", "min_sqnr_db below 60"):
        assert option in message


def test_nan_in_calibration_is_an_error(transformer_program):
    transformer_program.example_inputs[0][0, 0, 0] = float("nan")
    with pytest.raises(PassError, match="NaN or Inf"):
        run(transformer_program)


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"wbits": 2}, "wbits must be one of 4, 7, 8"),
        ({"average_bits": 9.0}, "average_bits must be 0"),
        ({"average_bits": 6.0, "wbits": 7}, "wbits=7 .* cannot be combined"),
        ({"smoothquant": 1.5}, "smoothquant"),
        (
            {"smoothquant_search": [0.5, 1.5]},
            r"smoothquant_search must be a list of SmoothQuant alphas in \[0, 1\]",
        ),
        ({"smoothquant_search": 0.5}, "smoothquant_search must be a list"),
        ({"smoothquant_search": [0.5], "abits": 16}, "needs abits=4 or 8"),
        ({"calibration": "random"}, "calibration must be one of"),
    ],
)
def test_bad_config(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_passes(["ptq"], {"ptq": opts})


def test_step_calibration_needs_a_sampler(transformer_program):
    with pytest.raises(PassError, match=r"has no \[diffusion\] sampler"):
        run(transformer_program, calibration="single-step")


@pytest.mark.parametrize("wbits", [4, 8])
def test_per_tensor_minmax_weights_run(transformer_program, wbits):
    # The naive baseline of the quantization benchmark: one scale per weight tensor.
    result = run(transformer_program, wbits=wbits, granularity="tensor", observer="minmax", min_sqnr_db=0.0)
    ops = result.program.op_counts()
    assert ops.get("linear_w8a8" if wbits == 8 else "linear_wq") == 5
    assert sqnr_db(transformer_program.run(), result.program.run()) > (25.0 if wbits == 8 else 5.0)


def _tiny_dit():
    return models.tiny_dit_program()


def test_diffusion_input_layer_stays_float_unless_disabled():
    program = _tiny_dit()
    kept = run(program, calibration="single-step", calibration_batches=1, min_sqnr_db=0.0)
    assert "x_embedder" not in kept.program.annotations.precision
    assert "x_embedder: reads the noisy input x_t" in kept.records[0].figures["kept_float"].value
    assert "conv2d_w8a8" not in kept.program.op_counts()
    quantized = run(
        program, calibration="single-step", calibration_batches=1, keep_input_layer=False, min_sqnr_db=0.0
    )
    assert quantized.program.op_counts()["conv2d_w8a8"] == 1


def test_reads_model_input_sees_through_layout_ops():
    from torch import nn

    from optkit.ir.capture import capture
    from optkit.quant.sites import find_sites, reads_model_input

    class PatchEmbed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.body = nn.Linear(16, 16)

        def forward(self, x):  # x (B, 2, 4, 4) -> patches (B, 4, 8)
            patches = x.reshape(x.shape[0], 2, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], 4, 8)
            return self.body(self.embed(patches))

    program = capture(PatchEmbed(), (torch.randn(2, 2, 4, 4),))
    sites, _ = find_sites(program)
    assert {s.path: reads_model_input(program, s) for s in sites} == {"embed": True, "body": False}


def test_mixed_precision_with_groups_runs_8bit_layers_on_the_int8_gemm(transformer_program):
    result = run(
        transformer_program, wbits=4, granularity="group", group_size=16, average_bits=6.0, min_sqnr_db=5.0
    )
    labels = set(result.program.annotations.precision.values())
    assert labels <= {"w4g16a8", "w8ca8"} and {"w4g16a8", "w8ca8"} <= labels
    assert result.program.op_counts()["linear_w8a8"] >= 1


def test_w4_layer_with_odd_outputs_is_stored_as_int8():
    from torch import nn

    from optkit.ir.capture import capture

    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1))  # a score head: one output
    program = capture(model, (torch.randn(8, 32),))
    result = run(program, wbits=4, granularity="group", group_size=16, min_sqnr_db=0.0)
    assert result.program.annotations.precision == {"0": "w4g16a8", "2": "w8ca8"}
    assert sqnr_db(program.run(), result.program.run()) > 15.0


def test_auto_observer_follows_the_calibration(conv_program):
    from optkit.passes.ptq import PTQConfig

    dit = models.tiny_dit_program()
    assert PTQConfig(calibration="single-step").observer_kind(dit) == "minmax"
    assert PTQConfig(calibration="all-steps").observer_kind(dit) == "mse"
    assert PTQConfig().observer_kind(dit) == "mse"  # a sampled model calibrates on all steps
    assert PTQConfig().observer_kind(conv_program) == "percentile"  # the example inputs
    assert PTQConfig(calibration="single-step", observer="mse").observer_kind(dit) == "mse"


def test_mixed_precision_ranks_on_a_bounded_spread_of_batches():
    from optkit.passes.ptq import SENSITIVITY_BATCHES, _spread

    batches = list(range(160))  # all-steps calibration of a guided model: 4 x 20 x 2
    picked = _spread(batches, SENSITIVITY_BATCHES)
    assert len(picked) == SENSITIVITY_BATCHES and picked[0] == 0 and picked[-1] == 159
    assert picked == sorted(set(picked))
    assert _spread(batches[:3], SENSITIVITY_BATCHES) == [0, 1, 2]


def test_group_granularity_covers_widths_the_group_does_not_divide(tmp_path):
    program = lm_program()
    result = run(program, wbits=4, granularity="group", group_size=64)
    after, figures = result.program, result.records[0].figures
    assert after.op_counts()["linear_wq"] == 4 and after.op_counts()["act_qdq"] == 4
    assert set(after.annotations.precision.values()) == {"w4g64a8"}  # not per-channel
    assert (
        "blocks.1.fc1: 96 input channels in 1 group of 64 + a short group of 32"
        in figures["short_groups"].value
    )
    assert sqnr_db(program.run(), after.run()) > 20.0
    assert export_onnx(after, tmp_path / "lm.onnx")["max_abs_error"] < 0.05 * float(after.run().abs().max())


def test_output_head_kept_float_unless_quantize_head():
    program = lm_program()
    kept = run(program)
    assert (
        "lm_head: output head tied to the input embedding 'embed'"
        in kept.records[0].figures["kept_float"].value
    )
    assert kept.program.op_counts()["linear"] == 1 and kept.program.op_counts()["linear_w8a8"] == 4
    quantized = run(program, quantize_head=True)
    assert quantized.program.annotations.precision["lm_head"] == "w8ca8"
    assert "kept_float" not in quantized.records[0].figures or "lm_head" not in (
        quantized.records[0].figures["kept_float"].value
    )
    reference = program.run()
    assert sqnr_db(reference, kept.program.run()) > sqnr_db(reference, quantized.program.run())


def test_tied_linear_weights_store_one_int8_copy():
    from torch import nn

    from optkit.ir.capture import capture

    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.GELU(), shared)  # one weight, two call sites
    program = capture(model, (torch.randn(8, 32),))
    result = run(program)
    buffers = dict(result.program.graph_module.named_buffers())
    w_q = [n for n in buffers if n.endswith("w_q")]
    assert result.program.op_counts()["linear_w8a8"] == 2 and len(w_q) == 1
    assert result.records[0].figures["weight_bytes_after"].value == 32 * 32 + 32 * 4
    assert sqnr_db(program.run(), result.program.run()) > 30.0
