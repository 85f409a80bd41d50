"""Write a benchmark's Markdown into its own section of docs/benchmarks.md; name the CPU."""

from __future__ import annotations

import platform
import re
from pathlib import Path

from optkit.fsutil import atomic_file

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in `doc`."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    with atomic_file(doc) as tmp:
        tmp.write_text(text)


def cpu_name() -> str:
    """The CPU's model name (every benchmark names the CPU it ran on)."""
    from optkit.backends.targets import cpu_model_name

    return cpu_model_name() or platform.processor() or platform.machine()
