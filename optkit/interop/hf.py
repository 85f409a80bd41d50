"""Hugging Face folders: tell a diffusers folder from a transformers one; helpers both loaders share.

A `save_pretrained` directory is recognized by its files, never by its name:

| files                                | format       | loaded by                                   |
|--------------------------------------|--------------|---------------------------------------------|
| `model_index.json`                   | diffusers    | `optkit.interop.hf_diffusers` (a pipeline)  |
| `config.json` with `_class_name`     | diffusers    | `optkit.interop.hf_diffusers` (one model)   |
| `config.json` with `architectures`   | transformers | `optkit.interop.hf_transformers`            |

Weights are read from safetensors only; a folder that holds only pickled weights (`.bin`)
runs code when loaded and needs `trust_pickle`, as `.pt` files do. diffusers and transformers
are imported only when such a folder is loaded (the `optkit[hf]` extra), and nothing is ever
fetched from the Hub (`local_files_only`).
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from optkit.errors import ModelRefError
from optkit.ir.program import Program

log = logging.getLogger(__name__)

HF_FORMATS = ("diffusers", "transformers")
LOOKED_FOR = "model_index.json (a diffusers pipeline) or config.json with `_class_name` (a diffusers model) or `architectures` (a transformers model)"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or a `ModelRefError` naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelRefError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ModelRefError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def directory_format(path: Path) -> str:
    """`diffusers` or `transformers` for a `save_pretrained` folder, judged by its files; a
    `ModelRefError` naming what was looked for when it is neither."""
    if (path / "model_index.json").is_file():
        return "diffusers"
    config = path / "config.json"
    if config.is_file():
        data = read_json(config)
        if "_class_name" in data:
            return "diffusers"
        if "architectures" in data:
            return "transformers"
        raise ModelRefError(
            f"{config} names neither a diffusers class (`_class_name`) nor transformers `architectures`; "
            f"a model folder needs {LOOKED_FOR}"
        )
    raise ModelRefError(f"{path} is a folder but not a Hugging Face model: looked for {LOOKED_FOR}")


def import_hf(package: str) -> ModuleType:
    """Import `diffusers` or `transformers`, or fail saying how to install them."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ModelRefError(
            f"loading a {package} folder needs {package}: pip install 'optkit[hf]' ({err})"
        ) from err


def weight_options(folder: Path, stem: str, pickle_stem: str, trust_pickle: bool) -> dict[str, Any]:
    """`from_pretrained` keywords that read the weights in `folder`: safetensors (`STEM.safetensors`,
    sharded or a variant such as `STEM.fp16.safetensors`), else pickled `.bin` only when trusted."""
    if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file():
        return {"use_safetensors": True}
    for path in sorted(folder.glob(f"{stem}.*.safetensors")):
        variant = path.name[len(stem) + 1 : -len(".safetensors")]
        if "-of-" not in variant:  # not a shard
            return {"use_safetensors": True, "variant": variant}
    for path in sorted(folder.glob(f"{stem}.safetensors.index.*.json")):
        return {"use_safetensors": True, "variant": path.name[len(stem) + len(".safetensors.index.") : -5]}
    pickled = sorted(folder.glob(f"{pickle_stem}*.bin"))
    if not pickled:
        raise ModelRefError(f"{folder} holds no weights: expected {stem}.safetensors (from save_pretrained)")
    if not trust_pickle:
        raise ModelRefError(
            f"refusing to load {pickled[0]}: pickled weights run arbitrary code when loaded. If you trust "
            "the folder, pass --trust-pickle (Python: trust_pickle=True), or save it again with "
            "save_pretrained(..., safe_serialization=True)"
        )
    return {"use_safetensors": False}


def return_prediction(program: Program, channels: int = 0) -> Program:
    """Make `program` return its first output alone (a model called with `return_dict=False`
    returns a tuple), cut to the first `channels` channels when given (a learned-variance
    denoiser's noise prediction, as its pipeline splits it). Edits in place; returns it."""
    graph = program.graph
    out = graph.output_node()
    value = out.args[0]
    while isinstance(value, (tuple, list)):
        value = value[0]
    if not isinstance(value, torch.fx.Node):
        raise ModelRefError(f"{program.name}: the model's first output is not a tensor")
    if channels:
        with graph.inserting_before(out):
            cut = graph.call_function(torch.ops.aten.slice.Tensor, (value, 1, 0, channels))
        if "val" in value.meta:
            cut.meta["val"] = value.meta["val"][:, :channels]
        value = cut
    out.args = (value,)
    graph.eliminate_dead_code()
    program.lint()
    return program
