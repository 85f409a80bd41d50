"""The CI gates besides the tests: `ruff check`, `ruff format --check` and `mypy` (STYLE.md, habit 8).

They run as subprocesses over the whole tree, so a file that breaks a gate fails the suite with the
tool's own message. mypy keeps its cache in `.mypy_cache` (git-ignored): about 25 s cold on one
core, under a second warm.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_ruff_check_passes():
    proc = _run("ruff", "check", "--no-cache", ".", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_check_passes():
    proc = _run("ruff", "format", "--check", "--no-cache", ".", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_passes_on_the_typed_packages():
    proc = _run("mypy", "optkit", "passes", "backends", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
