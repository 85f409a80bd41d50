import json

import pytest

from optkit.errors import ArtifactError, ConfigError
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
    assert (
        "| latency | 1.25 ms | `latency` |" in md
        and "b (ms)" in md
        and "| 1 | 2.5 |" in md
        and "![bars](p.png)" in md
    )
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["format"] == 2


def test_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="report.json is missing"):
        Report.load(tmp_path)
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(ArtifactError, match="not an optkit report"):
        Report.load(tmp_path)


def test_figures_have_names_labels_and_spreads(tmp_path):
    r = Report("run", model="net", kind="optimize")
    r.add("latency eager (before)", 1.25, "ms", p10=1.2, p90=1.4, samples=5)
    r.add("model.pt2 size", 2048, "bytes", "model_bytes")
    assert list(r.figures) == ["latency_eager_before", "model_bytes"]
    with pytest.raises(ConfigError, match="figure name 'model_bytes' is already used by 'model.pt2 size'"):
        r.add("model size", 1, "bytes", "model_bytes")
    with pytest.raises(ConfigError, match="'Model' is not lower-case snake_case"):
        r.add("model", 1, "", "Model")
    data = r.to_dict()
    assert data["format"] == 2 and data["model"] == "net" and data["kind"] == "optimize"
    assert data["figures"]["latency_eager_before"] == {
        "label": "latency eager (before)", "value": 1.25, "unit": "ms", "p10": 1.2, "p90": 1.4, "samples": 5,
    }  # fmt: skip
    assert data["figures"]["model_bytes"] == {"label": "model.pt2 size", "value": 2048, "unit": "bytes"}
    assert "| latency eager (before) | 1.25 ms (p10 1.2, p90 1.4, 5 runs) | `latency_eager_before` |" in (
        r.to_markdown()
    )
    r.write(tmp_path)
    assert Report.load(tmp_path).figures == r.figures


def test_format_1_reports_are_read_with_todays_names(tmp_path):
    old = {
        "format": 1,
        "title": "optkit optimize: net with ptq",
        "figures": {
            "output SQNR vs input (1 batch(es))": {"value": 40.0, "unit": "dB"},
            "latency eager (after)": {"value": 1.0, "unit": "ms"},
            "FLOPs per call (after)": {"value": 10, "unit": "FLOPs"},
            "model.pt2 size": {"value": 100, "unit": "bytes"},
            "tvm-cpu latency (median)": {"value": 2.0, "unit": "ms"},
            "something new": {"value": 1, "unit": ""},
        },
    }
    (tmp_path / "report.json").write_text(json.dumps(old))
    loaded = Report.load(tmp_path)
    assert loaded.format == 1
    assert list(loaded.figures) == [
        "quality_sqnr_db", "latency_eager_after", "flops_after", "model_bytes", "latency_tvm_cpu", "something_new",
    ]  # fmt: skip
    assert loaded.figures["quality_sqnr_db"] == Figure(40.0, "dB", "output SQNR vs input (1 batch(es))")
    (tmp_path / "report.json").write_text(json.dumps({**old, "format": 7}))
    with pytest.raises(ArtifactError, match="report format 7 is not one this optkit reads \\(1, 2\\)"):
        Report.load(tmp_path)


def test_lead_puts_named_figures_first_in_order():
    report = Report("r")
    report.add("a", 1.0, name="a")
    report.add("b", 2.0, name="b")
    report.add("c", 3.0, name="c")
    report.lead(["c", "missing", "a"])
    assert list(report.figures) == ["c", "a", "b"]
    assert report.summary().splitlines()[1].strip().startswith("c")
