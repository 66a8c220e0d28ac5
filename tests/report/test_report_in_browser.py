"""The demo's HTML report as a person sees it: opened in headless Chromium, scripts run, nothing hidden.

pytest-html builds its results table with JavaScript, so reading the file is not
enough: the page must load without a console error, and the summary, the trend
chart and a failure's documented fix must be on screen (``innerText`` and
client rectangles count only what is rendered, not what sits in a closed
``<details>`` or a hidden row).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.report import browser
from tests.support import REPOSITORY, SuiteRun

VISIBLE = "(e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden'"
EXPRESSIONS = {
    "text": "document.body.innerText",
    "trend": f"""(() => {{
        const svg = document.querySelector('svg.ht-trend');
        if (!svg) return null;
        const box = svg.getBoundingClientRect();
        const bars = [...svg.querySelectorAll('rect[class^="ht-bar-"]')].filter(r => r.getBoundingClientRect().height > 0);
        return {{width: box.width, height: box.height, bars: bars.length, visible: ({VISIBLE})(svg)}};
    }})()""",
    "fixes": f"[...document.querySelectorAll('dd.ht-fix')].filter({VISIBLE}).map(e => e.innerText)",
    "rows": "document.querySelectorAll('#results-table tbody.results-table-row').length",
}


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = browser.chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(".ci/run installs Debian's chromium: it is missing, so the report was not checked")
        pytest.skip("no chromium on PATH (apt-get install chromium); CI always has it")
    return executable


def test_the_demo_report_shows_summary_trend_and_fixes_without_errors(
    chromium: str, run_suite: Callable[..., SuiteRun], tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = run_suite("--profile", "demo")
    assert run.status == 1
    page = browser.view(run.reports / "demo-latest.html", EXPRESSIONS)
    (tmp_path_factory.getbasetemp() / "demo-report.png").write_bytes(page.screenshot)  # for a person to look at

    assert page.problems == []
    text = page.values["text"]
    assert "Contoso (demo evidence)" in text and "requirements fail or could not be evaluated" in text
    assert "Since the previous run" in text and "Trend: requirements in the last 1 run(s)" in text
    trend = page.values["trend"]
    assert trend is not None and trend["visible"] and trend["width"] > 100 and trend["height"] > 100
    assert trend["bars"] >= 2  # the failing stack and the passing bar of this run
    assert page.values["rows"] == len(run.results["demo"]["results"])  # pytest-html's script built the table
    # Failing rows are expanded by default: their documented fix is readable without a click.
    assert any("Set-OwaVirtualDirectory" in fix or "Set-" in fix for fix in page.values["fixes"]), page.values["fixes"]


def test_the_browser_check_does_catch_console_errors(chromium: str, tmp_path: Path) -> None:
    # Without this, an empty problem list could also mean the listener heard nothing at all.
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>hello</p><script>console.error('boom'); undefinedFunction();</script>"
        '<img src="missing.png"></body></html>'
    )
    seen = browser.view(page, {"text": "document.body.innerText"}, settle=0.2)
    assert seen.values["text"] == "hello"
    assert any("boom" in problem for problem in seen.problems), seen.problems
    assert any("undefinedFunction" in problem for problem in seen.problems), seen.problems
    assert any("missing.png" in problem for problem in seen.problems), seen.problems


def test_an_organizations_own_report_reads_on_its_own(
    chromium: str, run_suite: Callable[..., SuiteRun], tmp_path: Path
) -> None:
    # A second organization: the demo's profile under another name, so the run writes per-organization files.
    text = (REPOSITORY / "profiles" / "demo.toml").read_text()
    evidence = (REPOSITORY / "profiles" / "demo-evidence").as_posix()
    other = tmp_path / "fabrikam.toml"
    other.write_text(text.replace('path = "demo-evidence"', f'path = "{evidence}"'))
    run = run_suite("--profile", "demo", "--profile", str(other))
    assert run.status == 1
    page = browser.view(
        run.reports / "fabrikam-latest.html", {**EXPRESSIONS, "width": "document.documentElement.scrollWidth"}
    )
    assert page.problems == []
    assert "audit of profile fabrikam" in page.values["text"] and "audit of profile demo" not in page.values["text"]
    assert page.values["trend"] is not None and page.values["trend"]["visible"]
    assert page.values["fixes"]  # failing rows open: every documented fix on screen
    assert page.values["width"] <= 1280  # nothing runs off the right edge
