"""HTML sections about a run in time: the trend, what changed, the baseline, the waivers.

Shared by the pytest-html report (through its summary hook) and the per-organization
report files, so both say the same. Every value from an organization or a waiver
file is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from hybridtrust.baseline import Comparison
from hybridtrust.catalog import SEVERITIES
from hybridtrust.history import RunPoint
from hybridtrust.results import ProfileResults, Result, severity_rank
from hybridtrust.trend_svg import trend_svg

STYLE = """
<style>
.ht-extras { margin: 0 0 2em; }
.ht-extras h3 { margin: 1em 0 .3em; }
.ht-changes { margin: .2em 0 .6em; padding-left: 1.4em; }
.ht-changes li { margin: .1em 0; }
.ht-new { color: #b00020; font-weight: bold; }
.ht-fixed { color: #2e7d32; font-weight: bold; }
.ht-still { color: #8a4b00; font-weight: bold; }
table.ht-trend-numbers { border-collapse: collapse; margin: .4em 0; }
table.ht-trend-numbers th, table.ht-trend-numbers td { border: 1px solid #ccc; padding: 1px 6px; text-align: right; }
.ht-waiver { border-left: 4px solid #607d8b; padding: .3em .8em; margin: .4em 0; background: #f6f8f9; }
.ht-waiver dt { font-weight: bold; }
.ht-waiver dd { margin-left: 1em; white-space: pre-wrap; }
</style>
"""


@dataclass
class ProfileExtras:
    """What the sections show for one organization."""

    trend: list[RunPoint] = field(default_factory=list)
    previous: Comparison | None = None
    baseline: Comparison | None = None
    history_folder: str = ""


def _items(entries: list[dict[str, str]]) -> str:
    ordered = sorted(entries, key=lambda e: (-severity_rank(e["severity"]) if e.get("severity") in SEVERITIES else 1,
                                              e["requirement"], e["subject"]))  # fmt: skip
    rows = []
    for entry in ordered:
        severity = entry.get("severity", "")
        badge = f'<span class="ht-sev-{escape(severity)}">{escape(severity)}</span> ' if severity else ""
        rows.append(f"<li>{badge}<b>{escape(entry['requirement'])}</b> {escape(entry['subject'])}</li>")
    return f'<ul class="ht-changes">{"".join(rows)}</ul>'


def _list_section(label: str, css: str, entries: list[dict[str, str]], *, open_: bool) -> str:
    if not entries:
        return f'<p><span class="{css}">{escape(label)}: none</span></p>'
    opened = " open" if open_ else ""
    return (
        f'<details{opened}><summary><span class="{css}">{escape(label)}: {len(entries)}</span></summary>'
        f"{_items(entries)}</details>"
    )


def trend_section(extras: ProfileExtras) -> str:
    points = extras.trend
    if not points:
        return ""
    rows = "".join(
        f"<tr><td>{escape(p.started)}</td>"
        + "".join(f"<td>{p.failed.get(s, 0)}</td>" for s in SEVERITIES)
        + f"<td>{p.total('errored')}</td><td>{p.total('passed')}</td><td>{p.waived}</td></tr>"
        for p in reversed(points)
    )
    head = "".join(f"<th>failed {s}</th>" for s in SEVERITIES)
    table = (
        f'<table class="ht-trend-numbers"><tr><th>run started</th>{head}<th>could not be evaluated</th>'
        f"<th>passed</th><th>waived</th></tr>{rows}</table>"
    )
    where = f" (history: {escape(extras.history_folder)})" if extras.history_folder else ""
    return (
        f"<h3>Trend: requirements in the last {len(points)} run(s){where}</h3>"
        f"{trend_svg(points)}<details><summary>the numbers</summary>{table}</details>"
    )


def previous_section(extras: ProfileExtras) -> str:
    comparison = extras.previous
    if comparison is None:
        return "<h3>Since the previous run</h3><p>This is the first run of this organization in the history.</p>"
    when = escape(comparison.started or comparison.file)
    return (
        f"<h3>Since the previous run ({when})</h3>"
        + _list_section("new failures", "ht-new", comparison.new_failures, open_=True)
        + _list_section("fixed", "ht-fixed", comparison.fixed, open_=True)
    )


def baseline_section(extras: ProfileExtras) -> str:
    comparison = extras.baseline
    if comparison is None:
        return ""
    when = f", started {escape(comparison.started)}" if comparison.started else ""
    return (
        f"<h3>Compared with the baseline {escape(comparison.file)}{when}</h3>"
        + _list_section("new failures", "ht-new", comparison.new_failures, open_=True)
        + _list_section("fixed", "ht-fixed", comparison.fixed, open_=True)
        + _list_section("still failing", "ht-still", comparison.still_failing, open_=False)
    )


def waiver_panel(result: Result) -> str:
    record: dict[str, Any] = result.waiver or {}
    rows = [
        ("Requirement", f"{result.requirement}: {result.title}"),
        ("Subject", result.subject),
        ("Waived", result.message),
        ("Justification", record.get("justification", "")),
        ("Owner", record.get("owner") or "(none named)"),
        ("Expires", record.get("expires", "")),
        ("Waiver", f"{record.get('file', '')} [[waiver]][{record.get('index', '?')}]"),
    ]
    if result.fix:
        rows.append(("Documented fix", result.fix))
    items = "".join(f"<dt>{escape(name)}</dt><dd>{escape(str(text))}</dd>" for name, text in rows)
    return f'<div class="ht-waiver"><dl>{items}</dl></div>'


def waived_section(results: ProfileResults) -> str:
    waived = [r for r in results.results if r.outcome == "waived"]
    if not waived:
        return ""
    waived.sort(key=lambda r: (-severity_rank(r.severity), r.requirement, r.subject))
    return (
        f"<details><summary><b>{len(waived)} failure(s) waived</b> (they do not fail the run until their waiver "
        f"expires)</summary>{''.join(waiver_panel(r) for r in waived)}</details>"
    )


def extras_html(results: ProfileResults, extras: ProfileExtras) -> str:
    """All sections for one organization, after its summary."""
    return (
        f'{STYLE}<div class="ht-extras">{baseline_section(extras)}{previous_section(extras)}'
        f"{waived_section(results)}{trend_section(extras)}</div>"
    )
