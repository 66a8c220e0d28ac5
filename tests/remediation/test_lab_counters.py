"""Without --remediate nothing is ever written, and --remediate writes only what the selection fails.

The lab runs in this process so its request counters can be read; the suite runs in a
subprocess as an administrator runs it, reaching the lab through an external lab
profile (the JSON line ``serve`` prints).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridtrust.lab.cmdlets import MUTATING_VERBS
from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import Lab, start_lab
from tests.remediation.support import external_profile
from tests.support import NOW, run_suite


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    with start_lab(flawed_contoso(NOW)) as running:
        connection = tmp_path / "lab-connection.json"
        connection.write_text(json.dumps(running.describe()) + "\n", encoding="utf-8")
        yield running, external_profile(tmp_path / "counted.toml", connection)


def _mutating(counters: dict[str, Any]) -> dict[str, int]:
    """Commands whose verb changes state. Add-PSSnapin only loads SharePoint's cmdlets into the session."""
    return {
        name: count
        for name, count in counters["commands"].items()
        if name.split("-", 1)[0].capitalize() in MUTATING_VERBS and name != "Add-PSSnapin"
    }


def _patches(counters: dict[str, Any]) -> dict[str, int]:
    return {endpoint: count for endpoint, count in counters["by_endpoint"].items() if endpoint.startswith("PATCH ")}


def test_a_plain_audit_writes_nothing_and_remediation_writes_only_the_selection(
    lab: tuple[Lab, Path], tmp_path: Path
) -> None:
    running, profile = lab
    before = json.dumps(running.state.document, sort_keys=True)

    plain = run_suite(tmp_path / "plain", "--profile", str(profile))
    assert plain.status == 1 and plain.by_requirement("counted", "failed")
    counters = running.counters()
    assert counters["exchange"]["mutating"] == 0 and _mutating(counters["exchange"]) == {}
    assert _mutating(counters["sharepoint"]) == {}
    assert counters["exchange"]["pipelines"] > 0 and counters["graph"]["total"] > 0  # it did read
    assert _patches(counters["graph"]) == {}
    assert json.dumps(running.state.document, sort_keys=True) == before
    assert not list((tmp_path / "plain" / "reports").glob("*remediation*"))

    running.reset_counters()
    selected = run_suite(
        tmp_path / "selected", "--profile", str(profile), "--remediate", "--requirement", "OWA-REPLY-URLS"
    )
    outcomes = selected.outcomes("counted")
    assert {requirement for requirement, _ in outcomes} == {"OWA-REPLY-URLS"}
    assert outcomes[("OWA-REPLY-URLS", "contoso/https://mail.contoso.com/ecp")] == "fixed"
    assert selected.status == 0, selected.output[-3000:]
    counters = running.counters()
    assert _mutating(counters["exchange"]) == {} and _mutating(counters["sharepoint"]) == {}
    assert _patches(counters["graph"]) == {"PATCH /v1.0/servicePrincipals/{id}": 1}
    record = json.loads(next((tmp_path / "selected" / "reports").glob("counted-*-remediation.json")).read_text())
    assert [(c["requirement"], c["status"]) for c in record["changes"]] == [("OWA-REPLY-URLS", "applied")]
