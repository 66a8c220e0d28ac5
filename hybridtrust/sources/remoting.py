"""PowerShell remoting (pypsrp) as the live Exchange and SharePoint sources use it.

What both sources share:

- `RemotingSettings`: where and how to connect (a profile's ``[exchange]`` or
  ``[sharepoint]`` section, or a lab's connection), with the password read from the
  NAMED environment variable and never shown: it has no ``repr`` and every message
  built here is scrubbed of it.
- `open_pool` / `run_commands`: one pypsrp ``RunspacePool`` and a bounded window of
  pipelines in flight on it (`run_commands`), so the server works on several cmdlets
  at once while this one thread sends and receives.
- `output_record`: a pipeline output object as a `PSRecord`, read from its original
  CLIXML, which is also remembered (`original_clixml`) so that ``--save-evidence``
  writes exactly what the server sent.
- `describe_transport_error`: a connection failure (refused, TLS, 401, timeout) as one
  line an administrator can act on.
- `RemotingSettings.wsman`: pypsrp's client, whose Basic and certificate sign-ins over
  https send their steady-state requests through `steady_transport` (urllib3 directly).

Two ways to run many commands. The Exchange source, which sends a pipeline per server,
uses `run_commands_on_pools`: several pools, one thread and one connection each, so that
the network's latency is paid concurrently (its docstring says why). The others use a
window of pipelines on one pool (`run_commands`), and not threads on it: pypsrp's
``WSMan`` holds one ``requests`` session whose NTLM/Kerberos message encryption counts
sequence numbers per connection, and its fragmenter is per pool; neither is safe to
share between threads. ``begin_invoke`` only sends the Command (the server starts the pipeline at
once on a free runspace of the pool), so keeping up to ``max_concurrency`` pipelines
begun and collecting them oldest first lets the server run that many cmdlets in
parallel (Exchange's cmdlets spend their time in Active Directory and IIS, not on the
wire), with one connection and one runspace pool per endpoint. Measured against the
lab with 200 ms of server time per cmdlet, the 25 pipelines of an Exchange audit of
the lab took 5.9 s one after the other and 1.2 s with a window of 8
(tests/sources/test_exchange_source.py checks that pipelines overlap on the server,
within the bound).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import requests
from pypsrp.complex_objects import CommandParameter, ComplexObject, PSInvocationState
from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError, WSManFaultError
from pypsrp.messages import CreatePipeline
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.serializer import Serializer
from pypsrp.wsman import WSMan

from hybridtrust.clixml import ClixmlError, parse_psrp_object
from hybridtrust.powershell import PSRecord
from hybridtrust.sources.steady_transport import use_steady_transport

if TYPE_CHECKING:
    from hybridtrust.profile import RemotingSection

log = logging.getLogger(__name__)

AuthMethod = Literal["kerberos", "negotiate", "ntlm", "basic", "credssp"]

# WinRM's own long-poll of one Receive; a cmdlet's total time is bounded separately
# (`RemotingSettings.operation_timeout`). pypsrp polls again after WinRM's
# OperationTimeout fault, and the HTTP read timeout must outlast the long poll.
_RECEIVE_POLL_SECONDS = 20
_READ_TIMEOUT_MARGIN_SECONDS = 10


class SettingsError(ValueError):
    """Connection settings that cannot be used (a named variable is not set); names what to fix."""


# -- settings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemotingSettings:
    """Where one PowerShell endpoint is and how to sign in to it."""

    uri: str
    configuration_name: str
    auth: AuthMethod = "kerberos"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_tls: bool = True
    ca_file: Path | None = None
    connect_timeout: float = 30.0
    operation_timeout: float = 120.0
    """How long one cmdlet may run before it is stopped and reported as not collected."""
    max_concurrency: int = 8
    """Runspaces of the pool and pipelines in flight (Exchange throttles at PowerShellMaxConcurrency, 18)."""

    @classmethod
    def from_section(
        cls,
        section: RemotingSection,
        *,
        default_configuration: str,
        environ: Mapping[str, str] | None = None,
        resolve: Callable[[Path | None], Path | None] = lambda path: path,
    ) -> RemotingSettings:
        """Settings from a profile section; the credentials come from the variables it names."""
        environ = os.environ if environ is None else environ
        username = _environment(environ, section.username_env, "username_env")
        password = _environment(environ, section.password_env, "password_env")
        settings = cls(
            uri=section.uri,
            configuration_name=section.configuration_name or default_configuration,
            auth=section.auth,
            username=username,
            password=password,
            verify_tls=section.verify_tls,
            ca_file=resolve(section.ca_file),
            connect_timeout=section.connect_timeout_seconds,
            operation_timeout=section.operation_timeout_seconds,
            max_concurrency=section.max_concurrency,
        )
        settings.check()
        return settings

    def check(self) -> None:
        parts = urlsplit(self.uri)
        if self.auth == "basic" and parts.scheme == "http":
            # Basic sends the password as base64 text: WinRM refuses it over http, and so do we.
            raise SettingsError(
                f"auth = 'basic' needs an https:// uri, not {self.uri} (the password would travel in clear)"
            )
        if self.auth in ("basic", "ntlm", "credssp") and (not self.username or not self.password):
            raise SettingsError(
                f"auth = '{self.auth}' needs username_env and password_env naming variables that are set"
            )

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()

    @property
    def who(self) -> str:
        return f"{self.username} ({self.auth})" if self.username else f"the current user ({self.auth})"

    @property
    def receive_poll_seconds(self) -> int:
        return int(min(_RECEIVE_POLL_SECONDS, max(1, self.operation_timeout)))

    @property
    def wsman_read_timeout(self) -> int:
        # The long poll plus a margin for the answer to travel (short for a short operation timeout).
        return self.receive_poll_seconds + min(_READ_TIMEOUT_MARGIN_SECONDS, self.receive_poll_seconds)

    def notes(self) -> list[str]:
        if urlsplit(self.uri).scheme == "https" and not self.verify_tls:
            return [f"TLS verification is OFF for {self.uri}: the profile says verify_tls = false"]
        return []

    def wsman(self) -> WSMan:
        parts = urlsplit(self.uri)
        https = parts.scheme == "https"
        validation: bool | str = self.verify_tls
        if self.verify_tls and self.ca_file is not None:
            validation = str(self.ca_file)
        wsman = WSMan(
            server=parts.hostname or "",
            port=parts.port or (443 if https else 80),
            path=parts.path.strip("/") or "wsman",
            ssl=https,
            auth=self.auth,
            username=self.username,
            password=self.password,
            cert_validation=validation,
            connection_timeout=max(1, round(self.connect_timeout)),
            operation_timeout=self.receive_poll_seconds,
            read_timeout=self.wsman_read_timeout,
            # Without a proxy setting of its own a WinRM client goes straight to the server;
            # an https_proxy in a scheduled job's environment must not capture credentials.
            no_proxy=True,
        )
        use_steady_transport(wsman)  # Basic/certificate over https: urllib3 after the first request
        return wsman


def _environment(environ: Mapping[str, str], name: str | None, key: str) -> str | None:
    if name is None:
        return None
    value = environ.get(name)
    if not value:
        raise SettingsError(f"the environment variable {name} named by {key} is not set")
    return value


# -- messages --------------------------------------------------------------------------------------
def scrub(text: str, secrets: Iterable[str]) -> str:
    """A message with every secret replaced: no password reaches a report, a log or an exception."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"\)]+)")
_SSL_REASON = re.compile(r"\[SSL[^\]]*\] ([^'\"\(\)]+)")
_INCOMPLETE_READ = re.compile(r"IncompleteRead\(([^()]*)\)")


def describe_transport_error(error: BaseException, settings: RemotingSettings) -> str:
    """A connection-level failure in an administrator's words (never the password)."""
    text = str(error)
    if isinstance(error, requests.exceptions.SSLError):
        reason = _SSL_REASON.search(text)
        cause = f"TLS handshake failed: {reason.group(1).strip() if reason else text}"
        if "verify failed" in cause:
            cause += "; name the CA that issued the server's certificate in ca_file"
    elif isinstance(error, requests.exceptions.ConnectTimeout):
        cause = f"no connection within {settings.connect_timeout:g} s (connect timeout)"
    elif isinstance(error, requests.exceptions.ReadTimeout):
        cause = f"the server did not answer within {settings.wsman_read_timeout:g} s (read timeout)"
    elif isinstance(error, requests.exceptions.ChunkedEncodingError):
        # The connection was cut while the answer was arriving (a reset in the middle of a Receive):
        # that output is lost, WinRM never sends it again. requests' own text is a tuple repr.
        read = _INCOMPLETE_READ.search(text)
        cause = "the connection broke in the middle of the server's answer" + (f" ({read.group(1)})" if read else "")
    elif isinstance(error, requests.exceptions.ConnectionError):
        reason = _ERRNO.search(text)
        if "reset by peer" in text or "RemoteDisconnected" in text or "Connection aborted" in text:
            # A reset (RST) or a close before any answer: the same to an administrator, but requests
            # words it differently by the moment it hit ("[Errno 104] ..." or "Connection aborted.").
            cause = "the server closed the connection without an answer"
        elif reason:
            cause = f"connection failed: {reason.group(1).strip()}"
        else:
            cause = f"connection failed: {text}"
    elif isinstance(error, AuthenticationError):
        cause = f"the server refused the credentials of {settings.who} (HTTP 401): {text}"
    elif isinstance(error, WinRMTransportError):
        cause = f"HTTP {error.code} from the server: {_first_line(str(error.response_text)) or 'no body'}"
        if error.code == 401:
            cause = f"the server refused the credentials of {settings.who} (HTTP 401)"
    elif isinstance(error, WSManFaultError):
        cause = f"WinRM fault {error.code}: {_first_line(str(error.reason or error.message))}"
    else:
        cause = f"{type(error).__name__}: {text}"
    return scrub(cause, settings.secrets)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


# pypsrp and requests raise these for a connection that is not usable at all.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (requests.exceptions.RequestException, AuthenticationError)
REMOTING_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, WinRMError, OSError)


# -- output objects ------------------------------------------------------------------------------------
# The CLIXML each live record was read from, by record; an entry goes when its record does.
_ORIGINAL_CLIXML: dict[int, str] = {}


def remember_clixml(record: PSRecord, xml: str) -> None:
    key = id(record)
    _ORIGINAL_CLIXML[key] = xml
    weakref.finalize(record, _ORIGINAL_CLIXML.pop, key, None)


def original_clixml(record: PSRecord) -> str | None:
    """The ``<Obj>`` (or primitive) element the server sent for this record, if it came from a live pipeline."""
    return _ORIGINAL_CLIXML.get(id(record))


def output_record(value: Any, where: str, *, remember: bool = True) -> PSRecord:
    """One pipeline output object as a `PSRecord`.

    pypsrp's own deserializer is not used for the values: it returns Exchange's
    multi-valued enum properties (``InternalAuthenticationMethods``, ``ServerRole``)
    as unparsed XML text, drops their type names and loses ``ToString``. pypsrp 0.9
    keeps the original CLIXML of every complex object in ``_xml``, so each object is
    read again by the one deserializer the evidence bundle also goes through
    (`hybridtrust.clixml.parse_psrp_object`, psrpcore): a live run and its saved
    evidence then give the same facts by construction.
    """
    if isinstance(value, RawOutput):
        xml = value.xml
    else:
        xml = getattr(value, "_xml", None) if isinstance(value, ComplexObject) else None
    if not isinstance(xml, str):
        if isinstance(value, str):
            # A string output (Get-SPAuthenticationRealm) is a <S> element on the wire; pypsrp
            # returns it as a str, so the element is written again, as the server wrote it.
            xml = f"<S>{escape(_escape_control(value))}</S>"
        elif value is None:
            xml = "<Nil />"
        else:
            raise ClixmlError(f"{where}: an output object of type {type(value).__name__} cannot be read")
    record = parse_psrp_object(xml, where)
    if remember:  # for --save-evidence: 80 MB of text an audit of 1,000 servers need not keep otherwise
        remember_clixml(record, xml)
    return record


def _escape_control(text: str) -> str:
    # CLIXML writes control characters (and '_x' that would look like an escape) as _xHHHH_.
    text = text.replace("_x", "_x005F_x")
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]|\r|\n|\t", lambda m: f"_x{ord(m.group()):04X}_", text)


@dataclass(frozen=True)
class RawOutput:
    """A pipeline output object as the server sent it: its CLIXML text, not yet read."""

    xml: str


class _RawOutputSerializer(Serializer):
    """pypsrp's serializer, except that a PIPELINE_OUTPUT message stays the CLIXML the server sent.

    pypsrp deserializes every output object into its own classes and, on the way, serializes each
    nested element back to text (``ComplexObject._xml``); `output_record` then reads that text again.
    For a 1,000-server organization (11,000 objects) that double work was most of the collection.
    PIPELINE_OUTPUT (and PIPELINE_INPUT, which a client never receives) are the only messages pypsrp
    deserializes from a string without metadata and with a fresh reference table
    (``Message.unpack``): those calls get the text back, wrapped; every other message (pool and
    pipeline state, error records, host calls) is deserialized by pypsrp as always.
    """

    def deserialize(self, element: Any, metadata: Any = None, clear: bool = True) -> Any:
        if metadata is None and clear and isinstance(element, str):
            return RawOutput(element)
        return super().deserialize(element, metadata, clear)

    def serialize(self, value: Any, metadata: Any = None, parent: Any = None, clear: bool = True) -> Any:
        # A CREATE_PIPELINE message as bytes (Message.pack sends bytes as they are): see _PipelineTemplates.
        if parent is None and isinstance(value, CreatePipeline):
            written = _PIPELINE_TEMPLATES.write(value, self)
            if written is not None:
                return written
        return super().serialize(value, metadata, parent, clear)


class _PipelineTemplates:
    """CREATE_PIPELINE messages written from a template of their shape, byte for byte as pypsrp writes them.

    pypsrp writes every CREATE_PIPELINE from scratch: it deep-copies the commands and serializes some
    sixty elements, a millisecond of the client's CPU per pipeline and a sixth of an audit of 1,000
    servers, whose certificate queries differ only in one string (``-Server EX0001``). A message's
    shape is everything in it except its string parameter values; the first message of a shape is
    written by pypsrp with marker strings in place of those values, and later messages of the shape
    are that text with each marker replaced by the value as pypsrp writes a string (escapes and all).
    Anything this does not recognise (a non-string, non-scalar parameter value, an empty string) is
    written by pypsrp as always. tests/sources/test_pipeline_templates.py checks the bytes are equal.
    """

    _LIMIT = 256  # shapes: an audit has a few dozen; a process that builds more writes the rest itself
    _STRINGS = 4096  # string values kept as written; past that the cache starts again
    _CLASS_DATA = frozenset({"_adapted_properties", "_extended_properties", "_property_sets", "_string_map", "_xml"})

    def __init__(self) -> None:
        self._templates: dict[tuple[Any, ...], list[bytes] | None] = {}
        self._strings: dict[str, bytes | None] = {}
        self._marker = f"hybridtrust-parameter-{os.urandom(8).hex()}-"

    def write(self, message: CreatePipeline, serializer: Serializer) -> bytes | None:
        parameters: list[CommandParameter] = []
        shape = self._shape(message, parameters)
        if shape is None:
            return None
        template = self._templates.get(shape)
        if template is None:
            if shape in self._templates or len(self._templates) >= self._LIMIT:
                return None
            template = self._templates[shape] = self._template(message, serializer, parameters)
            if template is None:
                return None
        strings = [self._string(parameter.value, serializer) for parameter in parameters]
        if any(string is None for string in strings):
            return None
        parts = [template[0]]
        for string, text in zip(strings, template[1:], strict=True):
            parts += [string, text]  # type: ignore[list-item]
        return b"".join(parts)

    def _string(self, value: str, serializer: Serializer) -> bytes | None:
        # A value seen before is not written again: the projected property names repeat in every query.
        # The pool threads share the cache, so what is returned is never read back after a clear().
        try:
            return self._strings[value]
        except KeyError:
            pass
        if len(self._strings) >= self._STRINGS:
            self._strings.clear()
        written = self._strings[value] = _string_bytes(value, serializer)
        return written

    def _shape(self, value: Any, parameters: list[CommandParameter]) -> Any:
        """A hashable description of everything but the string parameter values; None: not templated.

        The parameters whose string values the description leaves out are appended to `parameters`,
        in the order they are written."""
        if isinstance(value, CommandParameter):
            if isinstance(value.value, str) and value.value:
                parameters.append(value)
                return ("parameter", value.name, str)
            if value.value is None or isinstance(value.value, (bool, int, float)):
                return ("parameter", value.name, type(value.value).__name__, value.value)
            return None
        if type(value) in _SCALARS:  # most of the walk: type names, enum values, flags
            return (type(value), value)
        if isinstance(value, ComplexObject):
            # In the order the fields were set: the same for every message of a shape, and no sort per object.
            fields = []
            for name, item in vars(value).items():
                if name in self._CLASS_DATA:
                    continue
                described = (type(item), item) if type(item) in _SCALARS else self._shape(item, parameters)
                if described is None:
                    return None
                fields.append((name, described))
            return (type(value), tuple(fields))
        if isinstance(value, (list, tuple)):
            items = []
            for item in value:
                described = (type(item), item) if type(item) in _SCALARS else self._shape(item, parameters)
                if described is None:
                    return None
                items.append(described)
            return tuple(items)
        if isinstance(value, (str, bool, int, float)):
            return (type(value), value)
        return None

    def _template(
        self, message: CreatePipeline, serializer: Serializer, parameters: list[CommandParameter]
    ) -> list[bytes] | None:
        originals = [p.value for p in parameters]
        markers = [f"{self._marker}{index}" for index in range(len(parameters))]
        try:
            for parameter, marker in zip(parameters, markers, strict=True):
                parameter.value = marker
            text = ElementTree.tostring(Serializer.serialize(serializer, message), encoding="utf-8", method="xml")
        finally:
            for parameter, original in zip(parameters, originals, strict=True):
                parameter.value = original
        parts: list[bytes] = []
        for marker in markers:
            before, found, text = text.partition(marker.encode())
            if not found or marker.encode() in text:
                return None
            parts.append(before)
        return [*parts, text]


_SCALARS = frozenset({str, bool, int, float, type(None)})


def _string_bytes(value: str, serializer: Serializer) -> bytes | None:
    """A string as pypsrp writes it inside an element (its _xHHHH_ escapes, then XML's)."""
    element = Serializer.serialize(serializer, value)
    written = ElementTree.tostring(element, encoding="utf-8", method="xml")
    if not (written.startswith(b"<S>") and written.endswith(b"</S>")):
        return None
    return written[3:-4]


_PIPELINE_TEMPLATES = _PipelineTemplates()


# -- running commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One cmdlet with literal parameters: one pipeline. A value of None is a switch.

    `select`: the properties to send back (``| Select-Object -Property ...``), or () for whole
    objects. Select-Object is one of the few cmdlets a restricted remote session always has
    (those Import-PSSession needs), so it works in Exchange's NoLanguage runspace too.
    """

    key: str
    cmdlet: str
    parameters: tuple[tuple[str, Any], ...] = ()
    select: tuple[str, ...] = ()

    def pipeline(self, pool: RunspacePool) -> PowerShell:
        # add_cmdlet/add_parameter only: the Exchange runspace is NoLanguage, and values
        # travel as serialized objects, so nothing from a profile is ever parsed as code.
        shell = PowerShell(pool).add_cmdlet(self.cmdlet)
        for name, value in self.parameters:
            shell.add_parameter(name, value)
        if self.select:
            # One name travels as a string (PowerShell binds it to -Property's object[]), so a
            # per-server pipeline keeps its template (_PipelineTemplates writes string values only).
            names = self.select[0] if len(self.select) == 1 else list(self.select)
            shell.add_cmdlet("Select-Object").add_parameter("Property", names)
        return shell


@dataclass
class Outcome:
    """What one pipeline gave: records, or the server's words for why not."""

    records: list[PSRecord] = field(default_factory=list)
    error: str | None = None
    not_found: bool = False
    """Every error was an object-not-found (Exchange's ManagementObjectNotFoundException)."""


_NOT_FOUND = ("ManagementObjectNotFoundException",)


def error_text(record: Any) -> str:
    """The server's own words of an ErrorRecord: its exception's Message.

    pypsrp's ``message`` is the CategoryInfo line ("ObjectNotFound: (x:String) [Get-X],
    CommandNotFoundException") for the record of a failed pipeline, so the exception's
    Message, then the record's ToString, come first.
    """
    exception = getattr(record, "exception", None)
    properties = getattr(exception, "adapted_properties", None)
    candidates = [
        properties.get("Message") if isinstance(properties, dict) else None,
        getattr(exception, "to_string", None),
        getattr(record, "_to_string", None),
        getattr(record, "message", None),
    ]
    for candidate in candidates:
        if isinstance(candidate, str) and _first_line(candidate):
            return _first_line(candidate)
    return str(getattr(record, "fq_error", "") or "an error without a message")


def _is_not_found(record: Any) -> bool:
    evidence = f"{getattr(record, 'fq_error', '') or ''} {getattr(record, 'reason', '') or ''}"
    return any(name in evidence for name in _NOT_FOUND)


def open_pool(settings: RemotingSettings, runspaces: int, *, raw_output: bool = False) -> RunspacePool:
    """An opened runspace pool; raises what pypsrp raises (see `describe_transport_error`).

    `raw_output`: the pipelines' output objects are `RawOutput` (their CLIXML), which only
    `output_record` reads; for callers that read every object through it (the sources).
    """
    pool = RunspacePool(
        settings.wsman(),
        configuration_name=settings.configuration_name,
        min_runspaces=runspaces,
        max_runspaces=runspaces,
    )
    if raw_output:
        serializer = _RawOutputSerializer()
        pool._serializer = serializer  # the pool's own messages and its fragmenter's share one serializer
        pool._fragmenter.serializer = serializer
    pool.open()
    # pypsrp's session merged the environment's proxy and CA settings when it was built (and
    # no_proxy keeps any proxy out); left trusting the environment, requests reads it again on
    # every request, a tenth of the client's time in an audit of 1,000 servers.
    session = getattr(getattr(pool.connection, "transport", None), "session", None)
    if session is not None:
        session.trust_env = False
    return pool


def close_pool(pool: RunspacePool) -> None:
    # A shell that cannot be closed goes away with WinRM's idle timeout; nothing more is read through it.
    with contextlib.suppress(*REMOTING_ERRORS):
        pool.close()


def run_commands(
    pool: RunspacePool,
    commands: Sequence[Command],
    settings: RemotingSettings,
    *,
    window: int | None = None,
    follow_up: Callable[[Command, Outcome], Iterable[Command]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Outcome]:
    """Run every command, at most `window` pipelines begun at a time, oldest collected first.

    `follow_up` may name further commands once a command's outcome is known (the
    certificate queries need Get-ExchangeServer's answer); they join the window.
    Never raises for what the server or the network does: a command that fails gets an
    `Outcome` with the error in the server's words; when the connection itself is lost,
    every command not yet finished gets that cause.
    """
    window = max(1, window or settings.max_concurrency)
    pending = deque(commands)
    running: deque[tuple[Command, PowerShell, float]] = deque()
    outcomes: dict[str, Outcome] = {}
    lost: str | None = None
    while pending or running:
        while pending and len(running) < window and lost is None:
            command = pending.popleft()
            shell = command.pipeline(pool)
            try:
                shell.begin_invoke()
            except CONNECTION_ERRORS as error:
                lost = describe_transport_error(error, settings)
                outcomes[command.key] = Outcome(error=lost)
            except REMOTING_ERRORS as error:
                outcomes[command.key] = Outcome(error=describe_transport_error(error, settings))
            else:
                running.append((command, shell, clock() + settings.operation_timeout))
        if lost is not None:
            for command in pending:
                outcomes[command.key] = Outcome(error=lost)
            pending.clear()
        if not running:
            continue
        command, shell, deadline = running.popleft()
        if lost is not None:
            outcomes[command.key] = Outcome(error=lost)
            continue
        try:
            outcomes[command.key] = _finish(command, shell, deadline, settings, clock)
            if follow_up is not None:
                pending.extend(follow_up(command, outcomes[command.key]))
        except CONNECTION_ERRORS as error:
            lost = describe_transport_error(error, settings)
            outcomes[command.key] = Outcome(error=lost)
        except REMOTING_ERRORS as error:
            outcomes[command.key] = Outcome(error=describe_transport_error(error, settings))
    return outcomes


def _finish(
    command: Command,
    shell: PowerShell,
    deadline: float,
    settings: RemotingSettings,
    clock: Callable[[], float],
    *,
    remember: bool = True,
    on_output: Callable[[list[PSRecord]], None] | None = None,
) -> Outcome:
    """Receive until the pipeline ends; `on_output` is given each Receive's new output records as they arrive."""
    where = f"{command.cmdlet} on {settings.uri}"
    records: list[PSRecord] = []
    while shell.state == PSInvocationState.RUNNING:
        remaining = deadline - clock()
        if remaining <= 0:
            with contextlib.suppress(*REMOTING_ERRORS):
                shell.stop()
            return Outcome(error=f"did not finish within {settings.operation_timeout:g} s (operation_timeout_seconds)")
        shell.poll_invoke(timeout=int(max(1, min(_RECEIVE_POLL_SECONDS, remaining))))
        if on_output is not None and len(shell.output) > len(records) and shell.state == PSInvocationState.RUNNING:
            try:
                arrived = [output_record(value, where, remember=remember) for value in shell.output[len(records) :]]
            except ClixmlError:
                on_output = None  # read again below, where the error becomes the outcome
            else:
                records += arrived
                on_output(arrived)
    # WinRM keeps a finished command (and its runspace) until it is signalled to terminate.
    with contextlib.suppress(*REMOTING_ERRORS):
        shell.close()
    errors = list(shell.streams.error)
    if errors:
        words = scrub(error_text(errors[0]), settings.secrets)
        more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        return Outcome(error=words + more, not_found=all(_is_not_found(error) for error in errors))
    if shell.state != PSInvocationState.COMPLETED:
        return Outcome(error=f"the pipeline ended in state {PSInvocationState(shell.state)} without an error record")
    try:
        records += [output_record(value, where, remember=remember) for value in shell.output[len(records) :]]
    except ClixmlError as error:
        return Outcome(error=str(error))
    return Outcome(records=records)


def run_commands_on_pools(
    pool: RunspacePool,
    commands: Sequence[Command],
    settings: RemotingSettings,
    *,
    pools: int | None = None,
    follow_up: Callable[[Command, Outcome], Iterable[Command]] | None = None,
    as_output_arrives: Callable[[Command, list[PSRecord]], Iterable[Command]] | None = None,
    opener: Callable[[], RunspacePool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    remember: bool = True,
) -> dict[str, Outcome]:
    """Run every command with up to `pools` runspace pools, one thread and one connection each.

    Why not one pool and a window (`run_commands`): that keeps pipelines running on the
    server, but this one thread still sends each HTTP request after the previous answer,
    so with network latency an audit costs (requests x latency) whatever the window: three
    requests (Command, Receive, Signal) per pipeline, a thousand certificate queries for a
    thousand servers, a minute at 20 ms. pypsrp's ``WSMan`` cannot be shared between
    threads (its message encryption counts sequence numbers per connection), so each
    thread gets a pool (a WinRM shell) of its own, with its own connection and
    authentication: `pool` (already open: whether the endpoint answers at all is known
    before this is called) and up to ``pools - 1`` more, opened by `opener` in their threads
    as the work grows. A pool that cannot be opened (a server that throttles shells) just
    leaves its share to the others. Each pool runs one pipeline at a time, so the server
    never runs more than `pools` (at most the profile's max_concurrency, which the profile
    keeps under Exchange's PowerShellMaxConcurrency of 18) pipelines for this user.

    On Linux the pools' threads share one CPU (`_one_cpu`): they take turns holding the
    interpreter lock, so they can use one core at a time anyway, and spread over cores every
    hand-over of the lock is a wake-up on another core (README "Performance" has the numbers).

    Commands are taken in order from one queue; `follow_up` commands (made from a command's
    outcome) and `as_output_arrives` commands (made from each Receive's new output while the
    command still runs: the certificate queries of the servers Get-ExchangeServer has named
    so far, as a thousand-server list takes it a dozen Receives) join it. The outcomes come
    back in the order the commands were given, whatever order they finished in. Never raises for what the
    server or the network does; a lost connection gives every command not yet finished its
    cause, as `run_commands` does. Every pool is closed before this returns.
    """
    limit = max(1, pools or settings.max_concurrency)
    work = _PoolWork(settings, limit, follow_up, opener, clock, remember, as_output_arrives)
    work.submit(commands)
    work.start(pool)
    return work.wait()


class _PoolWork:
    """The shared queue of `run_commands_on_pools` and its worker threads."""

    def __init__(
        self,
        settings: RemotingSettings,
        limit: int,
        follow_up: Callable[[Command, Outcome], Iterable[Command]] | None,
        opener: Callable[[], RunspacePool] | None,
        clock: Callable[[], float],
        remember: bool = True,
        as_output_arrives: Callable[[Command, list[PSRecord]], Iterable[Command]] | None = None,
    ) -> None:
        self.settings = settings
        self.as_output_arrives = as_output_arrives
        self.remember = remember
        """Keep each record's CLIXML (`original_clixml`), which only --save-evidence reads."""
        self.limit = limit if opener is not None else 1
        self.follow_up = follow_up
        self.opener = opener
        self.clock = clock
        self.changed = threading.Condition()
        self.queue: deque[Command] = deque()
        self.order: list[str] = []
        self.outcomes: dict[str, Outcome] = {}
        self.busy = 0
        self.idle = 0
        self.lost: str | None = None
        self.threads: list[threading.Thread] = []
        self.cpu = _one_cpu() if self.limit > 1 else None
        """The CPU every pool thread runs on, or None: wherever the system puts them."""

    def submit(self, commands: Iterable[Command]) -> None:
        with self.changed:
            for command in commands:
                self.queue.append(command)
                self.order.append(command.key)
            self._grow()
            self.changed.notify_all()

    def _grow(self) -> None:
        # More threads only while there is queued work no idle thread can take (and a first one exists).
        while self.threads and len(self.threads) < self.limit and len(self.queue) > self.idle:
            self._spawn(None)

    def _spawn(self, pool: RunspacePool | None) -> None:
        thread = threading.Thread(
            target=self._work, args=(pool,), name=f"hybridtrust-psrp-{len(self.threads) + 1}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def start(self, pool: RunspacePool) -> None:
        with self.changed:
            self._spawn(pool)
            self._grow()

    def wait(self) -> dict[str, Outcome]:
        index = 0
        while True:
            with self.changed:
                if index >= len(self.threads):
                    break
                thread = self.threads[index]
            thread.join()
            index += 1
        return {key: self.outcomes[key] for key in self.order if key in self.outcomes}

    def _take(self) -> Command | None:
        with self.changed:
            while not self.queue and self.busy and self.lost is None:
                self.idle += 1
                self.changed.wait()
                self.idle -= 1
            if self.lost is not None:
                while self.queue:
                    self.outcomes[self.queue.popleft().key] = Outcome(error=self.lost)
                return None
            if not self.queue:
                return None  # nothing queued and nothing running that could queue more: done
            self.busy += 1
            return self.queue.popleft()

    def _arrived(self, command: Command, records: list[PSRecord]) -> None:
        assert self.as_output_arrives is not None
        try:
            more = list(self.as_output_arrives(command, records))
        except Exception:  # as for follow_up: what cannot be named is reported as not run
            log.debug("early follow-up of %s failed", command.key, exc_info=True)
            return
        if more:
            self.submit(more)

    def _done(self, command: Command, outcome: Outcome, lost: str | None) -> None:
        try:
            more = list(self.follow_up(command, outcome)) if self.follow_up is not None and lost is None else []
        except Exception:  # a follow-up that cannot be named is left out; its absence is reported as not run
            log.debug("follow-up of %s failed", command.key, exc_info=True)
            more = []
        with self.changed:
            self.outcomes[command.key] = outcome
            if lost is not None and self.lost is None:
                self.lost = lost
            self.busy -= 1
            for extra in more:
                self.queue.append(extra)
                self.order.append(extra.key)
            self._grow()
            self.changed.notify_all()

    def _work(self, pool: RunspacePool | None) -> None:
        if self.cpu is not None:
            with contextlib.suppress(OSError):  # a container may forbid it; the threads then run anywhere
                os.sched_setaffinity(0, {self.cpu})  # 0: this thread alone (Linux), not the process
        try:
            if pool is None:
                assert self.opener is not None
                try:
                    pool = self.opener()
                except REMOTING_ERRORS:
                    log.debug("an extra runspace pool could not be opened; the others carry on", exc_info=True)
                    return
            while (command := self._take()) is not None:
                on_output = None
                if self.as_output_arrives is not None:
                    on_output = functools.partial(self._arrived, command)
                try:
                    outcome, lost = _run_one(
                        pool, command, self.settings, self.clock, remember=self.remember, on_output=on_output
                    )
                except Exception as error:  # fail closed: a surprise is this command's error, never a hang
                    log.debug("pipeline %s failed", command.key, exc_info=True)
                    words = scrub(f"{type(error).__name__}: {error}", self.settings.secrets)
                    outcome, lost = Outcome(error=words), None
                self._done(command, outcome, lost)
        finally:
            if pool is not None:
                close_pool(pool)
            with self.changed:
                self.changed.notify_all()


def _one_cpu() -> int | None:
    """The CPU the calling thread runs on now, for the pool threads to share; None where that is not Linux's to say.

    Why one CPU: the pool threads spend their time waiting for the network and, between waits,
    running Python under the one interpreter lock. Spread over cores, each hand-over of the lock
    wakes a thread on another core, and a thousand-server collection makes tens of thousands of
    them. Measured on this project's 2-core machine at 1,000 servers: about 55,000 context
    switches and 1.0 s of system CPU per collection with the threads free, about 25,000 and
    0.5 s on one CPU, and the benchmark's median collection went from 7.9 to 7.6 s (README
    "Performance"). The thread that starts the work is where the scheduler put this process,
    so the pool threads go where it already runs, and an audit in another process (a
    pytest-xdist worker) has been placed elsewhere by the same scheduler. Nothing else of the
    process is pinned: pytest's own thread stays free.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        allowed = os.sched_getaffinity(0)
        # Field 39 of /proc/<pid>/task/<tid>/stat is the CPU the thread last ran on; the name in field 2
        # may hold spaces and parentheses, so fields are counted from its closing one (field 3 first).
        with open(f"/proc/self/task/{threading.get_native_id()}/stat", "rb") as stat:
            cpu = int(stat.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None
    return cpu if len(allowed) > 1 and cpu in allowed else None


def _run_one(
    pool: RunspacePool,
    command: Command,
    settings: RemotingSettings,
    clock: Callable[[], float],
    *,
    remember: bool = True,
    on_output: Callable[[list[PSRecord]], None] | None = None,
) -> tuple[Outcome, str | None]:
    """One pipeline, begun and collected: its outcome, and the cause if the connection was lost."""
    shell = command.pipeline(pool)
    try:
        shell.begin_invoke()
        deadline = clock() + settings.operation_timeout
        return _finish(command, shell, deadline, settings, clock, remember=remember, on_output=on_output), None
    except CONNECTION_ERRORS as error:
        lost = describe_transport_error(error, settings)
        return Outcome(error=lost), lost
    except REMOTING_ERRORS as error:
        return Outcome(error=describe_transport_error(error, settings)), None
