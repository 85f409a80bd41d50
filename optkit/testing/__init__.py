"""A pytest plugin for users' own test suites: capture once per session, assert with figures.

Installing optkit registers this module as the pytest plugin `optkit` (entry point group
`pytest11` in pyproject.toml), so every test suite in that environment gets it; `-p no:optkit`
turns it off, and with `PYTEST_DISABLE_PLUGIN_AUTOLOAD` set it is loaded with `-p optkit`.

| name                     | what it is                                                            |
|--------------------------|-----------------------------------------------------------------------|
| `optkit_capture`         | fixture (session): `optkit_capture(module, example_inputs)` or        |
|                          | `optkit_capture("zoo:dit")` -> Program, captured once per session      |
| `optkit_optimize`        | fixture (session): `optkit_optimize(program, "ptq")` -> PipelineResult |
| `assert_sqnr`            | output SQNR of a candidate against a reference >= a bound (dB)          |
| `assert_psnr`            | output PSNR >= a bound (dB)                                            |
| `assert_latency_ratio`   | a candidate's median latency against a baseline's, measured interleaved |
| `assert_report_figure`   | a figure of a report `optkit optimize` wrote meets a bound (a budget)  |
| `--optkit-threads N`     | option: torch intra-op threads for the session (restored afterwards)   |

A failed check raises `AssertionError` whose message carries the measured figure, the bound and
what was compared; a bad argument raises an `OptkitError` (`ConfigError`, `UnknownNameError`,
`ArtifactError`), so a typo never reads as a regression.
"""

from __future__ import annotations

import pytest
import torch

from optkit.testing.caches import CaptureCache, OptimizeCache
from optkit.testing.checks import (
    LatencyComparison,
    assert_latency_ratio,
    assert_psnr,
    assert_report_figure,
    assert_sqnr,
    measure_latency,
)

__all__ = [
    "CaptureCache",
    "LatencyComparison",
    "OptimizeCache",
    "assert_latency_ratio",
    "assert_psnr",
    "assert_report_figure",
    "assert_sqnr",
    "measure_latency",
]

_THREADS = pytest.StashKey[int]()  # the thread count before --optkit-threads, restored at the end


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def optkit_capture() -> CaptureCache:
    """Capture a module or load a model reference once per session: `optkit_capture(model, inputs)`."""
    return CaptureCache()


@pytest.fixture(scope="session")
def optkit_optimize() -> OptimizeCache:
    """Run passes on a Program once per session: `optkit_optimize(program, "ptq").program`."""
    return OptimizeCache()


# -- pytest hooks ------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    """`--optkit-threads N` (ini: `optkit_threads`): torch intra-op threads for the session."""
    group = parser.getgroup("optkit", "optkit model checks")
    group.addoption(
        "--optkit-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads for this session (default: leave torch's setting); "
        "pin it so latency and numerics are measured alike on every run",
    )
    parser.addini(
        "optkit_threads", "torch intra-op threads for the session (as --optkit-threads)", default=""
    )


def pytest_configure(config: pytest.Config) -> None:
    """Pin torch's thread count when `--optkit-threads` (or the ini value) asks for it."""
    threads = _threads_option(config)
    if threads is not None:
        config.stash[_THREADS] = torch.get_num_threads()
        torch.set_num_threads(threads)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give torch back the thread count it had before the session."""
    if _THREADS in config.stash:
        torch.set_num_threads(config.stash[_THREADS])
        del config.stash[_THREADS]


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say in the header how many threads torch runs on when the session pinned them."""
    threads = _threads_option(config)
    return f"optkit: torch threads pinned to {threads}" if threads is not None else None


def _threads_option(config: pytest.Config) -> int | None:
    value = config.getoption("optkit_threads")
    if value is None:
        text = str(config.getini("optkit_threads")).strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise pytest.UsageError(f"optkit_threads must be an integer, got {text!r}") from None
    if value < 1:
        raise pytest.UsageError(f"--optkit-threads must be >= 1, got {value}")
    return value
