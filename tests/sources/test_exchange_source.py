"""The live Exchange source against the lab's Exchange endpoint, through unmodified pypsrp."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pypsrp.powershell import PowerShell

from bench.organizations import organization
from hybridtrust.facts import (
    VIRTUAL_DIRECTORY_CMDLETS,
    AuthServer,
    ExchangeServer,
    Missing,
    VirtualDirectory,
)
from hybridtrust.lab import cmdlets
from hybridtrust.lab.bundle import write_evidence_bundle
from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import Lab, LabPowerShellServer, start_lab
from hybridtrust.lab.state import LabState
from hybridtrust.profile import ExchangeSection
from hybridtrust.sources import remoting
from hybridtrust.sources.evidence import EXCHANGE_CMDLETS, read_evidence_bundle
from hybridtrust.sources.exchange import ExchangeDocuments, collect_exchange
from hybridtrust.sources.remoting import (
    Command,
    Outcome,
    RemotingSettings,
    SettingsError,
    open_pool,
    original_clixml,
    run_commands_on_pools,
)
from tests.support import NOW

CONTOSO = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
FABRIKAM = "3c9e7b21-6d4f-4a8e-b5c1-92f0d7e4a6b8"


class Recorder:
    """The lab's cmdlet engine, recording every command and failing the ones a test names."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any], bool]] = []
        self.failing: dict[str, cmdlets.CmdletError] = {}
        self.delay = 0.0
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        """The most pipelines the server ran at the same time."""

    def __call__(self, state: LabState, endpoint: Any, commands: list[Any]) -> Iterator[Any]:
        invocations = [cmdlets.Invocation(c.name, dict(c.parameters), c.is_script) for c in commands]
        with self._lock:
            self.commands.extend((i.name, i.parameters, i.is_script) for i in invocations)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)  # the server's own time (Active Directory, IIS in real life)
            for invocation in invocations:
                if invocation.name in self.failing:
                    raise self.failing[invocation.name]
            output = list(cmdlets.invoke(state, endpoint, invocations))
        finally:
            with self._lock:
                self.running -= 1
        yield from output

    def reset(self) -> None:
        with self._lock:
            self.commands.clear()
            self.failing.clear()
            self.delay = 0.0
            self.peak = 0


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def lab(recorder: Recorder) -> Iterator[Lab]:
    with start_lab(flawed_contoso(NOW), invoke=recorder, services=()) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(lab: Lab, recorder: Recorder) -> Iterator[None]:
    recorder.reset()
    lab.reset_counters()
    yield
    lab.exchange.faults.clear()


@dataclasses.dataclass
class Collected:
    documents: ExchangeDocuments
    commands: list[tuple[str, dict[str, Any], bool]]
    counters: dict[str, Any]


@pytest.fixture(scope="module")
def collected(lab: Lab, recorder: Recorder) -> Collected:
    """One collection of the flawed Contoso, judged by several tests (each takes a second)."""
    recorder.reset()
    lab.reset_counters()
    documents = collect_exchange(settings_for(lab.exchange))
    return Collected(documents, list(recorder.commands), lab.exchange.counters())


def settings_for(endpoint: LabPowerShellServer, **changes: Any) -> RemotingSettings:
    settings = RemotingSettings(
        uri=endpoint.uri,
        configuration_name="Microsoft.Exchange",
        auth="basic",
        username=endpoint.username,
        password=endpoint.password,
        ca_file=Path(endpoint.ca_file),
        connect_timeout=5,
        operation_timeout=20,
    )
    return dataclasses.replace(settings, **changes)


def reasons(documents: ExchangeDocuments) -> list[str]:
    values: Iterable[Any] = [*documents.exchange.values(), *documents.certificates.values()]
    return [value.reason for value in values if isinstance(value, Missing)]


# -- the happy path ------------------------------------------------------------------------------------
def test_every_cmdlet_once_for_the_whole_organization(collected: Collected) -> None:
    documents = collected.documents
    assert reasons(documents) == []
    assert set(documents.exchange) == set(EXCHANGE_CMDLETS)
    commands = collected.counters["commands"]
    for cmdlet in EXCHANGE_CMDLETS:
        expected = 2 if cmdlet == "Get-ManagementRoleAssignment" else 1
        assert commands[cmdlet] == expected, cmdlet
    # Certificates of the Exchange 2013+ Mailbox servers only: not of the Exchange 2010 box.
    assert sorted(documents.certificates) == ["EX01", "EX02", "EX03", "EX04"]
    assert commands["Get-ExchangeCertificate"] == 4
    assert documents.pipelines == collected.counters["pipelines"] == 25
    # Pools (WinRM shells), one connection each, never more than the profile's max_concurrency (8 by
    # default): whatever the number of servers (remoting.run_commands_on_pools).
    assert 1 <= collected.counters["wsman"]["Create"] <= 8


def test_only_cmdlets_with_parameters_reach_the_no_language_runspace(collected: Collected) -> None:
    assert not [name for name, _, is_script in collected.commands if is_script]
    sent = {name: parameters for name, parameters, _ in collected.commands}
    for cmdlet in VIRTUAL_DIRECTORY_CMDLETS.values():
        assert sent[cmdlet] == {"ADPropertiesOnly": True}, cmdlet
    assignees = sorted(p["RoleAssignee"] for n, p, _ in collected.commands if n == "Get-ManagementRoleAssignment")
    assert assignees == ["Exchange Online-ApplicationAccount", "SfBOnline-ApplicationAccount"]
    servers = sorted(p["Server"] for n, p, _ in collected.commands if n == "Get-ExchangeCertificate")
    assert servers == ["EX01", "EX02", "EX03", "EX04"]


def test_multi_valued_enums_arrive_as_lists_of_names(collected: Collected) -> None:
    # pypsrp's own deserializer leaves these as XML text; the source reads each object's CLIXML instead.
    documents = collected.documents
    records = documents.exchange["Get-WebServicesVirtualDirectory"]
    assert isinstance(records, list)
    ews = VirtualDirectory.from_record("EWS", records[0])
    assert ews.internal_authentication == ("Ntlm", "WindowsIntegrated", "WSSecurity", "OAuth")
    servers = [ExchangeServer.from_record(r) for r in documents.exchange["Get-ExchangeServer"]]  # type: ignore[union-attr]
    assert {s.name: s.holds_auth_certificate for s in servers}["EX2010"] is False
    auth_servers = [AuthServer.from_record(r) for r in documents.exchange["Get-AuthServer"]]  # type: ignore[union-attr]
    assert {s.type for s in auth_servers} == {"AzureAD", "MicrosoftACS"}
    xml = original_clixml(records[0])
    assert xml is not None and xml.startswith("<Obj")
    assert len(documents.auth_server_application_ids()) == 2


def test_live_facts_equal_the_lab_bundle_facts(lab: Lab, collected: Collected, tmp_path: Path) -> None:
    documents = collected.documents
    write_evidence_bundle(lab.state, tmp_path, collected_at=NOW)
    bundle = read_evidence_bundle(tmp_path, [CONTOSO, FABRIKAM])

    for kind, cmdlet in VIRTUAL_DIRECTORY_CMDLETS.items():
        live = [VirtualDirectory.from_record(kind, r) for r in documents.exchange[cmdlet]]  # type: ignore[union-attr]
        offline = [VirtualDirectory.from_record(kind, r) for r in bundle.exchange[cmdlet]]  # type: ignore[union-attr]
        assert live == offline, cmdlet
    for server, records in documents.certificates.items():
        assert [r["RawData"] for r in records] == [r["RawData"] for r in bundle.certificates[server]]  # type: ignore[union-attr]


# -- failures --------------------------------------------------------------------------------------------
def test_a_failing_cmdlet_is_missing_with_the_servers_words(lab: Lab, recorder: Recorder) -> None:
    # Exchange 2013 RTM has no Get-SettingOverride: the server says so, and only that document is lost.
    recorder.failing["Get-SettingOverride"] = cmdlets.command_not_found("Get-SettingOverride")
    documents = collect_exchange(settings_for(lab.exchange))

    missing = documents.exchange["Get-SettingOverride"]
    assert isinstance(missing, Missing)
    assert missing.key == "exchange:Get-SettingOverride"
    assert missing.reason.startswith(f"Get-SettingOverride on {lab.exchange.uri}: The term 'Get-SettingOverride'")
    assert "is not recognized as the name of a cmdlet" in missing.reason
    assert len(reasons(documents)) == 1


def test_a_session_without_select_object_gets_whole_objects_and_the_same_facts(lab: Lab, recorder: Recorder) -> None:
    # A custom restricted endpoint may leave Select-Object out: the projected queries are asked
    # again for whole objects, the certificate queries are sent without it, and the report says so.
    recorder.failing["Select-Object"] = cmdlets.command_not_found("Select-Object")
    documents = collect_exchange(settings_for(lab.exchange), keep_clixml=False)
    assert reasons(documents) == []
    refused = [name for name, _, _ in recorder.commands if name == "Select-Object"]
    assert len(refused) == 9  # Get-ExchangeServer, Get-ClientAccessService and the seven virtual directories
    sent = [name for name, _, _ in recorder.commands]  # a pipeline's commands are recorded together
    certificates = [i for i, name in enumerate(sent) if name == "Get-ExchangeCertificate"]
    assert certificates and all(sent[i + 1 : i + 2] != ["Select-Object"] for i in certificates)
    assert any("refused Select-Object" in note and "whole objects" in note for note in documents.notes)

    recorder.reset()
    projected = collect_exchange(settings_for(lab.exchange), keep_clixml=False)
    assert not any("Select-Object" in note for note in projected.notes)
    for kind, cmdlet in VIRTUAL_DIRECTORY_CMDLETS.items():
        whole = [VirtualDirectory.from_record(kind, r) for r in documents.exchange[cmdlet]]  # type: ignore[union-attr]
        part = [VirtualDirectory.from_record(kind, r) for r in projected.exchange[cmdlet]]  # type: ignore[union-attr]
        assert whole == part and whole


def test_one_unreachable_server_costs_only_its_certificates(lab: Lab) -> None:
    with lab.state.changing() as document:
        document["lab"]["servers_down"] = ["EX03"]
    try:
        documents = collect_exchange(settings_for(lab.exchange))
    finally:
        with lab.state.changing() as document:
            document["lab"]["servers_down"] = []

    missing = documents.certificates["EX03"]
    assert isinstance(missing, Missing)
    assert missing.key == "exchange:Get-ExchangeCertificate/EX03"
    assert missing.reason.startswith(f"Get-ExchangeCertificate -Server EX03 on {lab.exchange.uri}: ")
    assert "The RPC server is unavailable" in missing.reason
    assert all(isinstance(documents.certificates[name], list) for name in ("EX01", "EX02", "EX04"))
    # -ADPropertiesOnly asks Active Directory only: EX03's virtual directories are still read.
    assert len(documents.exchange["Get-OwaVirtualDirectory"]) == 4  # type: ignore[arg-type]


def test_an_application_account_that_does_not_exist_has_no_assignments(lab: Lab) -> None:
    # A tenant created after Skype for Business Online retired never got its account.
    with lab.state.changing() as document:
        before = {noun: list(document["exchange"][noun]) for noun in ("User", "MailUser")}
        for noun in before:
            document["exchange"][noun][:] = [a for a in before[noun] if a["Name"] != "SfBOnline-ApplicationAccount"]
    try:
        documents = collect_exchange(settings_for(lab.exchange))
    finally:
        with lab.state.changing() as document:
            for noun, accounts in before.items():
                document["exchange"][noun][:] = accounts

    assignments = documents.exchange["Get-ManagementRoleAssignment"]
    assert isinstance(assignments, list) and assignments
    assert {r.text_of("RoleAssigneeName") for r in assignments} == {"Exchange Online-ApplicationAccount"}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("refuse", "the server closed the connection without an answer"),
        ("401", "refused the credentials of "),
        ("500", "HTTP 500 from the server"),
    ],
)
def test_a_connection_failure_makes_every_document_missing(lab: Lab, fault: str, expected: str) -> None:
    if fault == "refuse":
        lab.exchange.faults.refuse()
    else:
        lab.exchange.faults.http_status(int(fault))
    documents = collect_exchange(settings_for(lab.exchange))

    assert set(documents.exchange) == set(EXCHANGE_CMDLETS)
    assert documents.certificates == {}
    for cmdlet, value in documents.exchange.items():
        assert isinstance(value, Missing)
        assert value.key == f"exchange:{cmdlet}"
        assert f"could not open Exchange remote PowerShell at {lab.exchange.uri}" in value.reason
        assert expected in value.reason
        assert lab.exchange.password not in value.reason


def test_nothing_listening_is_connection_refused(lab: Lab) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, on loopback only
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    documents = collect_exchange(settings_for(lab.exchange, uri=f"https://127.0.0.1:{port}/PowerShell"))

    value = documents.exchange["Get-AuthServer"]
    assert isinstance(value, Missing)
    assert value.reason == (
        f"Get-AuthServer: could not open Exchange remote PowerShell at https://127.0.0.1:{port}/PowerShell as "
        f"{lab.exchange.username} (basic): connection failed: Connection refused"
    )


def test_a_wrong_password_is_reported_without_it(lab: Lab) -> None:
    wrong = "Not-The-Lab-Password-7d1f0c"
    documents = collect_exchange(settings_for(lab.exchange, password=wrong))

    for value in reasons(documents):
        assert "refused the credentials" in value
        assert wrong not in value
    assert len(reasons(documents)) == len(EXCHANGE_CMDLETS)
    assert wrong not in repr(settings_for(lab.exchange, password=wrong))


def test_an_unknown_certificate_authority_is_a_tls_failure(lab: Lab) -> None:
    documents = collect_exchange(settings_for(lab.exchange, ca_file=None))  # the system store: not the lab's CA

    value = documents.exchange["Get-AuthServer"]
    assert isinstance(value, Missing)
    assert "TLS handshake failed" in value.reason and "certificate verify failed" in value.reason
    assert "ca_file" in value.reason


def test_a_server_that_does_not_answer_times_out(lab: Lab) -> None:
    lab.exchange.faults.stall(5, action="Create", times=1)
    started = time.monotonic()
    documents = collect_exchange(settings_for(lab.exchange, operation_timeout=1))

    assert time.monotonic() - started < 4.5
    value = documents.exchange["Get-ExchangeServer"]
    assert isinstance(value, Missing)
    assert "did not answer within 2 s (read timeout)" in value.reason


def test_tls_verification_off_is_a_note(lab: Lab) -> None:
    settings = settings_for(lab.exchange, verify_tls=False)
    assert settings.wsman().transport.cert_validation is False
    assert settings.notes() == [f"TLS verification is OFF for {lab.exchange.uri}: the profile says verify_tls = false"]
    assert collect_exchange(SettingsError("x")).notes == []


# -- settings from a profile ---------------------------------------------------------------------------------
def test_settings_read_the_named_variables() -> None:
    section = ExchangeSection(
        uri="https://ex01.contoso.com/PowerShell",
        auth="basic",
        username_env="HT_EXCHANGE_USER",
        password_env="HT_EXCHANGE_PASSWORD",
        max_concurrency=18,
    )
    settings = RemotingSettings.from_section(
        section,
        default_configuration="Microsoft.Exchange",
        environ={"HT_EXCHANGE_USER": "CONTOSO\\audit", "HT_EXCHANGE_PASSWORD": "s3cret-value"},
    )
    assert (settings.username, settings.password, settings.max_concurrency) == ("CONTOSO\\audit", "s3cret-value", 18)
    assert settings.configuration_name == "Microsoft.Exchange"
    assert "s3cret-value" not in repr(settings)
    wsman = settings.wsman()
    assert (wsman.transport.endpoint, wsman.transport.ssl) == ("https://ex01.contoso.com:443/PowerShell", True)

    with pytest.raises(SettingsError, match="HT_EXCHANGE_PASSWORD named by password_env is not set"):
        RemotingSettings.from_section(section, default_configuration="x", environ={"HT_EXCHANGE_USER": "a"})


def test_basic_over_http_is_refused_and_nothing_is_sent() -> None:
    section = ExchangeSection(
        uri="http://ex01.contoso.com/PowerShell", auth="basic", username_env="U", password_env="P"
    )
    with pytest.raises(SettingsError, match="needs an https:// uri") as caught:
        RemotingSettings.from_section(section, default_configuration="x", environ={"U": "u", "P": "pw-123"})
    documents = collect_exchange(caught.value)
    assert all("needs an https:// uri" in reason for reason in reasons(documents))
    assert "pw-123" not in str(caught.value)


# -- concurrency -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bound", [1, 8])
def test_pipelines_run_concurrently_within_the_bound(lab: Lab, recorder: Recorder, bound: int) -> None:
    # With 20 ms of server time per cmdlet, a window of pipelines on one pool overlaps on
    # the server; the pool's runspaces and the window never exceed the profile's bound.
    recorder.delay = 0.02
    documents = collect_exchange(settings_for(lab.exchange, max_concurrency=bound))

    assert reasons(documents) == []
    if bound == 1:
        assert recorder.peak == 1
    else:
        assert 2 <= recorder.peak <= bound


def test_certificate_queries_start_while_the_server_list_is_still_arriving(monkeypatch: pytest.MonkeyPatch) -> None:
    # 150 servers take Get-ExchangeServer three Receives; their certificate queries start with the first.
    events: list[tuple[float, str]] = []
    close = PowerShell.close

    def closing(shell: PowerShell) -> None:
        if shell.commands and shell.commands[0].cmd == "Get-ExchangeServer":
            events.append((time.monotonic(), "Get-ExchangeServer closed"))
        close(shell)

    def invoke(state: LabState, endpoint: Any, commands: list[Any]) -> Iterator[Any]:
        if commands[0].name == "Get-ExchangeCertificate":
            events.append((time.monotonic(), "certificate query"))
        return cmdlets.invoke(
            state, endpoint, [cmdlets.Invocation(c.name, dict(c.parameters), c.is_script) for c in commands]
        )

    monkeypatch.setattr(PowerShell, "close", closing)
    with start_lab(organization(150, 1, NOW), invoke=invoke, services=()) as lab:
        documents = collect_exchange(settings_for(lab.exchange, max_concurrency=16))

    assert reasons(documents) == []
    assert len(documents.certificates) == 150
    assert sum(1 for _, what in events if what == "certificate query") == 150  # once each, none twice
    closed = next(when for when, what in events if what == "Get-ExchangeServer closed")
    assert min(when for when, what in events if what == "certificate query") < closed


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="Linux, 2+ CPUs")
def test_the_pool_threads_share_one_cpu_and_leave_the_caller_free(lab: Lab, recorder: Recorder) -> None:
    # They take turns at the interpreter lock; on one CPU each hand-over is not a wake-up on another core.
    recorder.delay = 0.05  # so that one thread cannot run every command before the others have opened their pools
    settings = settings_for(lab.exchange, max_concurrency=4)
    before = os.sched_getaffinity(0)
    seen: list[tuple[str, frozenset[int]]] = []

    def follow_up(command: Command, outcome: Outcome) -> list[Command]:
        seen.append((threading.current_thread().name, frozenset(os.sched_getaffinity(0))))  # this thread's mask
        return []

    commands = [Command(f"c{index}", "Get-AcceptedDomain") for index in range(12)]
    pool = open_pool(settings, 1, raw_output=True)
    outcomes = run_commands_on_pools(
        pool, commands, settings, follow_up=follow_up, opener=lambda: open_pool(settings, 1, raw_output=True)
    )

    assert [outcome.error for outcome in outcomes.values()] == [None] * 12
    assert len({name for name, _ in seen}) > 1
    assert len({mask for _, mask in seen}) == 1
    [mask] = {mask for _, mask in seen}
    assert len(mask) == 1 and mask <= before
    assert os.sched_getaffinity(0) == before


def test_one_cpu_is_not_chosen_where_there_is_only_one(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_setaffinity"):
        assert remoting._one_cpu() is None
        return
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert remoting._one_cpu() is None
