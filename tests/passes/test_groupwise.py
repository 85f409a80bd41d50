import re

import numpy as np
import onnx
import pytest
import torch

from optkit.errors import ConfigError, PassError
from optkit.ir.onnx_io import export_onnx
from optkit.ir.serialize import load_program, save_program
from optkit.pipeline import PassManager, build_passes
from optkit.quant.numerics import sqnr_db
from tests.passes.tiny_lm import lm_program


def run(program, **opts):
    return PassManager(build_passes(["groupwise", "dce"], {"groupwise": opts})).run(program)


def test_structure_every_linear_becomes_packed_int4(transformer_program):
    result = run(transformer_program, bits=4, group_size=16)
    after = result.program
    ops = after.op_counts()
    assert ops["linear_wq"] == 5 and "linear" not in ops
    packed = [t for n, t in after.graph_module.named_buffers() if n.endswith("w_packed")]
    assert len(packed) == 5 and all(t.dtype == torch.uint8 for t in packed)
    assert not any(n.endswith("weight") for n, _ in after.graph_module.named_parameters() if "attn" in n)
    assert after.annotations.precision["blocks.0.attn.qkv"] == "w4g16"
    figures = result.records[0].figures
    assert figures["weight_bytes_after"].value < figures["weight_bytes_before"].value / 4


def test_numerics_against_float(transformer_program):
    reference = transformer_program.run()
    sqnr = {
        bits: sqnr_db(reference, run(transformer_program, bits=bits, group_size=16).program.run())
        for bits in (4, 8)
    }
    assert sqnr[8] > 40.0
    assert 15.0 < sqnr[4] < sqnr[8]


def test_gptq_is_at_least_as_good_as_rtn(transformer_program):
    reference = transformer_program.run()
    rtn = sqnr_db(reference, run(transformer_program, bits=4, group_size=16).program.run())
    gptq = sqnr_db(reference, run(transformer_program, bits=4, group_size=16, method="gptq").program.run())
    assert gptq >= rtn - 0.5


def test_undividable_group_leaves_a_short_group_and_convs_are_listed(conv_program):
    result = run(conv_program, bits=4, group_size=16)
    figures = result.records[0].figures
    assert figures["layers_quantized"].value == 1  # the 8-input head: one short group of 8
    assert figures["short_groups"].value == "head: 8 input channels in a short group of 8"
    assert "convolution" in figures["skipped"].value


# -- a language model whose width (96, hidden 288) is a multiple of neither 64 nor 128 ----------


@pytest.mark.parametrize("group_size", [64, 128])
def test_structure_every_lm_layer_is_quantized_with_a_short_last_group(group_size):
    result = run(lm_program(), bits=4, group_size=group_size)
    after, figures = result.program, result.records[0].figures
    ops = after.op_counts()
    assert ops["linear_wq"] == 4 and ops["linear"] == 1  # the blocks' fc1/fc2; the head stays float
    assert set(after.annotations.precision.values()) == {f"w4g{group_size}"}
    buffers = dict(after.graph_module.named_buffers())
    assert buffers["q_blocks_0_fc1_w_packed"].shape == (96, 288 // 2)  # K rows as is, packed along N
    assert buffers["q_blocks_0_fc1_w_scale"].shape == (-(-96 // group_size), 288)
    assert buffers["q_blocks_0_fc2_w_scale"].shape == (-(-288 // group_size), 96)
    notes = figures["short_groups"].value.split("; ")
    assert len(notes) == 4
    assert (
        f"blocks.0.fc2: 288 input channels in {288 // group_size} groups of {group_size} + a short group of 32"
        in notes
    )


def test_numerics_of_short_groups_against_float():
    program = lm_program()
    reference = program.run()
    sqnr = {g: sqnr_db(reference, run(program, bits=4, group_size=g).program.run()) for g in (32, 64, 128)}
    assert sqnr[32] > 25.0 and sqnr[64] > 25.0 and sqnr[128] > 20.0
    assert sqnr[32] >= sqnr[128] - 0.5  # smaller groups, finer scales
    gptq = sqnr_db(reference, run(program, bits=4, group_size=64, method="gptq").program.run())
    assert gptq >= sqnr[64] - 0.5


@pytest.mark.slow
def test_short_groups_export_to_onnx_runtime_and_lower_through_tvm(tmp_path):
    from optkit.backends import lower

    program = run(lm_program(), bits=4, group_size=64).program
    figures = export_onnx(program, tmp_path / "lm.onnx")
    model = onnx.load(tmp_path / "lm.onnx")
    assert sum(t.data_type == onnx.TensorProto.INT4 for t in model.graph.initializer) == 4
    # ONNX Runtime may run DQ + MatMul as MatMulNBits, on int8 activations.
    assert figures["max_abs_error"] < 0.05 * figures["output_abs_max"]
    (got,) = lower(program, "cpu", num_cores=1).run(*program.example_inputs)
    np.testing.assert_allclose(got, program.run().numpy(), rtol=1e-4, atol=1e-4)


def test_output_head_stays_float_unless_asked():
    program = lm_program()
    kept = run(program, bits=4, group_size=64)
    assert "lm_head" not in kept.program.annotations.precision
    assert kept.records[0].figures["skipped"].value == (
        "lm_head: output head tied to the input embedding 'embed'; quantize_head=True quantizes it"
    )
    both = run(program, bits=4, group_size=64, quantize_head=True)
    assert both.program.annotations.precision["lm_head"] == "w4g64"
    # The embedding keeps reading the float table; the head reads its own int4 copy.
    (embedding,) = [n for n in both.program.compute_nodes() if n.target == torch.ops.aten.embedding.default]
    table = both.program.graph_module.get_parameter(str(embedding.args[0].target))
    assert table.dtype == torch.float32 and table.shape == (1024, 96)
    reference = program.run()
    assert sqnr_db(reference, both.program.run()) < sqnr_db(reference, kept.program.run())


def test_untied_head_is_found_by_its_shape_and_small_heads_are_not(transformer_program):
    result = run(lm_program(tied=False), bits=4, group_size=64)
    assert "lm_head: output head (1024 outputs from 96 inputs)" in result.records[0].figures["skipped"].value
    assert "out" in run(transformer_program, bits=4, group_size=16).program.annotations.precision


def test_tied_linear_weights_are_quantized_once():
    from torch import nn

    from optkit.ir.capture import capture

    class Twice(nn.Module):  # one block applied twice, as in weight-shared (recurrent) depth
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(40, 40)

        def forward(self, x):
            return self.shared(torch.tanh(self.shared(x)))

    program = capture(Twice(), (torch.randn(4, 40),))
    result = run(program, bits=4, group_size=16)
    after = result.program
    assert after.op_counts()["linear_wq"] == 2
    nodes = [n for n in after.compute_nodes() if n.target == torch.ops.optkit.linear_wq.default]
    assert nodes[0].args[1].target == nodes[1].args[1].target  # one packed weight read twice
    buffers = dict(after.graph_module.named_buffers())
    assert "q_shared_w_packed_1" not in buffers
    stored = sum(buffers[f"q_shared_{role}"].nbytes for role in ("w_packed", "w_scale", "w_zero"))
    assert result.records[0].figures["weight_bytes_after"].value == stored  # counted once
    assert sqnr_db(program.run(), after.run()) > 15.0


def test_sqnr_floor_error_names_the_worst_layers_and_what_to_try():
    with pytest.raises(PassError) as err:
        run(lm_program(), bits=4, group_size=64, min_sqnr_db=60.0)
    message = str(err.value)
    assert "below its 60 dB floor" in message
    worst = re.search(r"one layer quantized alone: (.*?)\. Options", message).group(1)
    paths = re.findall(r"(blocks\.\d\.fc\d) \(\d+\.\d dB\)", worst)
    assert len(paths) == 3
    assert f"skip={paths}" in message
    for option in ("bits=8", "group_size=32", "method='gptq'", "min_sqnr_db below 60"):
        assert option in message


def test_a_failing_hint_does_not_hide_the_error(monkeypatch):
    import optkit.passes.groupwise as groupwise

    def broken(*args, **kwargs):
        raise RuntimeError("no batches")

    monkeypatch.setattr(groupwise, "worst_layers", broken)
    with pytest.raises(PassError, match=r"below its 60 dB floor\.$"):
        run(lm_program(), bits=4, group_size=64, min_sqnr_db=60.0)


@pytest.mark.slow
def test_saved_and_onnx_exported_with_int4_storage(tmp_path, transformer_program):
    program = run(transformer_program, bits=4, group_size=16).program
    save_program(program, tmp_path / "q.pt2")
    loaded = load_program(tmp_path / "q.pt2")
    assert torch.allclose(loaded.run(), program.run())
    export_onnx(program, tmp_path / "q.onnx")
    model = onnx.load(tmp_path / "q.onnx")
    assert sum(t.data_type == onnx.TensorProto.INT4 for t in model.graph.initializer) == 5
    assert (tmp_path / "q.pt2").stat().st_size < (tmp_path / "q.onnx").stat().st_size * 4


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"bits": 3}, "bits must be one of 4, 8, got 3"),
        ({"group_size": 20}, "multiple of 8"),
        ({"method": "awq"}, "method must be one of"),
    ],
)
def test_bad_config(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_passes(["groupwise"], {"groupwise": opts})
