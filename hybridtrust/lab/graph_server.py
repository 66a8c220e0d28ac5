"""The lab's Microsoft Graph v1.0 and Entra ID token endpoint, on 127.0.0.1 over https.

The suite's live Entra source uses unmodified azure-identity and msgraph-sdk; this
server is what they talk to in the lab, so it has to behave the way those clients
expect Entra ID and Graph to behave, including the unpleasant parts:

* OpenID discovery where MSAL looks for it with a custom authority and
  ``disable_instance_discovery=True``: ``GET /{tenant}/v2.0/.well-known/openid-configuration``
  (MSAL's ``tenant_discovery``), then ``POST /{tenant}/oauth2/v2.0/token``.
  azure-identity's async credentials skip discovery and post to the token
  endpoint directly. ``/common/discovery/instance`` answers too, but MSAL only
  asks it when instance discovery is on, and then it asks login.microsoftonline.com,
  never a custom host: that is why the lab must be used with
  ``disable_instance_discovery=True``.
* client_credentials with a client secret or a client assertion, verified
  against the certificate registered for the client (RS256 + ``x5t`` from MSAL,
  PS256 + ``x5t#S256`` from azure-identity's async client), with Entra's error
  codes (AADSTS7000215, AADSTS700016, AADSTS90002, AADSTS700027, ...).
* Graph's directory semantics: ``key`` of keyCredentials only on a single-object
  GET whose ``$select`` names keyCredentials; PATCH replaces whole lists; paging
  with absolute ``@odata.nextLink``; ODataError bodies; 401/403/404/429/5xx.

Per-endpoint permissions follow Graph's documented application permissions:
reading /organization needs Organization.Read.All (or Directory.Read.All),
/domains needs Domain.Read.All (or Directory.Read.All), service principals and
applications need Application.Read.All; PATCH needs Application.ReadWrite.All.
An audit app with only Application.Read.All therefore gets 403 on /organization
in the lab exactly as it would in Entra ID.

The world lives in a shared `LabState` (``state.tenants``); every read holds
``state.lock`` and every PATCH goes through ``state.changing()`` so the PSRP lab
server and this one can share it across threads.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import copy
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hybridtrust.lab import graph_jwt
from hybridtrust.lab.graph_odata import (
    APPLICATION,
    DOMAIN,
    ORGANIZATION,
    SERVICE_PRINCIPAL,
    EntityType,
    GraphRequestError,
    context_url,
    decode_skiptoken,
    next_link,
    odata_error_body,
    parse_filter,
    parse_select,
    parse_top,
    project,
)
from hybridtrust.lab.graph_tls import LabTls, create_lab_tls
from hybridtrust.lab.state import LabState

logger = logging.getLogger(__name__)

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Resource identifiers a Graph access token may be requested for: every cloud's
# Graph host (profiles for sovereign clouds point at the lab too) and Graph's appId.
# The lab's own origin is added per server.
GRAPH_RESOURCES = frozenset(
    {
        "https://graph.microsoft.com",
        "https://graph.microsoft.us",
        "https://dod-graph.microsoft.us",
        "https://microsoftgraph.chinacloudapi.cn",
        GRAPH_APP_ID,
    }
)
CLOCK_SKEW_S = 300

READ_PERMISSIONS: dict[str, frozenset[str]] = {
    "organization": frozenset(
        {"Organization.Read.All", "Organization.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
    ),
    "domains": frozenset({"Domain.Read.All", "Domain.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}),
    "servicePrincipals": frozenset(
        {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
    ),
    "applications": frozenset(
        {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
    ),
}
WRITE_PERMISSIONS: dict[str, frozenset[str]] = {
    "servicePrincipals": frozenset({"Application.ReadWrite.All", "Directory.ReadWrite.All"}),
    "applications": frozenset({"Application.ReadWrite.All", "Directory.ReadWrite.All"}),
}
ENTITY_TYPES: dict[str, EntityType] = {
    entity.entity_set: entity for entity in (ORGANIZATION, DOMAIN, SERVICE_PRINCIPAL, APPLICATION)
}
# Query options the lab implements; any other $-option is refused, not ignored.
SUPPORTED_QUERY_OPTIONS = frozenset({"$select", "$filter", "$top", "$skiptoken"})

# Only the v2.0 endpoints MSAL and azure-identity use; v1 discovery would advertise a
# resource= token endpoint the lab does not implement.
_LOGIN_GET_ROUTES = frozenset({"v2.0/.well-known/openid-configuration", "discovery/v2.0/keys", "discovery/keys"})
# STS metadata documents an AuthServer's AuthMetadataUrl names (evoSTS, ACS); served for --connectivity.
_METADATA_ROUTES = frozenset({"FederationMetadata/2007-06/FederationMetadata.xml", "metadata/json/1"})
_GRAPH_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def _now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _graph_datetime(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- counters and faults -------------------------------------------------------------


class RequestCounters:
    """Requests received, per endpoint template ("GET /v1.0/servicePrincipals/{id}") and per tenant.

    Every request is counted, including those answered with an injected fault, so
    a test sees the retries a client made.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()
        self._by_tenant_endpoint: dict[str, Counter[str]] = {}

    def record(self, endpoint: str, tenant_id: str | None) -> None:
        tenant = tenant_id or "<unknown>"
        with self._lock:
            self._by_endpoint[endpoint] += 1
            self._by_tenant[tenant] += 1
            self._by_tenant_endpoint.setdefault(tenant, Counter())[endpoint] += 1

    def reset(self) -> None:
        with self._lock:
            self._by_endpoint.clear()
            self._by_tenant.clear()
            self._by_tenant_endpoint.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._by_endpoint.values()),
                "by_endpoint": dict(self._by_endpoint),
                "by_tenant": dict(self._by_tenant),
                "by_tenant_endpoint": {tenant: dict(counts) for tenant, counts in self._by_tenant_endpoint.items()},
            }


FaultTarget = Literal["graph", "token", "all"]


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    target: FaultTarget
    endpoint: str | None
    tenant_id: str | None

    def matches(self, kind: str, endpoint: str, tenant_id: str | None) -> bool:
        if self.target != "all" and self.target != kind:
            return False
        if self.endpoint is not None and self.endpoint not in endpoint:
            return False
        return self.tenant_id is None or self.tenant_id == tenant_id


class GraphFaults:
    """Faults injected on demand: the next N matching requests get 429 or a 5xx.

    ``endpoint`` is a substring of the endpoint template ("servicePrincipals",
    "PATCH "), ``tenant_id`` limits the fault to one tenant, ``target`` chooses
    Graph requests (default), token requests, or all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Fault] = []

    def throttle(
        self,
        count: int = 1,
        *,
        retry_after: int | None = 1,
        target: FaultTarget = "graph",
        endpoint: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        """429 Too Many Requests with ``Retry-After: <retry_after>`` (no header when None)."""
        self._add(_Fault(429, count, retry_after, target, endpoint, tenant_id))

    def fail(
        self,
        count: int = 1,
        *,
        status: int = 503,
        retry_after: int | None = None,
        target: FaultTarget = "graph",
        endpoint: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        """A server error (500, 502, 503, 504) for the next `count` matching requests."""
        if not 500 <= status <= 599:
            raise ValueError(f"status {status} is not a 5xx status")
        self._add(_Fault(status, count, retry_after, target, endpoint, tenant_id))

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(fault.remaining for fault in self._pending)

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._pending.append(fault)

    def take(self, kind: str, endpoint: str, tenant_id: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._pending:
                if fault.matches(kind, endpoint, tenant_id):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._pending.remove(fault)
                    return fault
        return None


_FAULT_CODES = {
    429: ("TooManyRequests", "Too many requests."),
    500: ("generalException", "An unexpected error occurred."),
    502: ("BadGateway", "Bad gateway."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry."),
    504: ("UnknownError", "Gateway timeout."),
}


# -- the token endpoint's errors -----------------------------------------------------


class EntraError(Exception):
    """An Entra ID token endpoint error (error, AADSTS code and description, HTTP status)."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def body(self, trace_id: str, correlation_id: str) -> dict[str, Any]:
        timestamp = _now_utc().strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.description} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {timestamp}"
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }


def _unknown_tenant(tenant: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing in "
        "to the correct cloud. Check with your subscription administrator, this may happen if there are no "
        "active subscriptions for the tenant.",
    )


@dataclass(frozen=True)
class _Caller:
    tenant_id: str
    app_id: str
    roles: frozenset[str]


@dataclass
class _Request:
    handler: BaseHTTPRequestHandler
    method: str
    path: str  # percent-decoded
    query: list[tuple[str, str]]
    body: bytes
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def client_request_id(self) -> str:
        return self.handler.headers.get("client-request-id") or self.request_id

    def header(self, name: str) -> str | None:
        return self.handler.headers.get(name)


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(
    status: int, document: Any, *, content_type: str = "application/json; charset=utf-8", **headers: str
) -> _Response:
    return _Response(status, json.dumps(document).encode("utf-8"), content_type, dict(headers))


# -- the HTTP plumbing ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDKs pool connections
    server_version = "hybridtrust-lab-graph"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection ends its thread after this long
    server: _LabHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        # The request line carries no secret (credentials travel in bodies and headers).
        logger.debug("graph lab: " + format, *args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        request = _Request(
            handler=self,
            method=self.command,
            path=unquote(split.path),
            query=parse_qsl(split.query, keep_blank_values=True),
            body=body,
        )
        try:
            response = self.server.lab.handle(request)
        except Exception:  # a bug in the lab must not look like a hung server
            logger.exception("graph lab: unhandled error for %s %s", self.command, split.path)
            response = _json_response(
                500,
                odata_error_body(
                    "generalException",
                    "The lab Graph endpoint failed; see its log.",
                    request_id=request.request_id,
                    client_request_id=request.client_request_id,
                ),
            )
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle


class _LabHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], lab: GraphLabServer, context: ssl.SSLContext) -> None:
        self.lab = lab
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a slow
        # or broken client never stalls the accept loop.
        request.settimeout(10)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            logger.debug("graph lab: TLS handshake with %s failed: %s", client_address, error)
            return
        with self.connections_lock:
            self.connections.add(connection)
        try:
            super().finish_request(connection, client_address)
        except (ssl.SSLError, OSError, ConnectionError) as error:
            logger.debug("graph lab: connection from %s ended: %s", client_address, error)
        finally:
            with self.connections_lock:
                self.connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


# -- the server ----------------------------------------------------------------------


class GraphLabServer:
    """Graph v1.0 + Entra ID token endpoint for one `LabState`.

    Use as a context manager, or ``start()`` / ``stop()``. While running:
    ``authority`` ("https://127.0.0.1:PORT", for azure-identity's ``authority=``),
    ``base_url`` ("https://127.0.0.1:PORT/v1.0"), ``ca_file`` (PEM of the lab CA),
    ``counters`` / ``reset_counters()``, ``faults``, and the settable
    ``latency_ms`` and ``page_size``.
    """

    def __init__(
        self,
        state: LabState,
        *,
        latency_ms: int = 0,
        page_size: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime_s: int = 3599,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the lab Graph endpoint listens on loopback only, not {host}")
        self.state = state
        self.latency_ms = latency_ms
        self.page_size = page_size
        self.token_lifetime_s = token_lifetime_s
        self.faults = GraphFaults()
        self._counters = RequestCounters()
        self._host = host
        self._requested_port = port
        self._tls: LabTls | None = None
        self._httpd: _LabHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> GraphLabServer:
        if self._httpd is not None:
            return self
        self._tls = create_lab_tls(self._host)
        try:
            self._httpd = _LabHTTPServer((self._host, self._requested_port), self, self._tls.server_context())
        except BaseException:
            self._tls.cleanup()
            self._tls = None
            raise
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="graph-lab", daemon=True
        )
        self._thread.start()
        # A test that forgets stop() must not leave a listener or key files behind.
        atexit.register(self.stop)
        logger.info("graph lab listening on %s", self.authority)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.close_connections()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tls is not None:
            self._tls.cleanup()
            self._tls = None
        atexit.unregister(self.stop)

    def __enter__(self) -> GraphLabServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # -- addresses -----------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the lab Graph endpoint is not running")
        return int(self._httpd.server_address[1])

    @property
    def authority(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.authority}/v1.0"

    @property
    def graph_scope(self) -> str:
        """The scope a client asks for: the lab's Graph origin + /.default."""
        return f"{self.authority}/.default"

    @property
    def ca_file(self) -> Path:
        if self._tls is None:
            raise RuntimeError("the lab Graph endpoint is not running")
        return self._tls.ca_file

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting the lab CA (for httpx.AsyncClient(verify=...))."""
        if self._tls is None:
            raise RuntimeError("the lab Graph endpoint is not running")
        return self._tls.client_context()

    def token_endpoint(self, tenant_id: str) -> str:
        return f"{self.authority}/{tenant_id}/oauth2/v2.0/token"

    # -- counters ------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, Any]:
        """{"total", "by_endpoint": {"GET /v1.0/organization": n}, "by_tenant", "by_tenant_endpoint"}."""
        return self._counters.snapshot()

    def reset_counters(self) -> None:
        self._counters.reset()

    def graph_requests(self, tenant_id: str | None = None) -> int:
        """How many Graph (not token/discovery) requests arrived, for one tenant or all."""
        snapshot = self._counters.snapshot()
        counts = snapshot["by_endpoint"] if tenant_id is None else snapshot["by_tenant_endpoint"].get(tenant_id, {})
        return sum(count for endpoint, count in counts.items() if " /v1.0" in endpoint)

    # -- description for `python -m hybridtrust.lab serve` ---------------------------
    def describe(self) -> dict[str, Any]:
        """What a client needs to connect: authority, base_url, ca_file, tenants and their apps.

        The secrets here are the lab's own throw-away values, printed so a person can
        run the suite against the lab; no real credential ever lives in a lab state.
        """
        tenants: dict[str, Any] = {}
        with self.state.lock:
            for tenant_id, tenant in self.state.tenants.items():
                apps: dict[str, Any] = {}
                for client in tenant.get("clients", []):
                    permissions = set(client.get("permissions") or [])
                    role = "read_write" if permissions & WRITE_PERMISSIONS["servicePrincipals"] else "read_only"
                    apps.setdefault(
                        role,
                        {
                            "client_id": client.get("appId"),
                            "client_secret": client.get("secret"),
                            "certificate_file": self._client_certificate_file(client),
                            "display_name": client.get("displayName"),
                            "permissions": sorted(permissions),
                        },
                    )
                tenants[tenant_id] = apps
        return {
            "authority": self.authority,
            "base_url": self.base_url,
            "scope": self.graph_scope,
            "ca_file": str(self.ca_file),
            "tenant_ids": list(tenants),
            "tenants": tenants,
        }

    def _client_certificate_file(self, client: Mapping[str, Any]) -> str | None:
        """A PEM (key + certificate) for CertificateCredential, in the lab's private directory."""
        key_pem = client.get("certificate_private_key")
        certificate = client.get("certificate")
        if not key_pem or not certificate or self._tls is None:
            return None
        der = base64.b64decode(certificate)
        pem = str(key_pem).encode() + x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        folder = self._tls.directory / "clients"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{client.get('appId')}.pem"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        return str(path)

    # -- tokens --------------------------------------------------------------------
    def _graph_resources(self) -> frozenset[str]:
        return GRAPH_RESOURCES | {self.authority, f"https://{self._host}"}

    def mint_access_token(
        self,
        tenant_id: str,
        app_id: str,
        *,
        roles: list[str] | None = None,
        lifetime_s: int | None = None,
        resource: str = "https://graph.microsoft.com",
        credential_type: str = "1",
    ) -> str:
        """An access token as the token endpoint issues it (tests use it for expired or foreign tokens)."""
        if self._tls is None:
            raise RuntimeError("the lab Graph endpoint is not running")
        now = int(time.time())
        lifetime = self.token_lifetime_s if lifetime_s is None else lifetime_s
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant_id}/{app_id}"))
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": app_id,
            "appidacr": credential_type,
            "idp": f"https://sts.windows.net/{tenant_id}/",
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": tenant_id,
            "uti": graph_jwt.b64url_encode(uuid.uuid4().bytes),
            "ver": "1.0",
        }
        if roles:
            claims["roles"] = sorted(roles)
        header = {"x5t": self._tls.signing_kid, "kid": self._tls.signing_kid}
        return graph_jwt.sign_rs256(header, claims, self._tls.signing_key)

    # -- dispatch ------------------------------------------------------------------
    def handle(self, request: _Request) -> _Response:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if request.path == "/v1.0" or request.path.startswith("/v1.0/"):
            return self._handle_graph(request)
        return self._handle_login(request)

    # ================================================================================
    # Entra ID: discovery and token endpoint
    # ================================================================================
    def _handle_login(self, request: _Request) -> _Response:
        segments = [segment for segment in request.path.split("/") if segment]
        tenant_segment = segments[0] if segments else ""
        route = "/".join(segments[1:])
        if segments[:3] == ["common", "discovery", "instance"]:
            endpoint = "GET /common/discovery/instance"
        elif route in _METADATA_ROUTES or route in _LOGIN_GET_ROUTES:
            endpoint = f"GET /{{tenant}}/{route}"
        elif route == "oauth2/v2.0/token":
            endpoint = "POST /{tenant}/oauth2/v2.0/token"
        else:
            endpoint = f"{request.method} <unknown>"
        tenant_id = self._resolve_tenant(tenant_segment) or tenant_segment or None
        self._counters.record(endpoint, tenant_id)
        trace_id = request.request_id
        correlation_id = request.header("client-request-id") or str(uuid.uuid4())
        fault = self.faults.take("token", endpoint, tenant_id)
        if fault is not None:
            # Entra's token service answers throttling and outages in its own error shape.
            transient = EntraError(
                fault.status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
            )
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return _json_response(fault.status, transient.body(trace_id, correlation_id), **headers)
        expected_method = endpoint.split(" ", 1)[0]
        if endpoint.endswith("<unknown>"):
            return _json_response(404, {"error": "not_found", "error_description": f"No such endpoint: {request.path}"})
        if request.method != expected_method:
            return _json_response(
                405, {"error": "invalid_request", "error_description": f"{request.method} is not allowed here."}
            )
        try:
            if endpoint == "GET /common/discovery/instance":
                return self._instance_discovery(request)
            if route in _METADATA_ROUTES:
                return self._metadata_document(tenant_segment, route)
            if endpoint.endswith("openid-configuration"):
                return self._openid_configuration(tenant_segment)
            if endpoint.endswith("keys"):
                return self._keys()
            return self._token(request, tenant_segment)
        except EntraError as error:
            return _json_response(
                error.status,
                error.body(trace_id, correlation_id),
                **{"Cache-Control": "no-store, no-cache", "Pragma": "no-cache", "x-ms-request-id": trace_id},
            )

    def _metadata_document(self, segment: str, route: str) -> _Response:
        """The STS metadata an AuthServer reads (S0's AuthMetadataUrl, S4's ACS metadata endpoint).

        evoSTS publishes WS-Federation metadata whose entityID names the tenant; ACS publishes
        JSON whose realm is the tenant id. Both carry the signing certificates the tenant's
        token service uses now (``stsSigningCertificates`` in the lab state).
        """
        tenant_id = self._resolve_tenant(segment)
        if tenant_id is None:
            raise EntraError(400, "invalid_tenant", 90002, f"Tenant '{segment}' not found.")
        with self.state.lock:
            keys = list(self.state.tenants[tenant_id].get("stsSigningCertificates") or [])
        if route == "metadata/json/1":
            acs = "00000001-0000-0000-c000-000000000000"
            document = {
                "version": "1.0",
                "realm": tenant_id,
                "serviceName": "Windows Azure Access Control Service",
                "issuer": f"{acs}@{tenant_id}",
                "allowedAudiences": [f"{acs}/accounts.accesscontrol.windows.net@{tenant_id}"],
                "keys": [
                    {"usage": "signing", "keyValue": {"type": "x509Certificate", "value": key, "keyName": ""}}
                    for key in keys
                ],
                "endpoints": [
                    {
                        "location": f"https://accounts.accesscontrol.windows.net/{tenant_id}/tokens/OAuth/2",
                        "protocol": "OAuth2",
                        "usage": "issuance",
                    }
                ],
            }
            return _json_response(200, document)
        certificates = "".join(
            '<KeyDescriptor use="signing"><KeyInfo xmlns="http://www.w3.org/2000/09/xmldsig#"><X509Data>'
            f"<X509Certificate>{key}</X509Certificate></X509Data></KeyInfo></KeyDescriptor>"
            for key in keys
        )
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EntityDescriptor ID="_{uuid.uuid4()}" entityID="https://sts.windows.net/{tenant_id}/" '
            'xmlns="urn:oasis:names:tc:SAML:2.0:metadata">'
            '<RoleDescriptor xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:fed="http://docs.oasis-open.org/wsfed/federation/200706" xsi:type="fed:SecurityTokenServiceType" '
            'protocolSupportEnumeration="http://docs.oasis-open.org/wsfed/federation/200706">'
            f"{certificates}</RoleDescriptor></EntityDescriptor>"
        )
        return _Response(200, xml.encode("utf-8"), "application/xml; charset=utf-8")

    def _resolve_tenant(self, segment: str) -> str | None:
        """A tenant id from the path: the id itself, or one of the tenant's domain names."""
        if not segment:
            return None
        with self.state.lock:
            tenants = self.state.tenants
            for tenant_id in tenants:
                if tenant_id.lower() == segment.lower():
                    return tenant_id
            for tenant_id, tenant in tenants.items():
                for domain in tenant.get("domains", []):
                    if str(domain.get("id", "")).lower() == segment.lower():
                        return tenant_id
        return None

    def _instance_discovery(self, request: _Request) -> _Response:
        parameters = dict(request.query)
        authorize = parameters.get("authorization_endpoint", "")
        tenant = "common"
        parts = urlsplit(authorize).path.split("/")
        if len(parts) > 1 and parts[1]:
            tenant = parts[1]
        host = f"{self._host}:{self.port}"
        return _json_response(
            200,
            {
                "tenant_discovery_endpoint": f"{self.authority}/{tenant}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            },
        )

    def _openid_configuration(self, tenant_segment: str) -> _Response:
        if tenant_segment.lower() in ("common", "organizations", "consumers"):
            tenant_id, issuer_tenant = tenant_segment, "{tenantid}"
        else:
            resolved = self._resolve_tenant(tenant_segment)
            if resolved is None:
                raise _unknown_tenant(tenant_segment)
            tenant_id = issuer_tenant = resolved
        base = f"{self.authority}/{tenant_id}"
        document = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.authority}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "tid", "ver"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": f"{self._host}:{self.port}",
            "rbac_url": "https://pas.windows.net",
        }
        return _json_response(200, document)

    def _keys(self) -> _Response:
        assert self._tls is not None
        public_key = self._tls.signing_key.public_key()
        jwk = graph_jwt.rsa_public_jwk(public_key, self._tls.signing_kid, self._tls.signing_certificate_der)
        return _json_response(200, {"keys": [jwk]})

    def _token(self, request: _Request, tenant_segment: str) -> _Response:
        if tenant_segment.lower() in ("common", "organizations", "consumers"):
            raise EntraError(
                400,
                "invalid_request",
                50059,
                "No tenant-identifying information found in either the request or implied by any provided credentials.",
            )
        tenant_id = self._resolve_tenant(tenant_segment)
        if tenant_id is None:
            raise _unknown_tenant(tenant_segment)
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        basic_id, basic_secret = self._basic_credentials(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise EntraError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."
            )
        if grant_type != "client_credentials":
            raise EntraError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. The lab supports client_credentials.",
            )
        client_id = form.get("client_id") or basic_id
        if not client_id:
            raise EntraError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        with self.state.lock:
            tenant = copy.deepcopy(self.state.tenants[tenant_id])
        client = next(
            (item for item in tenant.get("clients", []) if str(item.get("appId", "")).lower() == client_id.lower()),
            None,
        )
        if client is None:
            raise EntraError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self._tenant_display_name(tenant, tenant_id)}'. This can happen if the application has not been "
                "installed by the administrator of the tenant or consented to by any user in the tenant. You may "
                "have sent your authentication request to the wrong tenant.",
            )
        secret = form.get("client_secret") or basic_secret
        assertion = form.get("client_assertion")
        if secret and assertion:
            raise EntraError(
                400,
                "invalid_request",
                90014,
                "Only one client credential may be presented: client_secret or client_assertion.",
            )
        if assertion:
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise EntraError(
                    400,
                    "invalid_request",
                    90014,
                    "The request body must contain the following parameter: 'client_assertion_type'.",
                )
            self._verify_assertion(assertion, client, tenant_segment, tenant_id)
            credential_type = "2"
        elif secret:
            expected = client.get("secret")
            # compare_digest: no timing oracle on the secret, even in the lab.
            if not expected or not hmac.compare_digest(str(expected).encode(), secret.encode()):
                raise EntraError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                    f"secret value, not the client secret ID, for a secret added to app '{client['appId']}'.",
                )
            credential_type = "1"
        else:
            raise EntraError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        resource = self._resource_from_scope(form.get("scope"), tenant, tenant_id)
        token = self.mint_access_token(
            tenant_id,
            str(client["appId"]),
            roles=list(client.get("permissions") or []),
            resource=resource,
            credential_type=credential_type,
        )
        return _json_response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime_s,
                "ext_expires_in": self.token_lifetime_s,
                "access_token": token,
            },
            **{"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
        )

    @staticmethod
    def _basic_credentials(request: _Request) -> tuple[str | None, str | None]:
        header = request.header("Authorization") or ""
        if not header.lower().startswith("basic "):
            return None, None
        try:
            decoded = base64.b64decode(header[6:].strip()).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, _, password = decoded.partition(":")
        return unquote(user), unquote(password)

    @staticmethod
    def _tenant_display_name(tenant: Mapping[str, Any], tenant_id: str) -> str:
        organization = tenant.get("organization")
        if isinstance(organization, list):
            organization = organization[0] if organization else {}
        if isinstance(organization, dict) and organization.get("displayName"):
            return str(organization["displayName"])
        return tenant_id

    def _resource_from_scope(self, scope: str | None, tenant: Mapping[str, Any], tenant_id: str) -> str:
        if not scope:
            raise EntraError(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."
            )
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise EntraError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
                "value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resource = scopes[0][: -len("/.default")].rstrip("/")
        if resource not in self._graph_resources():
            raise EntraError(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{self._tenant_display_name(tenant, tenant_id)}. This can happen if the application has not been "
                "installed by the administrator of the tenant or consented to by any user in the tenant. You might "
                "have sent your authentication request to the wrong tenant.",
            )
        return resource

    def _verify_assertion(self, assertion: str, client: Mapping[str, Any], tenant_segment: str, tenant_id: str) -> None:
        try:
            token = graph_jwt.decode(assertion)
        except graph_jwt.JwtError as error:
            raise EntraError(400, "invalid_request", 50027, f"JWT token is invalid or malformed ({error}).") from None
        algorithm = token.header.get("alg")
        if algorithm not in graph_jwt.SUPPORTED_ASSERTION_ALGORITHMS:
            raise EntraError(
                401,
                "invalid_client",
                5002738,
                f"Invalid JWT token. '{algorithm}' is not a supported signature algorithm. Supported algorithms "
                f"are: '{', '.join(graph_jwt.SUPPORTED_ASSERTION_ALGORITHMS)}'.",
            )
        certificates = self._client_certificates(client)
        presented_sha1 = token.header.get("x5t")
        presented_sha256 = token.header.get("x5t#S256")
        if not presented_sha1 and not presented_sha256:
            raise EntraError(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The key was not found: the assertion "
                "header carries neither x5t nor x5t#S256.]",
            )
        presented = presented_sha256 or presented_sha1
        certificate = None
        for candidate in certificates:
            der = candidate.public_bytes(_DER)
            if presented_sha256 and presented_sha256.rstrip("=") == graph_jwt.b64url_encode(
                hashlib.sha256(der).digest()
            ):
                certificate = candidate
                break
            if presented_sha1 and presented_sha1.rstrip("=") == graph_jwt.b64url_encode(
                hashlib.sha1(der, usedforsecurity=False).digest()
            ):
                certificate = candidate
                break
        try:
            presented_hex = graph_jwt.b64url_decode(str(presented)).hex().upper()
        except graph_jwt.JwtError:
            presented_hex = str(presented)
        app_id = client["appId"]
        if certificate is None:
            raise EntraError(
                401,
                "invalid_client",
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on "
                f"application. [Reason - The key was not found., Thumbprint of key used by client: "
                f"'{presented_hex}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see "
                f"configured keys for app Id '{app_id}'.]",
            )
        now = _now_utc()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise EntraError(
                401,
                "invalid_client",
                700027,
                f"Client assertion failed signature validation. [Reason - The key used is expired., Thumbprint of "
                f"key used by client: '{presented_hex}', Found key 'Start={_graph_datetime(certificate.not_valid_before_utc)}"
                f", End={_graph_datetime(certificate.not_valid_after_utc)}']",
            )
        if not graph_jwt.verify_signature(token, certificate.public_key()):
            raise EntraError(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The provided signature value did not "
                f"match the expected signature value., Thumbprint of key used by client: '{presented_hex}']",
            )
        claims = token.claims
        if str(claims.get("iss", "")).lower() != app_id.lower() or str(claims.get("sub", "")).lower() != app_id.lower():
            raise EntraError(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter. Review the "
                "documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/"
                "active-directory-certificate-credentials .",
            )
        audiences = claims.get("aud")
        audience_list = audiences if isinstance(audiences, list) else [audiences]
        # Entra accepts the v2.0 and the v1 token endpoint as audience, by tenant id or domain.
        expected = {
            f"{self.authority}/{segment}/oauth2/{version}token".lower()
            for segment in {tenant_segment, tenant_id}
            for version in ("v2.0/", "")
        }
        if not any(str(audience).lower() in expected for audience in audience_list):
            raise EntraError(
                401,
                "invalid_client",
                50013,
                f"Assertion audience claim does not match the required value. The audience in the assertion was "
                f"'{audiences}' and the expected audience is '{self.token_endpoint(tenant_id)}'.",
            )
        moment = time.time()
        expires = claims.get("exp")
        not_before = claims.get("nbf", claims.get("iat"))
        if (
            not isinstance(expires, int | float)
            or expires < moment - CLOCK_SKEW_S
            or (isinstance(not_before, int | float) and not_before > moment + CLOCK_SKEW_S)
        ):
            raise EntraError(
                401,
                "invalid_client",
                700024,
                f"Client assertion is not within its valid time range. Current time: {_graph_datetime(now)}, "
                f"assertion valid from {not_before}, expiry time of assertion {expires}.",
            )

    @staticmethod
    def _client_certificates(client: Mapping[str, Any]) -> list[x509.Certificate]:
        encoded = [client.get("certificate"), *(client.get("certificates") or [])]
        certificates = []
        for item in encoded:
            if not item:
                continue
            try:
                certificates.append(x509.load_der_x509_certificate(base64.b64decode(item)))
            except (ValueError, binascii.Error):
                logger.warning("graph lab: client %s has an unreadable certificate", client.get("appId"))
        return certificates

    # ================================================================================
    # Microsoft Graph v1.0
    # ================================================================================
    def _handle_graph(self, request: _Request) -> _Response:
        route, key = self._route(request.path)
        endpoint = f"{request.method} /v1.0/{route}" if route else f"{request.method} /v1.0/<unknown>"
        caller, auth_error = self._authenticate(request)
        tenant_id = caller.tenant_id if caller else None
        self._counters.record(endpoint, tenant_id)
        fault = self.faults.take("graph", endpoint, tenant_id)
        if fault is not None:
            return self._fault_response(fault, request)
        try:
            if auth_error is not None:
                raise auth_error
            assert caller is not None
            if not route:
                segment = request.path[len("/v1.0/") :].split("/")[0] or request.path
                raise GraphRequestError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
            entity_set = route.split("/")[0].split("(")[0]
            entity = ENTITY_TYPES[entity_set]
            single = route != entity_set
            if request.method == "GET":
                self._require(caller, READ_PERMISSIONS[entity_set])
                if single:
                    return self._get_one(request, caller, entity, route, key)
                return self._get_list(request, caller, entity)
            if request.method == "PATCH" and single and entity_set in WRITE_PERMISSIONS:
                self._require(caller, WRITE_PERMISSIONS[entity_set])
                return self._patch(request, caller, entity, route, key)
            raise GraphRequestError(
                405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
        except GraphRequestError as error:
            return _json_response(
                error.status,
                odata_error_body(
                    error.code,
                    error.message,
                    request_id=request.request_id,
                    client_request_id=request.client_request_id,
                    details=error.details,
                ),
                content_type=_GRAPH_CONTENT_TYPE,
                **self._graph_headers(request),
                **error.headers,
            )

    @staticmethod
    def _route(path: str) -> tuple[str | None, str | None]:
        """("servicePrincipals/{id}", "<id>") for a path, or (None, None) when the lab has no such resource."""
        rest = path[len("/v1.0/") :] if path.startswith("/v1.0/") else ""
        rest = rest.rstrip("/")
        for entity_set in ENTITY_TYPES:
            if rest == entity_set:
                return entity_set, None
            if rest.startswith(entity_set + "/") and "/" not in rest[len(entity_set) + 1 :]:
                return f"{entity_set}/{{id}}", rest[len(entity_set) + 1 :]
            if entity_set in ("servicePrincipals", "applications") and rest.startswith(f"{entity_set}(appId="):
                argument = rest[len(f"{entity_set}(appId=") :]
                if argument.endswith(")"):
                    argument = argument[:-1]
                    if len(argument) >= 2 and argument[0] == argument[-1] == "'":
                        return f"{entity_set}(appId='{{appId}}')", argument[1:-1]
        return None, None

    def _graph_headers(self, request: _Request) -> dict[str, str]:
        return {
            "request-id": request.request_id,
            "client-request-id": request.client_request_id,
            "x-ms-ags-diagnostic": json.dumps(
                {"ServerInfo": {"DataCenter": "Lab", "Slice": "E", "Ring": "0", "ScaleUnit": "000"}}
            ),
            "Strict-Transport-Security": "max-age=31536000",
            "Cache-Control": "no-cache",
        }

    def _fault_response(self, fault: _Fault, request: _Request) -> _Response:
        code, message = _FAULT_CODES.get(fault.status, ("UnknownError", "An error occurred."))
        headers = self._graph_headers(request)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return _json_response(
            fault.status,
            odata_error_body(code, message, request_id=request.request_id, client_request_id=request.client_request_id),
            content_type=_GRAPH_CONTENT_TYPE,
            **headers,
        )

    def _authenticate(self, request: _Request) -> tuple[_Caller | None, GraphRequestError | None]:
        challenge = {
            "WWW-Authenticate": (
                f'Bearer realm="", authorization_uri="{self.authority}/common/oauth2/authorize", '
                f'client_id="{GRAPH_APP_ID}"'
            )
        }

        def failure(message: str) -> tuple[None, GraphRequestError]:
            return None, GraphRequestError(401, "InvalidAuthenticationToken", message, headers=challenge)

        header = request.header("Authorization") or ""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return failure("Access token is empty.")
        try:
            token = graph_jwt.decode(value)
        except graph_jwt.JwtError:
            return failure("IDX14100: JWT is not well formed, there are no dots (.).")
        assert self._tls is not None
        if token.header.get("alg") != "RS256" or token.header.get("kid") != self._tls.signing_kid:
            return failure("Access token validation failure. Invalid signature.")
        if not graph_jwt.verify_signature(token, self._tls.signing_key.public_key()):
            return failure("Access token validation failure. Invalid signature.")
        claims = token.claims
        if claims.get("aud") not in self._graph_resources():
            return failure("Access token validation failure. Invalid audience.")
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or expires < time.time():
            return failure("Lifetime validation failed, the token is expired.")
        tenant_id = str(claims.get("tid", ""))
        with self.state.lock:
            known = tenant_id in self.state.tenants
        if not known or claims.get("iss") != f"https://sts.windows.net/{tenant_id}/":
            return failure("Access token validation failure. Invalid issuer or tenant.")
        roles = claims.get("roles") or []
        return _Caller(tenant_id, str(claims.get("appid", "")), frozenset(str(role) for role in roles)), None

    @staticmethod
    def _require(caller: _Caller, permissions: frozenset[str]) -> None:
        if not caller.roles & permissions:
            raise GraphRequestError(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )

    # -- reads ---------------------------------------------------------------------
    def _objects(self, tenant_id: str, entity: EntityType) -> list[dict[str, Any]]:
        """A private copy of the tenant's objects of one entity set (the lock is held only to copy)."""
        with self.state.lock:
            tenant = self.state.tenants.get(tenant_id, {})
            items = tenant.get(entity.entity_set, [] if entity is not ORGANIZATION else {})
            items = copy.deepcopy(items)
        if isinstance(items, dict):  # the state keeps the one organization object as an object
            items = [items] if items else []
        return [item for item in items if isinstance(item, dict)]

    @staticmethod
    def _query(request: _Request) -> dict[str, str]:
        options: dict[str, str] = {}
        for name, value in request.query:
            if not name.startswith("$"):
                continue  # Graph ignores unknown non-OData parameters
            if name not in SUPPORTED_QUERY_OPTIONS:
                raise GraphRequestError(
                    400,
                    "Request_UnsupportedQuery",
                    f"The query option '{name}' is not supported by the lab Graph endpoint.",
                )
            if name in options:
                raise GraphRequestError(
                    400, "BadRequest", f"Query option '{name}' was specified more than once, it must be specified once."
                )
            options[name] = value
        return options

    def _get_list(self, request: _Request, caller: _Caller, entity: EntityType) -> _Response:
        options = self._query(request)
        items = self._objects(caller.tenant_id, entity)
        predicate = parse_filter(options.get("$filter"), entity)
        select = parse_select(options.get("$select"), entity, items[0] if items else None)
        top = parse_top(options.get("$top"))
        offset = decode_skiptoken(options.get("$skiptoken"))
        if predicate is not None:
            items = [item for item in items if predicate(item)]
        size = top or self.page_size
        page = items[offset : offset + size]
        document: dict[str, Any] = {
            "@odata.context": context_url(self.base_url, entity.entity_set, select, entity=False)
        }
        if offset + size < len(items):
            document["@odata.nextLink"] = next_link(
                self.base_url, f"/{entity.entity_set}", request.query, offset + size
            )
        document["value"] = [project(item, select, keep_keys=False) for item in page]
        return _json_response(200, document, content_type=_GRAPH_CONTENT_TYPE, **self._graph_headers(request))

    def _find(self, items: list[dict[str, Any]], entity: EntityType, route: str, key: str | None) -> dict[str, Any]:
        assert key is not None
        by_app_id = "(appId=" in route
        if not by_app_id and entity in (SERVICE_PRINCIPAL, APPLICATION) and not _is_guid(key):
            raise GraphRequestError(400, "Request_BadRequest", f"Invalid object identifier '{key}'.")
        field_name = "appId" if by_app_id else "id"
        for item in items:
            if str(item.get(field_name, "")).lower() == key.lower():
                return item
        shown = f"appId={key}" if by_app_id else key
        raise GraphRequestError(
            404,
            "Request_ResourceNotFound",
            f"Resource '{shown}' does not exist or one of its queried reference-property objects are not present.",
        )

    def _get_one(
        self, request: _Request, caller: _Caller, entity: EntityType, route: str, key: str | None
    ) -> _Response:
        options = self._query(request)
        for name in ("$filter", "$top", "$skiptoken"):
            if name in options:
                raise GraphRequestError(
                    400, "BadRequest", f"The query option '{name}' is not allowed on a single object."
                )
        item = self._find(self._objects(caller.tenant_id, entity), entity, route, key)
        select = parse_select(options.get("$select"), entity, item)
        keep_keys = select is not None and "keyCredentials" in select
        document = {
            "@odata.context": context_url(self.base_url, entity.entity_set, select, entity=True),
            **project(item, select, keep_keys=keep_keys),
        }
        return _json_response(200, document, content_type=_GRAPH_CONTENT_TYPE, **self._graph_headers(request))

    # -- PATCH ---------------------------------------------------------------------
    def _patch(self, request: _Request, caller: _Caller, entity: EntityType, route: str, key: str | None) -> _Response:
        try:
            changes = json.loads(request.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            changes = None
        if not isinstance(changes, dict):
            raise GraphRequestError(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of "
                "valid JSON format.",
            )
        changes = {name: value for name, value in changes.items() if not name.startswith("@odata.")}
        with self.state.changing():
            objects = self.state.tenants.get(caller.tenant_id, {}).setdefault(entity.entity_set, [])
            target = self._find(objects, entity, route, key)
            updated = self._apply_changes(target, changes, entity, objects)
            target.clear()
            target.update(updated)
        return _Response(204, headers=self._graph_headers(request))

    def _apply_changes(
        self,
        current: Mapping[str, Any],
        changes: Mapping[str, Any],
        entity: EntityType,
        siblings: list[dict[str, Any]],
    ) -> dict[str, Any]:
        updated = copy.deepcopy(dict(current))
        for name, value in changes.items():
            if name not in entity.properties:
                raise GraphRequestError(
                    400,
                    "Request_BadRequest",
                    f"Property '{name}' does not exist as a declared property or extension property.",
                )
            if name not in entity.updatable:
                raise GraphRequestError(400, "Request_BadRequest", f"Property '{name}' is read-only and cannot be set.")
            if name == "keyCredentials":
                updated[name] = _normalise_key_credentials(value, entity)
            elif name in ("servicePrincipalNames", "replyUrls", "identifierUris", "tags", "alternativeNames"):
                updated[name] = _string_list(name, value, entity)
                if name == "servicePrincipalNames":
                    _check_unique_names(current, updated[name], siblings)
            elif isinstance(value, dict) and isinstance(updated.get(name), dict):
                # Complex values (web, api, info) merge as OData PATCH does; their lists are replaced.
                updated[name] = {**updated[name], **copy.deepcopy(value)}
            else:
                updated[name] = copy.deepcopy(value)
        if "replyUrls" in changes:
            for url in updated["replyUrls"]:
                if "://" not in url:
                    raise GraphRequestError(
                        400,
                        "Request_BadRequest",
                        f"Invalid value specified for property 'replyUrls' of resource '{entity.resource_name}'.",
                    )
        return updated


# -- PATCH validation helpers ---------------------------------------------------------

_DER = serialization.Encoding.DER
_KEY_CREDENTIAL_FIELDS = (
    "customKeyIdentifier",
    "displayName",
    "endDateTime",
    "key",
    "keyId",
    "startDateTime",
    "type",
    "usage",
)


def _string_list(name: str, value: Any, entity: EntityType) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise GraphRequestError(
            400,
            "Request_BadRequest",
            f"Invalid value specified for property '{name}' of resource '{entity.resource_name}'.",
        )
    return list(value)


def _check_unique_names(current: Mapping[str, Any], names: list[str], siblings: list[dict[str, Any]]) -> None:
    """Entra ID keeps servicePrincipalNames unique across a tenant; a PATCH adding a taken name fails."""
    existing = {str(name).lower() for name in current.get("servicePrincipalNames") or []}
    added = {name.lower() for name in names} - existing
    if not added:
        return
    for other in siblings:
        if other is current or other.get("id") == current.get("id"):
            continue
        if added & {str(name).lower() for name in other.get("servicePrincipalNames") or []}:
            raise GraphRequestError(
                400,
                "Request_BadRequest",
                "Another object with the same value for property servicePrincipalNames already exists.",
                details=[{"code": "ObjectConflict", "target": "servicePrincipalNames"}],
            )


def _invalid_key_credentials(entity: EntityType, detail: str) -> GraphRequestError:
    return GraphRequestError(
        400,
        "Request_BadRequest",
        f"Invalid value specified for property 'keyCredentials' of resource '{entity.resource_name}': {detail}",
    )


def _normalise_key_credentials(value: Any, entity: EntityType) -> list[dict[str, Any]]:
    """Validate a PATCHed keyCredentials list and fill what Graph derives from the certificate.

    Every credential must carry its ``key``: a PATCH replaces the whole list, so a
    fix that re-sends existing credentials without their keys (as a list GET
    returns them) would fail in Entra ID; the lab refuses it the same way.
    """
    if not isinstance(value, list):
        raise _invalid_key_credentials(entity, "a list is expected.")
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for credential in value:
        if not isinstance(credential, dict):
            raise _invalid_key_credentials(entity, "each credential is an object.")
        unknown = set(credential) - set(_KEY_CREDENTIAL_FIELDS) - {"@odata.type"}
        if unknown:
            raise _invalid_key_credentials(entity, f"unknown field(s) {', '.join(sorted(unknown))}.")
        kind = credential.get("type")
        usage = credential.get("usage")
        if kind not in ("AsymmetricX509Cert", "X509CertAndPassword", "Symmetric"):
            raise _invalid_key_credentials(entity, f"type {kind!r} is not AsymmetricX509Cert or Symmetric.")
        if usage not in ("Verify", "Sign"):
            raise _invalid_key_credentials(entity, f"usage {usage!r} is not Verify or Sign.")
        key_text = credential.get("key")
        if not key_text:
            raise _invalid_key_credentials(entity, "'key' is required for every credential in the list.")
        try:
            key_bytes = base64.b64decode(key_text, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _invalid_key_credentials(entity, "'key' is not base64.") from None
        certificate = None
        if kind != "Symmetric":
            try:
                certificate = (
                    x509.load_pem_x509_certificate(key_bytes)
                    if key_bytes.lstrip().startswith(b"-----BEGIN")
                    else x509.load_der_x509_certificate(key_bytes)
                )
            except ValueError:
                raise _invalid_key_credentials(entity, "'key' is not an X.509 certificate.") from None
        key_id = credential.get("keyId") or str(uuid.uuid4())
        if not _is_guid(str(key_id)):
            raise _invalid_key_credentials(entity, f"keyId {key_id!r} is not a GUID.")
        if key_id.lower() in seen:
            raise _invalid_key_credentials(entity, f"keyId {key_id} appears twice.")
        seen.add(key_id.lower())
        stored: dict[str, Any] = {name: credential.get(name) for name in _KEY_CREDENTIAL_FIELDS}
        stored["keyId"] = key_id
        if certificate is not None:
            der = certificate.public_bytes(_DER)
            stored["key"] = base64.b64encode(der).decode("ascii")
            # Graph defaults the identifier to the thumbprint (Edm.Binary: base64 of the SHA-1).
            if stored["customKeyIdentifier"] is None:
                digest = hashlib.sha1(der, usedforsecurity=False).digest()
                stored["customKeyIdentifier"] = base64.b64encode(digest).decode("ascii")
            if stored["displayName"] is None:
                stored["displayName"] = certificate.subject.rfc4514_string()
            if stored["startDateTime"] is None:
                stored["startDateTime"] = _graph_datetime(certificate.not_valid_before_utc)
            if stored["endDateTime"] is None:
                stored["endDateTime"] = _graph_datetime(certificate.not_valid_after_utc)
        result.append(stored)
    return result
