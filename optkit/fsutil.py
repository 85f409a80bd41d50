"""Atomic writes: a file or a directory appears whole or not at all.

An output directory is also locked while it is written (`output_lock`, a `.NAME.lock` file beside
it held with `flock`): a second run writing the same directory at the same time fails saying so
instead of racing the first, and a run killed with SIGKILL leaves its lock free (the kernel drops
it) and only hidden temporary folders, which the next run for that directory removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from optkit.errors import ArtifactError, OptkitError


def member_path(root: str | Path, name: str) -> Path:
    """`root / name` for a file name read from a manifest, refused with `ArtifactError` when it
    is absolute or climbs out of `root` (a tampered manifest must not reach other files)."""
    root = Path(root)
    candidate = root / name
    if Path(name).is_absolute() or not candidate.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"{root}: the manifest names {name!r}, which points outside the directory")
    return candidate


@contextlib.contextmanager
def atomic_file(path: str | Path, keep_name: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    With `keep_name` the temporary file has `path`'s own name, in a temporary folder beside it:
    for writers that record the file name inside the file (torch.export archives do), so that the
    same content gives the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_name:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
        try:
            yield folder / path.name
            os.replace(folder / path.name, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the write lock of output `path` for the block, or fail at once with `OptkitError`
    when another process holds it. Leftovers of killed runs for `path` are removed once held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise OptkitError(
                f"another run is writing {path} right now (it holds {lock.name}); wait for it to "
                "finish or choose another output"
            ) from err
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder removed the file we locked: lock the new one
    try:
        for stale in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _glob_escape(name: str) -> str:  # glob's special characters, matched literally
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path`, on error it is removed.

    An existing non-empty `path` is refused unless `overwrite` is set, so a failed run never
    leaves a half-written output directory and never silently clobbers an old one. The write
    lock of `path` is held throughout: a concurrent run for the same `path` fails saying so.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptkitError(f"output {path} exists and is not a directory")
    with output_lock(path):
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise OptkitError(
                f"output directory {path} exists and is not empty; pass --overwrite to replace it"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError as err:  # something outside optkit created `path` meanwhile
                if old is not None:
                    os.replace(old, path)
                raise OptkitError(f"cannot move the new output into {path}: {err}") from err
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
