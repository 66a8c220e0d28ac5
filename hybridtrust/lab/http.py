"""The HTTP(S) side of the lab's WinRM endpoints: TLS, authentication, message encryption, faults.

What unmodified pypsrp clients meet here is what they meet in front of a real Exchange or
SharePoint server:

- https with a certificate from a CA made at start (`LabPKI`); clients trust it through
  ``cert_validation=<ca file>``, never by turning validation off.
- Basic over https, and NTLM or Negotiate(NTLM) over http with WinRM message encryption
  (``multipart/encrypted``, ``application/HTTP-SPNEGO-session-encrypted``). NTLM is
  connection-bound, as with HTTP.sys and IIS: the context lives with the TCP connection
  and an unauthenticated connection gets a 401 challenge.
- Plain SOAP over http after NTLM is refused with 401, as WinRM does with
  ``AllowUnencrypted=false`` (the familiar "credentials were rejected" symptom).
- Faults are injected per endpoint (`FaultPlan`): latency, refused connections, a
  connection reset in the middle of a Receive response, HTTP 500/401/403, WinRM's
  OperationTimeout on Receive, and stalls.

Only 127.0.0.1 is ever bound. Every connection thread is a daemon and `LabHTTPServer.stop`
closes the listening socket and every open connection, so nothing outlives the lab.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.utils
import functools
import hashlib
import hmac
import http.client
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# [MS-WSMV] 2.2.9.1 Encrypted Message Types: the MIME framing pypsrp's encryption.py speaks.
SPNEGO_ENCRYPTED = "application/HTTP-SPNEGO-session-encrypted"
MIME_BOUNDARY = "Encrypted Boundary"
SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"


# --------------------------------------------------------------------------- PKI
class LabPKI:
    """A CA and a loopback server certificate, made with `cryptography` when the lab starts.

    The CA certificate is written to `ca_file` (a private temporary directory), which is what
    clients pass as ``cert_validation`` / ``verify``. Every https listener of one lab (the
    WinRM endpoints and the Graph endpoint) can share one `LabPKI`, so one CA file trusts
    them all. EC keys keep start-up fast; the certificate names 127.0.0.1 and localhost.
    """

    def __init__(self, common_name: str = "hybridtrust lab CA", *, days: int = 30) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="hybridtrust-lab-tls-")
        directory = Path(self._directory.name)
        now = datetime.now(UTC)
        not_before, not_after = now - timedelta(hours=1), now + timedelta(days=days)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        self.ca_certificate_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.server_certificate_der = server_cert.public_bytes(serialization.Encoding.DER)
        self.ca_file = str(directory / "ca.pem")
        self._cert_file = directory / "server.pem"
        self._key_file = directory / "server.key"
        Path(self.ca_file).write_bytes(self.ca_certificate_pem)
        self._cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + self.ca_certificate_pem)
        self._key_file.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(self._key_file, 0o600)

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context serving the lab certificate (TLS 1.2 or newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert_file, self._key_file)
        return context

    def channel_binding(self) -> bytes:
        """RFC 5929 tls-server-end-point data: what pypsrp binds NTLM to over https (SHA-256 signed cert)."""
        return b"tls-server-end-point:" + hashlib.sha256(self.server_certificate_der).digest()

    def close(self) -> None:
        self._directory.cleanup()


# --------------------------------------------------------------------------- NTLM credentials
class _NTLMUserFile:
    """The credential file pyspnego's NTLM acceptor reads (env ``NTLM_USER_FILE``).

    pyspnego only accepts NTLM against that file, and the variable is process-wide, so one
    file serves every lab endpoint running in the process. Lines use the smbpasswd layout
    (``USER:UID:LMHASH:NTHASH:FLAGS:LCT``) so the password itself is never written to disk,
    and any password (even one with a colon) works. The previous value of the variable is
    restored when the last endpoint unregisters.
    """

    _lock = threading.Lock()
    _entries: dict[int, list[str]] = {}  # noqa: RUF012 - process-wide registry by design
    _next = 0
    _directory: tempfile.TemporaryDirectory[str] | None = None
    _previous: str | None = None

    @classmethod
    def register(cls, username: str, password: str) -> int:
        # Imported here: pyspnego's hash helpers are internal, keep the dependency in one spot.
        from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

        lm = base64.b16encode(lmowfv1(password)).decode()
        nt = base64.b16encode(ntowfv1(password)).decode()
        names = [username]
        if "\\" in username:
            # Windows also accepts the bare account name (the client then sends no domain).
            names.append(username.split("\\", 1)[1])
        lines = [f"{name}:1000:{lm}:{nt}:[U]:LCT-00000000" for name in names]
        with cls._lock:
            token = cls._next
            cls._next += 1
            cls._entries[token] = lines
            cls._write()
        return token

    @classmethod
    def unregister(cls, token: int) -> None:
        with cls._lock:
            if cls._entries.pop(token, None) is None:
                return
            if cls._entries:
                cls._write()
                return
            if cls._previous is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = cls._previous
            if cls._directory is not None:
                cls._directory.cleanup()
            cls._directory = None
            cls._previous = None

    @classmethod
    def _write(cls) -> None:
        if cls._directory is None:
            cls._previous = os.environ.get("NTLM_USER_FILE")
            cls._directory = tempfile.TemporaryDirectory(prefix="hybridtrust-lab-ntlm-")
        path = Path(cls._directory.name) / "ntlm_users"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(line for lines in cls._entries.values() for line in lines) + "\n")
        os.environ["NTLM_USER_FILE"] = str(path)


# --------------------------------------------------------------------------- faults
FAULT_KINDS = ("refuse", "http_status", "stall", "reset_receive", "operation_timeout")
# The action name of a Receive for a command's output (a Receive is also "Receive").
COMMAND_RECEIVE = "Receive(command)"


@dataclass
class _Armed:
    kind: str
    value: float
    times: int | None  # None: until cleared
    action: str | None  # WSMan action name ("Receive") the fault is limited to, None: any


class FaultPlan:
    """Faults injected into one endpoint; thread-safe, changeable while clients are connected.

    Each fault fires on every matching request until cleared, or only ``times`` times.
    ``action`` limits a fault to one WS-Management action (``"Create"``, ``"Command"``,
    ``"Send"``, ``"Receive"``, ``"Signal"``, ``"Delete"``); requests without a SOAP body
    (the NTLM handshake) have no action.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self.latency_ms = 0

    def latency(self, ms: int) -> None:
        """Delay every HTTP request of this endpoint by ``ms`` milliseconds (0 turns it off)."""
        self.latency_ms = max(0, int(ms))

    def refuse(self, *, times: int | None = None) -> None:
        """Reset connections without an answer (the client sees a connection error)."""
        self._arm("refuse", 0, times, None)
        # Connections are reset as soon as they are accepted (and requests on open ones), which
        # a client sees as "connection reset", the closest a listening socket gets to "refused".

    def http_status(self, status: int, *, times: int | None = None, action: str | None = None) -> None:
        """Answer with this HTTP status (500, 401, 403, ...) instead of processing the request."""
        self._arm("http_status", status, times, action)

    def stall(self, seconds: float, *, times: int | None = None, action: str | None = None) -> None:
        """Hold requests for ``seconds`` before processing them (a hung server; client read timeouts)."""
        self._arm("stall", seconds, times, action)

    def reset_receive(self, *, times: int | None = None, command_only: bool = False) -> None:
        """Reset the connection in the middle of a Receive response (its output is lost).

        By default any Receive, the first of which opens the runspace pool; with
        ``command_only`` only the Receives of a command's output (a cmdlet's answer cut off).
        """
        self._arm("reset_receive", 0, times, COMMAND_RECEIVE if command_only else "Receive")

    def operation_timeout(self, *, times: int | None = None, pool_receives: bool = False) -> None:
        """Answer Receive with WinRM's OperationTimeout fault (w:TimedOut, 2150858793).

        By default only a command's Receive times out, which pypsrp answers by polling again
        (a slow cmdlet); with ``pool_receives`` the Receives that open a runspace pool too,
        which pypsrp does not retry.
        """
        self._arm("operation_timeout", 0, times, "Receive" if pool_receives else COMMAND_RECEIVE)

    def clear(self) -> None:
        """Remove every fault and the latency."""
        with self._lock:
            self._armed.clear()
        self.latency_ms = 0

    def take(self, kind: str, *actions: str | None) -> float | None:
        """The value of an armed fault of ``kind`` for a request that is any of ``actions``, or None.

        A fault limited to an action fires when that action is among ``actions``; one use is
        consumed.
        """
        with self._lock:
            for armed in self._armed:
                if armed.kind != kind or (armed.action is not None and armed.action not in actions):
                    continue
                if armed.times is not None:
                    armed.times -= 1
                    if armed.times <= 0:
                        self._armed.remove(armed)
                return armed.value
        return None

    def describe(self) -> dict[str, Any]:
        with self._lock:
            armed = [{"kind": a.kind, "value": a.value, "times": a.times, "action": a.action} for a in self._armed]
        return {"latency_ms": self.latency_ms, "armed": armed}

    def _arm(self, kind: str, value: float, times: int | None, action: str | None) -> None:
        if times is not None and times <= 0:
            raise ValueError(f"times must be positive or None, not {times}")
        with self._lock:
            self._armed.append(_Armed(kind, value, times, action))


# --------------------------------------------------------------------------- the application seam
@dataclass(frozen=True)
class AppResponse:
    status: int
    body: bytes
    action: str | None  # the WS-Management action answered (for the reset_receive fault)


class WSManApplication(Protocol):
    """What the HTTP layer hands authenticated SOAP to (implemented by `wsman.WSManService`)."""

    def action_of(self, body: bytes) -> str | None: ...

    def handle(self, body: bytes, *, user: str) -> AppResponse: ...


@dataclass(frozen=True)
class AuthPolicy:
    """Who may connect to one listener and how.

    ``basic`` is offered only over TLS (as IIS and WinRM do by default); ``negotiate``
    offers ``Negotiate`` and ``NTLM``. Over plain http a negotiated session must use
    message encryption unless ``allow_unencrypted``.
    """

    username: str
    password: str
    basic: bool
    negotiate: bool
    allow_unencrypted: bool = False


class _Abort(Exception):
    """Raised inside the handler to drop the connection with a TCP reset."""


# --------------------------------------------------------------------------- the server
class LabHTTPServer(ThreadingHTTPServer):
    """One listener (http or https) of one lab endpoint, on 127.0.0.1 and a free port."""

    daemon_threads = True
    allow_reuse_address = True  # so a port is reusable while its closed connections sit in TIME_WAIT
    request_queue_size = 64

    def __init__(
        self,
        *,
        path: str,
        app: WSManApplication,
        auth: AuthPolicy,
        faults: FaultPlan,
        tls: LabPKI | None = None,
        server_header: str = "Microsoft-HTTPAPI/2.0",
        on_request: Callable[[], None] | None = None,
        name: str = "lab",
    ) -> None:
        self.path = "/" + path.strip("/")
        self.app = app
        self.auth = auth
        self.faults = faults
        self.tls_context = tls.server_context() if tls is not None else None
        self.channel_binding = tls.channel_binding() if tls is not None else None
        self.server_header = server_header
        self.on_request = on_request
        self.name = name
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ntlm_token = _NTLMUserFile.register(auth.username, auth.password) if auth.negotiate else None
        try:
            super().__init__((LOOPBACK, 0), _Handler)
        except BaseException:
            if self._ntlm_token is not None:
                _NTLMUserFile.unregister(self._ntlm_token)
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self.tls_context is not None else "http"

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}{self.path}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}:{self.port}", daemon=True
        )
        self._thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, with threads named after the listener so a leak is easy to attribute.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"{self.name}:{self.port}-connection",
            daemon=True,
        )
        thread.start()

    def stop(self) -> None:
        """Stop accepting, drop every open connection, free the port. Idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._ntlm_token is not None:
            _NTLMUserFile.unregister(self._ntlm_token)
            self._ntlm_token = None

    # TLS handshakes happen in the connection's own thread, so a slow client never blocks accept().
    def finish_request(self, request: Any, client_address: Any) -> None:
        connection: socket.socket = request
        # Headers and body leave in separate writes; without TCP_NODELAY, Nagle plus the client's
        # delayed ACK would add ~40 ms to every response.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.faults.take("refuse") is not None:
            _reset(request)  # before any TLS: the client sees a reset connection, not a TLS error
            return
        if self.tls_context is not None:
            try:
                request.settimeout(10)
                connection = self.tls_context.wrap_socket(request, server_side=True)
                connection.settimeout(None)
            except (OSError, ssl.SSLError) as error:
                log.debug("%s: TLS handshake with %s failed: %s", self.name, client_address, error)
                return
        with self._connections_lock:
            self._connections.add(connection)
        if self.stopping.is_set():  # accepted while stop() was closing the others
            with contextlib.suppress(OSError):
                connection.close()
            return
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connection errors are expected (clients time out, faults reset connections).
        log.debug("%s: connection from %s ended with an error", self.name, client_address, exc_info=True)


def _reset(connection: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, like a crashed or refusing server."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        connection.close()


# --------------------------------------------------------------------------- request headers
# http.client's limits, which BaseHTTPRequestHandler answers with 431.
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100
# A header line as the email package reads it when nothing is unusual: a name of printable
# characters other than ":" (RFC 5322 ftext), the value up to the line end, no folding, no CR.
_FIELD_RE = re.compile(rb"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n")


class Headers:
    """A request's header fields, read case-insensitively as `email.message.Message` reads them.

    The part of Message's interface the lab and BaseHTTPRequestHandler use: ``get`` and
    ``headers[name]`` give the first field of that name (None when there is none).
    """

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: Any = None) -> Any:
        wanted = name.lower()
        return next((value for key, value in self._fields if key.lower() == wanted), default)

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(key.lower() == name.lower() for key, _ in self._fields)

    def get_all(self, name: str, default: Any = None) -> Any:
        wanted = name.lower()
        values = [value for key, value in self._fields if key.lower() == wanted]
        return values or default

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def keys(self) -> list[str]:
        return [key for key, _ in self._fields]

    def values(self) -> list[str]:
        return [value for _, value in self._fields]

    def __len__(self) -> int:
        return len(self._fields)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def read_headers(rfile: BinaryIO, message_class: type[Message] = http.client.HTTPMessage) -> Headers | Message:
    """The header block of a request, read as `http.client.parse_headers` reads it, only sooner.

    Why: the stdlib hands every header block to the `email` package's parser, over a tenth of the
    lab's CPU per WS-Management request. Lines are read with the stdlib's limits and errors
    (`http.client.LineTooLong`, `http.client.HTTPException`, which BaseHTTPRequestHandler
    answers with 431); a block of plain ``Name: value`` lines becomes `Headers`, and anything
    unusual (a folded line, a bare CR, a line without a colon, a missing line end) is
    still parsed by the email package, so it means what it meant before.
    """
    lines: list[bytes] = []
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    fields: list[tuple[str, str]] = []
    for line in lines[:-1]:
        match = _FIELD_RE.fullmatch(line)
        if match is None:
            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=message_class).parsestr(text)
        fields.append((match[1].decode("iso-8859-1"), match[2].decode("iso-8859-1")))
    return Headers(fields)


@functools.lru_cache(maxsize=1)
def _http_date(second: int) -> str:
    """The Date header, formatted once a second (the stdlib formats it with the email package)."""
    return email.utils.formatdate(second, usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    """One client connection: keeps its NTLM context, as HTTP.sys does."""

    protocol_version = "HTTP/1.1"
    server: LabHTTPServer
    headers: Headers | Message  # type: ignore[assignment]

    def parse_request(self) -> bool:
        """BaseHTTPRequestHandler.parse_request (Python 3.11), with the headers read by `read_headers`.

        The stdlib's version parses every header block with the slow email parser, and offers
        no way to replace only that step; everything else here is its code: the same checks of
        the request line, the same error answers, the same Connection and Expect handling.
        """
        self.command = None  # type: ignore[assignment]  # in case of an error on the first line
        self.request_version = version = self.default_request_version
        self.close_connection = True
        self.requestline = requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:  # enough to know the protocol version
            version = words[-1]
            try:
                if not version.startswith("HTTP/"):
                    raise ValueError
                base_version_number = version.split("/", 1)[1]
                version_number = base_version_number.split(".")
                # RFC 2145 3.1: one ".", major and minor are separate integers, leading zeros ignored.
                if len(version_number) != 2:
                    raise ValueError
                if any(not component.isdigit() for component in version_number):
                    raise ValueError("non digit in http version")
                if any(len(component) > 10 for component in version_number):
                    raise ValueError("unreasonable length http version")
                major, minor = int(version_number[0]), int(version_number[1])
            except (ValueError, IndexError):
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            if (major, minor) >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if (major, minor) >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({base_version_number})")
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")  # gh-87389: no open redirect through "//host/path"

        try:
            self.headers = read_headers(self.rfile, self.MessageClass)
        except http.client.LineTooLong as error:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(error))
            return False
        except http.client.HTTPException as error:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(error))
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = self.headers.get("Expect", "").lower()
        if expect == "100-continue" and self.protocol_version >= "HTTP/1.1" and self.request_version >= "HTTP/1.1":
            return bool(self.handle_expect_100())
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        if timestamp is None:
            return _http_date(int(time.time()))
        return super().date_time_string(timestamp)

    def setup(self) -> None:
        super().setup()
        self.context: Any = None  # spnego context while authenticating, then the session context
        self.scheme_used = ""  # "Negotiate" or "NTLM", echoed in our tokens
        self.user: str | None = None
        self.negotiated = False  # authenticated by NTLM/Negotiate (message encryption possible)

    def version_string(self) -> str:
        return self.server.server_header

    def log_message(self, format: str, *args: Any) -> None:
        # Route through logging (quiet by default); never logs headers, so no credentials.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s", self.server.name, format % args)

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    # -- HTTP verbs ---------------------------------------------------------------
    def do_GET(self) -> None:
        self._send(405, b"", headers={"Allow": "POST"})

    def do_POST(self) -> None:
        try:
            self._post()
        except _Abort:
            self.close_connection = True
            _reset(self.connection)

    def _post(self) -> None:
        server = self.server
        if server.on_request is not None:
            server.on_request()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if server.faults.take("refuse") is not None:
            raise _Abort
        if server.faults.latency_ms:
            server.stopping.wait(server.faults.latency_ms / 1000)
        if self.path.split("?", 1)[0].rstrip("/").lower() != server.path.lower():
            self._send(404, b"")
            return

        final_token = self._authenticate()
        if final_token is False:
            return
        encrypted = self.headers.get("Content-Type", "").lower().startswith("multipart/encrypted")
        if encrypted:
            if not self.negotiated:
                self._challenge()
                return
            try:
                body = _unwrap(self.context, body, self.headers["Content-Type"])
            except (SpnegoError, ValueError) as error:
                log.info("%s: cannot decrypt a message: %s", server.name, error)
                self._send(400, b"")
                return
        elif body and self.negotiated and server.tls_context is None and not server.auth.allow_unencrypted:
            # WinRM with AllowUnencrypted=false rejects plain SOAP over http with a bare 401.
            self._challenge()
            return

        headers: dict[str, str] = {}
        if isinstance(final_token, bytes):
            headers["WWW-Authenticate"] = f"{self.scheme_used} {base64.b64encode(final_token).decode()}"
        if not body:
            # The empty POST that completes the NTLM handshake before message encryption starts.
            self._send(200, b"", headers=headers)
            return

        action = server.app.action_of(body)
        stall = server.faults.take("stall", action)
        if stall:
            server.stopping.wait(stall)
            if _peer_closed(self.connection):
                # The client gave up (read timeout) while we were "hung": like a server that never got
                # to the request, nothing is processed, so a retried Receive loses no output.
                raise _Abort
        status = server.faults.take("http_status", action)
        if status is not None:
            self._fault_status(int(status))
            return

        response = server.app.handle(body, user=self.user or "")
        payload, content_type = response.body, "application/soap+xml;charset=UTF-8"
        if encrypted:
            payload, content_type = _wrap(self.context, response.body)
        headers["Content-Type"] = content_type
        # A Receive naming a CommandId reads a command's output (see wsman.py); others open the pool.
        receives = ("Receive", COMMAND_RECEIVE) if b"CommandId=" in body else ("Receive",)
        if response.action == "Receive" and server.faults.take("reset_receive", *receives) is not None:
            self._send_partial_then_reset(response.status, payload, headers)
        self._send(response.status, payload, headers=headers)

    # -- authentication -----------------------------------------------------------
    def _authenticate(self) -> bytes | bool | None:
        """Authenticate the request; False when a 401 was sent, else the final server token (or None)."""
        policy = self.server.auth
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme_l = scheme.lower()

        if scheme_l == "basic" and policy.basic and self.server.tls_context is not None:
            try:
                username, _, password = base64.b64decode(credentials.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                username, password = "", ""
            if _same_user(username, policy.username) and hmac.compare_digest(
                password.encode("utf-8"), policy.password.encode("utf-8")
            ):
                self.user, self.negotiated = username, False
                return None
            log.info("%s: Basic authentication failed for %r", self.server.name, username)
            self._challenge()
            return False

        if scheme_l in ("negotiate", "ntlm") and policy.negotiate:
            return self._step_negotiate(scheme, credentials.strip())

        if not header and self.user is not None:
            return None  # an authenticated connection (NTLM is connection-bound)
        self._challenge()
        return False

    def _step_negotiate(self, scheme: str, credentials: str) -> bytes | bool | None:
        try:
            token = base64.b64decode(credentials)
        except ValueError:
            token = b""
        if self.context is None or self.context.complete or token.startswith(b"NTLMSSP\x00\x01"):
            bindings = None
            if self.server.channel_binding is not None:
                bindings = GssChannelBindings(application_data=self.server.channel_binding)
            # pyspnego's Negotiate acceptor also takes raw NTLM tokens (pypsrp auth="ntlm").
            self.context = spnego.server(
                hostname="localhost",
                service="HTTP",
                channel_bindings=bindings,
                protocol="negotiate",
                options=spnego.NegotiateOptions.wrapping_winrm,
            )
            self.user, self.negotiated = None, False
        self.scheme_used = "NTLM" if scheme.lower() == "ntlm" else "Negotiate"
        try:
            out_token = self.context.step(token)
        except SpnegoError as error:
            # The reason stays in our log (a wrong password, an unknown user); the client gets a plain 401.
            log.info("%s: %s authentication failed: %s", self.server.name, self.scheme_used, error)
            self.context = None
            self._challenge()
            return False
        if not self.context.complete:
            self._send(
                401, b"", headers={"WWW-Authenticate": f"{self.scheme_used} {base64.b64encode(out_token).decode()}"}
            )
            return False
        self.user = str(self.context.client_principal or self.server.auth.username)
        self.negotiated = True
        return out_token or None

    def _challenge(self) -> None:
        """A 401 offering what the listener accepts (and forgetting any half-done handshake)."""
        policy = self.server.auth
        offers: list[str] = []
        if policy.negotiate:
            offers += ["Negotiate", "NTLM"]
        if policy.basic and self.server.tls_context is not None:
            offers.append(f'Basic realm="{LOOPBACK}"')
        self.context, self.user, self.negotiated = None, None, False
        self._send(401, b"", headers={"WWW-Authenticate": ", ".join(offers)})

    def _fault_status(self, status: int) -> None:
        headers: dict[str, str] = {}
        if status == 401:
            self._challenge()
            return
        body = f"{status} {self.responses.get(status, ('Error',))[0]}".encode()
        headers["Content-Type"] = "text/plain"
        self._send(status, body, headers=headers)

    # -- writing ------------------------------------------------------------------
    def _send(self, status: int, body: bytes, *, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)
        self.wfile.flush()

    def _send_partial_then_reset(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: max(1, len(body) // 2)])
        self.wfile.flush()
        # Give the bytes a moment to leave before the RST overtakes them.
        time.sleep(0.01)
        raise _Abort


def _peer_closed(connection: socket.socket) -> bool:
    """Whether the client closed its end (peeks at the raw socket, under TLS too, consuming nothing)."""
    try:
        return socket.socket.recv(connection, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _same_user(given: str, expected: str) -> bool:
    given_l, expected_l = given.lower(), expected.lower()
    if given_l == expected_l:
        return True
    # DOMAIN\user and a bare user name name the same account.
    return "\\" in expected_l and given_l == expected_l.split("\\", 1)[1]


# --------------------------------------------------------------------------- message encryption
_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.I)


def _unwrap(context: Any, body: bytes, content_type: str) -> bytes:
    """Decrypt a ``multipart/encrypted`` WinRM message ([MS-WSMV] 2.2.9.1.1)."""
    match = _BOUNDARY_RE.search(content_type)
    boundary = match.group(1) if match else MIME_BOUNDARY
    parts = [p for p in re.split(rb"--\s*" + re.escape(boundary.encode()) + rb"(?:--)?\r\n", body) if p]
    message = b""
    for header, payload in zip(parts[0::2], parts[1::2], strict=False):
        length_match = re.search(rb"Length=(\d+)", header)
        if length_match is None:
            raise ValueError("encrypted part without OriginalContent length")
        payload = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
        header_length = struct.unpack("<i", payload[:4])[0]
        signature = payload[4 : 4 + header_length]
        data = context.unwrap_winrm(signature, payload[4 + header_length :])
        if len(data) != int(length_match.group(1)):
            raise ValueError(f"decrypted length {len(data)} != announced {int(length_match.group(1))}")
        message += data
    return message


def _wrap(context: Any, message: bytes) -> tuple[bytes, str]:
    """Encrypt a response the way WinRM does; returns the body and its Content-Type."""
    result = context.wrap_winrm(message)
    framed = (
        f"--{MIME_BOUNDARY}\r\n"
        f"\tContent-Type: {SPNEGO_ENCRYPTED}\r\n"
        f"\tOriginalContent: type={SOAP_CONTENT_TYPE};Length={len(message) + result.padding_length}\r\n"
        f"--{MIME_BOUNDARY}\r\n"
        "\tContent-Type: application/octet-stream\r\n"
    ).encode()
    body = framed + struct.pack("<i", len(result.header)) + result.header + result.data
    body += f"--{MIME_BOUNDARY}--\r\n".encode()
    content_type = f'multipart/encrypted;protocol="{SPNEGO_ENCRYPTED}";boundary="{MIME_BOUNDARY}"'
    return body, content_type
