import logging
import os
import sys

from optkit.native_output import native_stderr_to_file, write_log


def test_native_writes_to_fd2_are_captured_and_python_stderr_still_reaches_the_terminal(tmp_path, capfd):
    with native_stderr_to_file() as lines:
        os.write(2, b"C++ warning one\nC++ warning two\n")
        print("progress", file=sys.stderr)
    assert lines == ["C++ warning one", "C++ warning two"]
    assert "progress" in capfd.readouterr().err
    assert write_log(lines, tmp_path / "native.log").read_text() == "C++ warning one\nC++ warning two\n"
    assert write_log([], tmp_path / "empty.log") is None and not (tmp_path / "empty.log").exists()


def test_logging_handlers_on_stderr_follow_python_stderr_to_the_terminal():
    original = sys.stderr
    handler = logging.StreamHandler(original)
    logging.getLogger().addHandler(handler)
    try:
        with native_stderr_to_file():
            assert sys.stderr is not original and handler.stream is sys.stderr
        assert sys.stderr is original and handler.stream is original
    finally:
        logging.getLogger().removeHandler(handler)
