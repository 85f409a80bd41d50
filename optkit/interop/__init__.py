"""Models in the formats users keep them in: Hugging Face diffusers and transformers folders.

A `save_pretrained` directory is recognized by its files (`optkit.interop.hf`) and loaded as a
Program with the Workload its files describe: a diffusers pipeline or model folder becomes a
denoiser `model(x, t, *cond)` sampled by its own scheduler (`hf_diffusers`); a transformers
causal LM or image classifier becomes a Program returning logits (`hf_transformers`).

This package sits beside `optkit.refs`, which resolves a directory MODEL through it; the
generic core never imports it. diffusers and transformers (the `optkit[hf]` extra) are imported
only when such a folder is loaded.
"""

from __future__ import annotations

from pathlib import Path

from optkit.errors import ModelRefError
from optkit.interop import hf_diffusers, hf_transformers
from optkit.interop.hf import HF_FORMATS, directory_format
from optkit.ir.program import Program
from optkit.workload import Workload

__all__ = ["HF_FORMATS", "directory_format", "load_directory"]


def load_directory(
    path: str | Path,
    kind: str | None = None,
    *,
    trust_pickle: bool = False,
    batch: int | None = None,
    seed: int = 0,
    workload: Workload | None = None,
) -> Program:
    """Load the `save_pretrained` folder `path` as a Program with the Workload its files describe.

    `kind` (`diffusers` or `transformers`) is judged from the files when not given. `batch`
    defaults to the model's (2 for diffusion models and image classifiers, 1 for language
    models). A given `workload` is the one the caller will apply instead, so a diffusers folder
    then needs no scheduler; it is not applied here.
    """
    path = Path(path)
    kind = kind or directory_format(path)
    if kind == "diffusers":
        return hf_diffusers.load(path, trust_pickle=trust_pickle, batch=batch, seed=seed, workload=workload)
    if kind == "transformers":
        return hf_transformers.load(path, trust_pickle=trust_pickle, batch=batch, seed=seed)
    raise ModelRefError(f"unknown Hugging Face format {kind!r}; known: {', '.join(HF_FORMATS)}")
