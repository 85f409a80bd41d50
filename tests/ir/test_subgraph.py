import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.onnx_io import export_onnx
from optkit.ir.subgraph import cut_to_inputs, with_outputs


def test_fill_then_reuse_block_output(tmp_path, transformer_program):
    p = transformer_program
    first = p.blocks()[0]
    names = [n.name for n in first.outputs]
    fill = with_outputs(p, names)
    out, cached = fill.run()
    assert torch.allclose(out, p.run())
    reuse = cut_to_inputs(p, names, [cached])
    # The first block's layers are gone: only blocks.1 and the head remain.
    assert len(reuse.find(kind="linear")) == 3
    assert not reuse.find(module="blocks.0.attn")
    (again,) = reuse.run()
    assert torch.allclose(again, p.run(), atol=1e-6)
    assert export_onnx(reuse, tmp_path / "reuse.onnx")["max_abs_error"] < 1e-5


def test_bad_names_and_counts(transformer_program):
    with pytest.raises(ConfigError, match="no node named nope"):
        with_outputs(transformer_program, ["nope"])
    with pytest.raises(ConfigError, match="1 nodes to cut but 0 example values"):
        cut_to_inputs(transformer_program, ["linear"], [])
