"""README's scheduling and CI recipes (docs/recipes/), tried as far as this machine allows.

The cron job's command is run for real (on the demo organization); the systemd
units pass ``systemd-analyze verify``; the CI pipelines parse as YAML and
publish what README says; the Windows scripts parse with the PowerShell
grammar and write the Entra ID files the evidence reader reads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridtrust import history
from hybridtrust.facts import FIRST_PARTY_APP_IDS
from tests.collector.powershell_paths import Script, syntax_problems
from tests.support import REPOSITORY

RECIPES = REPOSITORY / "docs" / "recipes"
INSTALL = "/opt/hybridtrust"
STATE = "/var/lib/hybridtrust"
_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def assert_cron_schedule(expression: str) -> None:
    fields = expression.split()
    assert len(fields) == 5, f"{expression!r}: a cron schedule has 5 fields"
    for text, (low, high) in zip(fields, _RANGES, strict=True):
        assert _FIELD.match(text), f"{expression!r}: {text!r} is not a cron field"
        for number in re.findall(r"(?<![/\d])\d+", text):
            assert low <= int(number) <= high, f"{expression!r}: {number} is outside {low}-{high}"


def _cron_lines() -> list[str]:
    lines = (RECIPES / "hybridtrust.cron").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]


def test_the_cron_job_runs_the_audit(tmp_path: Path) -> None:
    audit, prune = _cron_lines()
    for line in (audit, prune):
        assert_cron_schedule(" ".join(line.split()[:5]))
        assert line.split()[5] == "hybridtrust"  # /etc/cron.d lines name the user
    command = " ".join(audit.split()[6:])
    assert command.startswith(f"cd {INSTALL} && .venv/bin/python -m pytest --profile=contoso ")
    # The very command, on this checkout and the demo organization, with the reports in a temporary folder.
    reports = tmp_path / "reports"
    here = (
        command.replace(f"cd {INSTALL}", f"cd {REPOSITORY}")
        .replace(".venv/bin/python", sys.executable)
        .replace("--profile=contoso", "--profile=demo")
        .replace(f"{STATE}/reports", str(reports))
    )
    done = subprocess.run(["sh", "-c", here], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # the demo organization has defects
    assert (reports / "demo-latest.html").is_file() and (reports / "demo-latest.xml").is_file()
    assert json.loads((reports / "demo-latest.json").read_text())["exit_status"] == 1
    [kept] = history.run_files(reports, "demo")  # the run's document (its .trend.json side file aside)
    # The pruning line keeps what is younger than its age limit.
    prune_here = " ".join(prune.split()[6:]).replace(f"{STATE}/reports", str(reports))
    subprocess.run(["sh", "-c", prune_here], check=True, timeout=60)
    assert kept.is_file()


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    service = (RECIPES / "hybridtrust-audit.service").read_text()
    timer = (RECIPES / "hybridtrust-audit.timer").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", service, re.M)
    [audit] = _cron_lines()[:1]
    assert exec_start.split(" -m pytest ")[1] == audit.split(" -m pytest ")[1]  # the same audit as the cron job
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units were only compared with the cron job")
    # verify checks that ExecStart's program exists: point the units at this checkout.
    (tmp_path / "hybridtrust-audit.service").write_text(service.replace(INSTALL, str(REPOSITORY)))
    (tmp_path / "hybridtrust-audit.timer").write_text(timer)
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "hybridtrust-audit.service"), str(tmp_path / "hybridtrust-audit.timer")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stderr  # not even a warning


def _yaml(name: str) -> dict[Any, Any]:
    document = yaml.safe_load((RECIPES / name).read_text())
    assert isinstance(document, dict)
    return document


def test_the_github_actions_workflow(tmp_path: Path) -> None:
    workflow = _yaml("github-actions.yml")
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    for schedule in triggers["schedule"]:
        assert_cron_schedule(schedule["cron"])
    steps = workflow["jobs"]["audit"]["steps"]
    uses = {step.get("uses", "").split("@")[0]: step for step in steps}
    audit = next(step for step in steps if "pytest" in step.get("run", ""))
    assert "--profile=contoso --reports-dir=reports" in audit["run"]
    report = uses["dorny/test-reporter"]
    assert report["if"] == "always()" and report["with"]["path"] == "reports/contoso-latest.xml"
    assert report["with"]["reporter"] == "java-junit"
    artifact = uses["actions/upload-artifact"]
    assert artifact["if"] == "always()" and "reports/contoso-*.html" in artifact["with"]["path"]
    assert (
        uses["actions/cache/restore"]["with"]["path"] == uses["actions/cache/save"]["with"]["path"] == "reports/history"
    )


def test_the_azure_devops_pipeline() -> None:
    pipeline = _yaml("azure-pipelines.yml")
    for schedule in pipeline["schedules"]:
        assert_cron_schedule(schedule["cron"])
    tasks = {step.get("task", "").split("@")[0]: step for step in pipeline["steps"]}
    audit = next(step for step in pipeline["steps"] if "pytest" in step.get("script", ""))
    assert "--profile=contoso --reports-dir=reports" in audit["script"]
    junit = tasks["PublishTestResults"]
    assert junit["condition"] == "succeededOrFailed()"
    assert junit["inputs"]["testResultsFormat"] == "JUnit"
    assert junit["inputs"]["testResultsFiles"] == "reports/contoso-latest.xml"
    artifact = tasks["PublishPipelineArtifact"]
    assert artifact["condition"] == "always()" and artifact["inputs"]["targetPath"] == "reports"
    assert tasks["Cache"]["inputs"]["path"] == "reports/history"


def test_the_windows_task_collects_then_audits() -> None:
    audit = Script.parse((RECIPES / "Invoke-HybridTrustAudit.ps1").read_bytes())
    register = Script.parse((RECIPES / "Register-HybridTrustTask.ps1").read_bytes())
    assert syntax_problems(audit.tree) == [] and syntax_problems(register.tree) == []
    # The Entra ID half of the bundle, under exactly the names the evidence reader reads.
    entra = {path.split("/entra/{tenantid}/")[1] for path in audit.written_paths() if "/entra/" in path}
    assert entra == {"organization.json", "domains.json", "applications.json",
                     *(f"servicePrincipals/{app_id}.json" for app_id in FIRST_PARTY_APP_IDS)}  # fmt: skip
    text = (RECIPES / "Invoke-HybridTrustAudit.ps1").read_text()
    collector = text.index("HybridTrust-Collect.ps1') -OutputPath $bundle -Exchange")
    assert collector < text.index('-m pytest "--profile=$ProfileName" "--evidence=$bundle"')
    assert register.commands("register-scheduledtask") and "Invoke-HybridTrustAudit.ps1" in register.string_constants()


def test_the_readme_shows_every_recipe() -> None:
    readme = (REPOSITORY / "README.md").read_text()
    for recipe in RECIPES.iterdir():
        assert f"docs/recipes/{recipe.name}" in readme, f"README does not point to {recipe.name}"
