"""Facts about the machine optkit runs on that the core and the backends both read."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first `flags` line of `cpuinfo`; empty where it cannot be read (not Linux, not x86)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError as err:
        log.debug("cannot read %s: %s", cpuinfo, err)
    return frozenset()
