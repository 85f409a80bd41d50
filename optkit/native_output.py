"""Native libraries' own messages (TVM's C++ logging, ONNX Runtime's) away from the terminal.

TVM writes warnings straight to file descriptor 2 from C++ ("Fast mode segfaults when there
are out-of-bounds indices" once per `take`), past Python's `sys.stderr` and `logging`. Commands
send them to a log file beside their output instead, and say how many there were; `--debug`
leaves them on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def native_stderr_to_file() -> Iterator[list[str]]:
    """Send what native code writes to file descriptor 2 to a temporary file for the block;
    afterwards the yielded list holds those lines. Python's own stderr writers (progress bars,
    `logging` handlers on `sys.stderr`) keep writing to the terminal."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    python_stderr = sys.stderr
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is python_stderr
    ]
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = terminal
        for handler in handlers:
            handler.setStream(terminal)
        try:
            yield lines
        finally:
            for handler in handlers:
                handler.setStream(python_stderr)
            sys.stderr = python_stderr
            terminal.close()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(log.read().decode(errors="replace").splitlines())


def write_log(lines: list[str], path: Path) -> Path | None:
    """Write `lines` to `path` (None, nothing written, when there are none)."""
    if not lines:
        return None
    path.write_text("\n".join(lines) + "\n")
    return path
