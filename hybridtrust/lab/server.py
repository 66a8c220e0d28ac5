"""The lab's PowerShell endpoints, and `start_lab()`: the whole lab, in-process.

``start_lab()`` starts, on 127.0.0.1 and free ports:

- ``lab.exchange``: Exchange's remote PowerShell, path ``/PowerShell``, configuration
  ``Microsoft.Exchange``, over https with Basic and over http with NTLM/Negotiate and
  WinRM message encryption (`LabPowerShellServer`);
- ``lab.sharepoint``: a SharePoint server's WinRM, path ``/wsman``, configuration
  ``Microsoft.PowerShell``, the same two ways;
- ``lab.graph``: every registered extra service, today the Graph + Entra token endpoint
  (`SERVICES`, see below). ``None`` when it is not available.

Each PowerShell endpoint reads and changes the shared `LabState` through the lab's
cmdlet engine (``hybridtrust.lab.cmdlets.invoke``) and has its own request counters and
fault plan::

    with start_lab(state) as lab:
        wsman = WSMan(**lab.exchange.wsman_kwargs())          # https + Basic, CA file
        with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
            PowerShell(pool).add_cmdlet("Get-AuthServer").invoke()
        lab.exchange.counters()      # {"http_requests": .., "wsman": {"Receive": ..}, "commands": {..}, ..}
        lab.exchange.faults.operation_timeout(times=1)
        lab.counters(); lab.reset_counters(); lab.latency(20)   # every endpoint and service at once

Extra services (the Graph engineer's place): ``SERVICES`` maps a name to a factory
``factory(state, latency_ms=...) -> LabService``; a `LabService` has ``describe() ->
dict`` (its entry in `Lab.describe()` and in the JSON line of ``python -m hybridtrust.lab
serve``) and ``stop()``. A factory that raises `ServiceUnavailable` (its module is not
there yet) is skipped.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol

from hybridtrust.lab.http import AuthPolicy, FaultPlan, LabHTTPServer, LabPKI
from hybridtrust.lab.psrp_server import ParsedCommand, PipelineError, PSRPShell, Runner
from hybridtrust.lab.state import LabState
from hybridtrust.lab.wsman import WSManService

log = logging.getLogger(__name__)

EndpointName = Literal["exchange", "sharepoint"]
# cmdlets.invoke's contract: (state, endpoint, pipeline of Invocations) -> output objects / CmdletErrors.
InvokeFunction = Callable[[LabState, EndpointName, list[Any]], Iterable[Any]]

# The contract's verbs (hybridtrust.lab.cmdlets.MUTATING_VERBS), used until that module is importable.
_CONTRACT_MUTATING_VERBS = frozenset({"Set", "New", "Add", "Remove", "Register", "Enable", "Disable"})


# --------------------------------------------------------------------------- counters
class Counters:
    """Per-endpoint request counters, readable as a dict and resettable (thread-safe).

    ``http_requests``: every HTTP request (including NTLM handshake legs);
    ``wsman``: WS-Management actions by name (``Create``, ``Command``, ``Receive``, ...);
    ``pipelines``: PowerShell pipelines run; ``commands``: commands by cmdlet name
    (scripts count as ``"<script>"``); ``mutating``: commands whose verb changes state;
    ``received``: every command exactly as it arrived, oldest first, as
    ``{"cmdlet": name, "parameters": {name: value}, "script": bool}`` with the parameters
    as psrpcore bound them (a switch is ``True``; a script's text is its ``cmdlet``).
    That log is how a test proves a hostile profile value reached the server as one
    parameter value and nothing else ran (tests/reliability/test_injection.py); it keeps
    the last `RECEIVED_LIMIT` commands, so a long-running ``serve`` stays bounded.
    """

    RECEIVED_LIMIT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http = 0
        self._wsman: Counter[str] = Counter()
        self._commands: Counter[str] = Counter()
        self._pipelines = 0
        self._mutating = 0
        self._received: deque[dict[str, Any]] = deque(maxlen=self.RECEIVED_LIMIT)

    def http_request(self) -> None:
        with self._lock:
            self._http += 1

    def wsman_action(self, action: str) -> None:
        with self._lock:
            self._wsman[action] += 1

    def pipeline(self, statements: list[list[ParsedCommand]]) -> None:
        verbs = _mutating_verbs()
        with self._lock:
            self._pipelines += 1
            for statement in statements:
                for command in statement:
                    name = "<script>" if command.is_script else command.name
                    self._commands[name] += 1
                    self._received.append(
                        {
                            "cmdlet": command.name,
                            "parameters": {key: _plain(value) for key, value in command.parameters.items()},
                            "script": command.is_script,
                        }
                    )
                    if not command.is_script and command.name.split("-", 1)[0].capitalize() in verbs:
                        self._mutating += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "http_requests": self._http,
                "wsman": dict(self._wsman),
                "pipelines": self._pipelines,
                "commands": dict(self._commands),
                "mutating": self._mutating,
                "received": [dict(entry, parameters=dict(entry["parameters"])) for entry in self._received],
            }

    def reset(self) -> None:
        with self._lock:
            self._http = 0
            self._wsman.clear()
            self._commands.clear()
            self._pipelines = 0
            self._mutating = 0
            self._received.clear()


def _plain(value: Any) -> Any:
    """A bound parameter value as plain JSON data (``serve --counters`` writes the counters as JSON).

    Strings stay the exact text received (psrpcore's PSString is a str); lists and
    dictionaries keep their shape; any other object becomes its ``str``.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def _mutating_verbs() -> frozenset[str]:
    try:
        from hybridtrust.lab.cmdlets import MUTATING_VERBS
    except ImportError:
        return _CONTRACT_MUTATING_VERBS
    return frozenset(MUTATING_VERBS)


# --------------------------------------------------------------------------- the cmdlet engine seam
def _runner(state: LabState, endpoint: EndpointName, invoke: InvokeFunction | None) -> Runner:
    """One statement -> the cmdlet engine, as ``cmdlets.Invocation``s.

    The engine is imported on first use, so the servers start (and report a clear
    pipeline error) even in a checkout without it; a test may pass its own ``invoke``.
    """

    def run(statement: list[ParsedCommand]) -> Iterator[Any]:
        try:
            from hybridtrust.lab import cmdlets
        except ImportError as error:
            if invoke is None:
                raise PipelineError(
                    f"The lab's cmdlet engine (hybridtrust.lab.cmdlets) is not available: {error}",
                    error_id="LabCmdletEngineMissing",
                    category="NotInstalled",
                    exception_type="System.Management.Automation.CommandNotFoundException",
                ) from error
            commands: list[Any] = list(statement)  # same fields as cmdlets.Invocation
            yield from invoke(state, endpoint, commands)
            return
        invocations = [cmdlets.Invocation(c.name, dict(c.parameters), c.is_script) for c in statement]
        yield from (invoke or cmdlets.invoke)(state, endpoint, invocations)

    return run


# --------------------------------------------------------------------------- one endpoint
class LabPowerShellServer:
    """One lab PowerShell endpoint: an https listener (Basic) and an http one (NTLM/Negotiate).

    Both listeners share one WinRM service, so a shell is one runspace pool whichever way
    the client came in. Attributes: ``name``, ``path``, ``configuration_name``,
    ``username``/``password``, ``ca_file``, ``uri`` (https), ``http_uri``, ``faults``
    (`FaultPlan`); ``counters()`` / ``reset_counters()``; ``wsman_kwargs()``.
    """

    def __init__(
        self,
        name: EndpointName,
        state: LabState,
        *,
        path: str,
        configuration_name: str,
        pki: LabPKI,
        invoke: InvokeFunction | None = None,
        username: str | None = None,
        password: str | None = None,
        machine: str = "localhost",
        server_header: str = "Microsoft-HTTPAPI/2.0",
        latency_ms: int = 0,
    ) -> None:
        self.name = name
        self.state = state
        self.path = path.strip("/")
        self.configuration_name = configuration_name
        self.ca_file = pki.ca_file
        credentials = state.credentials.get(name, {})
        self.username = username or credentials.get("username") or f"LAB\\{name}-admin"
        self.password = password or credentials.get("password") or secrets.token_urlsafe(18)
        self.faults = FaultPlan()
        self.faults.latency(latency_ms)
        self._counters = Counters()
        runner = _runner(state, name, invoke)

        def new_shell(shell_id: str, creation_data: bytes, owner: str) -> PSRPShell:
            return PSRPShell(
                shell_id,
                creation_data,
                runner=runner,
                observer=self._counters.pipeline,
                name=name,
                # Looked up per object, so a cache turned on after the lab started serves too.
                serialized=lambda item: cache.serialized(item) if (cache := state.output_cache) else None,
            )

        self.wsman = WSManService(
            {configuration_name: new_shell}, machine=machine, on_action=self._counters.wsman_action, faults=self.faults
        )
        common: dict[str, Any] = {
            "path": self.path,
            "app": self.wsman,
            "faults": self.faults,
            "server_header": server_header,
            "on_request": self._counters.http_request,
        }
        self._https = LabHTTPServer(
            auth=AuthPolicy(self.username, self.password, basic=True, negotiate=True),
            tls=pki,
            name=f"{name}-https",
            **common,
        )
        try:
            self._http = LabHTTPServer(
                auth=AuthPolicy(self.username, self.password, basic=False, negotiate=True),
                name=f"{name}-http",
                **common,
            )
        except BaseException:
            self._https.server_close()
            raise
        self._https.start()
        self._http.start()
        self._stopped = False

    @property
    def https_port(self) -> int:
        return self._https.port

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def uri(self) -> str:
        return self._https.uri

    @property
    def http_uri(self) -> str:
        return self._http.uri

    def counters(self) -> dict[str, Any]:
        return self._counters.snapshot()

    def reset_counters(self) -> None:
        self._counters.reset()

    def wsman_kwargs(self, transport: Literal["https", "http"] = "https", **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``pypsrp.wsman.WSMan`` (or ``pypsrp.client.Client``).

        https: Basic, validated against the lab CA file. http: NTLM with message
        encryption (``encryption="always"``; ``"auto"`` does the same over http).
        """
        kwargs: dict[str, Any] = {
            "server": "127.0.0.1",
            "path": self.path,
            "username": self.username,
            "password": self.password,
        }
        if transport == "https":
            kwargs.update(port=self.https_port, ssl=True, auth="basic", cert_validation=self.ca_file)
        else:
            kwargs.update(port=self.http_port, ssl=False, auth="ntlm", encryption="always")
        kwargs.update(overrides)
        return kwargs

    def describe(self) -> dict[str, Any]:
        """This endpoint's entry in the JSON line of ``python -m hybridtrust.lab serve``."""
        return {
            "uri": self.uri,
            "username": self.username,
            "password": self.password,
            "ca_file": self.ca_file,
            "http_uri": self.http_uri,
            "configuration_name": self.configuration_name,
        }

    def stop(self) -> None:
        """Stop both listeners and close every shell; frees the ports. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.wsman.close()  # wakes blocked Receives first, so connection threads can finish
        self._https.stop()
        self._http.stop()


# --------------------------------------------------------------------------- extra services
class LabService(Protocol):
    """Another lab server started with the PowerShell endpoints (the Graph + token endpoint)."""

    def describe(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class ServiceUnavailable(Exception):
    """A registered service cannot start in this checkout (its module is missing)."""


ServiceFactory = Callable[..., LabService]


def _graph_service(state: LabState, *, latency_ms: int = 0) -> LabService:
    try:
        from hybridtrust.lab.graph_server import GraphLabServer
    except ImportError as error:
        raise ServiceUnavailable(f"hybridtrust.lab.graph_server: {error}") from error
    return GraphLabServer(state, latency_ms=latency_ms).start()


# name -> factory(state, latency_ms=...) -> LabService. The Graph endpoint is "graph".
SERVICES: dict[str, ServiceFactory] = {"graph": _graph_service}


# --------------------------------------------------------------------------- the lab
class Lab:
    """A running lab: ``exchange``, ``sharepoint``, ``graph`` (or None), the shared ``state``."""

    def __init__(
        self,
        state: LabState,
        pki: LabPKI,
        exchange: LabPowerShellServer,
        sharepoint: LabPowerShellServer,
        services: dict[str, LabService],
    ) -> None:
        self.state = state
        self.pki = pki
        self.exchange = exchange
        self.sharepoint = sharepoint
        self.services = services
        self.graph: Any = services.get("graph")
        self._stopped = False
        # A fixture that forgets stop() must not leave listeners or key files behind.
        atexit.register(self.stop)

    @property
    def endpoints(self) -> dict[str, LabPowerShellServer]:
        return {"exchange": self.exchange, "sharepoint": self.sharepoint}

    @property
    def ca_file(self) -> str:
        """The CA of the PowerShell endpoints (the Graph endpoint reports its own in describe())."""
        return self.pki.ca_file

    def describe(self) -> dict[str, Any]:
        """Everything a client needs: the JSON line of ``python -m hybridtrust.lab serve``."""
        description: dict[str, Any] = {name: endpoint.describe() for name, endpoint in self.endpoints.items()}
        for name, service in self.services.items():
            description[name] = service.describe()
        return description

    def counters(self) -> dict[str, dict[str, Any]]:
        """Every endpoint's counters by name; a service's too when it keeps ``counters``."""
        result: dict[str, dict[str, Any]] = {name: endpoint.counters() for name, endpoint in self.endpoints.items()}
        for name, service in self.services.items():
            counters = getattr(service, "counters", None)
            if counters is not None:
                result[name] = counters() if callable(counters) else counters
        return result

    def reset_counters(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.reset_counters()
        for service in self.services.values():
            reset = getattr(service, "reset_counters", None)
            if callable(reset):
                reset()

    def latency(self, ms: int) -> None:
        """Add ``ms`` to every request of every endpoint and service (0 removes it)."""
        for endpoint in self.endpoints.values():
            endpoint.faults.latency(ms)
        for service in self.services.values():
            if hasattr(service, "latency_ms"):
                service.latency_ms = ms  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop every endpoint and service and remove the TLS files. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        for name, service in self.services.items():
            try:
                service.stop()
            except Exception:
                log.exception("stopping lab service %s", name)
        self.exchange.stop()
        self.sharepoint.stop()
        self.pki.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_lab(
    state: LabState | None = None,
    *,
    now: datetime | None = None,
    invoke: InvokeFunction | None = None,
    latency_ms: int = 0,
    services: Iterable[str] | None = None,
) -> Lab:
    """Start the lab on 127.0.0.1 and free ports; use as a context manager or call ``stop()``.

    ``state``: the organization (default: ``hybridtrust.lab.contoso.flawed_contoso(now)``).
    ``invoke``: the cmdlet engine (default ``hybridtrust.lab.cmdlets.invoke``; tests may pass
    a fake taking ``(state, endpoint, commands)`` where commands have ``name``,
    ``parameters`` and ``is_script``). ``latency_ms``: added to every request of every
    endpoint. ``services``: which `SERVICES` to start (default: all registered).
    """
    if state is None:
        from hybridtrust.lab.contoso import flawed_contoso

        state = flawed_contoso(now or datetime.now(UTC))
    pki = LabPKI()
    started: list[Any] = []
    try:
        exchange = LabPowerShellServer(
            "exchange",
            state,
            path="PowerShell",
            configuration_name="Microsoft.Exchange",
            pki=pki,
            invoke=invoke,
            machine=_exchange_machine(state),
            server_header="Microsoft-IIS/10.0",
            latency_ms=latency_ms,
        )
        started.append(exchange)
        sharepoint = LabPowerShellServer(
            "sharepoint",
            state,
            path="wsman",
            configuration_name="Microsoft.PowerShell",
            pki=pki,
            invoke=invoke,
            latency_ms=latency_ms,
        )
        started.append(sharepoint)
        running: dict[str, LabService] = {}
        for name in SERVICES if services is None else services:
            try:
                running[name] = SERVICES[name](state, latency_ms=latency_ms)
            except ServiceUnavailable as error:
                log.warning("lab service %s is not available: %s", name, error)
                continue
            started.append(running[name])
    except BaseException:
        for server in reversed(started):
            server.stop()
        pki.close()
        raise
    return Lab(state, pki, exchange, sharepoint, running)


def _exchange_machine(state: LabState) -> str:
    """The name WinRM faults carry in Machine=: the first Exchange server's FQDN, as a real one would."""
    with state.lock:
        servers = state.exchange.get("ExchangeServer") or []
        first = servers[0] if servers else {}
    return str(first.get("Fqdn") or first.get("Name") or "localhost")


__all__ = [
    "SERVICES",
    "Counters",
    "InvokeFunction",
    "Lab",
    "LabPowerShellServer",
    "LabService",
    "ServiceUnavailable",
    "start_lab",
]
