"""The generic core never imports the zoo (docs/design.md: generic core below, zoo and CLI above)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    *ROOT.glob("optkit/ir/*.py"),
    *ROOT.glob("optkit/quant/*.py"),
    *ROOT.glob("optkit/caching/*.py"),
    *ROOT.glob("optkit/search/*.py"),
    *ROOT.glob("passes/*.py"),
    *ROOT.glob("backends/**/*.py"),
    *(
        ROOT / "optkit" / name
        for name in ("metrics.py", "sampling.py", "workload.py", "calib_data.py", "pipeline.py", "report.py")
    ),
]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_core_modules_do_not_import_the_zoo():
    assert len(CORE) > 40
    offenders = {
        str(p.relative_to(ROOT)): name
        for p in CORE
        for name in _imports(p)
        if name == "optkit.zoo" or name.startswith("optkit.zoo.")
    }
    assert offenders == {}
