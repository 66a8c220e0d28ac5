"""Helpers of the project's own tests: running the compliance suite as an administrator does."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridtrust.lab.bundle import write_evidence_bundle
from hybridtrust.lab.state import LabState

REPOSITORY = Path(__file__).resolve().parent.parent
REAL_CLIXML = REPOSITORY.parent / "shared" / "real-clixml"
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)

PROFILE = """\
[organization]
name = "Contoso"
cloud = "global"
scenarios = ["exchange-oauth", "sfb-online", "hma", "hma-owa-ecp", "sharepoint-s2s", "dedicated-hybrid-app"]
smtp_domains = ["contoso.com", "fabrikam.com"]
resource_forest = {resource_forest}

[[tenants]]
id = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
initial_domain = "contoso.onmicrosoft.com"
primary = true

[[tenants]]
id = "3c9e7b21-6d4f-4a8e-b5c1-92f0d7e4a6b8"
initial_domain = "fabrikam.onmicrosoft.com"

[sharepoint]
uri = "https://sp01.contoso.com:5986/wsman"
web_application = "https://sharepoint.contoso.com"
public_root_domain = "contoso.com"

[evidence]
path = "{evidence}"
"""


def profile_text(evidence: Path, *, resource_forest: bool = False) -> str:
    return PROFILE.format(evidence=evidence.as_posix(), resource_forest=str(resource_forest).lower())


def write_profile(path: Path, evidence: Path, *, resource_forest: bool = False) -> Path:
    path.write_text(profile_text(evidence, resource_forest=resource_forest), encoding="utf-8")
    return path


def write_bundle(state: LabState, directory: Path, collected_at: dt.datetime | None = None) -> Path:
    write_evidence_bundle(state, directory, collected_at=collected_at or NOW)
    return directory


@dataclass
class SuiteRun:
    status: int
    output: str
    results: dict[str, dict[str, Any]]
    reports: Path

    def outcomes(self, profile: str) -> dict[tuple[str, str], str]:
        """(requirement, subject) -> outcome of one profile."""
        return {(r["requirement"], r["subject"]): r["outcome"] for r in self.results[profile]["results"]}

    def failing(self, profile: str) -> set[str]:
        return {r["requirement"] for r in self.results[profile]["results"] if r["outcome"] in ("failed", "error")}

    def by_requirement(self, profile: str, outcome: str) -> set[str]:
        return {r["requirement"] for r in self.results[profile]["results"] if r["outcome"] == outcome}


def run_suite(workdir: Path, *args: str, timeout: float = 240) -> SuiteRun:
    """`python -m pytest <args>` from the repository root; reports go under workdir."""
    reports = workdir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pytest", *args,
        f"--reports-dir={reports}", f"--results-json={reports}/{{profile}}.json",
        "-p", "no:cacheprovider", "-q", "--no-header",
        "-p", "no:hypothesispytest",  # the dev dependency's plugin costs every run 0.5 s of imports, unused here
    ]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        command, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    results = {}
    for path in reports.glob("*.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") == "hybridtrust-results/1":
            results[document["profile"]] = document
    return SuiteRun(done.returncode, done.stdout + done.stderr, results, reports)
