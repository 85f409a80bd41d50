"""Model references: what a user names on the command line, resolved to a Program.

| reference            | what it is                                                   |
|----------------------|--------------------------------------------------------------|
| `zoo:NAME[:size]`    | a zoo model (trained `tiny` checkpoint when one ships)        |
| `path/model.pt2`     | a torch.export archive or a Program saved by optkit           |
| `path/model.onnx`    | an ONNX model: analysis and lowering only                     |
| `pkg.module:factory` | user code; `factory()` returns `(model, example_inputs)` or    |
|                      | `(model, example_inputs, workload)`; inputs may be a dict     |
| `path/model.pt`      | a pickled module: runs code on load, so only with trust_pickle |
| `path/folder/`       | a diffusers `save_pretrained` pipeline or model folder, or a   |
|                      | transformers causal LM / image classifier folder (`optkit[hf]`) |

A folder is recognized by its files (`model_index.json`, or `config.json` with `_class_name`
for diffusers and `architectures` for transformers) and loaded by `optkit.interop`, which
imports diffusers or transformers only then.

This module sits above the zoo (it resolves `zoo:` names), beside `optkit.api`; the generic
core (`optkit.ir`, `optkit.quant`, `optkit.caching`, passes, backends) never imports it.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.errors import ModelRefError, OptkitError
from optkit.interop import directory_format, load_directory
from optkit.ir.capture import capture
from optkit.ir.onnx_io import OnnxModel
from optkit.ir.program import Program
from optkit.ir.serialize import load_program
from optkit.workload import Workload

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
FORMS = (
    "zoo:NAME[:size], a .pt2 file, a .onnx file, pkg.module:factory, a diffusers or transformers "
    "save_pretrained folder, or a pickled .pt with --trust-pickle"
)


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: its kind (`zoo`, `pt2`, `onnx`, `factory`, `pickle`, `diffusers`,
    `transformers`) and text."""

    kind: str
    text: str

    @property
    def path(self) -> Path:
        return Path(self.text)


def parse_model_ref(text: str) -> ModelRef:
    """Classify `text` as a model reference, or fail naming the accepted forms."""
    text = text.strip()
    if text.startswith("zoo:"):
        if not re.fullmatch(r"zoo:[a-z0-9_]+(:[a-z0-9_]+)?", text):
            raise ModelRefError(
                f"bad zoo reference {text!r}; expected zoo:NAME or zoo:NAME:SIZE (see `optkit zoo list`)"
            )
        return ModelRef("zoo", text)
    if Path(text).is_dir():  # a Hugging Face folder, judged by its files
        return ModelRef(directory_format(Path(text)), text)
    suffix = Path(text).suffix.lower()
    if suffix == ".pt2":
        return ModelRef("pt2", text)
    if suffix == ".onnx":
        return ModelRef("onnx", text)
    if suffix in PICKLE_SUFFIXES:
        return ModelRef("pickle", text)
    if _FACTORY.match(text):
        return ModelRef("factory", text)
    if suffix:
        raise ModelRefError(f"unknown model format {suffix!r} for {text!r}; accepted: {FORMS}")
    raise ModelRefError(f"cannot read {text!r} as a model reference; accepted: {FORMS}")


def load_model(
    ref: str | ModelRef,
    *,
    trust_pickle: bool = False,
    pretrained: bool = True,
    batch: int | None = None,
    seed: int = 0,
    workload: Workload | None = None,
) -> Program | OnnxModel:
    """Resolve `ref` to a captured Program (or an `OnnxModel` for `.onnx` files).

    `batch` and `seed` shape the example inputs of zoo models and Hugging Face folders (batch 2
    by default; 1 for language models). `workload`, when given, replaces the one the model comes
    with (checked against its inputs); a diffusers folder then needs no scheduler of its own.
    """
    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    if ref.kind in ("pt2", "onnx", "pickle"):
        if not ref.path.exists():
            raise ModelRefError(f"no such file: {ref.text}")
        if not ref.path.is_file():
            raise ModelRefError(f"{ref.text} is not a file")
    if ref.kind == "onnx":
        if workload is not None:
            raise ModelRefError(f"{ref.text} is an ONNX model: a workload needs a PyTorch graph")
        return OnnxModel.load(ref.path)
    if ref.kind == "zoo":
        program = _load_zoo(ref.text, pretrained, batch or 2, seed)
    elif ref.kind in ("diffusers", "transformers"):
        program = load_directory(
            ref.path, ref.kind, trust_pickle=trust_pickle, batch=batch, seed=seed, workload=workload
        )
    elif ref.kind == "pt2":
        program = load_program(ref.path)
    elif ref.kind == "pickle":
        program = _load_pickle(ref.path, trust_pickle)
    else:
        program = _load_factory(ref.text)
    return program.with_workload(workload) if workload is not None else program


def load_program_ref(ref: str | ModelRef, **kwargs: Any) -> Program:
    """Like `load_model`, but refuse ONNX models (passes need the PyTorch graph)."""
    model = load_model(ref, **kwargs)
    if isinstance(model, OnnxModel):
        raise ModelRefError(
            f"{model.path} is an ONNX model: it can be analyzed (`optkit analyze`) but passes need a "
            "PyTorch graph; give the .pt2, zoo name or pkg.module:factory it came from"
        )
    return model


def _load_zoo(text: str, pretrained: bool, batch: int, seed: int) -> Program:
    from optkit.zoo.registry import get_model

    parts = text.split(":")
    entry = get_model(parts[1])
    size = parts[2] if len(parts) > 2 else "tiny"
    model = entry.create(size, pretrained=pretrained)
    inputs = entry.example_inputs(model, batch, seed)
    program = capture(model, inputs, name=f"{entry.name}-{size}")
    program.meta = {"zoo": entry.name, "size": size, "task": entry.task}
    return program.with_workload(entry.workload(model=model))


def _load_factory(text: str) -> Program:
    module_name, func_name = text.split(":")
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelRefError(f"cannot import {module_name!r} for {text!r}: {err}") from err
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ModelRefError(f"{module_name} has no callable {func_name!r}")
    try:
        made = factory()
    except OptkitError:
        raise
    except Exception as err:
        raise ModelRefError(f"{text}() raised {type(err).__name__}: {err}") from err
    workload = None
    if isinstance(made, tuple) and len(made) == 3:
        *made, workload = made
        made = tuple(made)
        if not isinstance(workload, Workload):
            raise ModelRefError(
                f"{text}() returned a third item of type {type(workload).__name__}; expected an optkit.Workload"
            )
    model, inputs = _model_and_inputs(made, text)
    program = _capture_inputs(model, inputs, func_name)
    return program.with_workload(workload) if workload is not None else program


def _load_pickle(path: Path, trust_pickle: bool) -> Program:
    if not trust_pickle:
        raise ModelRefError(
            f"refusing to load {path}: a pickled model runs arbitrary code when loaded. If you trust "
            "the file, pass --trust-pickle (Python: trust_pickle=True), or save it with torch.export as .pt2"
        )
    try:
        obj = torch.load(str(path), weights_only=False, map_location="cpu")
    except Exception as err:
        raise ModelRefError(f"cannot unpickle {path}: {type(err).__name__}: {err}") from err
    model, inputs = _model_and_inputs(obj, str(path))
    return _capture_inputs(model, inputs, path.stem)


def _capture_inputs(model: nn.Module, inputs: Any, name: str) -> Program:
    # A dict of inputs is bound by keyword (diffusers' `timestep=`, `encoder_hidden_states=`).
    if isinstance(inputs, dict):
        return capture(model, (), name, kwargs=inputs)
    return capture(model, inputs, name)


def _model_and_inputs(obj: Any, origin: str) -> tuple[nn.Module, Any]:
    # Accept (model, inputs), {"model": ..., "example_inputs": ...}, or a module with `.example_inputs`.
    if isinstance(obj, dict) and "model" in obj:
        obj = (obj["model"], obj.get("example_inputs"))
    elif isinstance(obj, nn.Module):
        obj = (obj, getattr(obj, "example_inputs", None))
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module)):
        raise ModelRefError(
            f"{origin} must give (model, example_inputs), a dict with 'model' and 'example_inputs', "
            f"or a module with an `example_inputs` attribute; got {type(obj).__name__}"
        )
    model, inputs = obj
    if inputs is None:
        raise ModelRefError(f"{origin} gives a model but no example inputs; capture needs them")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    return model, inputs if isinstance(inputs, dict) else tuple(inputs)
