"""Save and load a Program: `.pt2` (torch.export archive) plus a JSON sidecar of annotations.

The sidecar (`NAME.pt2.json`) records the optkit and torch versions that wrote the file, the
Program's name, its annotations and its Workload; loading a file written by another major optkit format is
refused with a clear error rather than guessed at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from optkit.errors import ArtifactError, OptkitError
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
    for node in exported.graph.nodes:  # provenance holding id(graph): differs run to run
        node.meta.pop("from_node", None)
    with atomic_file(path, keep_name=True) as tmp:  # the archive's folder is named after the file
        torch.export.save(exported, str(tmp))
        _stable_serialization_id(tmp)
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
    check_archive(path)
    try:
        with _weights_only_unpickling():
            exported = torch.export.load(str(path))
    except pickle.UnpicklingError as err:
        raise ArtifactError(
            f"{path} holds a pickled member that only loads by running code from the file; optkit "
            "does not run it (re-save the model with torch.export.save from tensors only)"
        ) from err
    except Exception as err:
        first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
        raise ArtifactError(
            f"{path} is not a readable torch.export archive ({type(err).__name__}: {first[:300]})"
        ) from err
    annotations, name, workload = Annotations(), path.stem, Workload()
    meta: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.exists():
        annotations, name, meta, workload = _read_sidecar(side, name)
    if exported.example_inputs is None:
        raise ArtifactError(
            f"{path} holds no example inputs; re-export it with torch.export.export(model, args)"
        )
    args, kwargs = exported.example_inputs
    gm = exported.module()
    del exported
    _drop_guards(gm)
    _own_weights(gm)
    inputs = positional_inputs(gm, (args, kwargs)) if kwargs else tuple(args)
    return Program(gm, inputs, annotations, name, meta).with_workload(workload)


def _own_weights(gm: torch.nn.Module) -> None:
    """Give every weight `torch.export.load` read its own resizable storage, one tensor at a time.

    The loaded tensors wrap the archive's buffers, which cannot be resized, so `optkit lower`
    could not free a weight once its packed panels replaced it (`backends/weights.py`); each
    tensor has its own buffer, so copying them one by one frees each original as it goes.
    """
    copies: dict[int, torch.Tensor] = {}

    def own(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().resizable():
            return t
        if id(t) not in copies:  # tied weights stay tied
            copy = t.detach().clone()
            copies[id(t)] = (
                torch.nn.Parameter(copy, requires_grad=False) if isinstance(t, torch.nn.Parameter) else copy
            )
        return copies[id(t)]

    with torch.no_grad():
        for module in gm.modules():
            stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
            for store in stores:
                for name, t in store.items():
                    if t is not None:
                        store[name] = own(t)
            for name, value in list(vars(module).items()):
                if isinstance(value, torch.Tensor) and not name.startswith("_"):
                    setattr(module, name, own(value))


@contextlib.contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """torch.export.load unpickles sample inputs, and weights or constants marked `use_pickle`,
    with `weights_only=False` (a fallback, for the inputs): a tampered `.pt2` would run its code.
    torch's own switch forces `weights_only=True` on every `torch.load` inside the block."""
    saved = {
        k: os.environ.pop(k, None)
        for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stable_serialization_id(path: Path) -> None:
    """Replace the random `.data/serialization_id` torch writes into every archive by a digest
    of the other members, in place, so that the same Program saves to the same bytes."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        member = next((i for i in infos if i.filename.endswith("/.data/serialization_id")), None)
        if member is None or member.compress_type != zipfile.ZIP_STORED:
            return
        old, old_crc = archive.read(member), member.CRC
        start_dir = archive.start_dir
    digest = hashlib.sha256()
    for info in infos:
        if info is not member:
            digest.update(info.filename.encode() + struct.pack("<I", info.CRC))
    new = str(int(digest.hexdigest(), 16)).zfill(len(old))[-len(old) :].encode()
    crc = struct.pack("<I", zlib.crc32(new))
    with path.open("r+b") as fh:
        fh.seek(member.header_offset)
        local = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        data_at = member.header_offset + 30 + name_len + extra_len
        fh.seek(data_at)
        if fh.read(len(old)) != old:
            return  # not the layout expected: keep torch's id rather than guess
        fh.seek(data_at)
        fh.write(new)
        if struct.unpack("<I", local[14:18])[0] == old_crc:
            fh.seek(member.header_offset + 14)
            fh.write(crc)
        descriptor = fh.read(8)  # after the data, when the local header defers its CRC
        skip = 4 if descriptor[:4] == b"PK\x07\x08" else 0
        if descriptor[skip : skip + 4] == struct.pack("<I", old_crc):
            fh.seek(data_at + len(old) + skip)
            fh.write(crc)
        fh.seek(start_dir)
        entry = start_dir
        while True:  # the central directory entry of the member: its CRC is the one readers check
            head = fh.read(46)
            if head[:4] != b"PK\x01\x02":
                break
            name_len, extra_len, comment_len = struct.unpack("<HHH", head[28:34])
            name = fh.read(name_len).decode("utf-8", "replace")
            if name == member.filename:
                fh.seek(entry + 16)
                fh.write(crc)
                break
            entry += 46 + name_len + extra_len + comment_len
            fh.seek(entry)


def check_archive(path: Path) -> None:
    """Refuse a `.pt2` that is not a zip archive, has a member whose path is absolute or climbs
    out with `..`, or whose members fail their CRC check, before torch reads any of it."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = PurePosixPath(member.replace("\\", "/")).parts
                if member.startswith(("/", "\\")) or ".." in parts:
                    raise ArtifactError(
                        f"{path}: archive member {member!r} points outside the archive; refusing to read it"
                    )
            if not any(m.rsplit("/", 1)[-1] == "archive_format" for m in archive.namelist()):
                raise ArtifactError(
                    f"{path} is a zip file but not a torch.export archive (a torch.save checkpoint, "
                    "which is a pickle, is not loaded); save the model with torch.export.save"
                )
            bad = archive.testzip()
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise ArtifactError(
            f"{path} is not a readable torch.export archive (a .pt2 is a zip file; {type(err).__name__}: {err})"
        ) from err
    if bad is not None:
        raise ArtifactError(f"{path} is corrupt: archive member {bad!r} fails its checksum")


def _read_sidecar(side: Path, name: str) -> tuple[Annotations, str, dict[str, Any], Workload]:
    try:
        sidecar = json.loads(side.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{side} is not valid JSON: {err}") from err
    if not isinstance(sidecar, dict):
        raise ArtifactError(f"{side} must hold a JSON object, got {type(sidecar).__name__}")
    if sidecar.get("format") != FORMAT_VERSION:
        raise ArtifactError(
            f"{side} has format {sidecar.get('format')!r}; this optkit ({_optkit_version()}) reads format {FORMAT_VERSION}"
        )
    name, meta = sidecar.get("name", name), sidecar.get("meta", {})
    if not isinstance(name, str) or not isinstance(meta, dict):
        raise ArtifactError(f"{side}: `name` must be a string and `meta` an object")
    try:
        annotations = Annotations.from_dict(sidecar.get("annotations", {}))
        workload = Workload.from_dict(sidecar.get("workload", {}))
    except OptkitError as err:
        raise ArtifactError(f"{side}: {err}") from err
    return annotations, name, meta, workload


def _optkit_version() -> str:
    from optkit import __version__

    return __version__
