import json

import pytest

from optkit.errors import ArtifactError
from optkit.report import Figure, Report, Table, bar_plot, format_value


def test_format_value_units():
    assert format_value(1_500_000, "FLOPs") == "1.5 MFLOPs"
    assert format_value(3 * 2**20, "bytes") == "3 MiB"
    assert format_value(12.34567, "ms") == "12.35 ms"
    assert format_value("w8a8") == "w8a8"


def test_write_load_round_trip(tmp_path):
    r = Report("run")
    r.add("latency", 1.25, "ms")
    r.tables.append(Table("t", ["a", "b"], [[1, 2.5]], {"b": "ms"}))
    bar_plot(tmp_path / "p.png", ["x", "y"], [1.0, 2.0], "title", "ms")
    r.plots["bars"] = "p.png"
    r.write(tmp_path)
    loaded = Report.load(tmp_path)
    assert loaded.figures["latency"] == Figure(1.25, "ms", "latency")
    assert loaded.tables[0].rows == [[1, 2.5]]
    md = (tmp_path / "report.md").read_text()
    assert "| latency | 1.25 ms | `latency` |" in md and "b (ms)" in md and "| 1 | 2.5 |" in md and "![bars](p.png)" in md
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["format"] == 2


def test_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="report.json is missing"):
        Report.load(tmp_path)
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(ArtifactError, match="not an optkit report"):
        Report.load(tmp_path)
