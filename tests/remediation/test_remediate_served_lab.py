"""--remediate end to end, as an administrator runs it, against ``python -m hybridtrust.lab serve --state FILE``.

One lab for the whole story (each step needs the one before, and a lab start costs
seconds): a dry run changes nothing and shows every planned change; --remediate
turns every non-risky seeded defect with a fix into ``fixed`` and keeps every name the
Exchange Online principal held; a plain run then passes them; --rollback with the
record restores the state file field by field, except where the record itself says
a change cannot be undone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from hybridtrust import catalog
from hybridtrust.facts import EXCHANGE_ONLINE_APP_ID
from hybridtrust.lab.contoso import DEFECTS
from hybridtrust.remediation.fixes import PLANNERS
from tests.remediation.support import differences, external_profile, served_lab
from tests.support import SuiteRun, run_suite

# Timestamps Exchange sets on every change cannot be restored by any cmdlet (nor by AD).
UNRESTORABLE_KEYS = frozenset({"WhenChanged"})


def _record(run: SuiteRun, profile: str) -> dict[str, Any]:
    records = sorted(run.reports.glob(f"{profile}-*-remediation.json"))
    assert len(records) == 1, [path.name for path in run.reports.iterdir()]
    return json.loads(records[0].read_text(encoding="utf-8"))


def _names(state: dict[str, Any]) -> dict[str, list[str]]:
    """servicePrincipalNames of the 00000002 principal of every tenant."""
    return {
        tenant_id: next(sp for sp in tenant["servicePrincipals"] if sp["appId"] == EXCHANGE_ONLINE_APP_ID)[
            "servicePrincipalNames"
        ]
        for tenant_id, tenant in state["tenants"].items()
    }


def test_dry_run_remediate_verify_and_roll_back(tmp_path: Path) -> None:
    with served_lab(tmp_path) as lab:
        profile = external_profile(tmp_path / "served.toml", lab.connection)
        original = lab.state.read_bytes()

        # 1. --remediate --dry-run: the plan is printed and recorded; the state file is byte-identical.
        dry = run_suite(tmp_path / "dry", "--profile", str(profile), "--remediate", "--dry-run")
        assert dry.status == 1, dry.output
        assert lab.state.read_bytes() == original
        plan = _record(dry, "served")
        assert plan["dry_run"] is True and plan["format"] == "hybridtrust-remediation/1"
        failing = {
            (r["requirement"], r["subject"]) for r in dry.results["served"]["results"] if r["outcome"] == "failed"
        }
        fixable = {key for key in failing if key[0] in PLANNERS}
        planned = {(c["requirement"], c["subject"]) for c in plan["changes"]}
        assert planned == fixable  # every failure with a documented fix in this organization, and nothing else
        for change in plan["changes"]:
            assert change["applied"] is False and change["status"] == "dry-run", change
            assert change["before"] is not None or change["target"]["command"]["cmdlet"].startswith(("New-", "Add-"))
            assert change["after"] is not None
            assert f"{change['id']} [dry-run] {change['requirement']}" in dry.output
        assert {c["requirement"] for c in plan["changes"] if c["risky"]} == {"OWA-VDIR-AUTH", "SPS-REALM"}
        for result in dry.results["served"]["results"]:
            assert result["outcome"] != "fixed"

        # 2. --remediate: every non-risky seeded defect that has a fix is fixed; risky ones are planned, not applied.
        before_state = json.loads(lab.state.read_text(encoding="utf-8"))
        fixed_run = run_suite(tmp_path / "remediate", "--profile", str(profile), "--remediate")
        record = _record(fixed_run, "served")
        outcomes = fixed_run.outcomes("served")
        seeded = {d.requirement for d in DEFECTS if d.requirement in PLANNERS and not catalog.get(d.requirement).risky}
        seeded_failing = {requirement for requirement, _ in failing} & seeded
        # HMA-DOMAINNAME is seeded but does not apply here: EX2010 makes "every server 2016 CU18+" false.
        assert seeded - seeded_failing == {"HMA-DOMAINNAME"}
        for (requirement, subject), outcome in outcomes.items():
            if requirement in seeded_failing and (requirement, subject) in failing:
                assert outcome == "fixed", (requirement, subject, fixed_run.output[-4000:])
        for requirement, subject in failing:
            if catalog.get(requirement).risky:
                assert outcomes[(requirement, subject)] == "failed"
        fixed_results = [r for r in fixed_run.results["served"]["results"] if r["outcome"] == "fixed"]
        assert fixed_results and all(r["remediation"]["applied"] for r in fixed_results)
        assert all(r["remediation"]["verification"]["outcome"] == "passed" for r in fixed_results)
        assert fixed_run.results["served"]["summary"]["fixed"] == len(fixed_results)
        for change in record["changes"]:
            if change["risky"]:
                assert change["status"] == "risky" and change["applied"] is False
                assert "--allow-risky" in change["reason"]
            else:
                assert change["status"] == "applied" and change["applied"] is True, change
                assert change["read_before"] is not None or change["kind"] == "cmdlet"
                assert change["verification"]["outcome"] == "passed"
        # The run's JUnit and HTML say "fixed" too, not the "failed" each test was when it ended.
        junit = ElementTree.parse(fixed_run.reports / "served-latest.xml").getroot()
        cases = {
            case.get("name"): (
                {p.get("name"): p.get("value") for p in case.iter("property")},
                case.find("failure") is not None,
            )
            for case in junit.iter("testcase")
        }
        fixed_cases = [failed for properties, failed in cases.values() if properties.get("outcome") == "fixed"]
        assert len(fixed_cases) == len(fixed_results) and not any(fixed_cases)
        page = (fixed_run.reports / "served-latest.html").read_text(encoding="utf-8")
        assert "fixed" in page and "--remediate runs" in page
        after_state = json.loads(lab.state.read_text(encoding="utf-8"))
        # The 00000002 principal keeps every name it held, Microsoft's own included.
        for tenant_id, names in _names(before_state).items():
            kept = set(_names(after_state)[tenant_id])
            assert set(names) <= kept
            assert f"{EXCHANGE_ONLINE_APP_ID}/outlook.office365.com" in kept

        # 3. A plain run afterwards passes what was fixed.
        plain = run_suite(tmp_path / "plain", "--profile", str(profile))
        plain_outcomes = plain.outcomes("served")
        for key, outcome in outcomes.items():
            if outcome == "fixed":
                assert plain_outcomes[key] == "passed", key

        # 4. --rollback with the record: the state file is back, field by field.
        record_path = next(fixed_run.reports.glob("served-*-remediation.json"))
        rolled = run_suite(tmp_path / "rollback", "--profile", str(profile), "--rollback", str(record_path))
        undo = json.loads(next(rolled.reports.glob("served-*-rollback.json")).read_text(encoding="utf-8"))
        applied = sorted((c for c in record["changes"] if c["applied"]), key=lambda c: c["sequence"], reverse=True)
        assert [u["id"] for u in undo["changes"]] == [c["id"] for c in applied]  # newest first
        statuses = {u["requirement"]: u["status"] for u in undo["changes"]}
        not_undoable = {u["requirement"] for u in undo["changes"] if u["status"] == "not-undoable"}
        assert not_undoable == {"HMA-VDIR-OAUTH"}  # Set-MapiVirtualDirectory cannot take OAuth out of one list
        assert set(statuses.values()) <= {"restored", "not-undoable"}, undo
        assert rolled.status == 1  # the not-undoable change is reported as a problem, and the defects are back
        restored = json.loads(lab.state.read_text(encoding="utf-8"))
        remaining = differences(before_state, restored, ignore=UNRESTORABLE_KEYS)
        assert remaining == [
            "/exchange/MapiVirtualDirectory[1]/ExternalAuthenticationMethods: ['Ntlm', 'Negotiate'] -> "
            "['Ntlm', 'OAuth', 'Negotiate']"
        ], remaining
        # No secret of the lab (its PowerShell passwords, its Graph clients' secrets) in any record or message.
        secrets = [lab.description[name]["password"] for name in ("exchange", "sharepoint")]
        secrets += [
            client["client_secret"]
            for tenant in lab.description["graph"]["tenants"].values()
            for client in tenant.values()
            if client.get("client_secret")
        ]
        written = [
            path.read_text(encoding="utf-8") for run in (dry, fixed_run, rolled) for path in run.reports.glob("*.json")
        ]
        for text in [*written, dry.output, fixed_run.output, rolled.output]:
            assert not any(secret in text for secret in secrets)
        rolled_outcomes = rolled.outcomes("served")
        for key, outcome in outcomes.items():
            if outcome == "fixed" and key[0] != "HMA-VDIR-OAUTH":
                assert rolled_outcomes[key] == "failed", key
