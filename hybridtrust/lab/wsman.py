"""The WS-Management SOAP layer of the lab's WinRM endpoints ([MS-WSMV]).

This module is the one place that knows envelopes: it parses what pypsrp sends (Create,
Command, Send, Receive, Signal, Delete, and Get of a shell or of the service
configuration), hands the PSRP payloads to the shells of `psrp_server`, and writes the
answers the way a Windows WinRM service writes them (the templates follow recorded WinRM
transcripts). Faults carry WinRM's own Code, Subcode and WSManFault message text, so a
client sees the words it would see against Exchange or SharePoint.

Responses are written from string templates rather than ElementTree: ElementTree's
namespace-prefix registry is process-wide, and pypsrp clients in the same process rely on
their own prefixes.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from xml.etree import ElementTree
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

from defusedxml import ElementTree as SafeET

from hybridtrust.lab.http import COMMAND_RECEIVE, AppResponse

log = logging.getLogger(__name__)

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmv": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "pwsh": "http://schemas.microsoft.com/powershell",
}

TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
ACTIONS = {
    TRANSFER + "Create": "Create",
    TRANSFER + "Delete": "Delete",
    TRANSFER + "Get": "Get",
    TRANSFER + "Put": "Put",
    "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate": "Enumerate",
    "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull": "Pull",
    SHELL + "Command": "Command",
    SHELL + "Send": "Send",
    SHELL + "Receive": "Receive",
    SHELL + "Signal": "Signal",
    SHELL + "Connect": "Connect",
    SHELL + "Disconnect": "Disconnect",
    SHELL + "Reconnect": "Reconnect",
}
RESPONSE_ACTIONS = {
    "Create": TRANSFER + "CreateResponse",
    "Delete": TRANSFER + "DeleteResponse",
    "Get": TRANSFER + "GetResponse",
    "Command": SHELL + "CommandResponse",
    "Send": SHELL + "SendResponse",
    "Receive": SHELL + "ReceiveResponse",
    "Signal": SHELL + "SignalResponse",
}
FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
POWERSHELL_URI_PREFIX = "http://schemas.microsoft.com/powershell/"
SHELL_RESOURCE_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CONFIG_RESOURCE_URI = "http://schemas.microsoft.com/wbem/wsman/1/config"
COMMAND_STATE_DONE = SHELL + "CommandState/Done"
COMMAND_STATE_RUNNING = SHELL + "CommandState/Running"
# WinRM's defaults, as Get-Item WSMan:\localhost\MaxEnvelopeSizekb reports them on Server 2016+.
MAX_ENVELOPE_SIZE_KB = 500
IDLE_TIMEOUT = "PT7200.000S"


# --------------------------------------------------------------------------- faults
class WSManFault(Exception):
    """A SOAP fault as WinRM sends it: Code/Subcode, Reason, and the WSManFault detail."""

    def __init__(
        self,
        *,
        code: int,
        subcode: str,
        message: str,
        sender: bool = True,
        fault_detail: str | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.subcode = subcode
        self.message = message
        self.sender = sender
        self.fault_detail = fault_detail
        self.provider = provider

    def envelope(self, relates_to: str, machine: str) -> bytes:
        value = "s:Sender" if self.sender else "s:Receiver"
        detail = f"<w:FaultDetail>{escape(self.fault_detail)}</w:FaultDetail>" if self.fault_detail else ""
        text = escape(self.message)
        inner = f"<f:Message>{text}</f:Message>"
        if self.provider:
            # Plug-in faults nest the provider's WSManFault, as WsmSvc.dll reports them.
            inner = (
                f'<f:Message><f:ProviderFault provider={quoteattr(self.provider)} path="%systemroot%\\system32\\'
                f'pwrshplugin.dll"><f:WSManFault Code="{self.code}" Machine={quoteattr(machine)}>'
                f"<f:Message>{text}</f:Message></f:WSManFault></f:ProviderFault></f:Message>"
            )
        body = (
            f"<s:Fault><s:Code><s:Value>{value}</s:Value><s:Subcode><s:Value>{escape(self.subcode)}</s:Value>"
            f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{text}</s:Text></s:Reason>'
            f'<s:Detail>{detail}<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
            f'Code="{self.code}" Machine={quoteattr(machine)}>{inner}</f:WSManFault></s:Detail></s:Fault>'
        )
        return _envelope(FAULT_ACTION, relates_to, body)


def operation_timed_out() -> WSManFault:
    """ERROR_WSMAN_OPERATION_TIMEDOUT: a Receive with nothing to return; pypsrp polls again."""
    return WSManFault(
        code=2150858793,
        subcode="w:TimedOut",
        sender=False,
        message="The WS-Management service cannot complete the operation within the time specified in "
        "OperationTimeout.  ",
    )


def shell_not_found(shell_id: str) -> WSManFault:
    return WSManFault(
        code=2150858843,
        subcode="w:InvalidSelectors",
        fault_detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors",
        message=f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not "
        "found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer "
        "exists on the server. Provide the correct ShellId or create a new shell and retry the operation. ",
    )


def command_not_found() -> WSManFault:
    return WSManFault(
        code=2150858843,
        subcode="w:InvalidSelectors",
        fault_detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors",
        message="The Windows Remote Shell received a request to perform an operation on a command identifier that "
        "does not exist. Either the command has completed execution or the client specified an invalid command "
        "identifier. ",
    )


def unknown_configuration(resource_uri: str, computer: str) -> WSManFault:
    """The fault behind PowerShell's "Cannot find the X session configuration" error."""
    name = resource_uri[len(POWERSHELL_URI_PREFIX) :] if resource_uri.startswith(POWERSHELL_URI_PREFIX) else ""
    if name:
        text = (
            f"The WS-Management service cannot process the request. Cannot find the {name} session configuration "
            f"in the WSMan: drive on the {computer} computer. "
        )
    else:
        text = (
            f"The WS-Management service cannot process the request. The resource URI ({resource_uri}) was not "
            "found in the WS-Management catalog. The catalog contains the metadata that describes resources, or "
            "logical endpoints. "
        )
    return WSManFault(
        code=2150858752,
        subcode="w:InvalidResourceURI",
        fault_detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidResourceURI",
        message=text,
    )


def action_not_supported(action_uri: str) -> WSManFault:
    return WSManFault(
        code=2150858754,
        subcode="a:ActionNotSupported",
        message=f"The WS-Management service cannot process the request because the action {action_uri} is not "
        "supported by this endpoint. ",
    )


def invalid_message(reason: str) -> WSManFault:
    return WSManFault(
        code=2150858817,
        subcode="w:SchemaValidationError",
        message=f"The WS-Management service cannot process the request because the XML is invalid: {reason} ",
    )


def internal_error(reason: str) -> WSManFault:
    return WSManFault(code=2150858882, subcode="w:InternalError", sender=False, message=reason)


# --------------------------------------------------------------------------- requests
@dataclass
class WSManRequest:
    action_uri: str
    action: str  # short name: "Create", "Receive", ...
    message_id: str
    resource_uri: str
    to: str
    selectors: dict[str, str]
    options: dict[str, str]
    operation_timeout: float  # seconds
    max_envelope_size: int  # bytes
    body: Element | None  # the first child of s:Body


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str | None, default: float) -> float:
    """xs:duration as WS-Management uses it (``PT20S``, ``PT7200.000S``) in seconds."""
    match = _DURATION.match((text or "").strip())
    if not match or not any(match.groups()):
        return default
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def parse_request(data: bytes) -> WSManRequest:
    try:
        root = _parse_xml(data)
    except (ParseError, ValueError) as error:
        raise invalid_message(str(error)) from error
    header = root.find("s:Header", NS)
    body = root.find("s:Body", NS)
    if header is None or body is None:
        raise invalid_message("the SOAP envelope has no Header or Body")

    # One pass over the header's children (ElementPath's find per field was a tenth of the lab's CPU).
    fields: dict[str, Element] = {}
    for child in header:
        fields.setdefault(child.tag, child)

    def text(prefix: str, name: str) -> str:
        element = fields.get(f"{{{NS[prefix]}}}{name}")
        return (element.text or "").strip() if element is not None else ""

    def named(container: str, item: str) -> dict[str, str]:
        element = fields.get(f"{{{NS['wsman']}}}{container}")
        tag = f"{{{NS['wsman']}}}{item}"
        return {e.get("Name", ""): (e.text or "").strip() for e in (() if element is None else element) if e.tag == tag}

    action_uri = text("wsa", "Action")
    max_size = text("wsman", "MaxEnvelopeSize")
    return WSManRequest(
        action_uri=action_uri,
        action=ACTIONS.get(action_uri, action_uri.rsplit("/", 1)[-1]),
        message_id=text("wsa", "MessageID"),
        resource_uri=text("wsman", "ResourceURI"),
        to=text("wsa", "To"),
        selectors=named("SelectorSet", "Selector"),
        options=named("OptionSet", "Option"),
        operation_timeout=parse_duration(text("wsman", "OperationTimeout"), 60.0),
        max_envelope_size=int(max_size) if max_size.isdigit() else 153600,
        body=next(iter(body), None),
    )


_ACTION_RE = re.compile(rb"<(?:\w+:)?Action\b[^>]*>\s*([^<\s]+)\s*<")
_ENCODING_RE = re.compile(rb"""\sencoding\s*=\s*["']([^"']*)""")


def _parse_xml(data: bytes) -> Element:
    """An envelope's XML; ElementTree's C parser where it is plainly safe, else defusedxml's.

    Why: defusedxml's parser calls back into Python for every element, the largest single
    cost of parsing an envelope. Entities can only be declared in a DTD; in a UTF-8 document
    (what pypsrp sends, and XML's default) neither can hide from a byte search, so a UTF-8
    envelope without ``<!DOCTYPE`` or ``<!ENTITY`` cannot expand or fetch anything (the rule of
    hybridtrust.clixml._check_safe). Anything else (UTF-16 has NUL bytes, another encoding
    needs a declaration) goes to defusedxml, which refuses entities as before.
    """
    if _plain_utf8(data) and b"<!DOCTYPE" not in data and b"<!ENTITY" not in data:
        return ElementTree.fromstring(data)
    return SafeET.fromstring(data)  # type: ignore[no-any-return]


def _plain_utf8(data: bytes) -> bool:
    """Whether the XML parser reads ``data`` as UTF-8 (what a byte search for markup assumes)."""
    if b"\x00" in data:
        return False  # UTF-16 or UTF-32
    text = data.removeprefix(b"\xef\xbb\xbf")
    if not text.startswith(b"<?xml"):
        return True  # without a declaration, XML without NUL bytes is UTF-8
    declaration = text[: text.find(b"?>")]  # an unterminated one fails to parse anyway
    declared = _ENCODING_RE.search(declaration)
    return declared is None or declared.group(1).lower() in (b"utf-8", b"utf8")


# --------------------------------------------------------------------------- shells
@dataclass
class ReceiveResult:
    """What a Receive returns: PSRP payloads (complete fragments) and whether the command is done."""

    chunks: list[bytes]
    done: bool = False


class Shell(Protocol):
    """A remote shell as the WS-Management layer sees it (`psrp_server.PSRPShell` is the one)."""

    def command(self, command_id: str | None, arguments: bytes) -> str: ...

    def send(self, command_id: str | None, stream: str, data: bytes) -> None: ...

    def receive(self, command_id: str | None, timeout: float, max_bytes: int) -> ReceiveResult: ...

    def signal(self, command_id: str, code: str) -> None: ...

    def close(self) -> None: ...


class FaultSource(Protocol):
    def take(self, kind: str, *actions: str | None) -> float | None: ...


# (shell id, the creationXml PSRP payload, the owner) -> a new shell
ShellFactory = Callable[[str, bytes, str], Shell]

_process_ids = itertools.count(4812)


@dataclass
class _ShellRecord:
    shell: Shell
    shell_id: str
    resource_uri: str
    owner: str
    input_streams: str
    output_streams: str
    process_id: int
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)


class WSManService:
    """The WinRM service of one endpoint: routes WS-Management requests to its shells.

    ``configurations`` maps a PowerShell session configuration name (``Microsoft.Exchange``)
    to the factory of its shells; names match case-insensitively, and a shell answers with
    the configuration's canonical resource URI, as Exchange does.
    """

    def __init__(
        self,
        configurations: Mapping[str, ShellFactory],
        *,
        machine: str = "localhost",
        on_action: Callable[[str], None] | None = None,
        faults: FaultSource | None = None,
    ) -> None:
        self._configurations = {
            (POWERSHELL_URI_PREFIX + name).lower(): (POWERSHELL_URI_PREFIX + name, factory)
            for name, factory in configurations.items()
        }
        self.machine = machine
        self._on_action = on_action
        self._faults = faults
        self._shells: dict[str, _ShellRecord] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- the HTTP seam ------------------------------------------------------------
    def action_of(self, body: bytes) -> str | None:
        match = _ACTION_RE.search(body[:4096])
        if match is None:
            return None
        uri = match.group(1).decode("utf-8", "replace")
        return ACTIONS.get(uri, uri.rsplit("/", 1)[-1])

    def handle(self, body: bytes, *, user: str) -> AppResponse:
        relates_to = ""
        action: str | None = None
        try:
            request = parse_request(body)
            relates_to, action = request.message_id, request.action
            if self._on_action is not None:
                self._on_action(request.action)
            response = self._dispatch(request, user)
            return AppResponse(200, _envelope(RESPONSE_ACTIONS[request.action], relates_to, response), action)
        except WSManFault as fault:
            log.debug("WSMan fault %s on %s: %s", fault.code, action, fault.message)
            return AppResponse(500, fault.envelope(relates_to, self.machine), action)
        except Exception as error:  # a lab bug must still reach the client as a WinRM fault
            log.exception("lab WinRM service failed on %s", action)
            fault = internal_error(f"The lab WinRM service failed: {type(error).__name__}: {error}")
            return AppResponse(500, fault.envelope(relates_to, self.machine), action)

    def close(self) -> None:
        """Close every shell (their pipelines stop; blocked Receives return)."""
        with self._lock:
            self._closed = True
            records = list(self._shells.values())
            self._shells.clear()
        for record in records:
            try:
                record.shell.close()
            except Exception:
                log.exception("closing shell %s", record.shell_id)

    @property
    def shell_count(self) -> int:
        with self._lock:
            return len(self._shells)

    # -- actions --------------------------------------------------------------------
    def _dispatch(self, request: WSManRequest, user: str) -> str:
        action = request.action
        if action == "Create":
            return self._create(request, user)
        if action == "Get":
            return self._get(request)
        if action not in ("Command", "Send", "Receive", "Signal", "Delete"):
            raise action_not_supported(request.action_uri)
        record = self._shell(request)
        record.last_used = time.monotonic()
        body = request.body
        if action == "Delete":
            with self._lock:
                self._shells.pop(record.shell_id.upper(), None)
            record.shell.close()
            return ""
        if body is None:
            raise invalid_message(f"the {action} request has an empty body")
        if action == "Command":
            return self._command(record, body)
        if action == "Send":
            return self._send(record, body)
        if action == "Receive":
            return self._receive(record, request, body)
        return self._signal(record, body)

    def _create(self, request: WSManRequest, user: str) -> str:
        known = self._configurations.get(request.resource_uri.lower())
        if known is None:
            raise unknown_configuration(request.resource_uri, _host_of(request.to) or self.machine)
        resource_uri, factory = known
        shell_element = request.body
        if shell_element is None or shell_element.tag != f"{{{NS['rsp']}}}Shell":
            raise invalid_message("the Create request carries no rsp:Shell")
        creation = shell_element.find("pwsh:creationXml", NS)
        if creation is None or not (creation.text or "").strip():
            raise invalid_message("the Create request of a PowerShell shell carries no creationXml")
        creation_data = _b64decode(creation.text or "")
        shell_id = (shell_element.get("ShellId") or str(uuid.uuid4())).upper()
        input_streams = _text(shell_element, "rsp:InputStreams") or "stdin pr"
        output_streams = _text(shell_element, "rsp:OutputStreams") or "stdout"
        with self._lock:
            if self._closed:
                raise internal_error("The WinRM service is stopping.")
            if shell_id in self._shells:
                raise WSManFault(
                    code=2150858880,
                    subcode="w:AlreadyExists",
                    message=f"The Windows Remote Shell with ShellId {shell_id} already exists. ",
                )
        shell = factory(shell_id, creation_data, user)
        record = _ShellRecord(shell, shell_id, resource_uri, user, input_streams, output_streams, next(_process_ids))
        with self._lock:
            self._shells[shell_id] = record
        address = escape(request.to or "")
        return (
            f"<x:ResourceCreated><a:Address>{address}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{escape(resource_uri)}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
            f"</x:ResourceCreated>{self._shell_xml(record)}"
        )

    def _get(self, request: WSManRequest) -> str:
        if request.resource_uri.lower() == CONFIG_RESOURCE_URI:
            # What update_max_payload_size() reads; the values are WinRM's defaults.
            return (
                '<cfg:Config xmlns:cfg="http://schemas.microsoft.com/wbem/wsman/1/config">'
                f"<cfg:RootSDDL>O:NSG:BAD:P(A;;GA;;;BA)S:P(AU;FA;GA;;;WD)</cfg:RootSDDL>"
                f"<cfg:MaxEnvelopeSizekb>{MAX_ENVELOPE_SIZE_KB}</cfg:MaxEnvelopeSizekb>"
                "<cfg:MaxTimeoutms>60000</cfg:MaxTimeoutms><cfg:MaxBatchItems>32000</cfg:MaxBatchItems>"
                "<cfg:MaxProviderRequests>4294967295</cfg:MaxProviderRequests></cfg:Config>"
            )
        if request.resource_uri.lower() != SHELL_RESOURCE_URI and not request.resource_uri.lower().startswith(
            POWERSHELL_URI_PREFIX
        ):
            raise action_not_supported(request.action_uri)
        return self._shell_xml(self._shell(request))

    def _command(self, record: _ShellRecord, body: Element) -> str:
        arguments = body.find("rsp:Arguments", NS)
        data = _b64decode(arguments.text or "") if arguments is not None else b""
        command_id = record.shell.command(body.get("CommandId"), data)
        return f"<rsp:CommandResponse><rsp:CommandId>{escape(command_id)}</rsp:CommandId></rsp:CommandResponse>"

    def _send(self, record: _ShellRecord, body: Element) -> str:
        for stream in body.findall("rsp:Stream", NS):
            record.shell.send(stream.get("CommandId"), stream.get("Name", "stdin"), _b64decode(stream.text or ""))
        return "<rsp:SendResponse/>"

    def _receive(self, record: _ShellRecord, request: WSManRequest, body: Element) -> str:
        desired = body.find("rsp:DesiredStream", NS)
        command_id = desired.get("CommandId") if desired is not None else None
        stream_name = ((desired.text if desired is not None else None) or "stdout").split()[0]
        receives = ("Receive", COMMAND_RECEIVE) if command_id else ("Receive",)
        if self._faults is not None and self._faults.take("operation_timeout", *receives) is not None:
            raise operation_timed_out()
        # Base64 inflates 4:3 and the envelope around the streams needs room.
        budget = max(4096, (request.max_envelope_size - 4096) * 3 // 4)
        result = record.shell.receive(command_id, min(request.operation_timeout, 60.0), budget)
        if not result.chunks and not result.done:
            raise operation_timed_out()
        command_attr = f" CommandId={quoteattr(command_id)}" if command_id else ""
        parts = [
            f"<rsp:Stream Name={quoteattr(stream_name)}{command_attr}>{base64.b64encode(chunk).decode()}</rsp:Stream>"
            for chunk in result.chunks
        ]
        if command_id:
            if result.done:
                parts.append(
                    f'<rsp:CommandState{command_attr} State="{COMMAND_STATE_DONE}"><rsp:ExitCode>0</rsp:ExitCode>'
                    "</rsp:CommandState>"
                )
            else:
                parts.append(f'<rsp:CommandState{command_attr} State="{COMMAND_STATE_RUNNING}"/>')
        return f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"

    def _signal(self, record: _ShellRecord, body: Element) -> str:
        command_id = body.get("CommandId") or ""
        code = _text(body, "rsp:Code") or ""
        record.shell.signal(command_id, code)
        return "<rsp:SignalResponse/>"

    # -- helpers ----------------------------------------------------------------------
    def _shell(self, request: WSManRequest) -> _ShellRecord:
        shell_id = next((v for k, v in request.selectors.items() if k.lower() == "shellid"), "")
        if not shell_id:
            raise WSManFault(
                code=2150858843,
                subcode="w:InvalidSelectors",
                fault_detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InsufficientSelectors",
                message="The WS-Management service cannot process the request because the request contained "
                "invalid selectors for the resource. ",
            )
        with self._lock:
            record = self._shells.get(shell_id.upper())
        if record is None:
            raise shell_not_found(shell_id)
        return record

    def _shell_xml(self, record: _ShellRecord) -> str:
        now = time.monotonic()
        return (
            f'<rsp:Shell xmlns:rsp="{NS["rsp"]}"><rsp:ShellId>{record.shell_id}</rsp:ShellId>'
            f"<rsp:ResourceUri>{escape(record.resource_uri)}</rsp:ResourceUri>"
            f"<rsp:Owner>{escape(record.owner)}</rsp:Owner><rsp:ClientIP>127.0.0.1</rsp:ClientIP>"
            f"<rsp:ProcessId>{record.process_id}</rsp:ProcessId><rsp:IdleTimeOut>{IDLE_TIMEOUT}</rsp:IdleTimeOut>"
            f"<rsp:InputStreams>{escape(record.input_streams)}</rsp:InputStreams>"
            f"<rsp:OutputStreams>{escape(record.output_streams)}</rsp:OutputStreams>"
            "<rsp:MaxIdleTimeOut>PT2147483.647S</rsp:MaxIdleTimeOut><rsp:Locale>en-US</rsp:Locale>"
            "<rsp:DataLocale>en-US</rsp:DataLocale><rsp:CompressionMode>NoCompression</rsp:CompressionMode>"
            "<rsp:ProfileLoaded>Yes</rsp:ProfileLoaded><rsp:Encoding>UTF8</rsp:Encoding>"
            "<rsp:BufferMode>Block</rsp:BufferMode><rsp:State>Connected</rsp:State>"
            f"<rsp:ShellRunTime>{_duration(now - record.created)}</rsp:ShellRunTime>"
            f"<rsp:ShellInactivity>{_duration(now - record.last_used)}</rsp:ShellInactivity></rsp:Shell>"
        )


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    message_id = str(uuid.uuid4()).upper()
    return (
        '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
        'xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        f"<s:Header><a:Action>{escape(action)}</a:Action><a:MessageID>uuid:{message_id}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _text(element: Element, path: str) -> str | None:
    found = element.find(path, NS)
    return (found.text or "").strip() if found is not None else None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise invalid_message(f"a stream is not valid base64: {error}") from error


def _host_of(address: str) -> str:
    match = re.match(r"^\w+://(\[[^\]]+\]|[^:/]+)", address or "")
    return match.group(1) if match else ""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"P{days}DT{hours}H{minutes}M{secs}S"


__all__ = [
    "ReceiveResult",
    "Shell",
    "ShellFactory",
    "WSManFault",
    "WSManRequest",
    "WSManService",
    "parse_request",
]
