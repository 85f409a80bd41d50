import json

import pytest
import torch

from optkit.errors import ArtifactError
from optkit.ir.serialize import load_program, save_program, sidecar_path


def test_round_trip_keeps_outputs_annotations_and_module_paths(tmp_path, transformer_program):
    p = transformer_program
    p.annotations.precision["blocks.0.attn.qkv"] = "w8a8"
    p.annotations.history.append("dce")
    path = save_program(p, tmp_path / "m.pt2")
    q = load_program(path)
    assert q.name == "transformer"
    assert q.annotations.precision == {"blocks.0.attn.qkv": "w8a8"}
    assert q.annotations.history == ["dce"]
    assert torch.allclose(q.run(), p.run(), atol=1e-6)
    assert q.block_paths() == p.block_paths()
    assert [t.shape for t in q.example_inputs] == [t.shape for t in p.example_inputs]


def test_bare_pt2_without_sidecar_loads(tmp_path, conv_program):
    path = save_program(conv_program, tmp_path / "m.pt2")
    sidecar_path(path).unlink()
    q = load_program(path)
    assert q.annotations.history == [] and q.name == "m"


def test_wrong_suffix_and_missing_file(tmp_path, conv_program):
    with pytest.raises(ArtifactError, match=r"\.pt2"):
        save_program(conv_program, tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match="no such file"):
        load_program(tmp_path / "absent.pt2")


def test_corrupt_archive_and_foreign_sidecar(tmp_path, conv_program):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable torch.export archive"):
        load_program(bad)
    path = save_program(conv_program, tmp_path / "m.pt2")
    meta = json.loads(sidecar_path(path).read_text())
    meta["format"] = 99
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format 99"):
        load_program(path)


def test_save_leaves_no_temporary_files(tmp_path, conv_program):
    save_program(conv_program, tmp_path / "m.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.pt2.json"]
