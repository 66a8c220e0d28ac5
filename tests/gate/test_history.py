"""Run history and trend: every finished run is kept, the report draws the last runs and what changed."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from hybridtrust import history
from hybridtrust.history import RunPoint, requirement_verdicts, run_point
from hybridtrust.trend_svg import trend_svg
from tests.support import SuiteRun

SVG = "{http://www.w3.org/2000/svg}"


def _document(started: str, *results: tuple[str, str, str, str]) -> dict[str, object]:
    return {
        "format": "hybridtrust-results/1", "profile": "contoso", "started": started,
        "results": [{"requirement": r, "subject": s, "outcome": o, "severity": v} for r, s, o, v in results],
    }  # fmt: skip


def test_a_requirement_verdict_sums_up_its_subjects() -> None:
    verdicts = requirement_verdicts(
        _document(
            "2026-11-24T06:00:00+00:00",
            ("A", "EX01", "passed", "high"), ("A", "EX02", "failed", "high"),  # one failing subject fails it
            ("B", "EX01", "error", "critical"), ("B", "EX02", "passed", "critical"),  # errored
            ("C", "t", "failed", "medium"), ("C", "u", "error", "medium"),  # a failure is the firmer news
            ("D", "t", "waived", "low"), ("E", "t", "skipped", "low"), ("F", "t", "passed", "low"),
        )["results"]  # type: ignore[arg-type]
    )  # fmt: skip
    assert verdicts == {"A": ("failed", "high"), "B": ("errored", "critical"), "C": ("failed", "medium"),
                        "D": ("waived", "low"), "F": ("passed", "low")}  # fmt: skip


def test_history_files_are_ordered_and_never_overwritten(tmp_path: Path) -> None:
    first = history.keep(tmp_path, "contoso", "20261124T060000Z", _document("2026-11-24T06:00:00+00:00"))
    second = history.keep(tmp_path, "contoso", "20261124T060000Z", _document("2026-11-24T06:00:00+00:00"))
    later = history.keep(tmp_path, "contoso", "20261124T070000Z", _document("2026-11-24T07:00:00+00:00"))
    (tmp_path / "history" / "contoso" / "notes.json").write_text("{}")  # not a run: ignored
    (tmp_path / "history" / "contoso" / "20261124T080000Z.json").write_text("{damaged")  # skipped, never fatal
    assert second.name == "20261124T060000Z-2.json"
    assert history.run_files(tmp_path, "contoso")[:3] == [first, second, later]
    assert history.newest(tmp_path, "contoso") == later
    assert [path for path, _ in history.recent(tmp_path, "contoso", limit=2)] == [second, later]


def test_the_trend_reads_small_side_files_and_falls_back_to_whole_documents(tmp_path: Path) -> None:
    failing = ("A", "EX01", "failed", "high")
    old = history.keep(tmp_path, "contoso", "20261124T060000Z", _document("2026-11-24T06:00:00+00:00", failing))
    new = history.keep(tmp_path, "contoso", "20261124T070000Z", _document("2026-11-24T07:00:00+00:00", failing))
    history._point_path(old).unlink()  # a run kept before side files existed: read whole
    # The side file is what the trend reads: the full document is not opened again.
    new.write_text(json.dumps(_document("2026-11-24T07:00:00+00:00")))
    points = history.trend(tmp_path, "contoso")
    assert [p.failed for p in points] == [{"high": 1}, {"high": 1}]
    assert history.trend(tmp_path, "contoso", exclude=new) == points[:1]
    assert history.run_files(tmp_path, "contoso") == [old, new]  # side files are not runs


def test_the_trend_chart_is_well_formed_svg_with_a_bar_per_run() -> None:
    points = [
        RunPoint("2026-11-20T06:00:00+00:00", passed={"high": 30}, failed={"critical": 2, "medium": 1}),
        RunPoint("2026-11-21T06:00:00+00:00", passed={"high": 31}, failed={"critical": 1}, errored={"high": 1}),
        run_point(_document("2026-11-22T06:00:00+00:00", ("A", "x", "passed", "high"), ("B", "x", "error", "low"))),
    ]
    svg = ET.fromstring(trend_svg(points))  # parses as XML: no stray markup, everything escaped
    bars = svg.findall(f"{SVG}g")
    assert len(bars) == 3
    titles = [bar.findtext(f"{SVG}title") for bar in bars]
    assert (
        titles[0]
        == "2026-11-20T06:00:00+00:00: failed 3 (2 critical, 0 high, 1 medium, 0 low); could not be evaluated 0; passed 30"
    )
    assert [len(bar.findall(f"{SVG}rect")) for bar in bars] == [3, 3, 2]  # critical+medium+passed, ...
    assert ET.fromstring(trend_svg([])).tag == f"{SVG}svg"


def test_every_run_is_kept_and_the_report_shows_the_trend(tmp_path: Path, run_suite: Callable[..., SuiteRun]) -> None:
    # An earlier run in which EXO-AUTHCERT failed on EX04 and OWA-BUILD passed everywhere.
    earlier = _document("2026-11-23T05:30:00+00:00", ("EXO-AUTHCERT", "EX04", "failed", "critical"),
                        ("OWA-BUILD", "EX04", "passed", "high"), ("OWA-BUILD", "EX2010", "passed", "high"))  # fmt: skip
    earlier["profile"] = "demo"
    history.keep(tmp_path / "reports", "demo", "20261123T053000Z", earlier)
    run = run_suite("--profile", "demo")
    assert run.status == 1
    kept = history.run_files(run.reports, "demo")
    assert len(kept) == 2
    assert json.loads(kept[-1].read_text()) == run.results["demo"]  # the very document of the run
    html = (run.reports / "demo-latest.html").read_text()
    assert '<svg class="ht-trend"' in html and "requirements in the last 2 run(s)" in html
    assert "Since the previous run (2026-11-23T05:30:00+00:00)" in html
    changes = html[html.index("Since the previous run") : html.index("Trend:")]
    assert "new failures:" in changes and "<b>OWA-BUILD</b> EX04" in changes and "<b>OWA-BUILD</b> EX2010" in changes
    assert "<b>EXO-AUTHCERT</b> EX04" not in changes  # failing then and now: not news
