"""The PowerShell Remoting Protocol side of the lab ([MS-PSRP]), on psrpcore's server objects.

A `PSRPShell` is one WinRM shell: one psrpcore `ServerRunspacePool` plus its pipelines.
psrpcore does the protocol state machine (SESSION_CAPABILITY, INIT_RUNSPACEPOOL,
APPLICATION_PRIVATE_DATA, RUNSPACEPOOL_STATE, fragments, the session key exchange); this
module feeds it the bytes WS-Management delivered, runs each CREATE_PIPELINE through a
*runner* (the lab's cmdlet engine, see `server.py`), and files psrpcore's outgoing
fragments per target (the pool or one pipeline) so a Receive for a command only returns
that command's messages, as WinRM does.

The runner gets one PowerShell statement at a time as `ParsedCommand` objects (name,
parameters as psrpcore deserialized them, is_script) and yields output objects or
exceptions; an exception that is yielded becomes an ERROR_RECORD (a non-terminating
error, the pipeline still completes), one that is raised fails the pipeline with that
ErrorRecord as the reason. Exceptions are read by their attributes (`message`,
`error_id`, `category`, `exception_type`, `target`), the contract of
``hybridtrust.lab.cmdlets.CmdletError``, so the server's words reach the client.

Each pipeline runs in its own daemon thread (a real server answers the Command at once
and streams output); every psrpcore call happens under the shell's condition lock,
because psrpcore's objects are not thread-safe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import psrpcore
from psrpcore._payload import PSRPMessage, StreamType, create_message
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PipelineState,
    PSInvocationState,
    PSObject,
    PSRPMessageType,
    PSString,
    PSVersion,
    RunspacePoolState,
    add_note_property,
    deserialize,
    serialize,
)

from hybridtrust.lab.wsman import ReceiveResult, WSManFault, command_not_found, internal_error

log = logging.getLogger(__name__)

# Outgoing PSRP data is cut into fragments of at most this many bytes; a Receive returns as
# many whole fragments as its MaxEnvelopeSize allows (pypsrp reassembles across Receives).
FRAGMENT_SIZE = 32 * 1024

# What Windows PowerShell 5.1 on Server 2019 reports in APPLICATION_PRIVATE_DATA.
PS_VERSION_TABLE: dict[str, Any] = {
    "PSVersion": PSVersion("5.1.17763.6414"),
    "PSEdition": "Desktop",
    "PSCompatibleVersions": [PSVersion(v) for v in ("1.0", "2.0", "3.0", "4.0", "5.0", "5.1.17763.6414")],
    "BuildVersion": PSVersion("10.0.17763.6414"),
    "CLRVersion": PSVersion("4.0.30319.42000"),
    "WSManStackVersion": PSVersion("3.0"),
    "PSRemotingProtocolVersion": PSVersion("2.3"),
    "SerializationVersion": PSVersion("1.1.0.1"),
}

SCRIPT_ARGUMENTS = "args"  # where positional arguments of a script go (PowerShell's $args)


@dataclass(frozen=True)
class ParsedCommand:
    """One command of a CREATE_PIPELINE, as the runner sees it (same fields as cmdlets.Invocation)."""

    name: str  # "Get-AuthServer", or the script text when is_script
    parameters: dict[str, Any]
    is_script: bool = False


# One statement -> output objects and yielded (non-terminating) errors; raising is terminating.
Runner = Callable[[list[ParsedCommand]], Iterable[Any]]
# Told about every pipeline before it runs (for request counters); statements in order.
PipelineObserver = Callable[[list[list[ParsedCommand]]], None]


class PipelineError(Exception):
    """An error the PSRP layer raises itself (parameter binding), shaped like cmdlets.CmdletError."""

    def __init__(
        self,
        message: str,
        *,
        error_id: str,
        category: str,
        exception_type: str,
        target: str | None = None,
        terminating: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_id = error_id
        self.category = category
        self.exception_type = exception_type
        self.target = target
        self.terminating = terminating


# --------------------------------------------------------------------------- errors
class RemoteErrorRecord(ErrorRecord):
    """An ErrorRecord that also carries PowerShell's ToString and type names on the wire.

    psrpcore serializes ErrorRecord's properties only; PowerShell also sends the
    ``<ToString>`` (the message) that pypsrp shows as ``str(record)``, and writes the
    CategoryInfo line as ``Category: (TargetName:TargetType) [Activity], Reason``.
    """

    @classmethod
    def ToPSObjectForRemoting(cls, instance: ErrorRecord, **kwargs: Any) -> PSObject:
        obj = super().ToPSObjectForRemoting(instance, **kwargs)
        obj.PSObject.type_names = ["System.Management.Automation.ErrorRecord", "System.Object"]
        obj.PSObject.to_string = str(instance.Exception.Message)
        info = instance.CategoryInfo
        line = (
            f"{info.Category.name}: ({info.TargetName or ''}:{info.TargetType or ''}) [{info.Activity or ''}], "
            f"{info.Reason or ''}"
        )
        add_note_property(obj, "ErrorCategory_Message", line, force=True)
        return obj


def error_record(error: BaseException, activity: str) -> RemoteErrorRecord:
    """An ErrorRecord carrying the error's message, FullyQualifiedErrorId, category and target."""
    message = str(getattr(error, "message", None) or error)
    exception_type = str(getattr(error, "exception_type", None) or "System.Management.Automation.RuntimeException")
    category_name = str(getattr(error, "category", None) or "NotSpecified")
    category = next((c for c in ErrorCategory if c.name.lower() == category_name.lower()), ErrorCategory.NotSpecified)
    target = getattr(error, "target", None)
    error_id = str(getattr(error, "error_id", None) or f"{type(error).__name__},{activity}")

    exception = NETException(Message=message, HResult=-2146233087)
    type_names = [exception_type]
    for base in ("System.SystemException", "System.Exception", "System.Object"):
        if base not in type_names:
            type_names.append(base)
    exception.PSObject.type_names = type_names
    exception.PSObject.to_string = message

    info = ErrorCategoryInfo(
        Category=category,
        Activity=activity,
        Reason=exception_type.rsplit(".", 1)[-1],
        TargetName="" if target is None else str(target),
        TargetType="" if target is None else type(target).__name__.replace("str", "String"),
    )
    return RemoteErrorRecord(
        Exception=exception,
        CategoryInfo=info,
        TargetObject=target,
        FullyQualifiedErrorId=error_id,
    )


# --------------------------------------------------------------------------- parsing CREATE_PIPELINE
def statements_of(pipeline: psrpcore.PowerShell) -> list[list[ParsedCommand] | PipelineError]:
    """The statements of a CREATE_PIPELINE, in order.

    A statement PowerShell cannot bind (a parameter given twice, a positional argument no
    parameter takes) is its `PipelineError` instead: like PowerShell, the statements before
    it still run and the pipeline fails when it is reached.
    """
    statements: list[list[ParsedCommand] | PipelineError] = []
    current: list[ParsedCommand] = []
    failure: PipelineError | None = None
    for command in pipeline.commands:
        try:
            current.append(_parse_command(command))
        except PipelineError as error:
            failure = failure or error
        if command.end_of_statement:
            statements.append(failure or current)
            current, failure = [], None
    if current or failure:
        statements.append(failure or current)
    return statements


def _parse_command(command: psrpcore.Command) -> ParsedCommand:
    name = str(command.command_text)
    parameters: dict[str, Any] = {}
    seen: dict[str, str] = {}
    positional: list[Any] = []
    for raw_name, value in command.parameters:
        if raw_name is None:
            positional.append(value)
            continue
        parameter = str(raw_name).lstrip("-")
        if parameter.lower() in seen:
            raise PipelineError(
                f"Cannot bind parameter because parameter '{parameter}' is specified more than once. To provide "
                "multiple values to parameters that can accept multiple values, use the array syntax. For example, "
                '"-parameter value1,value2,value3".',
                error_id=f"ParameterAlreadyBound,{name}",
                category="InvalidArgument",
                exception_type="System.Management.Automation.ParameterBindingException",
            )
        seen[parameter.lower()] = parameter
        # pypsrp sends a switch as a parameter without a value (Nil); PowerShell binds it as present.
        parameters[parameter] = True if value is None else value
    if positional:
        if command.is_script:
            parameters[SCRIPT_ARGUMENTS] = positional
        else:
            # Position 0 of Exchange's and SharePoint's Get-/Set-/Remove- cmdlets is -Identity.
            if "identity" in seen or len(positional) > 1:
                extra = positional[1] if "identity" not in seen else positional[0]
                raise PipelineError(
                    f"A positional parameter cannot be found that accepts argument '{extra}'.",
                    error_id=f"PositionalParameterNotFound,{name}",
                    category="InvalidArgument",
                    exception_type="System.Management.Automation.ParameterBindingException",
                    target=str(extra),
                )
            parameters["Identity"] = positional[0]
    return ParsedCommand(name=name, parameters=parameters, is_script=bool(command.is_script))


def _peek_pipeline_id(data: bytes) -> uuid.UUID | None:
    """The pipeline id in the first PSRP message of a payload ([MS-PSRP] 2.2.4 / 2.2.1)."""
    if len(data) < 21 + 40 or not data[16] & 0x1:  # needs a start fragment with a message header
        return None
    return uuid.UUID(bytes_le=bytes(data[21 + 24 : 21 + 40]))


# --------------------------------------------------------------------------- reading CREATE_PIPELINE once per shape
_STRING_VALUE = re.compile(rb'<S N="V">([^<]*)</S>')
"""A parameter's string value in a CREATE_PIPELINE (an Args entry: ``<S N="N">name</S><S N="V">value</S>``)."""


class _PipelineReadings:
    """psrpcore's reading of each CREATE_PIPELINE shape, with the string parameter values put in per message.

    psrpcore reads a CREATE_PIPELINE into some eighty PSObjects and then into a `psrpcore.PowerShell`
    (2 ms of the lab's CPU per pipeline, the most expensive thing the lab does). A client's
    per-server queries differ only in their string parameter values (``-Server EX0001``), so
    the first message of a shape (everything but those values) is read by psrpcore with a
    marker in place of each value, and every message of the shape, the first included, is that
    reading with the markers replaced by the message's own values, each read as psrpcore reads
    a string. Messages with a SecureString (whose reading depends on the session key) are read
    by psrpcore whole. tests/lab/test_pipeline_readings.py checks the readings equal psrpcore's.
    """

    _LIMIT = 64  # shapes kept per shell; a message of any other shape is read by psrpcore each time
    _COMMAND_FIELDS = (
        "end_of_statement",
        "merge_unclaimed",
        "_merge_my",
        "_merge_to",
        "_merge_error",
        "_merge_warning",
        "_merge_verbose",
        "_merge_debug",
        "_merge_information",
    )

    def __init__(self, read: Callable[[bytes], PSObject]) -> None:
        self._read = read
        """CLIXML -> psrpcore's deserialized object, with the shell's cipher and capabilities."""
        self._marker = f"hybridtrust-value-{uuid.uuid4().hex}-"
        self._shapes: dict[bytes, psrpcore.PowerShell] = {}

    def pipeline(self, data: bytes) -> psrpcore.PowerShell:
        if b"<SS" in data:
            return psrpcore.PowerShell.FromPSObjectForRemoting(self._read(data))
        values = _STRING_VALUE.findall(data)
        shape = _STRING_VALUE.sub(b'<S N="V"/>', data)
        template = self._shapes.get(shape)
        if template is None:
            markers = iter(range(len(values)))
            masked = _STRING_VALUE.sub(lambda _: f'<S N="V">{self._marker}{next(markers)}</S>'.encode(), data)
            template = psrpcore.PowerShell.FromPSObjectForRemoting(self._read(masked))
            if len(self._shapes) < self._LIMIT:
                self._shapes[shape] = template
        strings = {f"{self._marker}{index}": self._string(value) for index, value in enumerate(values)}
        return self._with_values(template, strings)

    def _string(self, text: bytes) -> Any:
        if b"&" in text or b"_x" in text or b"\r" in text:
            return self._read(b"<S>" + text + b"</S>")  # XML's entities or PowerShell's _xHHHH_ escapes
        return PSString(text.decode())  # what psrpcore reads from <S> without either

    def _with_values(self, template: psrpcore.PowerShell, strings: dict[str, Any]) -> psrpcore.PowerShell:
        pipeline = psrpcore.PowerShell(
            add_to_history=template.add_to_history,
            apartment_state=template.apartment_state,
            history=template.history,
            host=template.host,
            is_nested=template.is_nested,
            no_input=template.no_input,
            remote_stream_options=template.remote_stream_options,
            redirect_shell_error_to_out=template.redirect_shell_error_to_out,
        )
        for command in template.commands:
            copy = psrpcore.Command(
                name=command.command_text, is_script=command.is_script, use_local_scope=command.use_local_scope
            )
            copy.parameters = [
                (name, strings.get(value, value) if isinstance(value, str) else value)
                for name, value in command.parameters
            ]
            for field in self._COMMAND_FIELDS:
                setattr(copy, field, getattr(command, field))
            pipeline.commands.append(copy)
        return pipeline


# --------------------------------------------------------------------------- the shell
class _RunspacePool(psrpcore.ServerRunspacePool):
    """psrpcore's server pool, reading the call id of SET_MAX/MIN_RUNSPACES case-insensitively,
    and each CREATE_PIPELINE through `_PipelineReadings`.

    pypsrp names that property ``CI``, psrpcore looks for ``ci``; PowerShell itself reads
    PSObject properties case-insensitively, so a real server accepts both.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._readings = _PipelineReadings(self._deserialize)

    def _deserialize(self, data: bytes) -> PSObject:
        return deserialize(
            ElementTree.fromstring(data),
            cipher=self._cipher,
            our_capability=self.our_capability,
            their_capability=self.their_capability,
        )

    def _process_message(self, message: PSRPMessage) -> psrpcore.PSRPEvent:
        # psrpcore's own steps for a CREATE_PIPELINE (deserialize, create the event, store the
        # pipeline's metadata), with the reading from `_PipelineReadings`. The event carries no
        # object: the lab reads the pipeline from the metadata stored here (PSRPShell._pipeline_of).
        if message.message_type != PSRPMessageType.CreatePipeline:
            return super()._process_message(message)
        pipeline = self._readings.pipeline(bytes(message.data))
        event = psrpcore.PSRPEvent.create(message.message_type, None, message.runspace_pool_id, message.pipeline_id)
        if event.pipeline_id not in self.pipeline_table:
            raise psrpcore.PSRPCoreError(f"Failed to find pipeline for incoming event {event.pipeline_id!s}")
        self.pipeline_table[event.pipeline_id].metadata = pipeline
        return event

    def _process_SetMaxRunspaces(self, event: psrpcore.SetMaxRunspacesEvent) -> None:
        _lowercase_ci(event)
        super()._process_SetMaxRunspaces(event)

    def _process_SetMinRunspaces(self, event: psrpcore.SetMinRunspacesEvent) -> None:
        _lowercase_ci(event)
        super()._process_SetMinRunspaces(event)


class _Pipeline(psrpcore.ServerPipeline):
    """psrpcore's server pipeline, its PIPELINE_STATE messages serialized once per state.

    Every command announces Running and then Completed, and psrpcore serializes a new
    PipelineState object each time, several percent of the lab's CPU per command; without an
    error the message is the same bytes every time. A state change with an error goes through
    psrpcore as before.
    """

    def _change_state(self, state: PSInvocationState, error: ErrorRecord | None = None, emit: bool = True) -> None:
        if emit and error is None:
            _queue_serialized(self, PSRPMessageType.PipelineState, _pipeline_state_clixml(state))
            emit = False
        super()._change_state(state, error, emit)


@functools.cache
def _pipeline_state_clixml(state: PSInvocationState) -> bytes:
    # What psrpcore's prepare_message serializes for the message (PipelineState carries no secret).
    element = serialize(PipelineState(PipelineState=int(state)), None)  # type: ignore[arg-type]
    return ElementTree.tostring(element, encoding="utf-8", method="xml")


def _queue_serialized(pipeline: psrpcore.ServerPipeline, message_type: PSRPMessageType, data: bytes) -> None:
    """Queue a message of a pipeline whose CLIXML is already made, as psrpcore's prepare_message does.

    psrpcore 0.3 has no public way to queue serialized data.
    """
    pool = pipeline.runspace_pool
    message = create_message(pool._is_client, message_type, data, pool.runspace_pool_id, pipeline.pipeline_id)
    pool._send_buffer.append(
        PSRPMessage(
            message_type,
            bytearray(message),
            pool.runspace_pool_id,
            pipeline.pipeline_id,
            pool._fragment_counter,
            StreamType.default,
        )
    )


def _lowercase_ci(event: psrpcore.PSRPEvent) -> None:
    message = event._ps_object  # psrpcore exposes the received object only as this attribute
    try:
        message.ci  # noqa: B018 - probing for the property
    except AttributeError:
        psrpcore.types.add_note_property(message, "ci", message.CI)


@dataclass
class _Run:
    command_id: str
    pipeline: psrpcore.ServerPipeline
    statements: list[list[ParsedCommand] | PipelineError] | None = None
    activity: str = ""  # the first command's name, for ErrorRecord.CategoryInfo.Activity
    metadata_only: bool = False
    started: bool = False
    finished: bool = False
    stop_requested: bool = False
    closed: bool = False
    thread: threading.Thread | None = None
    input_count: int = 0  # PIPELINE_INPUT objects received (the lab's cmdlets take no input)


class PSRPShell:
    """One runspace pool (a WinRM shell whose resource is a PowerShell configuration)."""

    def __init__(
        self,
        shell_id: str,
        creation_data: bytes,
        *,
        runner: Runner,
        observer: PipelineObserver | None = None,
        name: str = "lab",
        serialized: Callable[[Any], bytes | None] | None = None,
    ) -> None:
        self.shell_id = shell_id
        self.name = name
        self._runner = runner
        self._observer = observer
        self._serialized = serialized
        """An output object's CLIXML when a cache has it (hybridtrust.lab.output_cache), else None."""
        self._cond = threading.Condition(threading.RLock())
        self._pool = _RunspacePool(application_private_data={"PSVersionTable": dict(PS_VERSION_TABLE)})
        self._outbox: dict[uuid.UUID | None, deque[bytes]] = {}
        self._runs: dict[str, _Run] = {}
        self._closed = False
        with self._cond:
            self._feed(creation_data)
            if self._pool.state != RunspacePoolState.Opened:
                raise internal_error(
                    f"The runspace pool could not be opened from the creationXml (state {self._pool.state.name})."
                )

    # -- Shell protocol (called by wsman.WSManService) ------------------------------
    def command(self, command_id: str | None, arguments: bytes) -> str:
        pipeline_id = _peek_pipeline_id(arguments)
        if pipeline_id is None:
            if not command_id:
                raise WSManFault(
                    code=2150858817,
                    subcode="w:SchemaValidationError",
                    message="The Command request of a PowerShell shell carries no CREATE_PIPELINE fragment. ",
                )
            pipeline_id = uuid.UUID(command_id)
        command_id = (command_id or str(pipeline_id)).upper()
        with self._cond:
            self._check_open()
            pipeline = _Pipeline(self._pool, pipeline_id)
            self._runs[command_id] = _Run(command_id, pipeline)
            self._feed(arguments)
        return command_id

    def send(self, command_id: str | None, stream: str, data: bytes) -> None:
        with self._cond:
            self._check_open()
            if command_id and command_id.upper() not in self._runs:
                raise command_not_found()
            self._feed(data)

    def receive(self, command_id: str | None, timeout: float, max_bytes: int) -> ReceiveResult:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            run = None
            if command_id:
                run = self._runs.get(command_id.upper())
                if run is None:
                    raise command_not_found()
            target = run.pipeline.pipeline_id if run is not None else None
            box = self._outbox.setdefault(target, deque())
            while not box and not (run is not None and run.finished) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return ReceiveResult([])
                self._cond.wait(remaining)
            chunks: list[bytes] = []
            size = 0
            while box and (not chunks or size + len(box[0]) <= max_bytes):
                chunk = box.popleft()
                chunks.append(chunk)
                size += len(chunk)
            done = run is not None and not box and (run.finished or self._closed)
            if self._closed and run is None and not chunks:
                raise internal_error("The runspace pool was closed.")
            if done and run is not None:
                # Its last Receive: the client has everything; a later Signal(terminate) finds it gone.
                self._forget(run)
            return ReceiveResult(chunks, done)

    def signal(self, command_id: str, code: str) -> None:
        code_l = code.lower()
        with self._cond:
            run = self._runs.get(command_id.upper())
            if run is None:
                if code_l.endswith("terminate"):
                    return  # closing a command that already went away is fine
                raise command_not_found()
            if code_l.endswith("ctrl_c") or code_l.endswith("crtl_c"):
                self._request_stop(run)
            elif code_l.endswith("terminate"):
                self._request_stop(run)
                self._forget(run)
            self._cond.notify_all()

    def _forget(self, run: _Run) -> None:
        """Drop a command for good (lock held): psrpcore's pipeline table, its outbox, our record."""
        run.closed = True
        self._runs.pop(run.command_id, None)
        self._outbox.pop(run.pipeline.pipeline_id, None)
        self._pool.pipeline_table.pop(run.pipeline.pipeline_id, None)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for run in list(self._runs.values()):
                self._request_stop(run)
                run.closed = True
            self._runs.clear()
            self._pool.pipeline_table.clear()
            self._outbox.clear()
            self._cond.notify_all()

    # -- PSRP events ------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Hand a payload to psrpcore and act on every event it completes (lock held)."""
        try:
            self._pool.receive_data(psrpcore.PSRPPayload(data, psrpcore.StreamType.default, None))
            while (event := self._pool.next_event()) is not None:
                self._on_event(event)
        except psrpcore.PSRPCoreError as error:
            raise WSManFault(
                code=2150858817,
                subcode="w:SchemaValidationError",
                message=f"The PowerShell data could not be processed: {error} ",
            ) from error
        self._drain()

    def _on_event(self, event: psrpcore.PSRPEvent) -> None:
        if isinstance(event, psrpcore.CreatePipelineEvent | psrpcore.GetCommandMetadataEvent):
            run = self._run_for(event.pipeline_id)
            if isinstance(event, psrpcore.GetCommandMetadataEvent):
                run.metadata_only = True
                self._start(run)
                return
            pipeline = self._pipeline_of(event)
            commands = pipeline.commands
            run.activity = str(commands[0].command_text) if commands else ""
            run.statements = statements_of(pipeline)
            if pipeline.no_input:
                self._start(run)
        elif isinstance(event, psrpcore.PipelineInputEvent):
            self._run_for(event.pipeline_id).input_count += 1
        elif isinstance(event, psrpcore.EndOfPipelineInputEvent):
            run = self._run_for(event.pipeline_id)
            if not run.started:
                self._start(run)
        elif isinstance(
            event, psrpcore.SetMaxRunspacesEvent | psrpcore.SetMinRunspacesEvent | psrpcore.ResetRunspaceStateEvent
        ):
            self._pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, psrpcore.GetAvailableRunspacesEvent):
            busy = sum(1 for r in self._runs.values() if r.started and not r.finished)
            self._pool.runspace_availability_response(event.ci, max(0, self._pool.max_runspaces - busy))
        # SessionCapability, InitRunspacePool and PublicKey are answered by psrpcore itself;
        # host responses are not expected (the lab's cmdlets never prompt).

    def _pipeline_of(self, event: psrpcore.CreatePipelineEvent) -> psrpcore.PowerShell:
        """The pipeline a CREATE_PIPELINE carries, as `_RunspacePool` stored it while processing the event.

        (``event.pipeline`` would deserialize the message again; the lab's events carry no object.)
        """
        stored = self._pool.pipeline_table[event.pipeline_id].metadata
        if not isinstance(stored, psrpcore.PowerShell):
            raise internal_error(f"The pipeline {event.pipeline_id} has no CREATE_PIPELINE reading.")
        return stored

    def _run_for(self, pipeline_id: uuid.UUID | None) -> _Run:
        for run in self._runs.values():
            if run.pipeline.pipeline_id == pipeline_id:
                return run
        raise command_not_found()

    def _start(self, run: _Run) -> None:
        run.started = True
        run.pipeline.start()
        self._drain()
        if run.metadata_only:
            # The lab publishes no command metadata: an empty, completed answer.
            self._finish(run)
            return
        if self._observer is not None:
            try:
                self._observer([s for s in run.statements or [] if not isinstance(s, PipelineError)])
            except Exception:
                log.exception("pipeline observer failed")
        run.thread = threading.Thread(
            target=self._execute, args=(run,), name=f"{self.name}-pipeline-{run.command_id[:8]}", daemon=True
        )
        run.thread.start()

    # -- running a pipeline ---------------------------------------------------------
    def _execute(self, run: _Run) -> None:
        activity = ""
        try:
            for statement in run.statements or []:
                if isinstance(statement, PipelineError):
                    raise statement
                # CategoryInfo.Activity names the cmdlet; a script has none.
                activity = statement[0].name if statement and not statement[0].is_script else ""
                items: Iterator[Any] = iter(self._runner(statement))
                with contextlib.closing(items) if hasattr(items, "close") else contextlib.nullcontext():
                    for item in items:
                        with self._cond:
                            if run.stop_requested or run.closed or self._closed:
                                break
                            if isinstance(item, BaseException):
                                record = error_record(item, activity)
                                run.pipeline.prepare_message(record, psrpcore.types.PSRPMessageType.ErrorRecord)
                            else:
                                self._write_output(run, item)
                            self._drain()
                with self._cond:
                    if run.stop_requested or run.closed or self._closed:
                        break
        except Exception as error:  # a raised error terminates the pipeline: state Failed
            if not hasattr(error, "error_id"):
                log.exception("lab pipeline %s failed", activity)
            with self._cond:
                self._fail(run, error, activity)
            return
        with self._cond:
            if run.stop_requested and not run.closed:
                if run.pipeline.state == PSInvocationState.Stopping:
                    run.pipeline.stop()
                run.finished = True
                self._drain()
            else:
                self._finish(run)

    def _write_output(self, run: _Run, item: Any) -> None:
        data = self._serialized(item) if self._serialized is not None else None
        if data is None:
            run.pipeline.write_output(item)
            return
        _queue_serialized(run.pipeline, PSRPMessageType.PipelineOutput, data)

    def _finish(self, run: _Run) -> None:
        if not run.closed and run.pipeline.state == PSInvocationState.Running:
            run.pipeline.complete()
        run.finished = True
        self._drain()

    def _fail(self, run: _Run, error: BaseException, activity: str) -> None:
        if not run.closed and run.pipeline.state == PSInvocationState.Running:
            # psrpcore 0.3 has no public "failed" transition; this is the PIPELINE_STATE
            # message PowerShell sends, with the terminating error as the reason.
            record = error_record(error, activity)
            run.pipeline.prepare_message(
                PipelineState(PipelineState=int(PSInvocationState.Failed), ExceptionAsErrorRecord=record)
            )
            run.pipeline.state = PSInvocationState.Failed
        run.finished = True
        self._drain()

    def _request_stop(self, run: _Run) -> None:
        run.stop_requested = True
        if run.finished:
            return
        if run.pipeline.state == PSInvocationState.Running:
            run.pipeline.begin_stop()
        if not run.started or run.thread is None:
            # Nothing runs for it (waiting for input): it stops right away.
            if run.pipeline.state in (PSInvocationState.Running, PSInvocationState.Stopping) and not run.closed:
                run.pipeline.stop()
            run.finished = True
            self._drain()

    # -- outgoing data --------------------------------------------------------------
    def _drain(self) -> None:
        """Move psrpcore's queued fragments into per-target outboxes and wake Receives (lock held)."""
        while (payload := self._pool.data_to_send(FRAGMENT_SIZE)) is not None:
            run_closed = payload.pipeline_id is not None and not any(
                r.pipeline.pipeline_id == payload.pipeline_id for r in self._runs.values()
            )
            if run_closed:
                continue  # the client terminated that command; nobody will receive it
            self._outbox.setdefault(payload.pipeline_id, deque()).append(payload.data)
        self._cond.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise internal_error("The runspace pool is closed.")


__all__ = [
    "FRAGMENT_SIZE",
    "PSRPShell",
    "ParsedCommand",
    "PipelineError",
    "PipelineObserver",
    "RemoteErrorRecord",
    "Runner",
    "error_record",
    "statements_of",
]
