"""Baselines and the change-window gate: a run before the change, one after, fail only on what is new."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import history
from hybridtrust.baseline import BaselineError, comparable, compare, load_results_document
from hybridtrust.lab.state import LabState
from tests.support import SuiteRun, write_profile


def _r(requirement: str, subject: str, outcome: str, severity: str = "high") -> dict[str, Any]:
    return {"requirement": requirement, "subject": subject, "outcome": outcome, "severity": severity}


def test_results_are_matched_by_requirement_and_subject() -> None:
    before = {"started": "2026-11-01T00:00:00+00:00", "results": [
        _r("A", "EX01", "failed"), _r("A", "EX02", "passed"), _r("B", "org", "waived"), _r("C", "t", "failed"),
        _r("D", "t", "error"), _r("E", "t", "failed"),
    ]}  # fmt: skip
    now = [
        _r("A", "EX01", "failed"),  # still failing
        _r("A", "EX02", "failed", "critical"),  # new
        _r("B", "org", "failed"),  # was waived: a failure somebody accepted, not new
        _r("C", "t", "passed"),  # fixed
        _r("D", "t", "failed"),  # was an error: the failure cannot be proven old
        _r("F", "t", "failed", "low"),  # not judged before: new
        _r("E", "t", "error"),  # errors are in no list: they fail every gate anyway
    ]
    comparison = compare(now, before, "before.json")
    assert [(e["requirement"], e["subject"]) for e in comparison.new_failures] == [
        ("A", "EX02"),
        ("D", "t"),
        ("F", "t"),
    ]
    assert [(e["requirement"], e["subject"]) for e in comparison.still_failing] == [("A", "EX01"), ("B", "org")]
    assert [(e["requirement"], e["subject"]) for e in comparison.fixed] == [("C", "t")]
    assert [e["requirement"] for e in comparison.gate_failures("high")] == ["A", "D"]
    assert comparison.document()["file"] == "before.json" and comparison.started == "2026-11-01T00:00:00+00:00"


def test_only_the_failures_of_an_earlier_run_are_kept_and_they_compare_the_same() -> None:
    outcomes = ("passed", "failed", "waived", "error", "skipped", "fixed")
    before = {
        "format": "x", "profile": "p", "started": "2026-11-01T00:00:00+00:00",
        "results": [_r(f"R{i % 7}", f"EX{i:02}", outcomes[i % len(outcomes)]) for i in range(60)],
    }  # fmt: skip
    now = [_r(f"R{i % 7}", f"EX{i:02}", outcomes[(i * 5) % len(outcomes)]) for i in range(4, 70)]
    slim = comparable(before)
    assert {r["outcome"] for r in slim["results"]} == {"failed", "waived"}
    assert len(slim["results"]) == 20 and set(slim) == {"started", "results"}
    assert compare(now, slim, "before.json") == compare(now, before, "before.json")


def _with(state: LabState, *changes: Callable[[dict[str, Any]], None]) -> LabState:
    world = state.copy()
    for change in changes:
        change(world.document)
    return world


def _sfb_visible(doc: dict[str, Any]) -> None:  # SFB-APPACCOUNT (medium) on "organization"
    doc["exchange"]["MailUser"][0]["HiddenFromAddressListsEnabled"] = False


def _oab_without_oauth(doc: dict[str, Any]) -> None:  # HMA-VDIR-OAUTH (critical) on EX03/OAB
    [oab] = [v for v in doc["exchange"]["OabVirtualDirectory"] if v["Server"] == "EX03"]
    oab["ExternalAuthenticationMethods"] = ["WindowsIntegrated"]


def _pairs(items: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(item["requirement"], item["subject"]) for item in items]


def test_the_change_window_gate(
    tmp_path: Path, compliant_state: LabState, write_bundle: Callable[..., Path],
    run_suite: Callable[..., SuiteRun],
) -> None:  # fmt: skip
    # One profile file whose evidence folder is refilled between runs, as a collector would.
    bundle = tmp_path / "evidence"
    profile = write_profile(tmp_path / "contoso.toml", bundle)

    def run(world: LabState, *args: str) -> SuiteRun:
        shutil.rmtree(bundle, ignore_errors=True)
        write_bundle(world, "evidence")
        return run_suite("--profile", str(profile), *args)

    # Before the change window: one known failure. This run is the baseline.
    before = run(_with(compliant_state, _sfb_visible))
    assert before.status == 1 and before.results["contoso"]["baseline"] is None
    kept = history.run_files(before.reports, "contoso")  # the run documents, not their trend side files
    assert len(kept) == 1 and json.loads(kept[0].read_text())["summary"] == before.results["contoso"]["summary"]

    # After it: the old failure is still there, nothing new: the gate opens.
    after = run(_with(compliant_state, _sfb_visible), "--baseline=last", "--fail-on-new")
    assert after.status == 0, after.output[-2000:]
    baseline = after.results["contoso"]["baseline"]
    assert baseline["file"] == str(kept[0])
    assert (_pairs(baseline["new_failures"]), _pairs(baseline["fixed"])) == ([], [])
    assert _pairs(baseline["still_failing"]) == [("SFB-APPACCOUNT", "organization")]
    assert "0 new failure(s), 0 fixed, 1 still failing" in after.output

    # The change broke OAuth on a virtual directory and fixed the old failure: the gate closes on the new one.
    broken = run(_with(compliant_state, _oab_without_oauth), "--baseline=last", "--fail-on-new")
    assert broken.status == 1
    baseline = broken.results["contoso"]["baseline"]
    assert _pairs(baseline["new_failures"]) == [("HMA-VDIR-OAUTH", "EX03/OAB")]
    assert _pairs(baseline["fixed"]) == [("SFB-APPACCOUNT", "organization")]
    html = (broken.reports / "contoso-latest.html").read_text()
    assert "Compared with the baseline" in html and "new failures: 1" in html and "fixed: 1" in html

    # --fail-on still sets the bar for new failures; an explicit baseline file works like "last".
    first = str(kept[0])
    lenient = run(_with(compliant_state, _sfb_visible, _oab_without_oauth), f"--baseline={first}", "--fail-on-new",
                  "--fail-on=critical")  # fmt: skip
    assert lenient.status == 1  # HMA-VDIR-OAUTH is critical (below the bar: see the comparison's unit test)


def test_errors_fail_the_change_window_gate(
    tmp_path: Path, compliant_state: LabState, write_bundle: Callable[..., Path],
    write_profile: Callable[..., Path], run_suite: Callable[..., SuiteRun],
) -> None:  # fmt: skip
    baseline = tmp_path / "baseline.json"  # a baseline in which every requirement passed
    baseline.write_text(json.dumps({"format": "hybridtrust-results/1", "profile": "gate", "results": []}))
    bundle = write_bundle(compliant_state, "partial")
    (bundle / "exchange" / "Get-OrganizationConfig.xml").unlink()
    run = run_suite("--profile", str(write_profile("gate", bundle)), f"--baseline={baseline}", "--fail-on-new")
    assert run.status == 1 and run.results["gate"]["baseline"]["new_failures"] == []
    assert run.results["gate"]["summary"]["error"] > 0


def test_a_results_document_is_checked_before_it_is_compared(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "hybridtrust-results/1", "profile": "fabrikam", "results": []}))
    with pytest.raises(BaselineError, match="key 'profile' is 'fabrikam', expected 'demo'"):
        load_results_document(other, "demo")
    junit = tmp_path / "junit.json"
    junit.write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(BaselineError, match="key 'format' is 'something/2', expected 'hybridtrust-results/1'"):
        load_results_document(junit, "demo")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "hybridtrust-results/1", "profile": "demo", "results": [{"outcome": 1}]}))
    with pytest.raises(BaselineError, match="key 'results' is not a list of results"):
        load_results_document(broken, "demo")
    with pytest.raises(BaselineError, match="no such results file"):
        load_results_document(tmp_path / "x.json", "demo")


def _usage_error(run: SuiteRun) -> str:
    assert run.status == 4, run.output[-2000:]
    [line] = [line for line in run.output.splitlines() if line.startswith("ERROR:")]
    return line


def test_a_baseline_that_cannot_be_compared_is_a_usage_error(
    tmp_path: Path, run_suite: Callable[..., SuiteRun]
) -> None:
    assert "--fail-on-new needs --baseline" in _usage_error(run_suite("--profile", "demo", "--fail-on-new"))
    line = _usage_error(run_suite("--profile", "demo", "--baseline=last"))
    assert "--baseline last: no earlier run of profile 'demo' in" in line and "history/demo" in line
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "hybridtrust-results/1", "profile": "fabrikam", "results": []}))
    assert "key 'profile' is 'fabrikam', expected 'demo'" in _usage_error(
        run_suite("--profile", "demo", f"--baseline={other}")
    )
