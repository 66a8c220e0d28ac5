"""Faults survived: the real suite, in a subprocess, against lab endpoints that misbehave on purpose.

Each fault gets its own lab (started in this process, so the test can arm the fault)
and a profile of a real organization pointing at it (credentials in environment
variables, the lab's CA in ca_file; one case uses the external lab profile instead).
All runs are queued together (conftest.py): most of their time is spent waiting for a
timeout or a Retry-After, so they overlap with the other modules' runs. What every
fault must give:

- the run ends within the bound the case states (from the profile's timeouts);
- the exit status fails closed: 1;
- every requirement the fault touches is an *error* whose message names the endpoint
  (its URI) and the cause in the client's or the server's words;
- every other requirement is judged exactly as in a run without the fault (same
  outcome per requirement and subject): nothing passes or skips because data is missing.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import catalog
from hybridtrust.facts import Missing
from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import Lab, start_lab
from hybridtrust.lab.state import LabState
from hybridtrust.sources.evidence import EXCHANGE_CMDLETS
from hybridtrust.sources.exchange import collect_exchange
from hybridtrust.sources.remoting import RemotingSettings
from tests.reliability.support import (
    Batch,
    LabTarget,
    Launcher,
    Measured,
    SuiteProcess,
    closed_port,
    record_measurement,
    record_run,
)

PROFILE = "faulty"
SLACK_S = 30.0
"""What a run may take besides the waits its faults cause: alone it takes about 3 s, but here up to
eight suite runs (conftest.py's `Launcher`) share two CPUs with the labs that serve them."""

SHORT_TIMEOUTS = "connect_timeout_seconds = 2\noperation_timeout_seconds = 2"
"""Two seconds per cmdlet: WinRM's long poll is then 2 s and the HTTP read timeout 4 s
(`RemotingSettings.wsman_read_timeout`). Only for the cases about timeouts: under the load
of this test a healthy lab can take longer than that to answer."""
GRAPH_TIMEOUT_S = 5


@dataclass(frozen=True)
class Fault:
    """One fault of one endpoint, and the words every error it causes must carry."""

    id: str
    what: str
    arm: Callable[[Lab], None]
    endpoint: str
    """Whose URI every error names: "exchange", "sharepoint" or "graph"."""
    cause: str
    """A regular expression every error message of this fault matches (with the endpoint's URI)."""


@dataclass(frozen=True)
class Scenario:
    """One suite run: an Exchange fault and a Graph fault at once, or one alone.

    Two endpoints failing in one run also shows each error naming its own endpoint and
    cause; the requirements that need neither (SharePoint's own) are judged as usual.
    """

    id: str
    faults: tuple[Fault, ...]
    bound_s: float
    short_timeouts: bool = False
    """[exchange] and [sharepoint] wait 2 s per cmdlet (`SHORT_TIMEOUTS`), for the faults about timeouts."""
    external: bool = False
    """Reach the lab through profiles/lab.toml in external mode instead of a live profile."""
    refused: bool = False
    """Point [exchange] uri at a closed port of 127.0.0.1 instead of the lab."""
    survived: tuple[Fault, ...] = ()
    """Faults the clients ride out: the verdicts they touch are the baseline's."""


def _servers_down(*names: str) -> Callable[[Lab], None]:
    def arm(lab: Lab) -> None:
        # The lab's knob (hybridtrust/lab/state.py, "lab"): Get-ExchangeCertificate -Server <name> fails
        # with Exchange's RPC error, as for a server that is switched off.
        with lab.state.changing() as document:
            document.setdefault("lab", {})["servers_down"] = list(names)

    return arm


def _nothing(lab: Lab) -> None:
    return None


REFUSED = Fault(
    "exchange-refuses-connections",
    "Exchange's port refuses connections (nothing listens there)",
    _nothing,
    "exchange",
    r"connection failed: Connection refused",
)
RESET_AT_ACCEPT = Fault(
    "exchange-resets-connections",
    "Exchange resets every connection as it accepts it (lab fault `refuse`)",
    lambda lab: lab.exchange.faults.refuse(),
    "exchange",
    r"the server closed the connection without an answer",
)
RESET_MID_RECEIVE = Fault(
    "exchange-reset-mid-receive",
    "the connection is reset in the middle of a cmdlet's Receive (half its answer sent)",
    lambda lab: lab.exchange.faults.reset_receive(times=1, command_only=True),
    "exchange",
    r"the connection broke in the middle of the server's answer \(\d+ bytes read, \d+ more expected\)",
)
HTTP_500 = Fault(
    "exchange-http-500",
    "Exchange answers HTTP 500",
    lambda lab: lab.exchange.faults.http_status(500),
    "exchange",
    r"HTTP 500 from the server: 500 Internal Server Error",
)
HTTP_401 = Fault(
    "exchange-http-401",
    "Exchange answers HTTP 401",
    lambda lab: lab.exchange.faults.http_status(401),
    "exchange",
    r"the server refused the credentials of CONTOSO\\svc-hybridtrust \(basic\) \(HTTP 401\)",
)
HTTP_403 = Fault(
    "exchange-http-403",
    "Exchange answers HTTP 403",
    lambda lab: lab.exchange.faults.http_status(403),
    "exchange",
    r"HTTP 403 from the server: 403 Forbidden",
)
OPERATION_TIMEOUT_ONCE = Fault(
    "exchange-winrm-operation-timeout",
    "three cmdlet Receives answer WinRM's OperationTimeout fault (slow cmdlets)",
    lambda lab: lab.exchange.faults.operation_timeout(times=3),
    "exchange",
    "",
)
OPERATION_TIMEOUT_ALWAYS = Fault(
    "exchange-cmdlets-never-finish",
    "every cmdlet Receive answers OperationTimeout (cmdlets that never finish)",
    lambda lab: lab.exchange.faults.operation_timeout(),
    "exchange",
    r"did not finish within 2 s \(operation_timeout_seconds\)",
)
OPENING_TIMES_OUT = Fault(
    "exchange-pool-opening-times-out",
    "the Receive that opens the runspace pool answers OperationTimeout",
    lambda lab: lab.exchange.faults.operation_timeout(pool_receives=True),
    "exchange",
    r"WinRM fault 2150858793: The WS-Management service cannot complete the operation within the time "
    r"specified in OperationTimeout",
)
STALLS = Fault(
    "exchange-stalls",
    "Exchange accepts requests and stalls for 60 s (past the 4 s read timeout)",
    lambda lab: lab.exchange.faults.stall(60),
    "exchange",
    r"the server did not answer within 4 s \(read timeout\)",
)
CERTIFICATE_SERVER_DOWN = Fault(
    "certificate-server-unreachable",
    "one of four servers is unreachable for Get-ExchangeCertificate -Server EX02",
    _servers_down("EX02"),
    "exchange",
    r"Get-ExchangeCertificate -Server EX02 on \S+: A special Rpc error occurs on server EX02: "
    r"The RPC server is unavailable\.",
)
SHAREPOINT_STALLS = Fault(
    "sharepoint-stalls",
    "SharePoint accepts requests and stalls for 60 s (past the 4 s read timeout)",
    lambda lab: lab.sharepoint.faults.stall(60),
    "sharepoint",
    r"the server did not answer within 4 s \(read timeout\)",
)
SHAREPOINT_RESETS = Fault(
    "sharepoint-resets-connections",
    "SharePoint resets every connection as it accepts it",
    lambda lab: lab.sharepoint.faults.refuse(),
    "sharepoint",
    r"the server closed the connection without an answer",
)
THROTTLED = Fault(
    "graph-429-storm-retry-after",
    "every Graph request answers 429 with Retry-After: 1",
    lambda lab: lab.graph.faults.throttle(10_000, retry_after=1),
    "graph",
    # Three retries a second apart, as many as fit in [entra] timeout_seconds on a loaded machine.
    r"Graph answered 429 TooManyRequests: Too many requests\. Still 429 after \d retr(y|ies) "
    r"\(Graph asked to wait 1 s more\)",
)
THROTTLED_BARE = Fault(
    "graph-429-storm-no-retry-after",
    "every Graph request answers 429 without Retry-After",
    lambda lab: lab.graph.faults.throttle(10_000, retry_after=None),
    "graph",
    r"Graph answered 429 TooManyRequests: Too many requests\. Still 429 after \d retr(y|ies);",
)
UNAVAILABLE = Fault(
    "graph-503-storm",
    "every Graph request answers 503",
    lambda lab: lab.graph.faults.fail(10_000, status=503),
    "graph",
    r"Graph answered 503 serviceNotAvailable: The service is temporarily unavailable\. Please retry\. "
    r"Still 503 after",
)
GRAPH_500 = Fault(
    "graph-500",
    "every Graph request answers 500 (not retried)",
    lambda lab: lab.graph.faults.fail(10_000, status=500),
    "graph",
    r"Graph answered 500 generalException: An unexpected error occurred\.",
)

# About 14 Graph requests per run, 8 at a time: two rounds, each within [entra] timeout_seconds.
GRAPH_WAIT_S = 2 * GRAPH_TIMEOUT_S
SCENARIOS = [
    Scenario("refused+throttled", (REFUSED, THROTTLED), SLACK_S + GRAPH_WAIT_S, refused=True),
    Scenario("reset-mid-receive+throttled-bare", (RESET_MID_RECEIVE, THROTTLED_BARE), SLACK_S + GRAPH_WAIT_S),
    Scenario("http-500+graph-503", (HTTP_500, UNAVAILABLE), SLACK_S + GRAPH_WAIT_S),
    Scenario("http-401+graph-500", (HTTP_401, GRAPH_500), SLACK_S),
    Scenario("external-lab:http-403+sharepoint-resets", (HTTP_403, SHAREPOINT_RESETS), SLACK_S, external=True),
    # Exchange: 21 pipelines, 8 at a time, three rounds that each wait operation_timeout_seconds (2 s);
    # SharePoint: one read timeout (4 s) while opening; both at once.
    Scenario(
        "cmdlets-never-finish+sharepoint-stalls",
        (OPERATION_TIMEOUT_ALWAYS, SHAREPOINT_STALLS),
        SLACK_S + 3 * 2 + 4,
        short_timeouts=True,
    ),
    Scenario(
        "certificate-server-down+slow-cmdlets",
        (CERTIFICATE_SERVER_DOWN,),
        SLACK_S,
        survived=(OPERATION_TIMEOUT_ONCE,),
    ),
]
IN_PROCESS = [RESET_AT_ACCEPT, OPENING_TIMES_OUT, STALLS]
"""Exchange faults no suite run above meets, checked at the source (`collect_exchange`) one by one."""


@dataclass
class FaultRun:
    scenario: Scenario | None
    run: Measured
    target: LabTarget
    exchange_uri: str

    def endpoint(self, fault: Fault) -> str:
        if fault.endpoint == "exchange":
            return self.exchange_uri
        if fault.endpoint == "sharepoint":
            return str(self.target.description["sharepoint"]["uri"])
        return str(self.target.description["graph"]["base_url"])


def launch(root: Path, launcher: Launcher) -> Batch:
    """Every scenario's run and a run without fault, each against its own lab (see conftest.py)."""
    state = flawed_contoso(dt.datetime.now(dt.UTC))
    places: dict[str, tuple[Scenario | None, LabTarget, str]] = {}

    def finish(measured: dict[str, Measured]) -> dict[str, FaultRun]:
        return {
            name: FaultRun(scenario, measured[name], target, uri) for name, (scenario, target, uri) in places.items()
        }

    batch = Batch(finish)
    try:
        for scenario in [None, *SCENARIOS]:
            name = scenario.id if scenario else "baseline"
            lab = start_lab(state.copy())
            batch.labs.append(lab)
            target = LabTarget(lab, root / name / "profile")
            exchange_uri = target.description["exchange"]["uri"]
            if scenario is not None and scenario.external:
                profile = target.external_profile(PROFILE)
            else:
                if scenario is not None and scenario.refused:
                    exchange_uri = f"https://127.0.0.1:{closed_port()}/PowerShell"
                short = SHORT_TIMEOUTS if scenario is not None and scenario.short_timeouts else ""
                profile = target.live_profile(
                    PROFILE,
                    exchange_uri=exchange_uri,
                    exchange=short,
                    sharepoint=short,
                    entra=f"timeout_seconds = {GRAPH_TIMEOUT_S}",
                )
            for fault in (*scenario.faults, *scenario.survived) if scenario else ():
                fault.arm(lab)
            process = SuiteProcess(root / name / "run", f"--profile={profile}", env=target.env())
            batch.runs[name] = launcher.submit(process)
            places[name] = (scenario, target, exchange_uri)
    except BaseException:
        batch.close()
        raise
    return batch


@pytest.fixture(scope="module")
def state() -> LabState:
    # The drifted lab organization: failures, passes and skips to keep or lose.
    return flawed_contoso(dt.datetime.now(dt.UTC))


@pytest.fixture(scope="module")
def fault_runs(launched: Callable[[str], Any]) -> dict[str, FaultRun]:
    return launched(__name__)  # type: ignore[no-any-return]


AREAS = {"exchange": "exchange:", "sharepoint": "sharepoint:", "graph": "entra:"}
"""Which documents (catalog `needs`) a fault of each endpoint can take away."""


def expected_requirements(run: Measured) -> set[str]:
    return {r["requirement"] for r in run.results_of(PROFILE)}


def _generic(message: str) -> str:
    """A message as the README quotes it: ports and request ids vary from run to run."""
    message = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", message)
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<guid>", message)


def test_without_a_fault_every_requirement_is_judged(fault_runs: dict[str, FaultRun]) -> None:
    baseline = fault_runs["baseline"].run
    assert baseline.status == 1, baseline.output[-3000:]  # the lab organization has defects
    assert baseline.results_of(PROFILE, "error") == []
    assert len(baseline.results_of(PROFILE, "passed")) > 50


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.id for scenario in SCENARIOS])
def test_faults_fail_closed_and_name_endpoint_and_cause(
    scenario: Scenario, fault_runs: dict[str, FaultRun], tmp_path_factory: pytest.TempPathFactory
) -> None:
    entry = fault_runs[scenario.id]
    run, baseline = entry.run, fault_runs["baseline"].run
    errors = run.results_of(PROFILE, "error")
    for fault in scenario.faults:
        saying = sorted((r["message"] for r in errors if re.search(fault.cause, r["message"])), key=len)
        said = saying[0] if saying else "(no error says it)"
        record_run(tmp_path_factory.getbasetemp(), "fault", f"{scenario.id}: {fault.id}", run, _generic(said))

    assert run.elapsed_s < scenario.bound_s, f"{scenario.id}: {run.elapsed_s:.1f} s"
    assert run.status == 1, run.output[-3000:]  # fail closed

    # Every requirement judged (not an error) is judged exactly as without the faults.
    expected = baseline.outcomes(PROFILE)
    changed = {
        key: (expected.get(key), outcome)
        for key, outcome in run.outcomes(PROFILE).items()
        if outcome != "error" and expected.get(key) != outcome
    }
    assert changed == {}, f"{scenario.id}: judged differently than without the faults: {changed}"

    # Every error names an endpoint and its fault's cause; every fault caused some.
    assert errors, f"{scenario.id}: no requirement became an error: {run.output[-3000:]}"
    for result in errors:
        message = result["message"]
        assert any(entry.endpoint(fault) in message and re.search(fault.cause, message) for fault in scenario.faults), (
            f"{result['requirement']} {result['subject']}: names no faulty endpoint with its cause: {message}"
        )
    for fault in scenario.faults:
        assert any(re.search(fault.cause, r["message"]) for r in errors), f"no error says {fault.cause!r}"
    for fault in scenario.survived:
        assert entry.target.lab.exchange.faults.describe()["armed"] == [], f"{fault.id} never fired"

    # What needs none of the faulty endpoints (catalog `needs`) is judged, as the baseline judged it.
    faulty = tuple(AREAS[fault.endpoint] for fault in scenario.faults)
    untouched = {r.id for r in catalog.REQUIREMENTS if r.needs and not any(n.startswith(faulty) for n in r.needs)}
    judged = {r["requirement"] for r in run.results_of(PROFILE) if r["outcome"] != "error"}
    assert untouched and untouched & set(expected_requirements(baseline)) <= judged, sorted(untouched - judged)
    # The terminal and the HTML report say it too.
    assert re.search(r"\d+ error", run.output), run.output[-2000:]
    assert any(path.suffix == ".html" for path in run.files())


def test_one_unreachable_server_costs_only_its_own_certificate_checks(fault_runs: dict[str, FaultRun]) -> None:
    run = fault_runs["certificate-server-down+slow-cmdlets"].run
    errors = run.results_of(PROFILE, "error")
    assert {(r["requirement"], r["subject"]) for r in errors} == {("EXO-AUTHCERT", "EX02"), ("HMA-AUTHCERT", "EX02")}
    judged = {r["subject"] for r in run.results_of(PROFILE) if r["requirement"] == "EXO-AUTHCERT"}
    assert judged >= {"EX01", "EX02"}, judged


@pytest.mark.parametrize("fault", IN_PROCESS, ids=[fault.id for fault in IN_PROCESS])
def test_exchange_faults_at_the_source(fault: Fault, state: LabState, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`collect_exchange` under each Exchange fault: every document missing, with the endpoint and the cause."""
    with start_lab(state.copy(), services=[]) as lab:
        description = lab.describe()["exchange"]
        uri = description["uri"]
        settings = RemotingSettings(
            uri=uri,
            configuration_name="Microsoft.Exchange",
            auth="basic",
            username=description["username"],
            password=description["password"],
            ca_file=Path(description["ca_file"]),
            connect_timeout=2,
            operation_timeout=2,
        )
        fault.arm(lab)
        started = time.monotonic()
        documents = collect_exchange(settings)
        elapsed = time.monotonic() - started
    assert elapsed < 15, f"{fault.id}: {elapsed:.1f} s"
    assert set(documents.exchange) == set(EXCHANGE_CMDLETS)
    for cmdlet, document in documents.exchange.items():
        assert isinstance(document, Missing), f"{fault.id}: {cmdlet} was collected"
        assert uri in document.reason and re.search(fault.cause, document.reason), document.reason
        assert description["password"] not in document.reason
    said = documents.exchange["Get-AuthServer"]
    assert isinstance(said, Missing)
    record_measurement(
        tmp_path_factory.getbasetemp(),
        "fault at the source",
        fault.id,
        status=None,
        elapsed_s=elapsed,
        said=_generic(said.reason),
    )


def test_a_long_retry_after_is_not_waited_for(state: LabState) -> None:
    """Graph asks for 120 s: the request gives up at once rather than hold the audit for minutes."""
    result, elapsed = _graph_while_throttled(state, endpoint="organization")
    # Not 3 x 120 s: the first answer stands (about a second alone; the bound leaves room for a loaded machine).
    assert elapsed < 30, elapsed
    reason = str(result.errors["organization"])
    assert "Graph answered 429 TooManyRequests" in reason and "Still 429 after 0 retries" in reason, reason
    assert "Graph asked to wait 120 s more" in reason, reason
    assert set(result.errors) == {"organization"}  # the other items were read


def test_a_throttled_token_endpoint_is_not_waited_for(state: LabState) -> None:
    """Entra's token endpoint asks for 120 s, three times: sign-in gives up within [entra] timeout_seconds."""
    result, elapsed = _graph_while_throttled(state, target="token")
    assert elapsed < GRAPH_TIMEOUT_S + 20, elapsed  # not 3 x 120 s; room for a loaded machine
    reasons = {str(error) for error in result.errors.values()}
    assert len(reasons) == 1, reasons  # every item says the same once: sign-in failed
    (reason,) = reasons
    assert f"no token within {GRAPH_TIMEOUT_S:g} s" in reason and "throttling" in reason, reason


def _graph_while_throttled(state: LabState, **fault: Any) -> tuple[Any, float]:
    """One tenant collected from a Graph lab that answers 429 ``Retry-After: 120`` to what `fault` selects."""
    from hybridtrust.sources import graph

    with start_lab(state.copy(), services=["graph"]) as lab:
        description = lab.describe()["graph"]
        tenant = description["tenant_ids"][0]
        client = description["tenants"][tenant]["read_only"]
        lab.graph.faults.throttle(10_000, retry_after=120, **fault)
        endpoints = graph.GraphEndpoints(
            authority=description["authority"],
            graph_base_url=description["base_url"],
            ca_file=Path(description["ca_file"]),
            timeout_s=GRAPH_TIMEOUT_S,
        )
        spec = graph.CredentialSpec("certificate", client["client_id"], Path(client["certificate_file"]))
        started = dt.datetime.now(dt.UTC)
        result = graph.collect([graph.TenantRequest(tenant, spec)], endpoints)[tenant]
        return result, (dt.datetime.now(dt.UTC) - started).total_seconds()
