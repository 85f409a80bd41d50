"""transformers folders -> a Program and its Workload, for the tasks optkit measures.

| architecture                                   | input                          | output | metric       |
|------------------------------------------------|--------------------------------|--------|--------------|
| `*ForCausalLM`, `*LMHeadModel` (Llama, GPT-2)  | `input_ids` (1, min(64, max positions)) | logits | `perplexity` |
| `*ForImageClassification` (ViT)                | `pixel_values` (B, C, S, S)    | logits | `top1`       |

The model is called with `use_cache=False` (language models) and `return_dict=False` and the
Program returns the logits alone. Only classes transformers itself defines are loaded: a
folder whose config asks for custom code (`auto_map`) is refused, since that code would run.
A saved tokenizer or image processor needs nothing more here; calibration data is given with
`--calib` (token ids or images).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from optkit.errors import ModelRefError
from optkit.interop.hf import import_hf, read_json, return_prediction, weight_options
from optkit.ir.capture import capture
from optkit.ir.program import Program
from optkit.workload import Workload

log = logging.getLogger(__name__)

LM_TOKENS = 64
LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
CLASSIFIER_SUFFIXES = ("ForImageClassification",)


def task_of(architecture: str) -> str:
    """`causal-lm` or `image-classification` for a transformers class name, else a `ModelRefError`."""
    if architecture.endswith(LM_SUFFIXES):
        return "causal-lm"
    if architecture.endswith(CLASSIFIER_SUFFIXES):
        return "image-classification"
    suffixes = ", ".join(f"*{s}" for s in (*LM_SUFFIXES, *CLASSIFIER_SUFFIXES))
    raise ModelRefError(f"transformers architecture {architecture!r} is not supported; supported: {suffixes}")


def _lm_inputs(config: Any, batch: int, gen: torch.Generator) -> dict[str, Any]:
    positions = getattr(config, "max_position_embeddings", None) or LM_TOKENS
    tokens = min(LM_TOKENS, int(positions))
    ids = torch.randint(0, int(config.vocab_size), (batch, tokens), generator=gen)  # (B, T)
    return {"input_ids": ids, "use_cache": False}


def _image_inputs(config: Any, batch: int, gen: torch.Generator) -> dict[str, Any]:
    size = getattr(config, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = int(getattr(config, "num_channels", 3))
    return {"pixel_values": torch.randn((batch, channels, h, w), generator=gen)}  # (B, C, H, W)


def load(path: Path, *, trust_pickle: bool = False, batch: int | None = None, seed: int = 0) -> Program:
    """Load the transformers folder `path` (a causal LM or an image classifier) as a Program
    returning logits, with its Workload (`perplexity` or `top1`). `batch` defaults to 1 for
    language models and 2 for classifiers."""
    raw = read_json(path / "config.json")
    architectures = raw.get("architectures") or []
    if not isinstance(architectures, list) or not architectures:
        raise ModelRefError(f"{path}/config.json lists no `architectures`")
    architecture = str(architectures[0])
    task = task_of(architecture)
    if "auto_map" in raw:
        raise ModelRefError(
            f"{path}/config.json asks for custom model code (auto_map); optkit loads only classes "
            "transformers defines. Capture the model yourself with a pkg.module:factory reference"
        )
    options = weight_options(path, "model", "pytorch_model", trust_pickle)
    transformers = import_hf("transformers")
    cls = getattr(transformers, architecture, None)
    if cls is None:
        raise ModelRefError(f"transformers {transformers.__version__} has no class {architecture!r}")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # the library never prints
    try:
        # float32 after loading: transformers 5 keeps a checkpoint's bf16/fp16 by default.
        model = cls.from_pretrained(path, local_files_only=True, **options).float()
    except Exception as err:  # transformers raises OSError, ValueError, ...
        raise ModelRefError(f"cannot load {path} as {architecture}: {type(err).__name__}: {err}") from err
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    gen = torch.Generator().manual_seed(seed)
    if task == "causal-lm":
        inputs = _lm_inputs(model.config, batch or 1, gen)
        workload = Workload(("input_ids",), metric="perplexity")
    else:
        inputs = _image_inputs(model.config, batch or 2, gen)
        workload = Workload(("pixel_values",), metric="top1")
    program = capture(model, (), path.resolve().name, kwargs={**inputs, "return_dict": False})
    return_prediction(program)
    program.meta = {"source": "transformers", "class": architecture, "task": task, "path": str(path)}
    return program.with_workload(workload)
