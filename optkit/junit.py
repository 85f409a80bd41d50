"""JUnit XML for CI systems: each budget, and with `--fail-on-regression` each compared figure,
is a test case that CI dashboards show as passed or failed.

The file follows the common JUnit schema (`testsuites` > `testsuite` > `testcase` with a
`failure` child) that GitHub, GitLab and Jenkins read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from optkit.budgets import BudgetResult
from optkit.compare import FigureChange
from optkit.fsutil import atomic_file


@dataclass(frozen=True)
class Case:
    """One test case: its `name`, the `classname` CI groups it by, and a `failure` message
    (None: passed) of type `kind`."""

    name: str
    classname: str
    failure: str | None = None
    kind: str = "budget"


def budget_cases(results: Iterable[BudgetResult], classname: str) -> list[Case]:
    """One case per budget, failed with the figure's value and the bound when missed."""
    return [Case(str(r.budget), classname, None if r.met else f"budget missed: {r.message}") for r in results]


def regression_cases(changes: Iterable[FigureChange], classname: str) -> list[Case]:
    """One case per compared number, failed when it regressed (not noise)."""
    return [
        Case(
            f"no regression: {c.name}",
            classname,
            f"regression: {c.summary}" if c.regression else None,
            "regression",
        )
        for c in changes
        if c.delta is not None
    ]


def junit_xml(suites: Mapping[str, Sequence[Case]]) -> str:
    """The JUnit XML document of `suites` (suite name -> cases)."""
    root = ET.Element("testsuites", name="optkit")
    total = failed = 0
    for suite_name, cases in suites.items():
        failures = sum(c.failure is not None for c in cases)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(cases)),
            failures=str(failures),
            errors="0",
            skipped="0",
        )
        for case in cases:
            node = ET.SubElement(suite, "testcase", name=case.name, classname=case.classname, time="0")
            if case.failure is not None:
                ET.SubElement(node, "failure", message=case.failure, type=case.kind).text = case.failure
        total, failed = total + len(cases), failed + failures
    root.set("tests", str(total))
    root.set("failures", str(failed))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, suites: Mapping[str, Sequence[Case]]) -> Path:
    """Write `junit_xml(suites)` to `path`, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(junit_xml(suites))
    return path
