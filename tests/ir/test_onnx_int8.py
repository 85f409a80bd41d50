"""int8 weights stored as uint8 in an exported ONNX model (`optkit.ir.onnx_int8`)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optkit.errors import UnknownNameError
from optkit.ir import onnx_int8
from optkit.ir.onnx_int8 import ort_u8s8_exact, resolve_int8_weights, unsigned_int8_weights
from optkit.ir.onnx_io import export_onnx, run_onnx
from optkit.pipeline import PassManager, build_passes


def _w8a8(program, **opts):
    opts = {"min_sqnr_db": 0.0, **opts}
    return PassManager(build_passes(["ptq", "dce"], {"ptq": opts})).run(program).program


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize(
    ("flags", "machine", "exact"),
    [
        ({"avx2", "fma"}, "x86_64", False),  # U8S8 on vpmaddubsw: saturates
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", False),
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", True),
        ({"avx2", "avx_vnni"}, "x86_64", True),
        (set(), "aarch64", True),
    ],
)
def test_u8s8_is_exact_only_with_vnni_on_x86(flags, machine, exact):
    assert ort_u8s8_exact(frozenset(flags), machine) is exact


def test_forms_resolve_and_an_unknown_one_is_refused_with_the_known_ones():
    assert resolve_int8_weights("s8") == "s8" and resolve_int8_weights("u8") == "u8"
    assert resolve_int8_weights("auto") == ("s8" if ort_u8s8_exact() else "u8")
    with pytest.raises(UnknownNameError, match="auto, s8, u8"):
        resolve_int8_weights("int4")
    # 7-bit weights keep int8 under auto on every CPU; an explicit form is kept as given
    assert onnx_int8.choose_int8_weights("auto", True) == "s8"
    assert onnx_int8.choose_int8_weights("auto", False) == resolve_int8_weights("auto")
    assert (
        onnx_int8.choose_int8_weights("u8", True) == "u8"
        and onnx_int8.choose_int8_weights("s8", False) == "s8"
    )


def test_u8_weights_dequantize_to_the_same_values_and_run_exactly(tmp_path, conv_program):
    program = _w8a8(conv_program)
    s8 = export_onnx(program, tmp_path / "s8.onnx", check=False, int8_weights="s8")
    u8 = export_onnx(program, tmp_path / "u8.onnx", int8_weights="u8")
    assert s8["int8_weights_u8"] == 0 and u8["int8_weights_u8"] == 3  # two convs and the head
    assert s8["int8_weights_s8"] == 3 and u8["int8_weights_s8"] == 0
    # exact on every CPU: ONNX Runtime's U8U8 kernels widen to int16
    assert u8["max_abs_error"] < 1e-4 * max(1.0, u8["output_abs_max"])
    signed, unsigned = _initializers(tmp_path / "s8.onnx"), _initializers(tmp_path / "u8.onnx")
    assert not [n for n, v in unsigned.items() if v.dtype == np.int8]
    moved = [n for n, v in signed.items() if v.dtype == np.int8]
    assert moved and all(unsigned[n].dtype == np.uint8 for n in moved)
    for n in moved:  # value - zero point is unchanged, so are the dequantized weights
        np.testing.assert_array_equal(unsigned[n].astype(np.int16) - 128, signed[n].astype(np.int16))


def test_per_token_matmul_integer_gets_a_uint8_zero_point(tmp_path, transformer_program):
    program = _w8a8(transformer_program, activations="per-token")
    figures = export_onnx(program, tmp_path / "u8.onnx", int8_weights="u8")
    graph = onnx.load(str(tmp_path / "u8.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert matmuls and figures["int8_weights_u8"] >= len(matmuls)
    for node in matmuls:
        assert inits[node.input[1]].dtype == np.uint8 and inits[node.input[3]] == 128
    assert figures["max_abs_error"] < 1e-4 * max(1.0, figures["output_abs_max"])
    (got,) = run_onnx(tmp_path / "u8.onnx", program.example_inputs)
    np.testing.assert_allclose(
        got, program.run().detach().numpy(), atol=1e-4 * max(1.0, figures["output_abs_max"])
    )


def test_an_int8_initializer_read_other_than_as_a_weight_is_left_alone():
    w = numpy_helper.from_array(np.array([[1, -2], [3, -4]], np.int8), "w")
    zero = numpy_helper.from_array(np.zeros(2, np.int8), "zero")
    scale = numpy_helper.from_array(np.ones(2, np.float32), "scale")
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["w", "scale", "zero"], ["wd"], axis=1),
            helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),  # w read as data too
            helper.make_node("Add", ["wd", "wf"], ["y"]),
        ],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [w, zero, scale],
    )
    model = helper.make_model(graph)
    assert unsigned_int8_weights(model) == 0
    assert {t.name: t.data_type for t in model.graph.initializer}["w"] == TensorProto.INT8


@pytest.mark.parametrize("vnni", [True, False])
def test_the_note_on_kept_int8_weights_says_where_they_are_exact_and_how_to_be_exact_everywhere(
    monkeypatch, vnni
):
    monkeypatch.setattr(onnx_int8, "ort_u8s8_exact", lambda: vnni)
    note = onnx_int8.int8_kept_note(5)
    assert "keeps its 5 int8 weights as int8" in note and "--onnx-int8-weights u8" in note
    assert ("exact on this CPU (VNNI)" in note) is vnni
    assert ("saturate on this CPU without VNNI" in note) is not vnni


def test_seven_bit_weights_stay_int8_under_auto_and_run_exactly(tmp_path, monkeypatch, conv_program):
    # on a CPU without VNNI `auto` writes uint8, except for 7-bit weights: U8S8 cannot saturate
    monkeypatch.setattr(onnx_int8, "ort_u8s8_exact", lambda *_: False)
    seven = export_onnx(_w8a8(conv_program, wbits=7), tmp_path / "w7.onnx", int8_weights="auto")
    eight = export_onnx(_w8a8(conv_program), tmp_path / "w8.onnx", check=False, int8_weights="auto")
    assert (seven["int8_weights_s8"], seven["int8_weights_u8"], seven["int8_weights_7bit"]) == (3, 0, 1.0)
    assert (eight["int8_weights_s8"], eight["int8_weights_u8"], eight["int8_weights_7bit"]) == (0, 3, 0.0)
    weights = [v for v in _initializers(tmp_path / "w7.onnx").values() if v.dtype == np.int8 and v.size > 8]
    assert weights and max(int(np.abs(v.astype(np.int16)).max()) for v in weights) <= 64
    assert seven["max_abs_error"] < 1e-4 * max(1.0, seven["output_abs_max"])  # exact on this CPU too
    note = onnx_int8.int8_kept_note(3, seven_bit=True)
    assert "fit 7 bits" in note and "exactly on every CPU" in note
