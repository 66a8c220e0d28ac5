"""Changes made through PowerShell remoting: Exchange cmdlets, SharePoint cmdlets and the STS toggle.

Exchange's endpoint is NoLanguage, so a change is always ONE cmdlet with literal
parameters, sent with pypsrp's ``add_cmdlet``/``add_parameter`` (via
`hybridtrust.sources.remoting.Command`): no script, no string-built command, and no
value from a profile or from a server is ever parsed as PowerShell. SharePoint's
endpoint is full-language; only its ``AllowOAuthOverHttp`` toggle (an object property
and ``Update()``, which no cmdlet sets) is sent as a statement, built from a boolean,
never from text.

A cmdlet change's ``target`` (JSON, kept in the remediation record)::

    {"endpoint": "exchange",
     "command": {"cmdlet": "Set-AuthServer", "parameters": [["Identity", "EvoSts - ..."], ["Enabled", true]]},
     "probe": {"cmdlet": "Get-AuthServer", "parameters": [["Identity", "EvoSts - ..."]],
               "match": null, "properties": ["Enabled", ...]},
     "expect": {"Enabled": true}}           # or {"exists": true} for New-/Add-, {"exists": false} for Remove-

A parameter value of ``null`` is a switch (``-IsTrustBroker``). The probe is the Get-
cmdlet that reads the object before and after the write; ``properties`` are the same for
every change of one cmdlet (`PROBE_PROPERTIES`), so two changes of one object compare
like with like. Optional ``merge`` names list parameters computed again when the change
is written, from the object as re-read then (``{"TargetAddressDomains": {"from":
["TargetAddressDomains"], "add": ["fabrikam.mail.onmicrosoft.com"]}}``); ``sent`` records
the command as it was actually sent. The undo (``Change.undo``) is a command whose
``restore`` parameters take back the values recorded just before the write
(`undo_for`), and ``expect_before`` names the properties rollback must bring back.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pypsrp.powershell import RunspacePool

from hybridtrust.facts import AUTHENTICATION_FLAGS, VIRTUAL_DIRECTORY_CMDLETS
from hybridtrust.powershell import PSRecord
from hybridtrust.remediation.sharepoint import STS_PROBE, StatementError, send_statement
from hybridtrust.sources.remoting import (
    REMOTING_ERRORS,
    Command,
    Outcome,
    RemotingSettings,
    SettingsError,
    close_pool,
    describe_transport_error,
    open_pool,
    run_commands,
)

SNAP_IN = "Microsoft.SharePoint.PowerShell"
_VDIR_PROPERTIES = (
    "InternalAuthenticationMethods",
    "ExternalAuthenticationMethods",
    *AUTHENTICATION_FLAGS.values(),
)
PROBE_PROPERTIES: dict[str, tuple[str, ...] | None] = {
    "Get-AuthServer": (
        "Name",
        "Type",
        "Realm",
        "AuthMetadataUrl",
        "Enabled",
        "IsDefaultAuthorizationEndpoint",
        "DomainName",
    ),
    "Get-PartnerApplication": ("Name", "Enabled", "LinkedAccount", "UseAuthServer", "AuthMetadataUrl"),
    "Get-IntraOrganizationConnector": ("Name", "Enabled", "TargetAddressDomains", "DiscoveryEndpoint"),
    "Get-AvailabilityAddressSpace": ("ForestName", "AccessMethod", "UseServiceAccount", "ProxyUrl"),
    "Get-ManagementRoleAssignment": ("Name", "Role", "RoleAssigneeName", "Enabled"),
    "Get-MailUser": ("Name", "HiddenFromAddressListsEnabled"),
    "Get-OrganizationConfig": ("OAuth2ClientProfileEnabled",),
    "Get-SettingOverride": ("Name", "ComponentName", "SectionName", "Parameters", "Reason", "Server"),
    **{cmdlet: _VDIR_PROPERTIES for cmdlet in VIRTUAL_DIRECTORY_CMDLETS.values()},
    "Get-SPAuthenticationRealm": None,  # a string: the record's text is the value
    "Get-SPTrustedSecurityTokenIssuer": ("Name", "RegisteredIssuerName", "IsSelfIssuer", "MetadataEndPoint"),
    "Get-SPServiceApplicationProxy": ("Name", "MetadataEndpointUri"),
    "Get-SPAppPrincipal": ("NameIdentifier", "DisplayName"),
}


# -- values ---------------------------------------------------------------------------------------------
def plain_value(value: Any) -> Any:
    """A property value as JSON: lists of text, booleans, numbers, text; ``""`` is None."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, PSRecord):
        return value.text
    if isinstance(value, list | tuple):
        return [plain_value(item) for item in value if item is not None]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    text = str(value)
    return text or None


def snapshot(record: PSRecord | None, properties: Sequence[str] | None) -> Any:
    """What a probe reads of one object: the named properties, or the text of a string output."""
    if record is None:
        return None
    if properties is None:
        return (record.text or "").strip() or None
    return {name: plain_value(record.get(name)) for name in properties}


def _text_of(record: PSRecord, name: str) -> str:
    return (record.text_of(name) or "").strip().lower()


def matching(records: Iterable[PSRecord], match: Mapping[str, str] | None) -> list[PSRecord]:
    """The records whose properties equal `match` (case-insensitive), all of them without one."""
    found = list(records)
    if not match:
        return found
    return [
        record for record in found if all(_text_of(record, key) == str(value).lower() for key, value in match.items())
    ]


def probe(
    cmdlet: str, parameters: Sequence[tuple[str, Any]] = (), match: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "cmdlet": cmdlet,
        "parameters": [list(item) for item in parameters],
        "match": dict(match) if match else None,
        "properties": list(PROBE_PROPERTIES[cmdlet]) if PROBE_PROPERTIES[cmdlet] is not None else None,
    }


def planned_value(records: Iterable[PSRecord], spec: Mapping[str, Any], identity: str | None = None) -> Any:
    """The probe's value as this run's facts give it (the plan's `before`)."""
    chosen = matching(records, spec.get("match"))
    if identity is not None:
        wanted = identity.strip().lower()
        chosen = [r for r in chosen if wanted in (_text_of(r, "Identity"), _text_of(r, "Name"))]
    if len(chosen) != 1:
        return None
    return snapshot(chosen[0], spec.get("properties"))


def restored_value(recorded: Any, properties: Sequence[str]) -> Any:
    """What an undo parameter takes back: one property's recorded value, or the union of several method lists."""
    if not isinstance(recorded, dict):
        return recorded  # a string output (the SharePoint realm): the value itself
    if len(properties) == 1:
        return recorded.get(properties[0])
    union: list[str] = []
    for name in properties:
        for item in recorded.get(name) or []:
            if str(item).lower() not in {u.lower() for u in union}:
                union.append(str(item))
    return union


def merged_parameters(command: Mapping[str, Any], merge: Mapping[str, Any] | None, current: Any) -> dict[str, Any]:
    """The command with its list parameters computed from the object as it is now: what it holds + what is added."""
    if not merge or not isinstance(current, dict):
        return dict(command)
    parameters = []
    for name, value in command.get("parameters", []):
        spec = merge.get(name)
        if spec is not None:
            value = (
                restored_value(current, spec["from"])
                if len(spec["from"]) > 1
                else list(current.get(spec["from"][0]) or [])
            )
            for item in spec["add"]:
                if str(item).lower() not in {str(v).lower() for v in value}:
                    value = [*value, item]
        parameters.append([name, value])
    return {**command, "parameters": parameters}


def undo_for(undo: Mapping[str, Any], recorded: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The undo command and its expectation, with the values recorded just before the fix filled in.

    A scalar recorded as empty cannot be sent back (a None parameter would be a switch):
    that parameter is left out and said so.
    """
    restore: Mapping[str, list[str]] = undo.get("restore") or {}
    notes: list[str] = []
    parameters = []
    for name, value in undo["command"].get("parameters", []):
        if name in restore:
            value = restored_value(recorded, restore[name])
            if value is None:
                notes.append(f"-{name} was empty before the fix and is left as it is")
                continue
        parameters.append([name, value])
    expect = dict(undo.get("expect") or {})
    for name in undo.get("expect_before") or []:
        if name == "$value" or not isinstance(recorded, dict):
            expect["value"] = recorded
        elif recorded.get(name) is not None or name not in restore:
            expect[name] = recorded.get(name)
    return {**undo["command"], "parameters": parameters}, expect, notes


# -- how a command reads -----------------------------------------------------------------------------------
def _literal(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "$true" if value else "$false"
    if isinstance(value, list | tuple):
        return ",".join(_literal(item) for item in value) if value else "@()"
    text = str(value)
    return "'" + text.replace("'", "''") + "'"


def command_text(command: Mapping[str, Any]) -> str:
    """The command as an administrator would type it (for people only: it is never executed as text)."""
    parts = [str(command["cmdlet"])]
    for name, value in command.get("parameters", []):
        if value is None:
            parts.append(f"-{name}")
        elif isinstance(value, bool):
            parts.append(f"-{name}:{_literal(value)}" if name == "Confirm" else f"-{name} {_literal(value)}")
        else:
            parts.append(f"-{name} {_literal(value)}")
    return " ".join(parts)


def cmdlet_target(
    endpoint: str, cmdlet: str, parameters: Sequence[tuple[str, Any]], spec: dict[str, Any], expect: dict[str, Any]
) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "command": {"cmdlet": cmdlet, "parameters": [list(item) for item in parameters]},
        "probe": spec,
        "expect": expect,
    }


def undo_command(cmdlet: str, parameters: Sequence[tuple[str, Any]], expect: dict[str, Any]) -> dict[str, Any]:
    return {"command": {"cmdlet": cmdlet, "parameters": [list(item) for item in parameters]}, "expect": expect}


def _same_text(left: Any, right: Any) -> bool:
    return str(left).strip().lower() == str(right).strip().lower()


def unmet(expect: Mapping[str, Any], value: Any) -> list[str]:
    """Where a probed value does not show what a change wanted (empty: it does)."""
    if "exists" in expect:
        present = value is not None
        if present == bool(expect["exists"]):
            problems: list[str] = []
        else:
            problems = ["the object does not exist" if expect["exists"] else "the object still exists"]
        if present and isinstance(value, dict):
            problems += unmet({k: v for k, v in expect.items() if k != "exists"}, value)
        return problems
    if value is None:
        return ["the object was not found"]
    if not isinstance(value, dict):
        wanted = expect.get("value")
        return [] if _same_text(value, wanted) else [f"the value is {value!r}, not {wanted!r}"]
    problems = []
    for name, wanted in expect.items():
        found = value.get(name)
        if isinstance(wanted, dict):
            # {"contains": [...]} / {"excludes": [...]}: a method list must (not) hold these, whatever else it holds.
            have = {str(item).lower() for item in found or []}
            lacking = [item for item in wanted.get("contains", []) if str(item).lower() not in have]
            extra = [item for item in wanted.get("excludes", []) if str(item).lower() in have]
            if lacking:
                problems.append(f"{name} {found} lacks {lacking}")
            if extra:
                problems.append(f"{name} {found} still holds {extra}")
        elif isinstance(wanted, list):
            found_set = {str(item).lower() for item in found or []}
            if found_set != {str(item).lower() for item in wanted}:
                problems.append(f"{name} is {found}, not {wanted}")
        elif isinstance(wanted, bool) or wanted is None:
            if found != wanted:
                problems.append(f"{name} is {found!r}, not {wanted!r}")
        elif not _same_text(found, wanted):
            problems.append(f"{name} is {found!r}, not {wanted!r}")
    return problems


# -- talking to an endpoint ------------------------------------------------------------------------------------
class EndpointError(Exception):
    """An endpoint that cannot be reached or read; the message carries the server's words."""


class PowerShellEndpoint:
    """One runspace on one endpoint, opened on first use, used one command at a time.

    One runspace so that the SharePoint snap-in loaded first stays loaded, and so that
    changes reach the server strictly in the order the runner sends them (S3's order).
    """

    def __init__(self, name: str, settings: RemotingSettings | SettingsError | None) -> None:
        self.name = name
        self.settings = settings
        self._pool: RunspacePool | None = None
        self._count = 0

    @property
    def uri(self) -> str:
        return self.settings.uri if isinstance(self.settings, RemotingSettings) else f"the profile's [{self.name}]"

    def _open(self) -> RunspacePool:
        if self._pool is not None:
            return self._pool
        if self.settings is None:
            raise EndpointError(f"the profile has no [{self.name}] section: {self.name} cannot be changed")
        if isinstance(self.settings, SettingsError):
            raise EndpointError(f"cannot connect to {self.name}: {self.settings}")
        try:
            pool = open_pool(self.settings, 1)
        except REMOTING_ERRORS as error:
            raise EndpointError(
                f"could not open {self.name} remote PowerShell at {self.settings.uri} as {self.settings.who}: "
                f"{describe_transport_error(error, self.settings)}"
            ) from None
        self._pool = pool
        if self.name == "sharepoint":
            outcome = self._run(Command("snap-in", "Add-PSSnapin", (("Name", SNAP_IN),)))
            if outcome.error and "already added" not in outcome.error:
                raise EndpointError(f"Add-PSSnapin {SNAP_IN} on {self.settings.uri}: {outcome.error}")
        return pool

    def _run(self, command: Command) -> Outcome:
        assert isinstance(self.settings, RemotingSettings) and self._pool is not None
        return run_commands(self._pool, [command], self.settings, window=1)[command.key]

    def run(self, command: Mapping[str, Any]) -> Outcome:
        """One cmdlet with literal parameters (add_cmdlet/add_parameter only)."""
        self._open()
        self._count += 1
        parameters = tuple((str(name), value) for name, value in command.get("parameters", []))
        return self._run(Command(f"{command['cmdlet']}#{self._count}", str(command["cmdlet"]), parameters))

    def read(self, spec: Mapping[str, Any]) -> Any:
        """The probe's value now: None when the object does not exist."""
        outcome = self.run(spec)
        if outcome.error is not None:
            if outcome.not_found:
                return None
            raise EndpointError(f"{command_text(spec)} on {self.uri}: {outcome.error}")
        chosen = matching(outcome.records, spec.get("match"))
        if len(chosen) > 1:
            raise EndpointError(f"{command_text(spec)} on {self.uri}: {len(chosen)} objects match, expected one")
        return snapshot(chosen[0], spec.get("properties")) if chosen else None

    def statement(self, text: str) -> list[Any]:
        """A statement on the full-language SharePoint endpoint (the STS toggle and its probe only)."""
        if self.name != "sharepoint":
            raise EndpointError("statements are only ever sent to SharePoint; Exchange's endpoint is NoLanguage")
        pool = self._open()
        assert isinstance(self.settings, RemotingSettings)
        try:
            return send_statement(pool, self.settings, text)
        except StatementError as error:
            raise EndpointError(str(error)) from None

    def read_sts(self) -> bool | None:
        output = self.statement(STS_PROBE)
        value = output[0] if output else None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return None

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(*REMOTING_ERRORS):
                close_pool(self._pool)
            self._pool = None
