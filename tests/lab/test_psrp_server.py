"""The lab's WinRM + PSRP endpoints, exercised by unmodified pypsrp as an administrator would use it.

Every test connects over 127.0.0.1 with ``pypsrp.wsman.WSMan`` + ``RunspacePool`` /
``PowerShell`` (or ``pypsrp.client.Client``): https with Basic and the lab CA file, and
http with NTLM or Negotiate and WinRM message encryption. The cmdlet engine is a small
fake here (`fake_invoke`) so these tests pin the transport and the protocol; the
end-to-end test at the bottom uses the real engine and the Contoso lab organization.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psrpcore
import pytest
import requests
from psrpcore.types import PSObject, add_note_property
from pypsrp.client import Client
from pypsrp.exceptions import AuthenticationError, WinRMTransportError, WSManFaultError
from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool
from pypsrp.wsman import WSMan

from hybridtrust.lab.psrp_server import _Pipeline
from hybridtrust.lab.server import Lab, LabPowerShellServer, start_lab
from hybridtrust.lab.state import LabState

NO_LANGUAGE = "The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode."
OPERATION_TIMEOUT = 2150858793


class FakeCmdletError(Exception):
    """Shaped like hybridtrust.lab.cmdlets.CmdletError (the contract the PSRP layer reads)."""

    def __init__(
        self,
        message: str,
        *,
        error_id: str,
        category: str,
        exception_type: str,
        target: str | None = None,
        terminating: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_id = error_id
        self.category = category
        self.exception_type = exception_type
        self.target = target
        self.terminating = terminating


def auth_server(name: str, state: str = "Enabled") -> PSObject:
    obj = PSObject()
    obj.PSObject.type_names = [
        "Microsoft.Exchange.Data.Directory.SystemConfiguration.AuthServer",
        "Microsoft.Exchange.Data.Directory.ADConfigurationObject",
        "Microsoft.Exchange.Data.Directory.ADObject",
        "System.Object",
    ]
    obj.PSObject.to_string = name
    add_note_property(obj, "Name", name)
    add_note_property(obj, "Enabled", state == "Enabled")
    return obj


def fake_invoke(state: LabState, endpoint: str, pipeline: list[Any]) -> Iterator[Any]:
    """A stand-in for hybridtrust.lab.cmdlets.invoke with Exchange's words."""
    command = pipeline[0]
    if command.is_script:
        if endpoint == "exchange":
            raise FakeCmdletError(
                NO_LANGUAGE,
                error_id="ScriptsNotAllowed",
                category="ParserError",
                exception_type="System.Management.Automation.ParseException",
                terminating=True,
            )
        yield f"script ran: {command.name}"
        return
    name, parameters = command.name, command.parameters
    if name == "Get-AuthServer":
        identity = parameters.get("Identity")
        servers = state.document.setdefault("exchange", {}).get("AuthServer", [])
        if identity is not None and identity not in [s["Name"] for s in servers]:
            yield FakeCmdletError(
                f"The operation couldn't be performed because object '{identity}' couldn't be found on "
                "'dc01.contoso.local'.",
                error_id="[Server=EX01,RequestId=1f2e,TimeStamp=1/1/2026 1:00:00 AM] [FailureCategory=Cmdlet-"
                "ManagementObjectNotFoundException] 7A8AE0A4,Microsoft.Exchange.Management.SystemConfiguration"
                "Tasks.GetAuthServer",
                category="NotSpecified",
                exception_type="Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
                target=str(identity),
            )
            return
        for server in servers:
            if identity is None or server["Name"] == identity:
                yield auth_server(server["Name"])
    elif name == "Get-Many":
        for index in range(int(parameters.get("Count", 1))):
            yield auth_server(f"server-{index:05d}-" + "x" * 100)
    elif name == "Get-Slow":
        for index in range(200):
            time.sleep(0.02)
            yield auth_server(f"slow-{index}")
    elif name == "Get-Echo":
        obj = PSObject()
        obj.PSObject.type_names = ["System.Management.Automation.PSCustomObject", "System.Object"]
        for key, value in parameters.items():
            add_note_property(obj, key, value)
        yield obj
    elif name == "Set-AuthServer":
        with state.changing() as document:
            for server in document["exchange"]["AuthServer"]:
                if server["Name"] == parameters["Identity"]:
                    server["Enabled"] = parameters["Enabled"]
    elif name == "Invoke-Expression":  # what pypsrp.client.Client.execute_ps sends
        yield "realm-4ba7f3c2"
    else:
        raise FakeCmdletError(
            f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable "
            "program. Check the spelling of the name, or if a path was included, verify that the path is correct "
            "and try again.",
            error_id="CommandNotFoundException",
            category="ObjectNotFound",
            exception_type="System.Management.Automation.CommandNotFoundException",
            target=name,
            terminating=True,
        )


def small_state() -> LabState:
    return LabState(
        {
            "format": "hybridtrust-lab/1",
            "exchange": {
                "ExchangeServer": [{"Name": "EX01", "Fqdn": "ex01.contoso.local"}],
                "AuthServer": [
                    {"Name": "ACS - 8a3f2c1e", "Enabled": True},
                    {"Name": "EvoSts - 8a3f2c1e", "Enabled": True},
                ],
            },
            "credentials": {
                "exchange": {"username": "CONTOSO\\svc-audit", "password": "Lab:pass word;1"},
                "sharepoint": {"username": "CONTOSO\\svc-audit-sp", "password": "Lab pass 2"},
            },
        }
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with start_lab(small_state(), invoke=fake_invoke, services=()) as running:
        yield running


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "lab" in request.fixturenames:
        running: Lab = request.getfixturevalue("lab")
        for endpoint in running.endpoints.values():
            endpoint.faults.clear()
            endpoint.reset_counters()


@pytest.fixture
def exchange(lab: Lab) -> LabPowerShellServer:
    lab.exchange.faults.clear()
    lab.exchange.reset_counters()
    return lab.exchange


def https_wsman(endpoint: LabPowerShellServer, **overrides: Any) -> WSMan:
    """Exactly what a user writes for Exchange over https with Basic and a private CA."""
    kwargs: dict[str, Any] = {
        "port": endpoint.https_port,
        "path": "PowerShell",
        "ssl": True,
        "auth": "basic",
        "username": endpoint.username,
        "password": endpoint.password,
        "cert_validation": endpoint.ca_file,
    }
    kwargs.update(overrides)
    return WSMan("127.0.0.1", **kwargs)


def http_wsman(endpoint: LabPowerShellServer, *, auth: str = "ntlm", encryption: str = "always", **extra: Any) -> WSMan:
    kwargs: dict[str, Any] = {
        "port": endpoint.http_port,
        "path": endpoint.path,
        "ssl": False,
        "auth": auth,
        "encryption": encryption,
        "username": endpoint.username,
        "password": endpoint.password,
    }
    kwargs.update(extra)
    return WSMan("127.0.0.1", **kwargs)


def get_auth_servers(wsman: WSMan, **parameters: Any) -> tuple[list[Any], PowerShell]:
    with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-AuthServer")
        for key, value in parameters.items():
            ps.add_parameter(key, value)
        return ps.invoke(), ps


def names(output: list[Any]) -> list[str]:
    # Exchange's objects carry Name as an adapted property, the fakes as a note property.
    return [str({**o.extended_properties, **o.adapted_properties}["Name"]) for o in output]


# --------------------------------------------------------------------------- connecting
def test_https_basic_returns_exchange_objects(exchange: LabPowerShellServer) -> None:
    output, ps = get_auth_servers(https_wsman(exchange))

    assert names(output) == ["ACS - 8a3f2c1e", "EvoSts - 8a3f2c1e"]
    assert output[0].types[0] == "Microsoft.Exchange.Data.Directory.SystemConfiguration.AuthServer"
    assert str(output[0]) == "ACS - 8a3f2c1e"
    assert ps.state == PSInvocationState.COMPLETED
    assert not ps.had_errors and not ps.streams.error


@pytest.mark.parametrize(
    ("auth", "encryption"), [("ntlm", "always"), ("ntlm", "auto"), ("negotiate", "always"), ("negotiate", "auto")]
)
def test_http_ntlm_with_message_encryption(exchange: LabPowerShellServer, auth: str, encryption: str) -> None:
    wsman = http_wsman(exchange, auth=auth, encryption=encryption)
    output, _ = get_auth_servers(wsman)

    assert names(output) == ["ACS - 8a3f2c1e", "EvoSts - 8a3f2c1e"]
    assert wsman.transport.encryption is not None  # every message went multipart/encrypted


def test_ntlm_over_https_with_channel_binding(exchange: LabPowerShellServer) -> None:
    output, _ = get_auth_servers(https_wsman(exchange, auth="ntlm"))

    assert len(output) == 2


def test_unencrypted_soap_over_http_is_rejected_like_winrm(exchange: LabPowerShellServer) -> None:
    with pytest.raises(AuthenticationError):
        get_auth_servers(http_wsman(exchange, encryption="never"))


@pytest.mark.parametrize("transport", ["https-basic", "http-ntlm"])
def test_bad_password_is_an_authentication_error(exchange: LabPowerShellServer, transport: str) -> None:
    if transport == "https-basic":
        wsman = https_wsman(exchange, password="wrong")
    else:
        wsman = http_wsman(exchange, password="wrong")
    with pytest.raises(AuthenticationError, match="Failed to authenticate the user"):
        get_auth_servers(wsman)


def test_wsman_kwargs_are_what_pypsrp_takes(exchange: LabPowerShellServer) -> None:
    for transport in ("https", "http"):
        output, _ = get_auth_servers(WSMan(**exchange.wsman_kwargs(transport)))  # type: ignore[arg-type]
        assert len(output) == 2


def test_exchange_answers_with_its_configuration_resource_uri(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="microsoft.exchange") as pool:
        assert pool.shell.resource_uri == "http://schemas.microsoft.com/powershell/Microsoft.Exchange"
        assert pool.is_alive()
    assert not pool.is_alive()  # the shell is gone after Delete


def test_unknown_configuration_is_winrms_fault(exchange: LabPowerShellServer) -> None:
    with pytest.raises(WSManFaultError) as caught:
        RunspacePool(https_wsman(exchange), configuration_name="Microsoft.PowerShell").open()

    assert "Cannot find the Microsoft.PowerShell session configuration in the WSMan: drive" in str(caught.value)
    assert caught.value.machine == "ex01.contoso.local"


# --------------------------------------------------------------------------- pipelines and errors
def test_script_fails_with_the_no_language_error(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_script("Get-AuthServer | Where-Object { $_.Enabled }")
        output = ps.invoke()

    assert output == []
    assert ps.had_errors
    assert ps.state == PSInvocationState.FAILED
    (error,) = ps.streams.error
    assert str(error) == NO_LANGUAGE
    assert error.fq_error == "ScriptsNotAllowed"
    assert error.reason == "ParseException"
    assert error.message == "ParserError: (:) [], ParseException"  # the CategoryInfo line PowerShell prints


def test_unknown_cmdlet_is_command_not_found(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-Nothing")
        ps.invoke()

    (error,) = ps.streams.error
    assert ps.had_errors
    assert "The term 'Get-Nothing' is not recognized" in str(error)
    assert error.fq_error == "CommandNotFoundException"
    assert error.target_name == "Get-Nothing"
    assert error.exception.types[0] == "System.Management.Automation.CommandNotFoundException"


def test_non_terminating_error_reaches_the_error_stream(exchange: LabPowerShellServer) -> None:
    output, ps = get_auth_servers(https_wsman(exchange), Identity="Nope")

    assert output == []
    (error,) = ps.streams.error
    assert str(error).startswith("The operation couldn't be performed because object 'Nope' couldn't be found")
    assert "ManagementObjectNotFoundException" in error.fq_error
    assert error.target_object == "Nope"
    # A non-terminating error leaves the pipeline Completed, as PowerShell does; pypsrp 0.9
    # only sets had_errors for a Failed pipeline, so callers must look at streams.error.
    assert ps.state == PSInvocationState.COMPLETED
    assert ps.had_errors is False


def test_parameters_arrive_as_psrpcore_deserialized_them(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-Echo").add_argument("EX01\\mapi (Default Web Site)")
        ps.add_parameters({"ADPropertiesOnly": None, "Count": 3, "Urls": ["https://a", "https://b"], "On": False})
        (echo,) = ps.invoke()

    assert echo.extended_properties == {
        "ADPropertiesOnly": True,  # a switch
        "Count": 3,
        "Urls": ["https://a", "https://b"],
        "On": False,
        "Identity": "EX01\\mapi (Default Web Site)",  # position 0 binds to -Identity
    }


def test_statements_run_in_order_and_binding_errors_fail_where_they_are(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-AuthServer").add_parameter("Identity", "ACS - 8a3f2c1e")
        ps.add_statement().add_cmdlet("Get-Echo").add_parameter("Identity", "a").add_argument("b")
        output = ps.invoke()

    assert names(output) == ["ACS - 8a3f2c1e"]
    assert ps.state == PSInvocationState.FAILED
    assert str(ps.streams.error[0]) == "A positional parameter cannot be found that accepts argument 'b'."
    assert ps.streams.error[0].fq_error == "PositionalParameterNotFound,Get-Echo"


def test_large_output_spans_many_fragments_and_receives(exchange: LabPowerShellServer) -> None:
    with RunspacePool(http_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        output = PowerShell(pool).add_cmdlet("Get-Many").add_parameter("Count", 1500).invoke()

    assert len(output) == 1500
    assert str(output[-1].extended_properties["Name"]).startswith("server-01499-")
    assert exchange.counters()["wsman"]["Receive"] >= 3  # the pool's, then the output over two or more


def test_stop_signal_stops_a_running_pipeline(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-Slow")
        ps.begin_invoke()
        time.sleep(0.1)
        ps.poll_invoke()
        ps.stop()
        assert ps.state == PSInvocationState.STOPPED
        # The pool stays usable after a stopped pipeline.
        assert len(PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()) == 2
    assert exchange.counters()["wsman"]["Signal"] == 1


def test_pipeline_input_and_runspace_pool_messages(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        output = PowerShell(pool).add_cmdlet("Get-AuthServer").invoke(input=["a", "b"])
        pool.max_runspaces = 3  # SET_MAX_RUNSPACES with pypsrp's "CI" property
        available = pool.get_available_runspaces()

    assert len(output) == 2
    assert pool.max_runspaces == 3
    assert available == 3


def test_pypsrp_client_on_the_sharepoint_endpoint(lab: Lab) -> None:
    sharepoint = lab.sharepoint
    client = Client(
        "127.0.0.1",
        port=sharepoint.https_port,
        path="wsman",
        ssl=True,
        auth="basic",
        username=sharepoint.username,
        password=sharepoint.password,
        cert_validation=sharepoint.ca_file,
    )
    output, _streams, had_errors = client.execute_ps("(Get-SPAuthenticationRealm)")

    assert output == "realm-4ba7f3c2"
    assert not had_errors
    assert lab.sharepoint.counters()["commands"] == {"Invoke-Expression": 1, "Out-String": 1}


def test_two_clients_at_once(exchange: LabPowerShellServer) -> None:
    results: list[int] = []

    def one(wsman: WSMan) -> None:
        with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
            for _ in range(3):
                results.append(len(PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()))

    threads = [threading.Thread(target=one, args=(w,)) for w in (https_wsman(exchange), http_wsman(exchange))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [2] * 6


# --------------------------------------------------------------------------- counters
def test_counters_count_and_reset(exchange: LabPowerShellServer) -> None:
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()
        PowerShell(pool).add_cmdlet("Set-AuthServer").add_parameters(
            {"Identity": "EvoSts - 8a3f2c1e", "Enabled": False}
        ).invoke()
        PowerShell(pool).add_script("Get-AuthServer").invoke()

    counters = exchange.counters()
    assert counters["wsman"]["Create"] == 1
    assert counters["wsman"]["Command"] == 3
    assert counters["wsman"]["Delete"] == 1
    assert counters["wsman"]["Receive"] >= 4
    assert counters["http_requests"] == sum(counters["wsman"].values())  # Basic: one request per action
    assert counters["pipelines"] == 3
    assert counters["commands"] == {"Get-AuthServer": 1, "Set-AuthServer": 1, "<script>": 1}
    assert counters["mutating"] == 1
    # Every command as received, parameters as bound (the injection tests rely on this log).
    assert counters["received"] == [
        {"cmdlet": "Get-AuthServer", "parameters": {}, "script": False},
        {
            "cmdlet": "Set-AuthServer",
            "parameters": {"Identity": "EvoSts - 8a3f2c1e", "Enabled": False},
            "script": False,
        },
        {"cmdlet": "Get-AuthServer", "parameters": {}, "script": True},
    ]
    assert exchange.state.document["exchange"]["AuthServer"][1]["Enabled"] is False

    exchange.reset_counters()
    assert exchange.counters() == {
        "http_requests": 0,
        "wsman": {},
        "pipelines": 0,
        "commands": {},
        "mutating": 0,
        "received": [],
    }


def test_lab_wide_counters_and_latency(lab: Lab) -> None:
    get_auth_servers(https_wsman(lab.exchange))
    assert set(lab.counters()) == {"exchange", "sharepoint"}
    assert lab.counters()["exchange"]["commands"] == {"Get-AuthServer": 1}

    lab.reset_counters()
    lab.latency(25)

    assert lab.counters()["exchange"]["http_requests"] == 0
    assert all(e.faults.latency_ms == 25 for e in lab.endpoints.values())


# --------------------------------------------------------------------------- faults
def test_latency_is_added_to_every_request(exchange: LabPowerShellServer, lab: Lab) -> None:
    exchange.faults.latency(60)
    lab.reset_counters()

    started = time.monotonic()
    get_auth_servers(https_wsman(exchange))
    elapsed = time.monotonic() - started

    # Counted in the same run: how many Receives a pipeline takes depends on the machine's load.
    requests_made = exchange.counters()["http_requests"]
    assert requests_made >= 4  # Create, Receive (opened), Command, Receive, ...
    assert elapsed >= 0.06 * requests_made


@pytest.mark.parametrize("transport", ["https", "http"])
def test_refused_connections(exchange: LabPowerShellServer, transport: str) -> None:
    exchange.faults.refuse()
    wsman = https_wsman(exchange) if transport == "https" else http_wsman(exchange)
    with pytest.raises(requests.exceptions.ConnectionError):
        get_auth_servers(wsman)
    assert exchange.counters()["wsman"] == {}

    exchange.faults.clear()
    assert len(get_auth_servers(wsman)[0]) == 2


def test_refuse_a_number_of_times(exchange: LabPowerShellServer) -> None:
    exchange.faults.refuse(times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        get_auth_servers(https_wsman(exchange))
    assert len(get_auth_servers(https_wsman(exchange))[0]) == 2


@pytest.mark.parametrize("transport", ["https", "http"])
def test_connection_reset_in_the_middle_of_a_receive(exchange: LabPowerShellServer, transport: str) -> None:
    exchange.faults.reset_receive(times=1)
    wsman = https_wsman(exchange) if transport == "https" else http_wsman(exchange)
    with pytest.raises(requests.exceptions.RequestException):
        get_auth_servers(wsman)
    assert exchange.counters()["wsman"] == {"Create": 1, "Receive": 1}


@pytest.mark.parametrize(("status", "error"), [(500, WinRMTransportError), (403, WinRMTransportError)])
def test_http_status(exchange: LabPowerShellServer, status: int, error: type[Exception]) -> None:
    exchange.faults.http_status(status)
    with pytest.raises(error) as caught:
        get_auth_servers(https_wsman(exchange))
    assert caught.value.code == status  # type: ignore[attr-defined]


def test_http_401_is_pypsrps_authentication_error(exchange: LabPowerShellServer) -> None:
    exchange.faults.http_status(401)
    with pytest.raises(AuthenticationError):
        get_auth_servers(https_wsman(exchange))


def test_http_status_on_one_action_only(exchange: LabPowerShellServer) -> None:
    exchange.faults.http_status(500, action="Command", times=1)
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        with pytest.raises(WinRMTransportError):
            PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()
        assert len(PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()) == 2


def test_operation_timeout_on_receive_is_polled_again(exchange: LabPowerShellServer) -> None:
    exchange.faults.operation_timeout(times=3)
    output, _ = get_auth_servers(http_wsman(exchange))

    assert len(output) == 2
    assert exchange.counters()["wsman"]["Receive"] == 2 + 3


def test_operation_timeout_while_opening_the_pool(exchange: LabPowerShellServer) -> None:
    exchange.faults.operation_timeout(times=1, pool_receives=True)
    with pytest.raises(WSManFaultError) as caught:
        get_auth_servers(https_wsman(exchange))
    assert caught.value.code == OPERATION_TIMEOUT
    assert "within the time specified in OperationTimeout" in str(caught.value)


def test_stall_longer_than_the_read_timeout_then_retry(exchange: LabPowerShellServer) -> None:
    exchange.faults.stall(1.2, times=1, action="Receive")
    wsman = https_wsman(exchange, read_timeout=1, reconnection_backoff=0.05)

    started = time.monotonic()
    output, _ = get_auth_servers(wsman)

    assert len(output) == 2  # pypsrp re-sends the Receive; the stalled one consumed nothing
    assert time.monotonic() - started >= 1


def test_faults_are_per_endpoint(lab: Lab) -> None:
    lab.sharepoint.faults.refuse()
    output, _ = get_auth_servers(https_wsman(lab.exchange))
    assert len(output) == 2
    assert lab.sharepoint.faults.describe()["armed"][0]["kind"] == "refuse"


# --------------------------------------------------------------------------- lifecycle
def test_stop_frees_the_ports_and_the_ntlm_user_file() -> None:
    before = os.environ.get("NTLM_USER_FILE")  # the module's lab may be running and own it
    state = small_state()
    state.credentials["exchange"] = {"username": "CONTOSO\\svc-stopping", "password": "Stop:me now"}
    lab = start_lab(state, invoke=fake_invoke, services=())
    ports = [e.https_port for e in lab.endpoints.values()] + [e.http_port for e in lab.endpoints.values()]
    ntlm_file = os.environ["NTLM_USER_FILE"]
    with open(ntlm_file, encoding="utf-8") as handle:
        users = handle.read()
    assert "CONTOSO\\svc-stopping:" in users
    assert "Stop:me now" not in users  # NT hashes only, never the password
    wsman = http_wsman(lab.exchange)
    pool = RunspacePool(wsman, configuration_name="Microsoft.Exchange")
    pool.open()  # an open keep-alive connection and shell while stopping

    lab.stop()
    lab.stop()  # idempotent

    mine = tuple(f":{port}" for port in ports)
    deadline = time.monotonic() + 5
    while leftover := [t.name for t in threading.enumerate() if t.name.split("-connection")[0].endswith(mine)]:
        assert time.monotonic() < deadline, leftover
        time.sleep(0.05)
    with pytest.raises(requests.exceptions.ConnectionError):
        PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()  # the server dropped the open connection
    wsman.close()
    for port in ports:
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
        with socket.socket() as rebind:
            rebind.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rebind.bind(("127.0.0.1", port))
    assert os.environ.get("NTLM_USER_FILE") == before
    if before is None:
        assert not os.path.exists(ntlm_file)
    else:
        with open(before, encoding="utf-8") as handle:
            assert "svc-stopping" not in handle.read()
    assert not os.path.exists(lab.ca_file)


def test_serve_prints_one_json_line_and_stops_on_sigterm(tmp_path: Any) -> None:
    state_file = tmp_path / "lab.json"
    small_state().save(state_file)
    process = subprocess.Popen(
        [sys.executable, "-m", "hybridtrust.lab", "serve", "--state", str(state_file), "--latency-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        description = json.loads(line)
        exchange = description["exchange"]
        assert set(exchange) >= {"uri", "username", "password", "ca_file", "http_uri"}
        assert exchange["uri"].startswith("https://127.0.0.1:") and exchange["uri"].endswith("/PowerShell")
        assert description["sharepoint"]["uri"].endswith("/wsman")
        port = int(exchange["uri"].split(":")[2].split("/")[0])
        wsman = WSMan(
            "127.0.0.1", port=port, path="PowerShell", auth="basic", username=exchange["username"],
            password=exchange["password"], cert_validation=exchange["ca_file"],
        )  # fmt: skip
        with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
            assert pool.state == 2  # Opened
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert exchange["password"] not in stderr


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def contoso_lab() -> Iterator[Lab]:
    """The shipped lab organization behind the real cmdlet engine (hybridtrust.lab.cmdlets)."""
    from datetime import UTC, datetime

    from hybridtrust.lab.contoso import flawed_contoso

    with start_lab(flawed_contoso(datetime(2026, 1, 15, tzinfo=UTC)), services=()) as running:
        yield running


@pytest.mark.parametrize("transport", ["https-basic", "http-ntlm"])
def test_real_cmdlets_read_the_contoso_lab(contoso_lab: Lab, transport: str) -> None:
    exchange = contoso_lab.exchange
    wsman = https_wsman(exchange) if transport == "https-basic" else http_wsman(exchange)
    with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-AuthServer")
        output = ps.invoke()
        expected = [s["Name"] for s in contoso_lab.state.objects("AuthServer")]
        assert sorted(names(output)) == sorted(expected)
        assert not ps.streams.error
        assert any("AuthServer" in t for t in output[0].types)

        vdirs = PowerShell(pool).add_cmdlet("Get-MapiVirtualDirectory").add_parameter("ADPropertiesOnly").invoke()
        assert len(vdirs) == len(contoso_lab.state.objects("MapiVirtualDirectory"))

        script = PowerShell(pool).add_script("Get-AuthServer | Where-Object { $_.Enabled }")
        script.invoke()
        assert script.had_errors
        assert str(script.streams.error[0]) == NO_LANGUAGE

        missing = PowerShell(pool).add_cmdlet("Get-AuthServer").add_parameter("Identity", "No such server")
        assert missing.invoke() == []
        assert "couldn't be found" in str(missing.streams.error[0])

        unknown = PowerShell(pool).add_cmdlet("Get-Nothing")
        unknown.invoke()
        assert unknown.state == PSInvocationState.FAILED
        assert "The term 'Get-Nothing' is not recognized" in str(unknown.streams.error[0])


def test_real_cmdlets_change_the_state_and_count_as_mutating(contoso_lab: Lab) -> None:
    exchange = contoso_lab.exchange
    exchange.reset_counters()
    target = contoso_lab.state.objects("AuthServer")[0]
    before = target.get("Enabled")
    with RunspacePool(https_wsman(exchange), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool).add_cmdlet("Set-AuthServer")
        ps.add_parameters({"Identity": target["Name"], "Enabled": not before})
        ps.invoke()
        assert not ps.streams.error, [str(e) for e in ps.streams.error]

    assert target["Enabled"] is (not before)
    counters = exchange.counters()
    assert counters["commands"] == {"Set-AuthServer": 1}
    assert counters["mutating"] == 1


def test_pipeline_state_messages_are_the_bytes_psrpcore_writes() -> None:
    # psrp_server._Pipeline serializes each PIPELINE_STATE once; the wire must not tell.
    def queued(pipeline_class: type[psrpcore.ServerPipeline]) -> list[tuple[Any, ...]]:
        pool = psrpcore.ServerRunspacePool()
        pool.runspace_pool_id = uuid.UUID(int=1)
        pipeline = pipeline_class(pool, uuid.UUID(int=2))
        pipeline.start()
        pipeline.complete()
        return [(m.message_type, bytes(m.data), m.pipeline_id, m.object_id) for m in pool._send_buffer]

    assert queued(_Pipeline) == queued(psrpcore.ServerPipeline)
