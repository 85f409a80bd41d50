import pytest

from optkit.errors import PassError
from optkit.pipeline import PassManager, build_passes
from optkit.quant.numerics import sqnr_db


def analyze(program, **opts):
    return PassManager(build_passes(["sensitivity"], {"sensitivity": opts})).run(program)


def test_analysis_leaves_graph_and_ranks_layers_and_blocks(transformer_program):
    result = analyze(transformer_program, wbits=4, granularity="group", group_size=16)
    assert not result.records[0].modified
    assert result.program.op_counts() == transformer_program.op_counts()
    data = result.program.annotations.figures["sensitivity"]
    layers = dict(data["layers"])
    assert set(layers) == {
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
        "out",
    }
    assert [v for _, v in data["layers"]] == sorted(layers.values())
    assert set(dict(data["blocks"])) == {"blocks.0", "blocks.1", "out"}
    figures = result.records[0].figures
    assert figures["speedup_vs_naive"].unit == "x" and figures["speedup_vs_naive"].value > 0


@pytest.mark.parametrize("wbits", [8, 7])
def test_sensitivity_equals_sqnr_of_really_quantized_layer(transformer_program, wbits):
    """The cached fake-quant evaluation gives the same number as rewriting the layer with the int kernels."""
    data = analyze(transformer_program, level="layer", wbits=wbits).program.annotations.figures["sensitivity"]
    probed = dict(data["layers"])["blocks.1.attn.proj"]
    skip_others = ["blocks.0", "out", "blocks.1.attn.qkv"]
    real = (
        PassManager(build_passes(["ptq"], {"ptq": {"skip": skip_others, "keep_float": [], "wbits": wbits}}))
        .run(transformer_program)
        .program
    )
    assert real.annotations.precision == {"blocks.1.attn.proj": f"w{wbits}ca8"}
    assert probed == pytest.approx(sqnr_db(transformer_program.run(), real.run()), abs=0.05)


def test_block_sqnr_below_each_of_its_layers(transformer_program):
    data = analyze(
        transformer_program, wbits=4, granularity="group", group_size=16
    ).program.annotations.figures["sensitivity"]
    layers, blocks = dict(data["layers"]), dict(data["blocks"])
    assert blocks["blocks.0"] <= min(layers["blocks.0.attn.qkv"], layers["blocks.0.attn.proj"]) + 0.5


def test_model_without_layers_is_an_error():
    import torch

    from optkit.ir.capture import capture

    program = capture(torch.nn.ReLU(), (torch.randn(2, 3),))
    with pytest.raises(PassError, match="no Linear or Conv layers"):
        analyze(program)
