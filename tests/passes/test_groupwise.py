import onnx
import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.onnx_io import export_onnx
from optkit.ir.serialize import load_program, save_program
from optkit.pipeline import PassManager, build_passes
from optkit.quant.numerics import sqnr_db


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


def test_undividable_group_is_listed_as_skipped(conv_program):
    result = run(conv_program, bits=4, group_size=16)
    figures = result.records[0].figures
    assert figures["layers_quantized"].value == 0
    assert "group_size 16 does not divide its 8 input channels" in figures["skipped"].value
    assert "convolution" in figures["skipped"].value


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
