import pytest

from optkit.errors import OptkitError
from optkit.fsutil import atomic_dir, atomic_file


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("fail mid-way")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_then_overwrites(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OptkitError, match="--overwrite"), atomic_dir(out):
        pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file(tmp_path):
    target = tmp_path / "f.json"
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("partial")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_text("ok")
    assert target.read_text() == "ok" and list(tmp_path.iterdir()) == [target]
