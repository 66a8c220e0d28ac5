"""The HTML report (pytest-html), written for an administrator reading it at 3 a.m.

At the top: per organization, the outcomes by severity and by scenario, then
every failing requirement with the subjects it fails on, what was found, what
was expected and the documented fix with the organization's own values. In the
table: requirement, severity and subject columns, and the same details in each
failing row. Every value from the organization is escaped: object names are
attacker-controlled text as far as a report is concerned.
"""

from __future__ import annotations

import json
from collections import defaultdict
from html import escape
from typing import Any

import pytest

from hybridtrust import catalog
from hybridtrust.catalog import SCENARIOS, SEVERITIES
from hybridtrust.results import OUTCOMES, ProfileResults, Result, severity_rank

STYLE = """
<style>
.ht-org { margin: 1em 0 2em; }
.ht-org h2 { margin-bottom: .2em; }
.ht-meta { color: #555; margin: .2em 0; }
.ht-note { color: #8a4b00; }
table.ht-counts { border-collapse: collapse; margin: .6em 1.5em .6em 0; display: inline-table; vertical-align: top; }
table.ht-counts th, table.ht-counts td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
table.ht-counts th:first-child, table.ht-counts td:first-child { text-align: left; }
.ht-failed { color: #b00020; font-weight: bold; }
.ht-error { color: #d35400; font-weight: bold; }
.ht-sev-critical { background: #b00020; color: #fff; padding: 0 6px; border-radius: 3px; }
.ht-sev-high { background: #d35400; color: #fff; padding: 0 6px; border-radius: 3px; }
.ht-sev-medium { background: #b8860b; color: #fff; padding: 0 6px; border-radius: 3px; }
.ht-sev-low { background: #607d8b; color: #fff; padding: 0 6px; border-radius: 3px; }
.ht-finding { border-left: 4px solid #b00020; padding: .3em .8em; margin: .6em 0; background: #fff7f7; }
.ht-finding.ht-errored { border-left-color: #d35400; background: #fffaf2; }
.ht-finding dt { font-weight: bold; margin-top: .3em; }
.ht-finding dd { margin-left: 1em; white-space: pre-wrap; font-family: monospace; }
.ht-fix { background: #f3f7ff; }
</style>
"""


def _severity(severity: str) -> str:
    return f'<span class="ht-sev-{escape(severity)}">{escape(severity)}</span>'


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, default=str, ensure_ascii=False)


def finding_panel(result: Result) -> str:
    """Everything an administrator needs about one failing (or unevaluable) subject."""
    requirement = catalog.BY_ID.get(result.requirement)
    title = requirement.title if requirement else result.title
    css = "ht-finding" if result.outcome == "failed" else "ht-finding ht-errored"
    rows = [
        ("Requirement", f"{result.requirement}: {title}"),
        ("Severity", result.severity),
        ("Subject", result.subject),
        ("What is wrong" if result.outcome == "failed" else "Could not be evaluated", result.message),
    ]
    if result.found is not None or result.expected is not None:
        rows += [("Found", _value(result.found)), ("Expected", _value(result.expected))]
    if result.symptoms:
        rows.append(("What users see", "\n".join(result.symptoms)))
    if result.fix:
        rows.append(("Documented fix", result.fix))
    rows.append(("Source", result.source))
    items = "".join(
        f"<dt>{escape(name)}</dt><dd{' class=ht-fix' if name == 'Documented fix' else ''}>{escape(str(text))}</dd>"
        for name, text in rows
    )
    return f'<div class="{css}"><dl>{items}</dl></div>'


def _counts_table(title: str, rows: dict[str, dict[str, int]]) -> str:
    head = "".join(f"<th>{outcome}</th>" for outcome in OUTCOMES)
    body = []
    for name, counts in rows.items():
        cells = []
        for outcome in OUTCOMES:
            count = counts.get(outcome, 0)
            css = f' class="ht-{outcome}"' if count and outcome in ("failed", "error") else ""
            cells.append(f"<td{css}>{count}</td>")
        body.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    return f'<table class="ht-counts"><tr><th>{escape(title)}</th>{head}</tr>{"".join(body)}</table>'


def organization_summary(results: ProfileResults, organization_name: str) -> str:
    by_severity: dict[str, dict[str, int]] = {severity: defaultdict(int) for severity in SEVERITIES}
    by_scenario: dict[str, dict[str, int]] = {scenario: defaultdict(int) for scenario in SCENARIOS}
    for result in results.results:
        by_severity[result.severity][result.outcome] += 1
        for scenario in result.scenarios:
            by_scenario[scenario][result.outcome] += 1
    failing = [r for r in results.results if r.outcome in ("failed", "error")]
    failing_ids = {r.requirement for r in failing}
    judged_ids = {r.requirement for r in results.results}
    meta = [f"{results.source} audit of profile <b>{escape(results.profile)}</b>"]
    if results.origin:
        meta.append(f"from {escape(results.origin)}")
    if results.collected_at:
        meta.append(f"collected {results.collected_at:%Y-%m-%d %H:%M} UTC")
    notes = "".join(f'<p class="ht-note">{escape(note)}</p>' for note in results.notes)
    grouped: dict[str, list[Result]] = defaultdict(list)
    for result in sorted(failing, key=lambda r: (-severity_rank(r.severity), r.requirement, r.subject)):
        grouped[result.requirement].append(result)
    sections = []
    for requirement_id, items in grouped.items():
        requirement = catalog.BY_ID.get(requirement_id)
        title = requirement.title if requirement else items[0].title
        subjects = ", ".join(escape(item.subject) for item in items)
        panels = "".join(finding_panel(item) for item in items)
        sections.append(
            f"<details><summary>{_severity(items[0].severity)} <b>{escape(requirement_id)}</b> "
            f"{escape(title)}: {len(items)} subject(s): {subjects}</summary>{panels}</details>"
        )
    failures = (
        f"<h3>{len(failing_ids)} of {len(judged_ids)} requirements fail or could not be evaluated</h3>"
        + "".join(sections)
        if failing
        else f"<h3>All {len(judged_ids)} requirements that apply pass</h3>"
    )
    return (
        f'<div class="ht-org"><h2>{escape(organization_name)}</h2>'
        f'<p class="ht-meta">{" ".join(meta)}</p>{notes}'
        f"{_counts_table('severity', by_severity)}{_counts_table('scenario', by_scenario)}"
        f"{failures}</div>"
    )


class HtmlReport:
    """pytest-html hooks, registered only when pytest-html is active."""

    def __init__(self, suite: Any) -> None:
        self.suite = suite

    def pytest_html_report_title(self, report: Any) -> None:
        names = ", ".join(audit.profile.organization.name for audit in self.suite.audits)
        report.title = f"hybridtrust: hybrid OAuth trust of {names}"

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: Any
    ) -> None:
        from hybridtrust import gate  # imported here: gate's report files use this module

        prefix.append(STYLE)
        for audit in self.suite.audits:
            prefix.append(organization_summary(self.suite.results[audit.name], audit.profile.organization.name))
            prefix.append(gate.extras_for(session.config, audit.name))  # baseline, changes, waivers, trend

    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(1, '<th class="sortable" data-column-type="requirement">Requirement</th>')
        cells.insert(2, '<th class="sortable" data-column-type="severity">Severity</th>')
        cells.insert(3, '<th class="sortable" data-column-type="subject">Subject</th>')

    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        result: Result | None = getattr(report, "hybrid_result", None)
        values = (result.requirement, result.severity, result.subject) if result else ("", "", "")
        names = ("requirement", "severity", "subject")
        for offset, (name, value) in enumerate(zip(names, values, strict=True)):
            cells.insert(1 + offset, f'<td class="col-{name}">{escape(value)}</td>')
        # pytest-html 4 writes the test id into its cell unescaped, and its script inserts the cell as
        # HTML; the id carries subjects named by the organization (a virtual directory URL, an
        # AuthServer name), so it is written again here, escaped, from the same node id
        # (tests/reliability/test_injection.py opens the report in Chromium to prove it).
        test_id = report.nodeid if report.when == "call" else f"{report.nodeid}::{report.when}"
        for index, cell in enumerate(cells):
            if cell.startswith('<td class="col-testId">'):
                cells[index] = f'<td class="col-testId">{escape(test_id)}</td>'

    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list[str]) -> None:
        result: Result | None = getattr(report, "hybrid_result", None)
        if result is not None and result.outcome in ("failed", "error"):
            data.insert(0, finding_panel(result))
