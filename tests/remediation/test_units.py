"""The small rules remediation rests on, without a lab: merging lists, restoring them, expectations, options."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import catalog
from hybridtrust.remediation.exchange import command_text, unmet
from hybridtrust.remediation.graph import GraphWriteError, GraphWriter, merged, restored
from hybridtrust.remediation.model import Failure, RecordFile
from hybridtrust.remediation.runner import Remediation, _conclude, attach_not_planned, plan
from hybridtrust.results import Result
from hybridtrust.sources.graph import GraphEndpoints
from hybridtrust.testing import Subject
from tests.support import run_suite


def test_a_merge_keeps_every_existing_name_and_adds_only_what_is_missing() -> None:
    current = ["00000002-0000-0ff1-ce00-000000000000/outlook.office365.com", "https://Mail.contoso.com/"]
    result = merged("servicePrincipalNames", current, ["https://mail.contoso.com/", "https://new.contoso.com/"], [])
    assert result == [*current, "https://new.contoso.com/"]  # a name there in another case is there


def test_a_credential_merge_removes_exactly_the_key_ids_named() -> None:
    current: list[dict[str, Any]] = [{"keyId": "A", "key": "x"}, {"keyId": "B", "key": "y"}, {"keyId": "C", "key": "z"}]
    assert merged("keyCredentials", current, [], ["b"]) == [current[0], current[2]]
    assert merged("keyCredentials", current, [{"keyId": "D", "key": "w"}], []) == [*current, {"keyId": "D", "key": "w"}]


def test_restoring_takes_out_what_was_added_and_puts_back_what_was_removed_where_it_was() -> None:
    before = [{"keyId": "a", "key": "1"}, {"keyId": "b", "key": "2"}, {"keyId": "c", "key": "3"}]
    now = [before[0], before[2], {"keyId": "mine", "key": "4"}, {"keyId": "theirs", "key": "5"}]
    result = restored("keyCredentials", now, ["mine"], [before[1]], before)
    assert [item["keyId"] for item in result] == ["a", "b", "c", "theirs"]


def test_a_key_credential_list_without_keys_is_never_sent() -> None:
    writer = GraphWriter(GraphEndpoints("https://login.example", "https://graph.example/v1.0"), {})
    with pytest.raises(GraphWriteError, match="have no key"):
        writer.patch("t", "servicePrincipals/x", "keyCredentials", [{"keyId": "k", "type": "AsymmetricX509Cert"}])


def test_expectations_read_like_the_cmdlet_behaves() -> None:
    value = {"InternalAuthenticationMethods": ["Ntlm", "OAuth"], "Enabled": True}
    assert unmet({"InternalAuthenticationMethods": {"contains": ["oauth"]}, "Enabled": True}, value) == []
    assert unmet({"InternalAuthenticationMethods": {"excludes": ["Ntlm"]}}, value)
    assert unmet({"exists": False}, None) == [] and unmet({"exists": True}, None)
    assert unmet({"value": "8a3f"}, "8A3F") == []


def test_commands_read_as_an_administrator_types_them() -> None:
    command = {
        "cmdlet": "Remove-SettingOverride",
        "parameters": [["Identity", "It's"], ["Confirm", False], ["IsTrustBroker", None], ["Parameters", ["a", "b"]]],
    }
    assert (
        command_text(command)
        == "Remove-SettingOverride -Identity 'It''s' -Confirm:$false -IsTrustBroker -Parameters 'a','b'"
    )


def _failure(requirement: str, outcome: str) -> Failure:
    entry = catalog.get(requirement)
    result = Result("p", entry.id, entry.title, entry.severity, list(entry.scenarios), "s", outcome, "m", "n")  # type: ignore[arg-type]
    return Failure("p", entry, Subject("s", "s", None), None, result)  # type: ignore[arg-type]


def test_only_failures_are_planned_and_rows_without_a_fix_say_so() -> None:
    plans, not_planned = plan(
        [_failure("HMA-SPN-URLS", "error"), _failure("OWA-REPLY-URLS", "waived"), _failure("OWA-BUILD", "failed")],
        None,
    )
    assert plans == []
    assert [(item.requirement, item.reason.split(":")[0]) for item in not_planned] == [
        ("OWA-BUILD", "no automatic fix")
    ]


def test_a_failure_without_a_fix_that_passes_once_the_others_are_applied_is_fixed(tmp_path: Path) -> None:
    from hybridtrust.audit import Audit
    from hybridtrust.profile import load_profile

    demo = load_profile("demo")
    assert demo.evidence is not None
    fresh = Audit(profile=demo, evidence=demo.resolve(demo.evidence.path)).organization()

    def judged(passes: bool) -> Any:
        def requirement_test(org: Any) -> None:
            assert passes and org is fresh, "still broken"

        requirement_test.hybrid_subjects = lambda org: [Subject("s", "s", None)]  # type: ignore[attr-defined]
        return requirement_test

    now_passing = replace(_failure("OWA-BUILD", "failed"), function=judged(True))
    still_failing = replace(_failure("EXO-IOC-CLOUD", "failed"), function=judged(False))
    was_an_error = replace(_failure("HMA-SPN-URLS", "error"), function=judged(True))
    failures = [now_passing, still_failing, was_an_error]
    plans, not_planned = plan(failures, None)
    assert plans == [] and len(not_planned) == 2
    run = Remediation(
        RecordFile(tmp_path / "r.json", "p", "o", dry_run=False, allow_risky=False, not_planned=not_planned)
    )
    _conclude(run, fresh, failures)
    attach_not_planned(failures, run)
    assert was_an_error.result.outcome == "error"  # no data is never "fixed"

    assert now_passing.result.outcome == "fixed"
    assert now_passing.result.remediation is not None
    assert now_passing.result.remediation["verification"] == {"outcome": "passed", "message": ""}
    assert "no change of its own" in now_passing.result.remediation["reason"]
    assert still_failing.result.outcome == "failed"
    assert (
        still_failing.result.remediation is not None
        and "no automatic fix" in still_failing.result.remediation["reason"]
    )
    recorded = {entry["requirement"]: entry["outcome"] for entry in run.record.results}
    assert recorded == {"OWA-BUILD": "fixed", "EXO-IOC-CLOUD": "failed"}


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["--profile", "lab", "--dry-run"], "--dry-run and --allow-risky only go with --remediate"),
        (["--profile", "demo", "--remediate"], "evidence bundle, which cannot be changed"),
        (["--profile", "lab", "--remediate", "--rollback", "x.json"], "cannot be combined"),
        (["--profile", "lab", "--rollback", "{tmp}/missing.json"], "no such remediation record"),
        (["--profile", "lab", "--rollback", "{tmp}/other.json"], "the record is of profile 'other'"),
    ],
)
def test_usage_errors_name_what_to_fix(arguments: list[str], words: str, tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text(
        json.dumps({"format": "hybridtrust-remediation/1", "profile": "other", "changes": []}), encoding="utf-8"
    )
    run = run_suite(tmp_path, *(argument.replace("{tmp}", str(tmp_path)) for argument in arguments), timeout=120)
    assert run.status == 4, run.output[-2000:]
    assert words in run.output
