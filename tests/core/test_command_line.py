"""The suite as an administrator runs it: profiles, options, reports and exit status (CONTRACTS.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hybridtrust import catalog
from hybridtrust.lab.state import LabState
from tests.support import REPOSITORY, SuiteRun


def _usage_error(run: SuiteRun) -> str:
    assert run.status == 4, f"expected a usage error (4), got {run.status}:\n{run.output[-2000:]}"
    lines = [line for line in run.output.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, run.output
    return lines[0]


def test_a_typo_in_a_profile_key_is_a_usage_error(tmp_path: Path, run_suite: Callable[..., SuiteRun]) -> None:
    profile = tmp_path / "typo.toml"
    profile.write_text((REPOSITORY / "profiles" / "demo.toml").read_text().replace("smtp_domains", "smtp_domain"))
    line = _usage_error(run_suite("--profile", str(profile)))
    assert "typo.toml: unknown key 'smtp_domain' in [organization]" in line
    assert "smtp_domains" in line  # the known keys are listed


def test_a_tenant_id_that_is_no_guid_is_a_usage_error(tmp_path: Path, run_suite: Callable[..., SuiteRun]) -> None:
    profile = tmp_path / "guid.toml"
    text = (REPOSITORY / "profiles" / "demo.toml").read_text()
    profile.write_text(text.replace('id = "3c9e7b21-6d4f-4a8e-b5c1-92f0d7e4a6b8"', 'id = "fabrikam"'))
    line = _usage_error(run_suite("--profile", str(profile)))
    assert "[tenants][2] key 'id' is 'fabrikam': expected a tenant id GUID" in line


def test_an_unknown_profile_lists_the_available_ones(run_suite: Callable[..., SuiteRun]) -> None:
    line = _usage_error(run_suite("--profile", "contosoo"))
    assert "no such profile" in line and "demo" in line


def test_an_unknown_requirement_id_suggests_the_nearest(run_suite: Callable[..., SuiteRun]) -> None:
    line = _usage_error(run_suite("--profile", "demo", "--requirement", "HMA-SPN-URL"))
    assert "did you mean HMA-SPN-URLS" in line


def test_an_evidence_manifest_of_another_format_is_a_usage_error(
    tmp_path: Path, run_suite: Callable[..., SuiteRun]
) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text(json.dumps({"format": "something-else/2"}))
    line = _usage_error(run_suite("--profile", "demo", "--evidence", str(tmp_path / "bundle")))
    assert "key 'format' is 'something-else/2', expected 'hybridtrust-evidence/1'" in line


def test_without_a_profile_nothing_is_collected_and_pytest_says_how(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout[-2000:]
    assert "pytest --profile lab" in done.stdout and "pytest --profile demo" in done.stdout


def test_the_demo_writes_every_report_with_the_default_names(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--profile", "demo", f"--reports-dir={reports}", "-p", "no:cacheprovider", "-q"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]  # the demo organization has defects
    names = sorted(path.name for path in reports.iterdir())
    stamped = [name for name in names if re.fullmatch(r"demo-\d{8}T\d{6}Z\.(html|json|xml)", name)]
    assert len(stamped) == 3, names
    assert {"demo-latest.html", "demo-latest.json", "demo-latest.xml"} <= set(names)
    document = json.loads((reports / "demo-latest.json").read_text())
    assert document["format"] == "hybridtrust-results/1" and document["profile"] == "demo"
    assert document["source"] == "evidence" and document["exit_status"] == 1
    assert {r["requirement"] for r in document["results"]} == {r.id for r in catalog.REQUIREMENTS}
    assert sum(document["summary"].values()) == len(document["results"])
    failure = next(r for r in document["results"] if r["outcome"] == "failed")
    assert failure["fix"] and failure["message"] and failure["nodeid"].startswith("tests_hybrid/")
    junit = (reports / "demo-latest.xml").read_text()
    assert "<testsuite" in junit and "HMA-VDIR-OAUTH" in junit
    html = (reports / "demo-latest.html").read_text()
    assert "Documented fix" in html and "requirements fail or could not be evaluated" in html


def test_requirement_selection_and_fail_on(
    compliant_state: LabState,
    write_bundle: Callable[..., Path],
    write_profile: Callable[..., Path],
    run_suite: Callable[..., SuiteRun],
) -> None:
    world = compliant_state.copy()
    world.document["exchange"]["MailUser"][0]["HiddenFromAddressListsEnabled"] = False  # SFB-APPACCOUNT, medium
    profile = write_profile("medium", write_bundle(world, "medium"))

    default = run_suite("--profile", str(profile))
    assert default.status == 1 and default.failing("medium") == {"SFB-APPACCOUNT"}
    assert run_suite("--profile", str(profile), "--fail-on", "high").status == 0
    assert run_suite("--profile", str(profile), "--fail-on", "medium").status == 1

    selected = run_suite("--profile", str(profile), "--requirement", "HMA-*")
    assert selected.status == 0
    assert {r["requirement"] for r in selected.results["medium"]["results"]} == {
        r.id for r in catalog.REQUIREMENTS if r.id.startswith("HMA-")
    }


def test_errors_fail_the_run_whatever_fail_on_says(
    compliant_state: LabState, write_bundle: Callable[..., Path], write_profile: Callable[..., Path],
    run_suite: Callable[..., SuiteRun],
) -> None:  # fmt: skip
    bundle = write_bundle(compliant_state, "no-orgconfig")
    (bundle / "exchange" / "Get-OrganizationConfig.xml").unlink()
    run = run_suite("--profile", str(write_profile("gaps", bundle)), "--fail-on", "critical")
    assert run.status == 1
    errors = {r["requirement"] for r in run.results["gaps"]["results"] if r["outcome"] == "error"}
    assert errors == {"HMA-CLIENT-PROFILE", "OWA-DOWNLOAD-DOMAINS"}
    assert "not collected: exchange/Get-OrganizationConfig.xml" in run.output
