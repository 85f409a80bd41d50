"""Comparing two reports: verdicts per figure, refusals, Markdown and JSON."""

import pytest

from optkit.compare import compare_reports, verdict
from optkit.errors import ArtifactError, ConfigError
from optkit.report import Figure, Report


def timing(median, p10, p90, unit="ms"):
    return Figure(median, unit, "t", p10, p90, 5)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (timing(1.0, 0.9, 1.2), timing(1.1, 1.0, 1.3), "noise"),  # intervals overlap
        (timing(1.0, 0.95, 1.05), timing(1.08, 1.06, 1.1), "noise"),  # apart, but within 10%
        (timing(1.0, 0.95, 1.05), timing(1.5, 1.4, 1.6), "slower"),
        (timing(1.0, 0.95, 1.05), timing(0.5, 0.45, 0.55), "faster"),
        (timing(2.0, 1.9, 2.1, "x"), timing(3.0, 2.9, 3.1, "x"), "faster"),  # a speed-up went up
        (timing(2.0, 1.9, 2.1, "x"), timing(1.0, 0.9, 1.1, "x"), "slower"),
        (Figure(1.5, "s"), Figure(3.0, "s"), "changed"),  # timed once: cannot tell noise
        (Figure(30.0, "dB"), Figure(25.0, "dB"), "worse"),
        (Figure(95.0, "%"), Figure(97.5, "%"), "better"),
        (Figure(2**20, "bytes"), Figure(2**19, "bytes"), "better"),
        (Figure(1000, "params"), Figure(1200, "params"), "worse"),
        (Figure(12.0, ""), Figure(13.0, ""), "changed"),  # no direction
        (Figure(12, "FLOPs"), Figure(12, "FLOPs"), "same"),
        (Figure(float("inf"), "dB"), Figure(float("inf"), "dB"), "same"),
        (Figure("w8a8"), Figure("w4a8"), "changed"),
        (None, Figure(1.0, "ms"), "added"),
        (Figure(1.0, "ms"), None, "removed"),
    ],
)
def test_verdicts(old, new, expected):
    assert verdict(old, new) == expected


def test_a_measured_memory_peak_is_judged_against_the_noise_floor():
    mib = 2**20
    assert verdict(Figure(100 * mib, "bytes"), Figure(105 * mib, "bytes"), name="peak_rss_bytes") == "noise"
    assert verdict(Figure(100 * mib, "bytes"), Figure(150 * mib, "bytes"), name="peak_rss_bytes") == "worse"
    assert verdict(Figure(100 * mib, "bytes"), Figure(105 * mib, "bytes"), name="model_bytes") == "worse"


def test_a_larger_noise_floor_absorbs_drift_between_runs():
    old, new = timing(0.04, 0.039, 0.041), timing(0.09, 0.088, 0.092)
    assert verdict(old, new) == "slower"
    assert verdict(old, new, noise_floor=2.0) == "noise"


def make(model="net", kind="optimize", sqnr=40.0, latency=1.0):
    r = Report(f"optkit {kind}: {model}", model=model, kind=kind)
    r.add("output SQNR vs input (1 batch(es))", sqnr, "dB", "quality_sqnr_db")
    r.add(
        "latency eager (after)", latency, "ms", "latency_eager_after", p10=latency * 0.95, p90=latency * 1.05
    )
    return r


def test_comparison_lists_changes_regressions_and_budgets():
    comparison = compare_reports(
        make(), make(sqnr=20.0, latency=2.0), ["quality_sqnr_db>=30"], sources=("main/", "pr/")
    )
    assert [(c.name, c.verdict) for c in comparison.changes] == [
        ("quality_sqnr_db", "worse"),
        ("latency_eager_after", "slower"),
    ]
    sqnr = comparison.changes[0]
    assert sqnr.delta == -20.0 and sqnr.delta_pct == -50.0
    assert [c.name for c in comparison.regressions] == ["quality_sqnr_db", "latency_eager_after"]
    assert [b.met for b in comparison.budgets] == [False]
    data = comparison.to_dict()
    assert data["regressions"] == ["quality_sqnr_db", "latency_eager_after"]
    assert data["baseline"] == {"source": "main/", "title": "optkit optimize: net"}
    md = comparison.to_markdown()
    assert md.startswith("## optkit compare: net (optimize)")
    assert "**2 regression(s)**" in md and "quality_sqnr_db: 40 dB -> 20 dB (-50%), worse" in md
    assert (
        "| output SQNR vs input (1 batch(es)) | `quality_sqnr_db` | 40 dB | 20 dB | -20 dB | -50 | **worse** |"
        in md
    )


def test_refuses_other_models_commands_and_old_formats():
    with pytest.raises(ConfigError, match="measured model 'net', the new report 'unet'"):
        compare_reports(make(), make(model="unet"))
    with pytest.raises(ConfigError, match="`optkit optimize` report, the new one `optkit bench`"):
        compare_reports(make(), make(kind="bench"))
    old = make()
    old.format = 1
    with pytest.raises(ArtifactError, match="baseline report is format 1; compare reads format 2"):
        compare_reports(old, make())
