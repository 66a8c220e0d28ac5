"""A large run writes its HTML and JUnit reports from the results, at pytest-html's and JUnit's own paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support import REPOSITORY


def test_a_large_run_writes_both_reports_from_the_results(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--profile", "demo", f"--reports-dir={reports}", "-p", "no:cacheprovider",
         "-p", "no:hypothesispytest", "-q"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "HYBRIDTRUST_LARGE_RUN_TESTS": "10"},  # the demo's hundred tests count as large
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]
    names = {path.name for path in reports.iterdir()}
    assert {"demo-latest.html", "demo-latest.xml", "demo-latest.json"} <= names
    assert len([name for name in names if re.fullmatch(r"demo-\d{8}T\d{6}Z\.(html|xml)", name)]) == 2
    document = json.loads((reports / "demo-latest.json").read_text())
    html = (reports / "demo-latest.html").read_text()
    assert "<script" not in html and "written from the results" in html  # self-contained, no pytest-html
    assert "Documented fix" in html and "requirements fail or could not be evaluated" in html
    assert html.count('<td class="ht-outcome-') == len(document["results"])
    junit = ET.parse(reports / "demo-latest.xml").getroot()
    cases = list(junit.iter("testcase"))
    assert len(cases) == len(document["results"])
    [suite] = junit.iter("testsuite")
    assert suite.get("failures") == str(document["summary"]["failed"])
    assert "HMA-VDIR-OAUTH" in (reports / "demo-latest.xml").read_text()
