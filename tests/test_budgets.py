"""Budgets on report figures: the grammar, units, met and missed, how reports and JUnit carry them."""

import math
import xml.etree.ElementTree as ET

import pytest

from optkit.budgets import Budget, check_budgets, missed, parse_budget
from optkit.errors import ConfigError, UnknownNameError
from optkit.junit import budget_cases, junit_xml, write_junit
from optkit.report import Report


@pytest.fixture
def report():
    r = Report("optkit optimize: net with ptq", model="net", kind="optimize")
    r.add("output SQNR vs input (1 batch(es))", 31.5, "dB", "quality_sqnr_db")
    r.add("model.pt2 size", 3 * 2**20, "bytes", "model_bytes")
    r.add("latency eager (after)", 1.5, "ms", "latency_eager_after", p10=1.4, p90=1.7, samples=5)
    r.add("FLOPs per call (after)", 2_000_000, "FLOPs", "flops_after")
    r.add("perplexity after (2 batch(es))", 12.0, "", "perplexity_after")
    r.add("ONNX Runtime max abs error vs optimized", float("nan"), "", "onnx_max_abs_error")
    r.add("precision", "w8a8", "", "precision")
    return r


@pytest.mark.parametrize(
    "text, expected",
    [
        ("quality_psnr_db>=30", Budget("quality_psnr_db", ">=", 30.0)),
        ("  model_bytes <= 2 MiB ", Budget("model_bytes", "<=", 2.0, "MiB")),
        ("latency_eager_after<1.5e1ms", Budget("latency_eager_after", "<", 15.0, "ms")),
        ("speedup_vs_eager>.9x", Budget("speedup_vs_eager", ">", 0.9, "x")),
        ("quality_top1_pct==100%", Budget("quality_top1_pct", "==", 100.0, "%")),
        ("delta>=-3", Budget("delta", ">=", -3.0)),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize(
    "text", ["quality_psnr_db=>30", "quality_psnr_db>=", ">=30", "Quality>=3", "a>=b", "x>=1 2", "x>=inf", ""]
)
def test_malformed_budgets_show_the_grammar(text):
    with pytest.raises(
        ConfigError, match=r"malformed budget .*expected NAME OP NUMBER\[UNIT\].*>=, <=, >, <, =="
    ):
        parse_budget(text)


def test_met_and_missed_with_units_converted(report):
    results = check_budgets(
        report,
        [
            "quality_sqnr_db>=30",
            "model_bytes<=2MiB",  # 3 MiB: missed
            "model_bytes<=4MB",  # SI megabytes: 3.15e6 bytes fits
            "latency_eager_after<=0.002s",
            "flops_after<2MFLOPs",  # equal: missed
            "flops_after==2000KFLOPs",
            "perplexity_after<=20",
        ],
    )
    assert [r.met for r in results] == [True, False, True, True, False, True, True]
    assert results[1].bound == 2 * 2**20 and results[3].bound == pytest.approx(2.0)
    assert results[1].message == "model_bytes = 3.14573e+06 bytes, required <= 2 MiB"
    assert results[0].label == "output SQNR vs input (1 batch(es))"
    assert [str(r.budget) for r in missed(results)] == ["model_bytes<=2MiB", "flops_after<2MFLOPs"]


def test_nan_meets_no_budget(report):
    (low, high) = check_budgets(report, ["onnx_max_abs_error<=1", "onnx_max_abs_error>=1"])
    assert math.isnan(low.value) and not low.met and not high.met


@pytest.mark.parametrize(
    "budget, message",
    [
        ("latency_eager_after<=2dB", "unit 'dB' does not fit figure latency_eager_after, measured in ms; write the bound in ns, us, µs, ms, s"),
        ("model_bytes<=2ms", "measured in bytes; write the bound in B, bytes, KB"),
        ("quality_sqnr_db>=30%", "unit '%' does not fit figure quality_sqnr_db, measured in dB; write the bound in dB or"),
        ("perplexity_after<=20dB", "figure perplexity_after has no unit; write a plain number"),
        ("precision==8", "figure precision is not a number ('w8a8')"),
    ],
)  # fmt: skip
def test_units_that_do_not_fit_are_errors(report, budget, message):
    with pytest.raises(ConfigError, match="^budget .*" + message.replace("(", r"\(").replace(")", r"\)")):
        check_budgets(report, [budget])


def test_unknown_figure_lists_the_known_names(report):
    with pytest.raises(UnknownNameError) as err:
        check_budgets(report, ["quality_psnr_db>=30"])
    assert str(err.value) == (
        "unknown figure 'quality_psnr_db'; known: flops_after, latency_eager_after, model_bytes, "
        "onnx_max_abs_error, perplexity_after, precision, quality_sqnr_db"
    )


def test_results_round_trip_through_the_report(report, tmp_path):
    report.budgets = check_budgets(report, ["quality_sqnr_db>=30", "model_bytes<=2MiB"])
    report.write(tmp_path)
    loaded = Report.load(tmp_path)
    assert loaded.budgets == report.budgets
    md = (tmp_path / "report.md").read_text()
    assert "### Budgets" in md and "| `model_bytes<=2MiB` | model.pt2 size | 3 MiB | **MISSED** |" in md
    assert md.index("### Budgets") < md.index("| figure | value | name |")


def test_junit_has_one_case_per_budget_with_value_and_bound(report, tmp_path):
    results = check_budgets(report, ["quality_sqnr_db>=30", "model_bytes<=2MiB"])
    path = write_junit(tmp_path / "junit.xml", {report.title: budget_cases(results, "optkit.optimize.net")})
    root = ET.parse(path).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "2", "1")
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "optkit optimize: net with ptq" and suite.get("failures") == "1"
    met, miss = suite.findall("testcase")
    assert met.get("name") == "quality_sqnr_db>=30" and met.find("failure") is None
    assert miss.get("classname") == "optkit.optimize.net"
    failure = miss.find("failure")
    assert failure.get("type") == "budget"
    assert failure.get("message") == "budget missed: model_bytes = 3.14573e+06 bytes, required <= 2 MiB"
    assert junit_xml({}).startswith('<?xml version="1.0" encoding="utf-8"?>\n<testsuites')
