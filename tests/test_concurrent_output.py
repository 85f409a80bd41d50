"""Interrupted and concurrent writes of one output directory (issue 16): a second writer fails
saying so, a writer killed with SIGKILL leaves no output and no held lock, the next run succeeds."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from optkit.errors import OptkitError
from optkit.fsutil import atomic_dir

# A writer that fills the output directory's temporary folder, says so, then waits to be killed.
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from optkit.fsutil import atomic_dir

    with atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "model.pt2").write_bytes(b"half" * 1000)
        print("writing", flush=True)
        time.sleep(60)
    """
)


def test_second_writer_of_the_same_output_fails_and_the_first_wins(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as first:
        (first / "a.txt").write_text("first")
        with pytest.raises(OptkitError, match="another run is writing"), atomic_dir(out, overwrite=True):
            pass
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _start_writer(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    return proc


@pytest.mark.slow
def test_a_writer_in_another_process_blocks_then_sigkill_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _start_writer(out)
    try:
        with pytest.raises(OptkitError, match="another run is writing"), atomic_dir(out):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not out.exists(), "a killed run left a partial output"
    with atomic_dir(out) as tmp:  # the next run takes the lock and clears the leftovers
        (tmp / "model.pt2").write_text("whole")
    assert (out / "model.pt2").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_lock_is_released_between_runs(tmp_path):
    out = tmp_path / "out"
    for i in range(3):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "n.txt").write_text(str(i))
    assert (out / "n.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
