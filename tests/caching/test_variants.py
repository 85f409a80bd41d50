"""Step variants: residual form, cut blocks, ONNX export."""

from __future__ import annotations

import pytest
import torch

from optkit.caching.variants import cache_units, residual_form, step_variant
from optkit.ir.onnx_io import export_onnx, flat_outputs
from optkit.ir.program import module_path


def _paths(program):
    return {module_path(n) for n in program.compute_nodes()}


def test_units_skip_embedding_mlps_and_find_residual_streams(tiny_denoiser_program):
    units = cache_units(tiny_denoiser_program)
    assert [u.path for u in units] == [f"blocks.{i}" for i in range(4)]
    assert all(u.mode == "residual" for u in units)
    # Each block's stream is the previous block's output.
    assert [u.stream for u in units[1:]] == [u.outputs[0] for u in units[:-1]]
    assert all(u.mode == "output" for u in cache_units(tiny_denoiser_program, mode="output"))


def test_residual_form_matches_the_program(tiny_denoiser_program):
    units = cache_units(tiny_denoiser_program)
    rewritten = residual_form(tiny_denoiser_program, units)
    torch.testing.assert_close(rewritten.run(), tiny_denoiser_program.run(), atol=1e-5, rtol=1e-5)


def test_reuse_variant_lacks_the_reused_block(tiny_denoiser_program):
    p = tiny_denoiser_program
    units = cache_units(p)
    fill = step_variant(p, [], [units[1]])
    assert len(flat_outputs(fill.program.run())) == 2
    residual = flat_outputs(fill.program.run())[1]
    reuse = step_variant(p, [units[1]], [])
    assert not any(path.startswith("blocks.1") for path in _paths(reuse.program))
    assert any(path.startswith("blocks.2") for path in _paths(reuse.program))
    assert len(reuse.program.example_inputs) == len(p.example_inputs) + 1
    # Feeding the exact residual back reproduces the uncached output.
    out = reuse.program.run(*p.example_inputs, residual)
    torch.testing.assert_close(flat_outputs(out)[0], p.run(), atol=1e-5, rtol=1e-5)


def test_output_mode_cut_drops_earlier_blocks(tiny_denoiser_program):
    units = cache_units(tiny_denoiser_program, mode="output")
    variant = step_variant(tiny_denoiser_program, [units[2]], [])
    paths = _paths(variant.program)
    assert not any(p.startswith(("blocks.0", "blocks.1", "blocks.2")) for p in paths)
    assert any(p.startswith("blocks.3") for p in paths)


def test_nothing_to_do_is_the_program_itself(tiny_denoiser_program):
    assert step_variant(tiny_denoiser_program, [], []).program is tiny_denoiser_program


@pytest.mark.slow
def test_reuse_variant_exports_to_onnx(tiny_denoiser_program, tmp_path):
    units = cache_units(tiny_denoiser_program)
    variant = step_variant(tiny_denoiser_program, [units[0], units[2]], [units[3]])
    variant.program.example_inputs = variant.program.example_inputs[:3] + tuple(
        torch.randn_like(v) for v in variant.program.example_inputs[3:]
    )
    result = export_onnx(variant.program, tmp_path / "variant.onnx")
    assert result["max_abs_error"] < 1e-4


def test_moviegen_reuse_variant_drops_attention_blocks():
    from optkit.refs import load_model

    p = load_model("zoo:moviegen")
    units = cache_units(p)
    assert [u.path for u in units] == [f"blocks.{i}" for i in range(4)]
    variant = step_variant(p, units[1:3], [units[0]])
    paths = _paths(variant.program)
    assert not any(path.startswith(("blocks.1", "blocks.2")) for path in paths)
    assert any(path.startswith("blocks.3.mixer") for path in paths)
    assert len(variant.program.compute_nodes()) < len(p.compute_nodes()) - 100
