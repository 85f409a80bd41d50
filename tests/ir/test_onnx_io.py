import numpy as np
import pytest

from optkit.errors import ArtifactError, OptkitError
from optkit.ir.onnx_io import OnnxModel, export_onnx, run_onnx


@pytest.mark.parametrize("fixture", ["conv_program", "transformer_program", "recommender_program"])
def test_onnx_export_runs_in_onnxruntime_like_eager(tmp_path, request, fixture):
    program = request.getfixturevalue(fixture)
    figures = export_onnx(program, tmp_path / "m.onnx")
    assert figures["max_abs_error"] < 1e-5
    (got,) = run_onnx(tmp_path / "m.onnx", program.example_inputs)
    np.testing.assert_allclose(got, program.run().numpy(), atol=1e-5)


def test_onnx_model_analysis(tmp_path, conv_program):
    export_onnx(conv_program, tmp_path / "m.onnx")
    model = OnnxModel.load(tmp_path / "m.onnx")
    assert model.op_counts()["Conv"] == 2
    n = sum(p.numel() for p in conv_program.graph_module.parameters())
    # The exporter adds a few small constant initializers (reduction axes) beside the weights.
    assert n <= model.parameter_count() <= n + 16
    conv_flops = 2 * (2 * 8 * 64) * (3 * 9) + 2 * (2 * 8 * 64) * (8 * 9)
    assert model.total_flops() >= conv_flops


def test_wrong_input_count_and_bad_file(tmp_path, transformer_program):
    export_onnx(transformer_program, tmp_path / "m.onnx")
    with pytest.raises(OptkitError, match="takes 2 inputs"):
        run_onnx(tmp_path / "m.onnx", transformer_program.example_inputs[:1])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        OnnxModel.load(bad)


def test_a_t5_encoder_exports_though_its_graph_keeps_contiguous(tmp_path):
    """transformers' T5 attention keeps `aten.contiguous` in the captured graph, which the
    exporter's decomposition took for a no-op before a reshape of transposed strides."""
    import torch

    transformers = pytest.importorskip("transformers")
    from optkit.ir.capture import capture

    torch.manual_seed(0)
    config = transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=100)
    encoder = transformers.T5EncoderModel(config).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=ids).last_hidden_state

    program = capture(Encoder().eval(), (torch.randint(0, 100, (1, 8)),), name="t5")
    contiguous = torch.ops.aten.contiguous.default
    before = sum(n.target is contiguous for n in program.graph_module.graph.nodes)
    assert before > 0
    figures = export_onnx(program, tmp_path / "t5.onnx")
    assert figures["max_abs_error"] < 1e-4 * max(figures["output_abs_max"], 1.0)
    assert sum(n.target is contiguous for n in program.graph_module.graph.nodes) == before  # restored


def test_a_squeeze_of_a_longer_dimension_exports(tmp_path):
    """PyTorch leaves `squeeze(1)` of a (2, 16, 8) tensor as it is (a PixArt transformer's
    timestep embedding); ONNX's Squeeze refuses it, so the export writes a reshape."""
    import torch

    from optkit.ir.capture import capture
    from optkit.ir.ops import squeeze_as_view

    class Squeezes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.squeeze(1) + x[:, :1].squeeze(1).sum()

    program = capture(Squeezes(), (torch.randn(2, 16, 8),), name="squeeze")
    shapes = [squeeze_as_view(n) for n in program.graph_module.graph.nodes]
    assert [s for s in shapes if s is not None] == [[2, 16, 8]]  # the real squeeze is left alone
    figures = export_onnx(program, tmp_path / "s.onnx")
    assert figures["max_abs_error"] < 1e-5
    targets = [n.target for n in program.graph_module.graph.nodes]
    assert torch.ops.aten.view.default not in targets  # restored after the export
