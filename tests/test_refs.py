import textwrap

import pytest
import torch

from optkit.errors import ModelRefError, UnknownNameError
from optkit.ir.onnx_io import OnnxModel, export_onnx
from optkit.ir.program import Program
from optkit.ir.serialize import save_program
from optkit.refs import load_model, load_program_ref, parse_model_ref
from tests import models


@pytest.mark.parametrize(
    "text, kind",
    [
        ("zoo:dit", "zoo"),
        ("zoo:dit:small", "zoo"),
        ("a/b.pt2", "pt2"),
        ("m.ONNX", "onnx"),
        ("m.pt", "pickle"),
        ("pkg.mod:make", "factory"),
    ],
)
def test_parse(text, kind):
    assert parse_model_ref(text).kind == kind


@pytest.mark.parametrize(
    "text, match",
    [("model.h5", "unknown model format '.h5'"), ("justaname", "cannot read"), ("zoo:Bad-Name", "bad zoo")],
)
def test_parse_errors_name_the_accepted_forms(text, match):
    with pytest.raises(ModelRefError, match=match):
        parse_model_ref(text)


def test_factory_reference(tmp_path, monkeypatch):
    (tmp_path / "refmodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            def make():
                return torch.nn.Linear(4, 2), (torch.randn(3, 4),)
            def broken():
                raise RuntimeError("boom")
            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    program = load_model("refmodels:make")
    assert isinstance(program, Program) and program.name == "make"
    with pytest.raises(ModelRefError, match="raised RuntimeError: boom"):
        load_model("refmodels:broken")
    with pytest.raises(ModelRefError, match="no callable 'NOT_CALLABLE'"):
        load_model("refmodels:NOT_CALLABLE")
    with pytest.raises(ModelRefError, match="cannot import 'nosuchmodule'"):
        load_model("nosuchmodule:make")


def test_pickle_refused_without_trust(tmp_path):
    model, inputs = models.conv_net()
    path = tmp_path / "m.pt"
    torch.save({"model": model, "example_inputs": inputs}, path)
    with pytest.raises(ModelRefError, match="--trust-pickle"):
        load_model(str(path))
    program = load_model(str(path), trust_pickle=True)
    assert torch.allclose(program.run(), model(*inputs), atol=1e-6)


def test_pickle_without_inputs_is_explained(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ModelRefError, match="no example inputs"):
        load_model(str(path), trust_pickle=True)


def test_pt2_and_onnx_files(tmp_path, conv_program):
    save_program(conv_program, tmp_path / "m.pt2")
    export_onnx(conv_program, tmp_path / "m.onnx")
    assert isinstance(load_model(str(tmp_path / "m.pt2")), Program)
    assert isinstance(load_model(str(tmp_path / "m.onnx")), OnnxModel)
    with pytest.raises(ModelRefError, match="ONNX model"):
        load_program_ref(str(tmp_path / "m.onnx"))
    with pytest.raises(ModelRefError, match="no such file"):
        load_model(str(tmp_path / "absent.pt2"))


def test_unknown_zoo_model_lists_known():
    with pytest.raises(UnknownNameError, match="unknown zoo model 'nosuch'"):
        load_model("zoo:nosuch")
