"""Waivers: reading a waiver file (every mistake a usage error that says where), applying it, and a run with it."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridtrust.lab.state import LabState
from hybridtrust.results import Result
from hybridtrust.waivers import WaiverError, Waivers, load_waivers
from tests.support import SuiteRun

GOOD = """\
[[waiver]]
requirement = "OWA-VDIR-AUTH"
subject = "EX03/*"
justification = "EX03 is decommissioned on 2027-01-31"
expires = 2027-02-01
owner = "messaging-team@contoso.com"
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "waivers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(WaiverError) as raised:
        load_waivers(_file(tmp_path, text))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "waivers.toml"))
    return message


def test_the_contract_example_reads(tmp_path: Path) -> None:
    [waiver] = load_waivers(_file(tmp_path, GOOD))
    assert (waiver.requirement, waiver.subject, waiver.expires) == ("OWA-VDIR-AUTH", "EX03/*", dt.date(2027, 2, 1))
    assert waiver.owner == "messaging-team@contoso.com" and waiver.index == 1 and waiver.profile is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace('justification = "EX03 is decommissioned on 2027-01-31"\n', ""),
         "[[waiver]][2] key 'justification' is missing: expected a non-empty text"),
        (lambda t: t.replace('"EX03 is decommissioned on 2027-01-31"', '"  "'),
         "[[waiver]][2] key 'justification' is '  ': expected a non-empty text"),
        (lambda t: t.replace("expires = 2027-02-01\n", ""),
         "[[waiver]][2] key 'expires' is missing: expected a TOML date such as 2027-02-01"),
        (lambda t: t.replace("expires = 2027-02-01", 'expires = "2027-02-01"'),
         "[[waiver]][2] key 'expires' is '2027-02-01': expected a TOML date such as 2027-02-01 (unquoted)"),
        (lambda t: t.replace("expires = 2027-02-01", "expires = 2027-02-01T00:00:00"),
         "[[waiver]][2] key 'expires' is '2027-02-01T00:00:00': expected a TOML date"),
        (lambda t: t.replace("expires = 2027-02-01", "expires = 2027-13-01"),
         "[[waiver]][2] key 'expires' is '2027-13-01': expected a TOML date such as 2027-02-01"),
        (lambda t: t.replace('requirement = "OWA-VDIR-AUTH"', 'requirement = "OWA-VDIR-AUTHS"'),
         "[[waiver]][2] key 'requirement' is 'OWA-VDIR-AUTHS': expected a requirement id of the catalog (did you mean OWA-VDIR-AUTH"),
        (lambda t: t.replace("owner =", "ownr ="),
         "[[waiver]][2] unknown key 'ownr' (did you mean 'owner'?): expected only requirement, justification, expires"),
        (lambda t: t.replace('subject = "EX03/*"', "subject = 3"),
         "[[waiver]][2] key 'subject' is 3: expected a subject glob"),
    ],
)  # fmt: skip
def test_every_mistake_names_the_file_the_waiver_the_key_and_what_was_expected(
    tmp_path: Path, change: Callable[[str], str], expected: str
) -> None:
    # The broken waiver is the second of the file: the index must say which one.
    assert expected in _error(tmp_path, GOOD + "\n" + change(GOOD))


def test_a_misspelt_table_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    assert "unknown key 'waivers' at the top level" in _error(tmp_path, GOOD.replace("[[waiver]]", "[[waivers]]"))
    assert "expected [[waiver]] (double brackets)" in _error(tmp_path, GOOD.replace("[[waiver]]", "[waiver]"))


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WaiverError, match="no such waiver file"):
        load_waivers(tmp_path / "absent.toml")
    assert "not valid TOML" in _error(tmp_path, "[[waiver]\n")


def _result(outcome: str = "failed", subject: str = "EX03/ECP", profile: str = "contoso") -> Result:
    return Result(profile, "OWA-VDIR-AUTH", "t", "high", ["hma-owa-ecp"], subject, outcome,  # type: ignore[arg-type]
                  "Basic on EX03/ECP", "tests_hybrid/x.py::t")  # fmt: skip


def test_a_waived_failure_keeps_what_it_would_have_been(tmp_path: Path) -> None:
    waivers = Waivers(load_waivers(_file(tmp_path, GOOD)), dt.date(2027, 2, 1))  # the last day it applies
    result = _result(subject="ex03/ECP")  # server names are case-insensitive
    waivers.apply(result)
    assert result.outcome == "waived"
    assert result.message.endswith("would have been failed: Basic on EX03/ECP")
    assert result.waiver is not None and result.waiver["would_have_been"] == "failed"
    assert {k: result.waiver[k] for k in ("requirement", "subject", "justification", "expires", "owner")} == {
        "requirement": "OWA-VDIR-AUTH", "subject": "EX03/*", "justification": "EX03 is decommissioned on 2027-01-31",
        "expires": "2027-02-01", "owner": "messaging-team@contoso.com",
    }  # fmt: skip


def test_an_expired_waiver_no_longer_applies_and_says_so(tmp_path: Path) -> None:
    waivers = Waivers(load_waivers(_file(tmp_path, GOOD)), dt.date(2027, 2, 2))
    result = _result()
    waivers.apply(result)
    assert result.outcome == "failed" and result.message == "Basic on EX03/ECP"
    assert result.waiver is not None and result.waiver["expired"] is True


def test_errors_other_subjects_and_other_profiles_are_never_waived(tmp_path: Path) -> None:
    text = GOOD.replace("[[waiver]]", '[[waiver]]\nprofile = "contoso"')
    waivers = Waivers(load_waivers(_file(tmp_path, text)), dt.date(2026, 12, 1))
    for result in (_result("error"), _result(subject="EX02/ECP"), _result(profile="fabrikam"), _result("passed")):
        before = (result.outcome, result.message)
        waivers.apply(result)
        assert (result.outcome, result.message, result.waiver) == (*before, None)


# -- a run with waivers ----------------------------------------------------------------------------------------
def _visible_sfb_account(state: LabState) -> LabState:
    world = state.copy()
    world.document["exchange"]["MailUser"][0]["HiddenFromAddressListsEnabled"] = False  # SFB-APPACCOUNT, medium
    return world


WAIVER = """\
[[waiver]]
requirement = "SFB-APPACCOUNT"
subject = "organization"
justification = "the SfB decommissioning removes the account"
expires = {expires}
owner = "uc-team@contoso.com"

[[waiver]]
requirement = "HMA-CLIENT-PROFILE"
justification = "tries to waive an error: must not work"
expires = 2099-01-01
"""


def test_a_waived_run_passes_and_an_expired_waiver_fails_it_again(
    tmp_path: Path, compliant_state: LabState, write_bundle: Callable[..., Path],
    write_profile: Callable[..., Path], run_suite: Callable[..., SuiteRun],
) -> None:  # fmt: skip
    profile = write_profile("waived", write_bundle(_visible_sfb_account(compliant_state)))
    current = tmp_path / "current.toml"
    current.write_text(WAIVER.format(expires="2099-12-31"))
    run = run_suite("--profile", str(profile), f"--waivers={current}")
    assert run.status == 0, run.output[-3000:]
    [waived] = [r for r in run.results["waived"]["results"] if r["outcome"] == "waived"]
    assert waived["requirement"] == "SFB-APPACCOUNT" and "would have been failed:" in waived["message"]
    assert waived["waiver"]["owner"] == "uc-team@contoso.com" and run.results["waived"]["summary"]["waived"] == 1
    assert " 1 waived" in run.output
    junit = ET.parse(run.reports / "waived-latest.xml").getroot()
    skips = [skipped.get("message", "") for skipped in junit.iter("skipped")]
    assert [message for message in skips if message.startswith("Waived: waived until 2099-12-31")], skips
    html = (run.reports / "waived-latest.html").read_text()
    assert "1 failure(s) waived" in html and "the SfB decommissioning removes the account" in html

    expired = tmp_path / "expired.toml"
    expired.write_text(WAIVER.format(expires="2020-01-01"))
    run = run_suite("--profile", str(profile), f"--waivers={expired}")
    assert run.status == 1
    [failed] = [r for r in run.results["waived"]["results"] if r["outcome"] == "failed"]
    assert failed["waiver"]["expired"] is True and failed["waiver"]["expires"] == "2020-01-01"
    [note] = [n for n in run.results["waived"]["notes"] if "waiver" in n]
    assert (
        f"{expired} [[waiver]][1] (SFB-APPACCOUNT organization, owner uc-team@contoso.com) expired on 2020-01-01"
        in note
    )
    assert note in (run.reports / "waived-latest.html").read_text()


def test_a_waiver_never_opens_the_gate_on_an_error(
    tmp_path: Path, compliant_state: LabState, write_bundle: Callable[..., Path],
    write_profile: Callable[..., Path], run_suite: Callable[..., SuiteRun],
) -> None:  # fmt: skip
    bundle = write_bundle(compliant_state, "no-orgconfig")
    (bundle / "exchange" / "Get-OrganizationConfig.xml").unlink()
    waivers = tmp_path / "w.toml"
    waivers.write_text(WAIVER.format(expires="2099-12-31"))
    run = run_suite("--profile", str(write_profile("gaps", bundle)), f"--waivers={waivers}")
    assert run.status == 1
    errored = [r for r in run.results["gaps"]["results"] if r["requirement"] == "HMA-CLIENT-PROFILE"]
    assert errored and all(r["outcome"] == "error" and r["waiver"] is None for r in errored)


def test_a_bad_waiver_file_stops_the_run_before_anything_is_written(
    tmp_path: Path, run_suite: Callable[..., SuiteRun]
) -> None:
    waivers = tmp_path / "bad.toml"
    waivers.write_text(WAIVER.format(expires='"soon"'))
    run = run_suite("--profile", "demo", f"--waivers={waivers}")
    assert run.status == 4, run.output[-2000:]
    [line] = [line for line in run.output.splitlines() if line.startswith("ERROR:")]
    assert line == (
        f"ERROR: {waivers}: [[waiver]][1] key 'expires' is 'soon': expected a TOML date such as 2027-02-01 (unquoted)"
    )
    assert not [path for path in run.reports.rglob("*") if path.is_file()]
    json.dumps(run.results)  # nothing was read back either
    assert run.results == {}
