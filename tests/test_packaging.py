"""The wheel installs passes/ as optkit.passes and backends/ as optkit.backends."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_passes_and_backends(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("optkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "optkit/passes/dce.py" in names
    assert "optkit/passes/fold_constants.py" in names
    assert "optkit/backends/__init__.py" in names
    assert "optkit/ir/program.py" in names
    # every package of the source tree is in the wheel (the packages list is explicit)
    sources = [p.parent for p in (ROOT / "optkit").rglob("__init__.py")]
    for src in sources:
        init = f"{src.relative_to(ROOT).as_posix()}/__init__.py"
        assert init in names, f"{init} missing from the wheel: add it to [tool.setuptools] packages"
    backend_files = {f"optkit/backends/{p.name}" for p in (ROOT / "backends").glob("*.py")}
    pass_files = {f"optkit/passes/{p.name}" for p in (ROOT / "passes").glob("*.py")}
    assert backend_files | pass_files <= names
    assert not any(n.startswith(("passes/", "backends/", "tests/")) for n in names)
    shipped = {n for n in names if n.startswith("optkit/zoo/checkpoints/")}
    on_disk = {
        f"optkit/zoo/checkpoints/{p.name}" for p in (ROOT / "optkit/zoo/checkpoints").glob("*.safetensors")
    }
    assert on_disk <= shipped


def test_installed_package_imports_mapped_subpackages():
    import optkit.backends
    import optkit.passes
    import optkit.passes.dce

    assert Path(optkit.passes.__file__).parent.name == "passes"
    assert Path(optkit.backends.__file__).parent.name == "backends"
