"""`pytest --profile lab`: the demo a new user runs first, audited live through the real clients.

The suite runs as an administrator runs it (a subprocess from the repository root),
against the embedded lab: Exchange and SharePoint over pypsrp, Entra ID over
azure-identity and msgraph-sdk. The shipped lab organization is the flawed Contoso,
so the run fails with exactly the seeded defects; saved with --save-evidence and
judged offline with --evidence, the bundle gives the same verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import catalog
from hybridtrust.lab.contoso import DEFECTS, compliant_organization
from hybridtrust.lab.server import Lab, start_lab
from hybridtrust.lab.state import LabState
from hybridtrust.profile import load_profile
from hybridtrust.sources.live import collect_with, lab_connections
from tests.support import NOW

REPOSITORY = Path(__file__).resolve().parents[2]
EXCHANGE_ONLINE_ONLY = "EXO-IOC-CLOUD"
"""Needs Exchange Online's own connector, which the suite never reaches live: skipped with the reason."""


@dataclass
class Run:
    status: int
    output: str
    results: list[dict[str, Any]]

    def verdicts(self) -> dict[tuple[str, str], str]:
        return {(r["requirement"], r["subject"]): r["outcome"] for r in self.results}

    def requirements(self, outcome: str) -> set[str]:
        return {r["requirement"] for r in self.results if r["outcome"] == outcome}


def run_suite(reports: Path, *args: str) -> Run:
    reports.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pytest", *args,
        f"--results-json={reports}/{{profile}}.json", f"--reports-dir={reports}",
        "-q", "-p", "no:cacheprovider",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    document = json.loads((reports / "lab.json").read_text(encoding="utf-8"))
    return Run(done.returncode, done.stdout + done.stderr, document["results"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run, Path]:
    folder = tmp_path_factory.mktemp("lab-audit")
    bundle = folder / "bundle"
    # One live run that also saves its evidence (the plain `--profile lab` run plus one
    # option: a second live run would audit a second, freshly generated lab).
    live = run_suite(folder / "live", "--profile", "lab", f"--save-evidence={bundle}")
    offline = run_suite(folder / "offline", "--profile", "lab", f"--evidence={bundle}")
    return live, offline, bundle


def test_the_lab_audit_fails_with_exactly_the_seeded_defects(runs: tuple[Run, Run, Path]) -> None:
    live, _, _ = runs
    assert live.status == 1, live.output[-3000:]
    assert {requirement.id for requirement in catalog.REQUIREMENTS} <= {r["requirement"] for r in live.results}
    assert live.requirements("error") == set(), [r for r in live.results if r["outcome"] == "error"]
    # A defect "applies" where its requirement was judged at all (HMA-DOMAINNAME is skipped:
    # the Exchange 2010 server makes "every server is 2016 CU18 or later" false).
    judged = {r["requirement"] for r in live.results if r["outcome"] != "skipped"}
    assert live.requirements("failed") == {defect.requirement for defect in DEFECTS} & judged
    assert {defect.requirement for defect in DEFECTS} - judged == {"HMA-DOMAINNAME"}
    (cloud,) = {r["message"] for r in live.results if r["requirement"] == EXCHANGE_ONLINE_ONLY}
    assert live.requirements("skipped") >= {EXCHANGE_ONLINE_ONLY}
    assert "Exchange Online is not reached live" in cloud


def test_the_saved_evidence_gives_the_same_verdicts(runs: tuple[Run, Run, Path]) -> None:
    live, offline, bundle = runs
    assert (bundle / "manifest.json").is_file() and (bundle / "exchange" / "Get-AuthServer.xml").is_file()
    assert offline.status == live.status
    expected = {key: outcome for key, outcome in live.verdicts().items() if key[0] != EXCHANGE_ONLINE_ONLY}
    found = {key: outcome for key, outcome in offline.verdicts().items() if key[0] != EXCHANGE_ONLINE_ONLY}
    assert found == expected
    # EXO-IOC-CLOUD: the live source never collects Exchange Online (skipped, by design); the
    # bundle records that in manifest.json "not_collected_by_design", which the evidence reader
    # does not read yet, so offline it is still "not collected" (an error, failing closed).
    assert offline.requirements("error") <= {EXCHANGE_ONLINE_ONLY}
    assert {r["outcome"] for r in offline.results if r["requirement"] == EXCHANGE_ONLINE_ONLY} <= {"skipped", "error"}


# -- round trips do not grow with the organization ------------------------------------------------------
def grown(state: LabState, servers: int) -> LabState:
    """`state` with EX01 cloned (its server, virtual directories, certificates) up to `servers` servers."""
    grown_state = state.copy()
    exchange = grown_state.document["exchange"]
    nouns = ["ExchangeServer", "ClientAccessService", *(n for n in exchange if n.endswith("VirtualDirectory"))]
    for number in range(len(exchange["ExchangeServer"]) + 1, servers + 1):
        name = f"EX{number:02d}"

        def clone(data: dict[str, Any], name: str = name) -> dict[str, Any]:
            text = json.dumps(data).replace("EX01", name).replace("ex01", name.lower())
            copy = json.loads(text)
            if "Guid" in copy:
                copy["Guid"] = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{copy.get('Identity')}"))
            return copy

        for noun in nouns:
            exchange[noun].extend(clone(o) for o in list(exchange[noun]) if "EX01" in (o.get("Server"), o.get("Name")))
        exchange["ExchangeCertificate"].extend(
            clone(c) for c in list(exchange["ExchangeCertificate"]) if c["Server"] == "EX01"
        )
    return grown_state


@pytest.fixture(scope="module")
def organization() -> LabState:
    return compliant_organization(NOW)


def audit_counts(state: LabState) -> tuple[dict[str, Any], int, int]:
    """(PSRP commands by cmdlet on both endpoints, pipelines, Graph requests) of one live collection."""
    profile = load_profile("lab")
    lab: Lab
    with start_lab(state) as lab:
        collection = collect_with(profile, lab_connections(profile, lab.describe(), origin="test"))
        assert collection.certificates and all(isinstance(v, list) for v in collection.certificates.values())
        commands: dict[str, int] = {}
        for endpoint in (lab.exchange, lab.sharepoint):
            for name, count in endpoint.counters()["commands"].items():
                commands[name] = commands.get(name, 0) + count
        pipelines = lab.exchange.counters()["pipelines"] + lab.sharepoint.counters()["pipelines"]
        return commands, pipelines, lab.graph.graph_requests()


def test_commands_grow_only_by_the_certificate_query_per_server(organization: LabState) -> None:
    small_commands, small_pipelines, small_graph = audit_counts(organization)
    large = grown(organization, 100)
    assert len(large.document["exchange"]["ExchangeServer"]) == 100
    large_commands, large_pipelines, large_graph = audit_counts(large)

    growth = {name: large_commands.get(name, 0) - small_commands.get(name, 0) for name in large_commands}
    assert {name: n for name, n in growth.items() if n} == {"Get-ExchangeCertificate": 96}
    assert small_commands["Get-ExchangeCertificate"] == 4
    assert large_pipelines - small_pipelines == 96
    assert large_graph == small_graph


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_labs() -> Iterator[None]:
    yield
    from hybridtrust.sources.live import stop_embedded_labs

    stop_embedded_labs()
