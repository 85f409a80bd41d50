"""Calibration data sources: files of input batches, image folders, token files, Python batches.

Every source yields input tuples shaped like the Program's example inputs, in batches of the
captured batch size B (graphs have static shapes). Samples are pooled across the source and cut
into batches of B; a remainder smaller than B is dropped (and logged).

| source   | what `path` holds                                                                 |
|----------|-----------------------------------------------------------------------------------|
| `file`   | `.npz` or `.safetensors`: one array per model input, named like the input (a model |
|          | with one input also takes a file with one array of any name), leading axis = sample |
| `images` | a folder of images (png, jpg, bmp, webp): resized to the first input's (H, W),     |
|          | scaled to [0, 1], normalized with mean/std; other inputs repeat the example's      |
| `tokens` | `.npy` or `.txt` (whitespace-separated) token ids: the stream is cut into rows of   |
|          | the first input's length T; other inputs (attention masks) repeat the example's    |
| `memory` | batches given in Python (`Calibration.from_batches`)                               |
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from optkit.errors import ConfigError
from optkit.workload import Batch, Calibration

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _describe(names: Sequence[str], example: Sequence[torch.Tensor]) -> str:
    return ", ".join(
        f"{n}: (N, {', '.join(str(d) for d in t.shape[1:])}) {str(t.dtype).removeprefix('torch.')}"
        for n, t in zip(names, example, strict=True)
    )


def load_calibration(
    calibration: Calibration, names: Sequence[str], example: Sequence[torch.Tensor], limit: int = 0
) -> list[Batch]:
    """The calibration batches `calibration` describes for a model with inputs `names` /
    `example` (at most `limit`, 0 = all), or a `ConfigError` naming what does not fit."""
    if calibration.source == "example":
        return [tuple(example)]
    if calibration.source == "memory":
        columns = _stack_memory(calibration.batches, names, example)
    elif calibration.source == "file":
        columns = _read_file(Path(calibration.path), names, example)
    elif calibration.source == "images":
        columns = _read_images(Path(calibration.path), calibration, names, example)
    else:
        columns = _read_tokens(Path(calibration.path), names, example)
    batches = _cut(columns, example, calibration.source, limit)
    log.info("calibration: %d batches of %d from %s", len(batches), example[0].shape[0], calibration.source)
    return batches


def _check_column(
    name: str, value: torch.Tensor, ref: torch.Tensor, where: str, described: str
) -> torch.Tensor:
    if tuple(value.shape[1:]) != tuple(ref.shape[1:]) or value.dim() != ref.dim():
        raise ConfigError(
            f"{where}: input {name!r} has shape {tuple(value.shape)}; the model takes ({described})"
        )
    if value.is_floating_point() != ref.is_floating_point() or (value.dtype == torch.bool) != (
        ref.dtype == torch.bool
    ):
        raise ConfigError(
            f"{where}: input {name!r} has dtype {str(value.dtype).removeprefix('torch.')}; the model takes ({described})"
        )
    return value.to(ref.dtype)


def _stack_memory(
    batches: Sequence[Batch], names: Sequence[str], example: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    described = _describe(names, example)
    columns: list[list[torch.Tensor]] = [[] for _ in example]
    for i, batch in enumerate(batches):
        if len(batch) != len(example):
            raise ConfigError(
                f"calibration batch {i} has {len(batch)} tensors; the model takes ({described})"
            )
        for j, (value, ref) in enumerate(zip(batch, example, strict=True)):
            if not isinstance(value, torch.Tensor):
                raise ConfigError(
                    f"calibration batch {i} input {j} is a {type(value).__name__}, not a tensor"
                )
            columns[j].append(_check_column(names[j], value, ref, f"calibration batch {i}", described))
    return [torch.cat(c) for c in columns]


def _read_file(path: Path, names: Sequence[str], example: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"no such calibration file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
        else:
            raise ConfigError(f"calibration file {path.name}: expected .npz or .safetensors")
    except ConfigError:
        raise
    except Exception as err:  # corrupt archives raise zipfile, OSError, ValueError, safetensors errors
        raise ConfigError(f"cannot read calibration file {path}: {type(err).__name__}: {err}") from err
    described = _describe(names, example)
    if not arrays:
        raise ConfigError(f"calibration file {path} holds no arrays; the model takes ({described})")
    if len(example) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ConfigError(
            f"calibration file {path} lacks input(s) {', '.join(missing)} (it has {', '.join(sorted(arrays))}); "
            f"the model takes ({described})"
        )
    columns = []
    for name, ref in zip(names, example, strict=True):
        value = torch.from_numpy(np.ascontiguousarray(arrays[name]))
        columns.append(_check_column(name, value, ref, f"calibration file {path.name}", described))
    counts = {c.shape[0] for c in columns}
    if len(counts) > 1:
        raise ConfigError(f"calibration file {path}: inputs have different sample counts {sorted(counts)}")
    return columns


def _repeat_others(first: torch.Tensor, example: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    # Inputs after the first repeat the example's first row for every sample.
    n = first.shape[0]
    return [first, *(t[:1].expand(n, *t.shape[1:]).clone() for t in example[1:])]


def _read_images(
    folder: Path, calibration: Calibration, names: Sequence[str], example: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    if not folder.is_dir():
        raise ConfigError(f"calibration images: {folder} is not a folder")
    ref = example[0]
    if ref.dim() != 4 or not ref.is_floating_point() or ref.shape[1] not in (1, 3):
        raise ConfigError(
            f"calibration images need a model whose first input is (N, 1 or 3, H, W) float; it takes "
            f"({_describe(names, example)})"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"calibration images: no {', '.join(IMAGE_SUFFIXES)} files in {folder}")
    channels, height, width = ref.shape[1:]
    mean = torch.tensor(calibration.mean).view(-1, 1, 1)
    std = torch.tensor(calibration.std).view(-1, 1, 1)
    if mean.shape[0] not in (1, channels) or std.shape[0] not in (1, channels):
        raise ConfigError(
            f"calibration mean/std need 1 or {channels} values, got {len(calibration.mean)}, {len(calibration.std)}"
        )
    from PIL import Image, UnidentifiedImageError

    images = []
    for file in files:
        try:
            with Image.open(file) as opened:
                img = opened.convert("L" if channels == 1 else "RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                array = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError(f"calibration image {file} cannot be read: {err}") from err
        pixels = torch.from_numpy(array).reshape(height, width, -1).permute(2, 0, 1)  # (C, H, W)
        images.append(((pixels - mean) / std).to(ref.dtype))
    return _repeat_others(torch.stack(images), example)


def _read_tokens(path: Path, names: Sequence[str], example: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"no such token file: {path}")
    ref = example[0]
    if ref.dim() != 2 or ref.is_floating_point() or ref.dtype == torch.bool:
        raise ConfigError(
            f"calibration tokens need a model whose first input is (N, T) integer ids; it takes ({_describe(names, example)})"
        )
    try:
        if path.suffix.lower() == ".npy":
            ids = np.load(path, allow_pickle=False)
        else:
            ids = np.array(path.read_text().split(), dtype=np.int64)
    except (ValueError, OSError) as err:
        raise ConfigError(f"cannot read token ids from {path}: {err}") from err
    if ids.dtype.kind not in "iu":
        raise ConfigError(f"token file {path} holds {ids.dtype} values; expected integer ids")
    stream = torch.from_numpy(ids.reshape(-1).astype(np.int64))
    length = ref.shape[1]
    rows = stream.numel() // length
    if rows == 0:
        raise ConfigError(f"token file {path} has {stream.numel()} ids; one row needs {length}")
    return _repeat_others(stream[: rows * length].view(rows, length).to(ref.dtype), example)


def _cut(
    columns: Sequence[torch.Tensor], example: Sequence[torch.Tensor], source: str, limit: int
) -> list[Batch]:
    size = example[0].shape[0]
    samples = columns[0].shape[0]
    if samples < size:
        raise ConfigError(
            f"calibration {source} gives {samples} sample(s); the model was captured with batch {size}: give at least {size}"
        )
    count = samples // size
    if samples % size:
        log.info(
            "calibration: %d sample(s) beyond the last full batch of %d are not used", samples % size, size
        )
    if limit:
        count = min(count, limit)
    return [tuple(c[i * size : (i + 1) * size] for c in columns) for i in range(count)]
