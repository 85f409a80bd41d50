"""Save and load a Program: `.pt2` (torch.export archive) plus a JSON sidecar of annotations.

The sidecar (`NAME.pt2.json`) records the optkit and torch versions that wrote the file, the
Program's name, its annotations and its Workload; loading a file written by another major optkit format is
refused with a clear error rather than guessed at.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from optkit.errors import ArtifactError
from optkit.fsutil import atomic_file
from optkit.ir.capture import _drop_guards, positional_inputs
from optkit.ir.program import Annotations, Program
from optkit.quant import ops as _quant_ops  # noqa: F401  (registers torch.ops.optkit.* before torch.export.load)
from optkit.workload import Workload

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    """Where the annotations of the `.pt2` file at `path` live."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_program(program: Program, path: str | Path) -> Path:
    """Write `program` to `path` (`.pt2`) and its sidecar; both written atomically."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ArtifactError(f"a Program is saved as a .pt2 file, got {path.name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(program.graph_module, program.example_inputs, strict=False)
    with atomic_file(path) as tmp:
        torch.export.save(exported, str(tmp))
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "optkit": _optkit_version(),
        "torch": torch.__version__,
        "name": program.name,
        "meta": program.meta,
        "workload": program.workload.to_dict(),
        "annotations": program.annotations.to_dict(),
    }
    with atomic_file(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_program(path: str | Path) -> Program:
    """Load a Program saved by `save_program` (a bare `.pt2` without sidecar loads with empty
    annotations)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such file: {path}")
    try:
        exported = torch.export.load(str(path))
    except Exception as err:
        raise ArtifactError(
            f"{path} is not a readable torch.export archive ({type(err).__name__}: {err})"
        ) from err
    annotations, name, meta, workload = Annotations(), path.stem, {}, Workload()
    side = sidecar_path(path)
    if side.exists():
        try:
            sidecar = json.loads(side.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{side} is not valid JSON: {err}") from err
        if sidecar.get("format") != FORMAT_VERSION:
            raise ArtifactError(
                f"{side} has format {sidecar.get('format')!r}; this optkit ({_optkit_version()}) reads format {FORMAT_VERSION}"
            )
        annotations = Annotations.from_dict(sidecar.get("annotations", {}))
        name = sidecar.get("name", name)
        meta = sidecar.get("meta", {})
        workload = Workload.from_dict(sidecar.get("workload", {}))
    if exported.example_inputs is None:
        raise ArtifactError(
            f"{path} holds no example inputs; re-export it with torch.export.export(model, args)"
        )
    args, kwargs = exported.example_inputs
    gm = exported.module()
    _drop_guards(gm)
    inputs = positional_inputs(gm, (args, kwargs)) if kwargs else tuple(args)
    return Program(gm, inputs, annotations, name, meta).with_workload(workload)


def _optkit_version() -> str:
    from optkit import __version__

    return __version__
