"""`ptq`'s named local treatments (`optkit.quant.treatments`): which layers each keeps float,
what it gains on a model built to show it, and the old flags as aliases."""

import pytest
import torch
from optkit.passes.ptq import PTQConfig

from optkit.errors import ConfigError, UnknownNameError
from optkit.ir.capture import capture
from optkit.pipeline import PassManager, build_passes
from optkit.quant.numerics import sqnr_db
from optkit.quant.treatments import DEFAULT_TREATMENTS, TREATMENTS
from tests import models

W4A8 = {"wbits": 4, "granularity": "group", "group_size": 16}
SINGLE_STEP = {"calibration": "single-step", "calibration_batches": 1, "min_sqnr_db": 0.0}


def run(program, **opts):
    return PassManager(build_passes(["ptq", "dce"], {"ptq": opts})).run(program)


def kept(result) -> str:
    figure = result.records[0].figures.get("kept_float")
    return figure.value if figure is not None else ""


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return models.tiny_dit_program()


def test_default_treatments_keep_a_denoisers_first_last_and_time_layers_float(dit):
    assert PTQConfig().treatments == DEFAULT_TREATMENTS == ("time-embedding", "input-layer", "output-layer")
    named = run(dit, **SINGLE_STEP).program.annotations.precision
    old = run(dit, **SINGLE_STEP, keep_input_layer=True, treatments=list(DEFAULT_TREATMENTS))
    assert named == old.program.annotations.precision
    assert not {"x_embedder", "t_embedder.fc1", "t_embedder.fc2", "final_layer.linear"} & set(named)
    assert "blocks.0.attn.qkv" in named


def test_time_embedding_off_quantizes_the_timestep_mlp(dit):
    on = run(dit, **SINGLE_STEP)
    assert "t_embedder.fc1: skipped by configuration" in kept(on)
    off = run(dit, **SINGLE_STEP, treatments=["input-layer"]).program.annotations.precision
    assert {"t_embedder.fc1", "t_embedder.fc2"} <= set(off) and "x_embedder" not in off
    # The old spelling: a keep_float without the time patterns quantizes them too.
    old = run(dit, **SINGLE_STEP, keep_float=[]).program.annotations.precision
    assert {"t_embedder.fc1", "t_embedder.fc2"} <= set(old)


def test_input_layer_off_and_keep_input_layer_alias(dit):
    off = run(dit, **SINGLE_STEP, treatments=["time-embedding"]).program
    assert off.op_counts()["conv2d_w8a8"] == 1
    assert PTQConfig(keep_input_layer=False).active_treatments() == ("output-layer",)
    assert PTQConfig(treatments=("output-layer",)).active_treatments() == ("output-layer",)


def test_output_layer_keeps_the_final_projection_float(dit):
    result = run(dit, **SINGLE_STEP)
    precision = result.program.annotations.precision
    assert "final_layer.linear" not in precision and "blocks.0.fc2" in precision
    assert "final_layer.linear: output layer of the model (treatment output-layer)" in kept(result)
    off = run(dit, **SINGLE_STEP, treatments=["time-embedding", "input-layer"]).program.annotations.precision
    assert "final_layer.linear" in off


def test_softmax_input_keeps_query_and_key_projections_float(dit):
    result = run(dit, **SINGLE_STEP, treatments=[*DEFAULT_TREATMENTS, "softmax-input"])
    precision = result.program.annotations.precision
    assert "blocks.0.attn.qkv" not in precision  # fused QKV: its q and k go to the attention
    assert "blocks.0.attn.proj" in precision
    model, inputs = models.sharp_attention()
    unfused = run(capture(model, inputs), treatments=["softmax-input"], min_sqnr_db=0.0)
    assert set(unfused.program.annotations.precision) == {"to_v", "to_out"}


def test_softmax_input_finds_attention_written_out(transformer_program):
    result = run(transformer_program, treatments=["softmax-input"])
    precision = result.program.annotations.precision
    assert not {"blocks.0.attn.qkv", "blocks.1.attn.qkv"} & set(precision) and "out" in precision


def test_skip_connections_keep_the_concat_reader_float():
    model, inputs = models.skip_concat()
    # quantize_residuals=False: on a CNN "auto" puts every float-read conv output (here the
    # concat's inputs) on the int8 grid anyway.
    result = run(capture(model, inputs), treatments=["skip-connections"], quantize_residuals=False)
    assert set(result.program.annotations.precision) == {"enc", "dec"}
    assert "fuse: reads a skip concatenation (treatment skip-connections)" in kept(result)


def test_skip_connections_treatment_recovers_the_small_range_half():
    model, inputs = models.skip_concat()
    program = capture(model, inputs)
    reference = program.run()
    plain = sqnr_db(reference, run(program, quantize_residuals=False, min_sqnr_db=0.0).program.run())
    treated = run(program, treatments=["skip-connections"], quantize_residuals=False, min_sqnr_db=0.0)
    assert sqnr_db(reference, treated.program.run()) > plain + 6.0


def test_output_layer_treatment_lifts_sqnr_when_the_last_layer_has_outliers():
    program = models.tiny_dit_program()
    last = program.graph_module.get_parameter("final_layer.linear.weight")
    with torch.no_grad():
        last[:, 3] *= 20.0  # one input column stretches every group it falls in
    reference = program.run()
    plain = run(program, **W4A8, **SINGLE_STEP, treatments=["time-embedding", "input-layer"])
    treated = run(program, **W4A8, **SINGLE_STEP)
    assert sqnr_db(reference, treated.program.run()) > sqnr_db(reference, plain.program.run()) + 3.0


def test_output_layer_acts_on_diffusion_models_only():
    # A classifier's last layer is quantized like the others (and a language model's head has
    # its own switch, quantize_head).
    model, inputs = models.conv_net()
    result = run(capture(model, inputs), treatments=["output-layer"])
    assert "head" in result.program.annotations.precision


def test_softmax_input_treatment_lifts_sqnr_of_a_sharp_attention():
    model, inputs = models.sharp_attention()
    program = capture(model, inputs)
    reference = program.run()
    plain = sqnr_db(reference, run(program, **W4A8, min_sqnr_db=0.0).program.run())
    treated = run(program, **W4A8, treatments=["softmax-input"], min_sqnr_db=0.0)
    assert sqnr_db(reference, treated.program.run()) > plain + 3.0


def test_unknown_treatment_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as err:
        PTQConfig.from_dict({"treatments": ["time-embedding", "softmax"]})
    message = str(err.value)
    assert "unknown ptq treatment 'softmax'" in message
    assert all(name in message for name in TREATMENTS)
    with pytest.raises(ConfigError, match="list of names.*known: time-embedding"):
        PTQConfig(treatments="output-layer")  # type: ignore[arg-type]
