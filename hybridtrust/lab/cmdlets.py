"""The cmdlets behind the lab's PowerShell endpoints, with Exchange's and SharePoint's manners.

The WinRM/PSRP layer (``hybridtrust.lab.psrp_server``) hands every statement of a
pipeline to `invoke` as `Invocation`s: the command name and its parameters as
psrpcore deserialized them. `invoke` yields what the product would write to the
output stream (psrpcore objects from ``hybridtrust.lab.exchange_objects``) and
the errors it would write, as `CmdletError`s:

- a *yielded* `CmdletError` is a non-terminating error (Exchange's
  ``WriteError``: an identity that is not found by a ``Get-`` cmdlet, one server
  whose IIS cannot be read); the pipeline goes on;
- a *raised* `CmdletError` is terminating (unknown command, unknown parameter,
  scripts in a NoLanguage runspace, a ``Set-`` whose object does not exist, a
  value that cannot be bound); the pipeline fails with it.

The Exchange endpoint is ``Microsoft.Exchange``, a NoLanguage runspace: only
commands with parameters run, any script text is refused with PowerShell's
ScriptsNotAllowed parse error. The SharePoint endpoint is ``Microsoft.PowerShell``
(full language); the lab understands the simple statements a collector or a fix
sends there (one command per line or ``;``, literal arguments, the
``$config = Get-SPSecurityTokenServiceConfig; $config.AllowOAuthOverHttp = $false;
$config.Update()`` idiom) and answers the collector's two projection functions
(`SHAREPOINT_PROJECTIONS`) as if its script had defined them.

Every change goes through ``LabState.changing()``, so it is persisted and seen by
the Graph side of the lab at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from psrpcore.types import PSObject

from hybridtrust.certificates import decode_key_identifier
from hybridtrust.lab.exchange_objects import (
    AuthenticationMethod,
    Directory,
    exchange_object,
    ps_object,
    sharepoint_object,
    sharepoint_objects,
)
from hybridtrust.lab.pki import thumbprint
from hybridtrust.lab.state import EXCHANGE_NOUNS, LabState

MUTATING_VERBS = {"Set", "New", "Add", "Remove", "Register", "Enable", "Disable"}

Endpoint = Literal["exchange", "sharepoint"]
EXCHANGE_ONLINE = "00000002-0000-0ff1-ce00-000000000000"

_PS = "System.Management.Automation"
# What every cmdlet accepts (PowerShell's common parameters).
COMMON_PARAMETERS = (
    "Verbose",
    "Debug",
    "ErrorAction",
    "WarningAction",
    "InformationAction",
    "ErrorVariable",
    "WarningVariable",
    "InformationVariable",
    "OutVariable",
    "OutBuffer",
    "PipelineVariable",
)
SHOULD_PROCESS_PARAMETERS = ("WhatIf", "Confirm")


@dataclass
class Invocation:
    """One command of a pipeline."""

    name: str  # "Get-AuthServer" or, if is_script, the script text
    parameters: dict[str, Any]  # values as psrpcore deserialized them (switch = True)
    is_script: bool = False


class CmdletError(Exception):
    """What Exchange or PowerShell would put in the ErrorRecord."""

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
        self.error_id = error_id  # FullyQualifiedErrorId
        self.category = category  # ErrorCategory name
        self.exception_type = exception_type
        self.target = target
        self.terminating = terminating


# -- PowerShell's own errors ------------------------------------------------------------------------------------


def scripts_not_allowed(script: str) -> CmdletError:
    return CmdletError(
        "The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode.",
        error_id="ScriptsNotAllowed",
        category="ParserError",
        exception_type=f"{_PS}.ParseException",
        target=script,
        terminating=True,
    )


def command_not_found(name: str) -> CmdletError:
    return CmdletError(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable "
        "program. Check the spelling of the name, or if a path was included, verify that the path is correct "
        "and try again.",
        error_id="CommandNotFoundException",
        category="ObjectNotFound",
        exception_type=f"{_PS}.CommandNotFoundException",
        target=name,
        terminating=True,
    )


def _binding_error(message: str, reason: str, cmdlet: str, parameter: str) -> CmdletError:
    # PowerShell's parameter binder: one exception type, the reason in the FullyQualifiedErrorId.
    return CmdletError(
        message,
        error_id=f"{reason},{cmdlet}",
        category="InvalidArgument",
        exception_type=f"{_PS}.ParameterBindingException",
        target=parameter,
        terminating=True,
    )


def parameter_not_found(cmdlet: str, parameter: str) -> CmdletError:
    return _binding_error(
        f"A parameter cannot be found that matches parameter name '{parameter}'.",
        "NamedParameterNotFound",
        cmdlet,
        parameter,
    )


def _ambiguous_parameter(cmdlet: str, parameter: str, matches: list[str]) -> CmdletError:
    return _binding_error(
        f"Parameter cannot be processed because the parameter name '{parameter}' is ambiguous. "
        f"Possible matches include: {' '.join('-' + m for m in matches)}.",
        "AmbiguousParameter",
        cmdlet,
        parameter,
    )


def _missing_parameter(cmdlet: str, parameter: str) -> CmdletError:
    return _binding_error(
        f"Cannot process command because of one or more missing mandatory parameters: {parameter}.",
        "MissingMandatoryParameter",
        cmdlet,
        parameter,
    )


def _bad_value(cmdlet: str, parameter: str, value: Any, expected: str) -> CmdletError:
    return CmdletError(
        f"Cannot process argument transformation on parameter '{parameter}'. Cannot convert value "
        f'"{value}" to type "{expected}".',
        error_id=f"ParameterArgumentTransformationError,{cmdlet}",
        category="InvalidData",
        exception_type=f"{_PS}.ParameterBindingArgumentTransformationException",
        target=str(value),
        terminating=True,
    )


# -- the invocation context ---------------------------------------------------------------------------------------


@dataclass
class _Call:
    state: LabState
    endpoint: Endpoint
    cmdlet: _Cmdlet
    parameters: dict[str, Any]
    directory: Directory
    pipeline_input: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.cmdlet.name

    def has(self, name: str) -> bool:
        return name in self.parameters

    def text(self, name: str) -> str | None:
        value = self.parameters.get(name)
        return None if value is None else _as_text(value)

    def required_text(self, name: str) -> str:
        value = self.text(name)
        if value is None or value == "":
            raise _missing_parameter(self.name, name)
        return value

    def boolean(self, name: str) -> bool:
        value = self.parameters[name]
        if isinstance(value, bool):
            return value
        text = _as_text(value).strip().lower().lstrip("$")
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise _bad_value(self.name, name, value, "System.Boolean")

    def texts(self, name: str) -> list[str]:
        """A multi-valued parameter: a list, a single value, or $null (an empty list)."""
        value = self.parameters.get(name)
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return [_as_text(v) for v in value if v is not None]
        text = _as_text(value)
        return [part.strip() for part in text.split(",") if part.strip()] if text else []

    @property
    def what_if(self) -> bool:
        return bool(self.parameters.get("WhatIf"))

    def not_found(self, identity: str, *, terminating: bool) -> CmdletError:
        """Exchange's ManagementObjectNotFoundException, with its long FullyQualifiedErrorId."""
        stamp = datetime.now(UTC).strftime("%m/%d/%Y %I:%M:%S %p")
        ems = _management_server(self.state)
        failure = hashlib.sha1(f"{self.name}|{identity}".encode()).hexdigest()[:8].upper()  # just an id
        return CmdletError(
            f"The operation couldn't be performed because object '{identity}' couldn't be found on "
            f"'{self.directory.domain_controller}'.",
            error_id=(
                f"[Server={ems},RequestId={uuid.uuid4()},TimeStamp={stamp}] "
                f"[FailureCategory=Cmdlet-ManagementObjectNotFoundException] {failure},"
                f"{self.cmdlet.task_class}"
            ),
            category="NotSpecified",
            exception_type="Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
            target=identity,
            terminating=terminating,
        )

    def exchange_error(self, message: str, exception: str, *, category: str = "InvalidOperation") -> CmdletError:
        stamp = datetime.now(UTC).strftime("%m/%d/%Y %I:%M:%S %p")
        short = exception.rsplit(".", 1)[-1]
        return CmdletError(
            message,
            error_id=(
                f"[Server={_management_server(self.state)},RequestId={uuid.uuid4()},TimeStamp={stamp}] "
                f"[FailureCategory=Cmdlet-{short}] {self.cmdlet.task_class}"
            ),
            category=category,
            exception_type=exception,
            terminating=True,
        )


Handler = Callable[[_Call], Iterable[Any]]


@dataclass(frozen=True)
class _Cmdlet:
    name: str
    parameters: tuple[str, ...]
    handler: Handler
    task_class: str = ""
    mandatory: tuple[str, ...] = ()

    @property
    def verb(self) -> str:
        return self.name.split("-", 1)[0]

    def accepted(self, endpoint: Endpoint) -> list[str]:
        names = list(self.parameters) + list(COMMON_PARAMETERS)
        if endpoint == "exchange":
            names.append("DomainController")
        if self.verb in MUTATING_VERBS:
            names += list(SHOULD_PROCESS_PARAMETERS)
        return names


def _as_text(value: Any) -> str:
    """A parameter value as text: objects passed as -Identity give their ToString."""
    if isinstance(value, PSObject) and not isinstance(value, str):
        to_string = value.PSObject.to_string
        if to_string:
            return str(to_string)
        for name in ("Identity", "Name"):
            inner = getattr(value, name, None)
            if inner is not None:
                return _as_text(inner)
    return str(value)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _management_server(state: LabState) -> str:
    for server in state.objects("ExchangeServer"):
        if str(server.get("AdminDisplayVersion", "")).startswith("Version 15"):
            return str(server["Name"])
    return "localhost"


@functools.cache
def _accepted_lowercase(cmdlet: _Cmdlet, endpoint: Endpoint) -> tuple[tuple[str, str], ...]:
    """The parameter names a cmdlet accepts, each with its lowercase form (made once: every command binds)."""
    return tuple((name, name.lower()) for name in cmdlet.accepted(endpoint))


def _bind(cmdlet: _Cmdlet, endpoint: Endpoint, raw: Mapping[str, Any]) -> dict[str, Any]:
    """PowerShell's parameter binding: exact or unique-prefix names, case-insensitive."""
    accepted = _accepted_lowercase(cmdlet, endpoint)
    bound: dict[str, Any] = {}
    for given, value in raw.items():
        key = given.lstrip("-")
        wanted = key.lower()
        exact = [name for name, lower in accepted if lower == wanted]
        matches = exact or [name for name, lower in accepted if lower.startswith(wanted)]
        if not matches:
            raise parameter_not_found(cmdlet.name, key)
        if len(matches) > 1:
            raise _ambiguous_parameter(cmdlet.name, key, matches)
        bound[matches[0]] = value
    for name in cmdlet.mandatory:
        if bound.get(name) in (None, ""):
            raise _missing_parameter(cmdlet.name, name)
    return bound


# -- finding objects by identity ------------------------------------------------------------------------------------


def _identity_keys(noun: str, data: Mapping[str, Any]) -> set[str]:
    keys = {str(data.get(k, "")).lower() for k in ("Name", "Identity", "Guid", "DistinguishedName")}
    if noun.endswith("VirtualDirectory"):
        short = str(data.get("Name", "")).split(" (", 1)[0]
        keys.add(f"{data.get('Server', '')}\\{short}".lower())
    if noun in ("User", "MailUser"):
        for k in ("UserPrincipalName", "Alias", "SamAccountName", "PrimarySmtpAddress", "DisplayName"):
            if data.get(k):
                keys.add(str(data[k]).lower())
    if noun == "ExchangeCertificate":
        der = base64.b64decode(data["RawData"])
        keys.add(thumbprint(der).lower())
    keys.discard("")
    return keys


def _find(call: _Call, noun: str, identity: str) -> list[dict[str, Any]]:
    wanted = identity.strip().lower()
    return [data for data in call.state.objects(noun) if wanted in _identity_keys(noun, data)]


def _one(call: _Call, noun: str, identity: str) -> dict[str, Any]:
    """The object a Set-/Remove- cmdlet changes; not found or ambiguous is terminating."""
    found = _find(call, noun, identity)
    if not found:
        raise call.not_found(identity, terminating=True)
    if len(found) > 1:
        raise call.exchange_error(
            f"The operation couldn't be performed because '{identity}' matches multiple entries.",
            "Microsoft.Exchange.Configuration.Tasks.ManagementObjectAmbiguousException",
        )
    return found[0]


# -- Exchange: Get- cmdlets -----------------------------------------------------------------------------------------


def _render(call: _Call, noun: str, objects: Iterable[Mapping[str, Any]], **kwargs: Any) -> list[PSObject]:
    return [_build(call.state, call.directory, noun, data, kwargs) for data in objects]


def _build(
    state: LabState, directory: Directory, noun: str, data: Mapping[str, Any], options: dict[str, Any]
) -> PSObject:
    """One object as the cmdlet returns it; built once while the organization does not change when a
    benchmark turned the output cache on (hybridtrust.lab.output_cache)."""
    cache = state.output_cache
    if cache is None:
        return exchange_object(noun, data, directory, **options)
    return cache.object(noun, data, options, lambda: exchange_object(noun, data, directory, **options))


def render_everything(state: LabState) -> Iterator[PSObject]:
    """Every Exchange object as the Get- cmdlets of an audit return it (what output_cache.warm builds)."""
    for _, value in _render_by_cmdlet(state):
        yield value


def _render_by_cmdlet(state: LabState) -> Iterator[tuple[str, PSObject]]:
    directory = Directory.of(state)
    with state.lock:
        for noun in EXCHANGE_NOUNS:
            options = {"ad_properties_only": True} if noun.endswith("VirtualDirectory") else {}
            for data in list(state.objects(noun)):
                yield f"Get-{noun}", _build(state, directory, noun, data, options)


def _get(noun: str) -> Handler:
    """A plain Get- cmdlet: all objects, or those -Identity names (not found: a non-terminating error)."""

    def handler(call: _Call) -> Iterator[Any]:
        with call.state.lock:
            identity = call.text("Identity")
            selected = list(call.state.objects(noun)) if identity is None else _find(call, noun, identity)
            output: list[Any] = _render(call, noun, selected)
        if identity is not None and not selected:
            yield call.not_found(identity, terminating=False)
        yield from output

    return handler


def _servers_named(state: LabState, text: str) -> list[dict[str, Any]]:
    """The Exchange servers whose Name or Fqdn is ``text`` (case-insensitive), in the state's order."""
    servers = state.objects("ExchangeServer")
    index = state.derived("ExchangeServer by Name and Fqdn", lambda: _index_servers(servers), servers)
    return list(index.get(text.lower(), ()))


def _index_servers(servers: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    index: dict[str, list[dict[str, Any]]] = {}
    for server in servers:
        # A set: a server whose Name is also its Fqdn is listed once under it.
        for key in {server["Name"].lower(), str(server.get("Fqdn", "")).lower()}:
            index.setdefault(key, []).append(server)
    return index


def _certificates_of(state: LabState, server_name: str) -> list[dict[str, Any]]:
    """The ExchangeCertificate objects of one server (by its exact Name), in the state's order."""
    certificates = state.objects("ExchangeCertificate")

    def by_server() -> dict[Any, list[dict[str, Any]]]:
        index: dict[Any, list[dict[str, Any]]] = {}
        for certificate in certificates:
            index.setdefault(certificate.get("Server"), []).append(certificate)
        return index

    return list(state.derived("ExchangeCertificate by Server", by_server, certificates).get(server_name, ()))


def _get_virtual_directory(noun: str) -> Handler:
    def handler(call: _Call) -> Iterator[Any]:
        ad_only = bool(call.parameters.get("ADPropertiesOnly"))
        with call.state.lock:
            identity = call.text("Identity")
            server = call.text("Server")
            selected = list(call.state.objects(noun)) if identity is None else _find(call, noun, identity)
            if server is not None:
                servers = _servers_named(call.state, server)
                if not servers:
                    raise call.not_found(server, terminating=True)
                names = {s["Name"].lower() for s in servers}
                selected = [v for v in selected if str(v.get("Server", "")).lower() in names]
            down = {name.lower() for name in call.state.document.get("lab", {}).get("servers_down", [])}
            output: list[Any] = []
            for data in selected:
                if not ad_only and str(data.get("Server", "")).lower() in down:
                    # Without -ADPropertiesOnly the cmdlet reads IIS on each server; a server that
                    # does not answer costs its virtual directory, not the whole pipeline.
                    fqdn = f"{str(data['Server']).lower()}.{call.directory.ad_domain}"
                    output.append(
                        CmdletError(
                            f"An error occurred while accessing IIS metabase on server '{fqdn}'. "
                            "The RPC server is unavailable. (Exception from HRESULT: 0x800706BA)",
                            error_id=f"IISGeneralCOMException,{call.cmdlet.task_class}",
                            category="ReadError",
                            exception_type="Microsoft.Exchange.Management.Metabase.IISGeneralCOMException",
                            target=str(data.get("Identity")),
                        )
                    )
                    continue
                output.append(_build(call.state, call.directory, noun, data, {"ad_properties_only": ad_only}))
        if identity is not None and not selected:
            yield call.not_found(identity, terminating=False)
        yield from output

    return handler


def _get_exchange_certificate(call: _Call) -> Iterator[Any]:
    with call.state.lock:
        server_text = call.text("Server") or _management_server(call.state)
        named = _servers_named(call.state, server_text)
        if not named:
            raise call.not_found(server_text, terminating=True)
        server = named[0]
        down = {n.lower() for n in call.state.document.get("lab", {}).get("servers_down", [])}
        if server["Name"].lower() in down:
            raise call.exchange_error(
                f"A special Rpc error occurs on server {server['Name']}: The RPC server is unavailable.",
                "Microsoft.Exchange.Management.SystemConfigurationTasks.InvalidOperationException",
                category="ResourceUnavailable",
            )
        certificates = _certificates_of(call.state, server["Name"])
        wanted = call.text("Thumbprint") or call.text("Identity")
        if wanted is not None:
            wanted = wanted.rsplit("\\", 1)[-1].lower()
            certificates = [c for c in certificates if wanted in _identity_keys("ExchangeCertificate", c)]
        output = _render(call, "ExchangeCertificate", certificates)
    if wanted is not None and not certificates:
        yield call.not_found(wanted.upper(), terminating=False)
    yield from output


def _get_role_assignment(call: _Call) -> Iterator[Any]:
    with call.state.lock:
        selected = list(call.state.objects("ManagementRoleAssignment"))
        identity = call.text("Identity")
        if identity is not None:
            selected = _find(call, "ManagementRoleAssignment", identity)
        assignee = call.text("RoleAssignee")
        if assignee is not None:
            accounts = _find(call, "User", assignee) + _find(call, "MailUser", assignee)
            if not accounts:
                raise call.not_found(assignee, terminating=True)
            names = {str(a["Name"]).lower() for a in accounts}
            selected = [a for a in selected if str(a.get("RoleAssignee", "")).lower() in names]
        role = call.text("Role")
        if role is not None:
            selected = [a for a in selected if str(a.get("Role", "")).lower() == role.lower()]
        if call.has("Enabled"):
            enabled = call.boolean("Enabled")
            selected = [a for a in selected if bool(a.get("Enabled")) == enabled]
        output = _render(call, "ManagementRoleAssignment", selected)
    if identity is not None and not selected:
        yield call.not_found(identity, terminating=False)
    yield from output


def _get_singleton(noun: str) -> Handler:
    def handler(call: _Call) -> Iterator[Any]:
        with call.state.lock:
            output = _render(call, noun, call.state.objects(noun))
        yield from output

    return handler


# -- Exchange: changes ----------------------------------------------------------------------------------------------


def _touch(data: dict[str, Any]) -> None:
    data["WhenChanged"] = _now()


def _set_properties(call: _Call, data: dict[str, Any], simple: Mapping[str, str]) -> None:
    """Apply the parameters that map one-to-one onto a property ("boolean" or "text" or "list")."""
    for parameter, kind in simple.items():
        if not call.has(parameter):
            continue
        if kind == "boolean":
            data[parameter] = call.boolean(parameter)
        elif kind == "list":
            data[parameter] = call.texts(parameter)
        else:
            data[parameter] = call.text(parameter)


def _set_auth_server(call: _Call) -> Iterator[Any]:
    identity = call.required_text("Identity")
    with call.state.changing():
        server = _one(call, "AuthServer", identity)
        if call.has("IsDefaultAuthorizationEndpoint") and call.boolean("IsDefaultAuthorizationEndpoint"):
            # S3: the default authorization endpoint can be set on one AuthServer only.
            others = [
                s["Name"]
                for s in call.state.objects("AuthServer")
                if s is not server and s.get("IsDefaultAuthorizationEndpoint")
            ]
            if others:
                raise call.exchange_error(
                    f"The default authorization endpoint is already set on auth server '{others[0]}'. Only one "
                    "auth server can be the default authorization endpoint; set IsDefaultAuthorizationEndpoint "
                    f"to $false on '{others[0]}' first.",
                    "Microsoft.Exchange.Management.SystemConfigurationTasks.AuthServerDefaultEndpointException",
                )
        if call.what_if:
            return
        _set_properties(
            call,
            server,
            {
                "Enabled": "boolean",
                "IsDefaultAuthorizationEndpoint": "boolean",
                "AuthMetadataUrl": "text",
                "ApplicationIdentifier": "text",
                "Name": "text",
            },
        )
        if call.has("DomainName"):
            server["DomainName"] = call.texts("DomainName")
        if call.has("RefreshAuthMetadata") and call.boolean("RefreshAuthMetadata"):
            tenant = call.state.tenants.get(str(server.get("Realm", "")))
            if tenant and tenant.get("stsSigningCertificates"):
                server["CertificateStrings"] = list(tenant["stsSigningCertificates"])
        if call.has("Name"):
            server["Identity"] = server["Name"]
        _touch(server)
    yield from ()


def _tenant_for_metadata(state: LabState, url: str) -> tuple[str | None, str]:
    """The tenant a metadata URL names (by id or by one of its domains), and the AuthServer type."""
    lowered = url.lower()
    kind = "MicrosoftACS" if "accesscontrol" in lowered else "AzureAD"
    match = re.search(r"https://[^/]+/([^/]+)/", url)
    segment = match.group(1).lower() if match else ""
    for tenant_id, tenant in state.tenants.items():
        if segment == tenant_id.lower() or segment in {str(d.get("id", "")).lower() for d in tenant["domains"]}:
            return tenant_id, kind
    return None, kind


def _new_auth_server(call: _Call) -> Iterator[Any]:
    name = call.required_text("Name")
    url = call.required_text("AuthMetadataUrl")
    with call.state.changing():
        if _find(call, "AuthServer", name):
            raise _already_exists(call, name, "Auth Servers,CN=Auth Configuration")
        tenant_id, kind = _tenant_for_metadata(call.state, url)
        if call.text("Type"):
            kind = call.required_text("Type")
        if tenant_id is None:
            raise call.exchange_error(
                f"The metadata at '{url}' couldn't be retrieved: the remote server returned an error: (400) Bad "
                "Request.",
                "Microsoft.Exchange.Management.SystemConfigurationTasks.AuthMetadataRetrievalException",
            )
        tenant = call.state.tenants[tenant_id]
        acs = kind == "MicrosoftACS"
        server = {
            "IssuerIdentifier": "00000001-0000-0000-c000-000000000000"
            if acs
            else f"https://sts.windows.net/{tenant_id}/",
            "TokenIssuingEndpoint": (
                f"https://accounts.accesscontrol.windows.net/{tenant_id}/tokens/OAuth/2"
                if acs
                else f"https://login.windows.net/{tenant_id}/oauth2/token"
            ),
            "AuthorizationEndpoint": "" if acs else f"https://login.windows.net/{tenant_id}/oauth2/authorize",
            "ApplicationIdentifier": "",
            "AuthMetadataUrl": url,
            "Realm": tenant_id,
            "Type": kind,
            "CertificateStrings": list(tenant.get("stsSigningCertificates", [])),
            "IsDefaultAuthorizationEndpoint": False,
            "Enabled": call.boolean("Enabled") if call.has("Enabled") else True,
            "DomainName": call.texts("DomainName"),
            "Name": name,
            "Identity": name,
            "Guid": str(uuid.uuid4()),
            "WhenCreated": _now(),
        }
        if call.what_if:
            return
        call.state.objects("AuthServer").append(server)
        output = _render(call, "AuthServer", [server])
    yield from output


def _already_exists(call: _Call, name: str, container: str) -> CmdletError:
    return call.exchange_error(
        f"Active Directory operation failed on {call.directory.domain_controller}. The object "
        f"'CN={name},CN={container},{call.directory.exchange_dn}' already exists.",
        "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException",
        category="NotSpecified",
    )


def _set_partner_application(call: _Call) -> Iterator[Any]:
    identity = call.required_text("Identity")
    with call.state.changing():
        application = _one(call, "PartnerApplication", identity)
        if call.what_if:
            return
        _set_properties(
            call,
            application,
            {
                "Enabled": "boolean",
                "UseAuthServer": "boolean",
                "AcceptSecurityIdentifierInformation": "boolean",
                "AuthMetadataUrl": "text",
                "Realm": "text",
                "ApplicationIdentifier": "text",
                "Name": "text",
            },
        )
        if call.has("LinkedAccount"):
            account = call.required_text("LinkedAccount")
            accounts = _find(call, "User", account) + _find(call, "MailUser", account)
            if not accounts:
                raise call.not_found(account, terminating=True)
            application["LinkedAccount"] = accounts[0]["Identity"]
        _touch(application)
    yield from ()


# Exchange's built-in management roles the lab knows (the application roles and a few others).
KNOWN_ROLES = frozenset(
    {
        "UserApplication",
        "ArchiveApplication",
        "LegalHoldApplication",
        "Mailbox Search",
        "TeamMailboxLifecycleApplication",
        "MailboxSearchApplication",
        "MeetingGraphApplication",
        "ApplicationImpersonation",
        "Mail Recipients",
        "Organization Management",
        "View-Only Configuration",
        "OrganizationConfiguration",
        "Exchange Server Certificates",
    }
)


def _new_role_assignment(call: _Call) -> Iterator[Any]:
    role = call.required_text("Role")
    user = call.text("User") or call.text("App") or call.text("SecurityGroup")
    if user is None:
        raise _missing_parameter(call.name, "User")
    with call.state.changing():
        known = {r.lower(): r for r in KNOWN_ROLES}
        if role.lower() not in known:
            raise call.not_found(role, terminating=True)
        accounts = _find(call, "User", user) + _find(call, "MailUser", user)
        if not accounts:
            raise call.not_found(user, terminating=True)
        assignee = str(accounts[0]["Name"])
        role = known[role.lower()]
        assignments = call.state.objects("ManagementRoleAssignment")
        if any(a.get("Role") == role and a.get("RoleAssignee") == assignee for a in assignments):
            raise call.exchange_error(
                f"The role assignment couldn't be created because an identical role assignment for role '{role}' "
                f"and user '{assignee}' already exists.",
                "Microsoft.Exchange.Management.RbacTasks.RoleAssignmentAlreadyExistsException",
            )
        from hybridtrust.lab.contoso import role_assignment

        assignment = role_assignment(role, assignee, datetime.now(UTC))
        if call.text("Name"):
            assignment["Name"] = assignment["Identity"] = call.required_text("Name")
        if call.what_if:
            return
        assignments.append(assignment)
        output = _render(call, "ManagementRoleAssignment", [assignment])
    yield from output


def _set_intra_organization_connector(call: _Call) -> Iterator[Any]:
    identity = call.required_text("Identity")
    with call.state.changing():
        connector = _one(call, "IntraOrganizationConnector", identity)
        if call.what_if:
            return
        _set_properties(
            call,
            connector,
            {"Enabled": "boolean", "DiscoveryEndpoint": "text", "TargetSharingEpr": "text", "Name": "text"},
        )
        if call.has("TargetAddressDomains"):
            connector["TargetAddressDomains"] = call.texts("TargetAddressDomains")
        _touch(connector)
    yield from ()


def _new_intra_organization_connector(call: _Call) -> Iterator[Any]:
    name = call.required_text("Name")
    with call.state.changing():
        if _find(call, "IntraOrganizationConnector", name):
            raise _already_exists(call, name, "Intra Organization Connectors,CN=Federation")
        connector = {
            "TargetAddressDomains": call.texts("TargetAddressDomains"),
            "DiscoveryEndpoint": call.required_text("DiscoveryEndpoint"),
            "TargetSharingEpr": None,
            "Enabled": call.boolean("Enabled") if call.has("Enabled") else True,
            "Name": name,
            "Identity": name,
            "Guid": str(uuid.uuid4()),
            "WhenCreated": _now(),
        }
        if call.what_if:
            return
        call.state.objects("IntraOrganizationConnector").append(connector)
        output = _render(call, "IntraOrganizationConnector", [connector])
    yield from output


_ACCESS_METHODS = ("PerUserFB", "OrgWideFB", "PublicFolder", "InternalProxy", "OrgWideFBBasic")


def _add_availability_address_space(call: _Call) -> Iterator[Any]:
    forest = call.required_text("ForestName")
    method = call.required_text("AccessMethod")
    canonical = next((m for m in _ACCESS_METHODS if m.lower() == method.lower()), None)
    if canonical is None:
        raise _bad_value(
            call.name,
            "AccessMethod",
            method,
            "Microsoft.Exchange.Data.Directory.SystemConfiguration.AvailabilityAccessMethod",
        )
    with call.state.changing():
        if _find(call, "AvailabilityAddressSpace", forest):
            raise _already_exists(call, forest, "Availability Configuration")
        space = {
            "ForestName": forest,
            "UserName": "",
            "UseServiceAccount": call.boolean("UseServiceAccount") if call.has("UseServiceAccount") else False,
            "AccessMethod": canonical,
            "ProxyUrl": call.text("ProxyUrl"),
            "TargetAutodiscoverEpr": call.text("TargetAutodiscoverEpr"),
            "Name": forest,
            "Identity": forest,
            "Guid": str(uuid.uuid4()),
            "WhenCreated": _now(),
        }
        if call.what_if:
            return
        call.state.objects("AvailabilityAddressSpace").append(space)
        output = _render(call, "AvailabilityAddressSpace", [space])
    yield from output


# Which methods each boolean switch of Set-*VirtualDirectory adds (true) or removes (false),
# in both InternalAuthenticationMethods and ExternalAuthenticationMethods, as Exchange does.
_AUTH_SWITCHES = {
    "BasicAuthentication": (("Basic",), ("Basic",)),
    "DigestAuthentication": (("Digest",), ("Digest",)),
    "WindowsAuthentication": (("Ntlm", "WindowsIntegrated"), ("Ntlm", "WindowsIntegrated", "Negotiate", "Kerberos")),
    "OAuthAuthentication": (("OAuth",), ("OAuth",)),
    "WSSecurityAuthentication": (("WSSecurity",), ("WSSecurity",)),
    "AdfsAuthentication": (("Adfs",), ("Adfs",)),
    # Forms-based authentication signs in with Basic behind the form.
    "FormsAuthentication": (("Basic", "Fba"), ("Fba",)),
    "BasicAuthEnabled": (("Basic",), ("Basic",)),
    "WindowsAuthEnabled": (("Ntlm", "WindowsIntegrated", "Negotiate"), ("Ntlm", "WindowsIntegrated", "Negotiate")),
}


def _canonical_methods(call: _Call, parameter: str, values: Iterable[str]) -> list[str]:
    members = AuthenticationMethod.__members__
    by_lower = {name.lower(): name for name in members}
    result: set[str] = set()
    for value in values:
        name = by_lower.get(value.strip().lower())
        if name is None:
            raise _bad_value(
                call.name,
                parameter,
                value,
                "Microsoft.Exchange.Data.Directory.SystemConfiguration.AuthenticationMethod",
            )
        result.add(name)
    # Stored as a bit set in AD: Exchange always lists the methods in enum order.
    return sorted(result, key=lambda n: int(members[n]))


def _set_virtual_directory(noun: str, switches: tuple[str, ...], lists: tuple[str, ...]) -> Handler:
    def handler(call: _Call) -> Iterator[Any]:
        identity = call.required_text("Identity")
        with call.state.changing():
            vdir = _one(call, noun, identity)
            if call.what_if:
                return
            for parameter in lists:
                if not call.has(parameter):
                    continue
                methods = _canonical_methods(call, parameter, call.texts(parameter))
                if parameter == "IISAuthenticationMethods":
                    # Set-MapiVirtualDirectory -IISAuthenticationMethods sets the methods inside and out.
                    vdir["IISAuthenticationMethods"] = methods
                    vdir["InternalAuthenticationMethods"] = list(methods)
                    vdir["ExternalAuthenticationMethods"] = list(methods)
                else:
                    vdir[parameter] = methods
            for parameter in switches:
                if not call.has(parameter):
                    continue
                add, remove = _AUTH_SWITCHES[parameter]
                enable = call.boolean(parameter)
                for key in ("InternalAuthenticationMethods", "ExternalAuthenticationMethods"):
                    current = set(vdir.get(key) or [])
                    current = current | set(add) if enable else current - set(remove)
                    vdir[key] = _canonical_methods(call, key, current)
            for parameter in ("InternalUrl", "ExternalUrl"):
                if call.has(parameter):
                    vdir[parameter] = call.text(parameter) or None
            _touch(vdir)
        yield from ()

    return handler


def _set_mail_user(call: _Call) -> Iterator[Any]:
    identity = call.required_text("Identity")
    with call.state.changing():
        mail_user = _one(call, "MailUser", identity)
        if call.what_if:
            return
        _set_properties(call, mail_user, {"HiddenFromAddressListsEnabled": "boolean", "DisplayName": "text"})
        if call.has("ExternalEmailAddress"):
            address = call.required_text("ExternalEmailAddress")
            mail_user["ExternalEmailAddress"] = address if ":" in address else f"SMTP:{address}"
        _touch(mail_user)
    yield from ()


def _set_organization_config(call: _Call) -> Iterator[Any]:
    with call.state.changing():
        configs = call.state.objects("OrganizationConfig")
        if not configs:
            raise call.not_found("OrganizationConfig", terminating=True)
        if call.what_if:
            return
        _set_properties(call, configs[0], {"OAuth2ClientProfileEnabled": "boolean", "EnableDownloadDomains": "boolean"})
        _touch(configs[0])
    yield from ()


def _new_setting_override(call: _Call) -> Iterator[Any]:
    name = call.required_text("Name")
    with call.state.changing():
        if _find(call, "SettingOverride", name):
            raise _already_exists(call, name, "Setting Overrides,CN=Global Settings")
        override = {
            "ComponentName": call.required_text("Component"),
            "SectionName": call.required_text("Section"),
            "Parameters": call.texts("Parameters"),
            "Reason": call.required_text("Reason"),
            "Server": call.texts("Server"),
            "MinVersion": call.text("MinVersion"),
            "MaxVersion": call.text("MaxVersion"),
            "FixVersion": call.text("FixVersion"),
            "Name": name,
            "Identity": name,
            "Guid": str(uuid.uuid4()),
            "WhenCreated": _now(),
        }
        if call.what_if:
            return
        call.state.objects("SettingOverride").append(override)
        output = _render(call, "SettingOverride", [override])
    yield from output


def _remove_setting_override(call: _Call) -> Iterator[Any]:
    identity = call.required_text("Identity")
    with call.state.changing():
        override = _one(call, "SettingOverride", identity)
        if call.what_if:
            return
        call.state.objects("SettingOverride").remove(override)
    yield from ()


def _remove(noun: str) -> Handler:
    """Remove-<noun> -Identity <x>: what --rollback sends to take out an object a fix created."""

    def handler(call: _Call) -> Iterator[Any]:
        identity = call.required_text("Identity")
        with call.state.changing():
            found = _one(call, noun, identity)
            if call.what_if:
                return
            objects = call.state.objects(noun)
            objects[:] = [item for item in objects if item is not found]
        yield from ()

    return handler


# -- SharePoint -----------------------------------------------------------------------------------------------------


def _sp_get(noun: str) -> Handler:
    def handler(call: _Call) -> Iterator[Any]:
        with call.state.lock:
            identity = call.text("Identity")
            items = call.state.sharepoint.get(noun, [])
            if identity is not None:
                lowered = identity.lower()
                items = [i for i in items if lowered in (str(i.get("Name", "")).lower(), str(i.get("Id", "")).lower())]
                if not items:
                    raise CmdletError(
                        f"Object {identity} was not found.",
                        error_id=f"Microsoft.SharePoint.PowerShell.SPCmdlet{noun}Get",
                        category="ObjectNotFound",
                        exception_type="System.Management.Automation.PSArgumentException",
                        target=identity,
                        terminating=False,
                    )
            output = [sharepoint_object(noun, i, noted=False) for i in items]
        yield from output

    return handler


def _sp_remove(noun: str, kind: str) -> Handler:
    """Remove-SP<noun> -Identity <name or id>: what --rollback sends to take out what a fix created."""

    def handler(call: _Call) -> Iterator[Any]:
        identity = call.required_text("Identity").lower()
        with call.state.changing():
            items = call.state.sharepoint.setdefault(noun, [])
            found = [i for i in items if identity in (str(i.get("Name", "")).lower(), str(i.get("Id", "")).lower())]
            if not found:
                raise CmdletError(
                    f"Cannot find an {kind} object with Id or Name: {call.required_text('Identity')}.",
                    error_id=f"Microsoft.SharePoint.PowerShell.SPCmdletRemove{noun}",
                    category="ObjectNotFound",
                    exception_type="System.Management.Automation.PSArgumentException",
                    target=call.required_text("Identity"),
                    terminating=True,
                )
            if call.what_if:
                return
            items[:] = [i for i in items if i is not found[0]]
        yield from ()

    return handler


def _sp_realm(call: _Call) -> Iterator[Any]:
    with call.state.lock:
        output = sharepoint_objects(call.state, "AuthenticationRealm")
    yield from output


def _sp_set_realm(call: _Call) -> Iterator[Any]:
    realm = call.required_text("Realm")
    with call.state.changing():
        if not call.what_if:
            call.state.sharepoint["AuthenticationRealm"] = realm
    yield from ()


def _sp_new_issuer(call: _Call) -> Iterator[Any]:
    name = call.required_text("Name")
    endpoint = call.text("MetadataEndPoint")
    with call.state.changing():
        issuers = call.state.sharepoint.setdefault("TrustedSecurityTokenIssuer", [])
        if any(str(i.get("Name", "")).lower() == name.lower() for i in issuers):
            raise CmdletError(
                f"An object of the type Microsoft.SharePoint.Administration.Claims.SPTrustedSecurityTokenIssuer "
                f'named "{name}" already exists under the parent Microsoft.SharePoint.Administration.Claims.'
                'SPSecurityTokenServiceManager named "SecurityTokenServiceManager".',
                error_id="Microsoft.SharePoint.PowerShell.SPCmdletNewSPTrustedSecurityTokenIssuer",
                category="InvalidData",
                exception_type="Microsoft.SharePoint.Administration.SPDuplicateObjectException",
                target=name,
                terminating=True,
            )
        realm = None
        if endpoint:
            match = re.search(r"https://[^/]+/([^/]+)/metadata/json/1", endpoint, re.IGNORECASE)
            realm = match.group(1) if match else None
        registered = call.text("RegisteredIssuerName") or (
            f"00000001-0000-0000-c000-000000000000@{realm}" if realm else name
        )
        tenant = call.state.tenants.get(str(realm)) if realm else None
        issuer = {
            "Name": name,
            "NameId": registered,
            "RegisteredIssuerName": registered,
            "IsSelfIssuer": not bool(call.parameters.get("IsTrustBroker")),
            "MetadataEndPoint": endpoint,
            "SigningCertificate": (tenant or {}).get("stsSigningCertificates", [None])[0],
            "Description": call.text("Description") or "",
            "Id": str(uuid.uuid4()),
        }
        if call.what_if:
            return
        issuers.append(issuer)
        output = [sharepoint_object("TrustedSecurityTokenIssuer", issuer)]
    yield from output


def _sp_new_acs_proxy(call: _Call) -> Iterator[Any]:
    name = call.required_text("Name")
    with call.state.changing():
        proxy = {
            "Name": name,
            "TypeName": "Azure Access Control Service Application Proxy",
            "MetadataEndpointUri": call.required_text("MetadataServiceEndpointUri"),
            "Id": str(uuid.uuid4()),
            "InDefaultProxyGroup": bool(call.parameters.get("DefaultProxyGroup")),
        }
        if call.what_if:
            return
        call.state.sharepoint.setdefault("ServiceApplicationProxy", []).append(proxy)
        output = [sharepoint_object("ServiceApplicationProxy", proxy, noted=False)]
    yield from output


def _sp_get_app_principal(call: _Call) -> Iterator[Any]:
    site = call.required_text("Site")
    name_identifier = call.required_text("NameIdentifier")
    with call.state.lock:
        principals = [
            p
            for p in call.state.sharepoint.get("AppPrincipal", [])
            if str(p.get("NameIdentifier", "")).lower() == name_identifier.lower()
            and str(p.get("Site", site)).rstrip("/").lower() == site.rstrip("/").lower()
        ]
        output = [sharepoint_object("AppPrincipal", p) for p in principals]
    yield from output


def _sp_register_app_principal(call: _Call) -> Iterator[Any]:
    site = call.required_text("Site")
    name_identifier = call.required_text("NameIdentifier")
    with call.state.changing():
        principals = call.state.sharepoint.setdefault("AppPrincipal", [])
        existing = [p for p in principals if str(p.get("NameIdentifier", "")).lower() == name_identifier.lower()]
        principal = existing[0] if existing else {"NameIdentifier": name_identifier}
        principal.update(
            {
                "DisplayName": call.text("DisplayName") or principal.get("DisplayName", ""),
                "EncodedIdentityClaim": f"i:0i.t|ms.sp.ext|{name_identifier}",
                "Site": site,
            }
        )
        if call.what_if:
            return
        if not existing:
            principals.append(principal)
        output = [sharepoint_object("AppPrincipal", principal)]
    yield from output


def _sp_add_snapin(call: _Call) -> Iterator[Any]:
    # psrp_server binds a positional first argument to -Identity: take the snap-in name from either.
    name = call.text("Name") or call.text("Identity") or ""
    if name.lower() != "microsoft.sharepoint.powershell":
        raise CmdletError(
            f"The Windows PowerShell snap-in '{name}' is not installed on this computer.",
            error_id="AddPSSnapInRead,Microsoft.PowerShell.Commands.AddPSSnapinCommand",
            category="InvalidArgument",
            exception_type=f"{_PS}.PSArgumentException",
            target=name,
        )
    yield from ()


def _sp_security_token_service_config(call: _Call) -> Iterator[Any]:
    with call.state.lock:
        config = call.state.sharepoint.get("SecurityTokenServiceConfig")
        output = (
            []
            if config is None
            else [
                ps_object(
                    [
                        "Microsoft.SharePoint.Administration.Claims.SPSecurityTokenServiceManager",
                        "Microsoft.SharePoint.Administration.SPPersistedUpgradableObject",
                        "Microsoft.SharePoint.Administration.SPPersistedObject",
                        "Microsoft.SharePoint.Administration.SPAutoSerializingObject",
                        "System.Object",
                    ],
                    [
                        ("AllowOAuthOverHttp", bool(config.get("AllowOAuthOverHttp"))),
                        ("Name", config.get("Name", "SecurityTokenServiceManager")),
                        ("TypeName", "Microsoft.SharePoint.Administration.Claims.SPSecurityTokenServiceManager"),
                    ],
                    to_string=config.get("Name", "SecurityTokenServiceManager"),
                )
            ]
        )
    yield from output


def _sp_projection(noun: str) -> Handler:
    def handler(call: _Call) -> Iterator[Any]:
        with call.state.lock:
            output = sharepoint_objects(call.state, noun)
            url = call.text("WebApplication")
            if url is not None and noun == "AuthenticationProvider":
                output = [
                    o
                    for o, data in zip(output, call.state.sharepoint.get(noun, []), strict=True)
                    if str(data.get("WebApplicationUrl", "")).rstrip("/").lower() == url.rstrip("/").lower()
                ]
        yield from output

    return handler


SHAREPOINT_PROJECTIONS: dict[str, Handler] = {
    "Get-HybridTrustSecurityTokenServiceConfig": _sp_projection("SecurityTokenServiceConfig"),
    "Get-HybridTrustAuthenticationProvider": _sp_projection("AuthenticationProvider"),
    "Get-HybridTrustServiceApplicationProxy": _sp_projection("ServiceApplicationProxy"),
}


# -- the command tables -------------------------------------------------------------------------------------------

_SYS = "Microsoft.Exchange.Management.SystemConfigurationTasks"
_REC = "Microsoft.Exchange.Management.RecipientTasks"
_RBAC = "Microsoft.Exchange.Management.RbacTasks"
_VDIR_GET = ("Identity", "Server", "ADPropertiesOnly", "ShowMailboxVirtualDirectories")
_VDIR_URLS = ("InternalUrl", "ExternalUrl", "ExtendedProtectionTokenChecking", "ExtendedProtectionFlags")


def _test_oauth_connectivity(call: _Call) -> Iterator[Any]:
    """Test-OAuthConnectivity -Service EWS -TargetUri <cloud EWS> -Mailbox <mailbox> (S0's check).

    The lab cannot ask Entra ID for a token, so it answers what Entra ID would: success when
    the partner application is enabled, the tenant's evoSTS AuthServer is enabled and the
    current auth certificate is a key of the application Exchange Online validates (the
    dedicated hybrid application when the S5 override is on, else 00000002-...).
    """
    mailbox = call.text("Mailbox") or ""
    with call.state.lock:
        domain = mailbox.rpartition("@")[2].lower()
        tenants = call.state.tenants
        tenant_id = next(
            (
                tid
                for tid, tenant in tenants.items()
                if any(str(d.get("id", "")).lower() == domain for d in tenant.get("domains", []))
            ),
            next(iter(tenants), None),
        )
        tenant = tenants.get(tenant_id or "", {})
        problems: list[str] = []
        partner = next(
            (p for p in call.state.objects("PartnerApplication") if p.get("ApplicationIdentifier") == EXCHANGE_ONLINE),
            None,
        )
        if partner is None or not partner.get("Enabled"):
            problems.append("The application is missing a linked account for RBAC roles or is disabled.")
        evosts = [
            a for a in call.state.objects("AuthServer") if a.get("Type") == "AzureAD" and a.get("Realm") == tenant_id
        ]
        if not any(a.get("Enabled") for a in evosts):
            problems.append(f"No enabled authorization server trusts the realm {tenant_id}.")
        current = str(call.state.objects("AuthConfig")[0].get("CurrentCertificateThumbprint") or "").upper()
        dedicated = any(
            o.get("SectionName") == "ExchangeOnpremAsThirdPartyAppId"
            and any(str(p).lower() == "enabled=true" for p in o.get("Parameters", []))
            for o in call.state.objects("SettingOverride")
        )
        if dedicated:
            app_ids = {str(a.get("ApplicationIdentifier", "")).lower() for a in evosts}
            holders = [a for a in tenant.get("applications", []) if str(a.get("appId", "")).lower() in app_ids]
        else:
            holders = [sp for sp in tenant.get("servicePrincipals", []) if sp.get("appId") == EXCHANGE_ONLINE]

        def names_current(credential: Mapping[str, Any]) -> bool:
            key = credential.get("key")
            if key:
                return thumbprint(base64.b64decode(key)) == current
            return decode_key_identifier(credential.get("customKeyIdentifier")) == current

        if not any(names_current(c) for holder in holders for c in holder.get("keyCredentials", [])):
            problems.append(
                f"Error: AADSTS50012: Client assertion contains an invalid signature. [Reason - The key was not "
                f"found., Thumbprint of key used by client: '{current}']"
            )
    result = "Error" if problems else "Success"
    detail = " ".join(problems) or (
        f"The configuration was last successfully loaded at {_now()}. Trying to get the OAuth token for "
        f"{call.text('TargetUri')} succeeded."
    )
    yield ps_object(
        ["Microsoft.Exchange.Security.OAuth.ValidationResultNode", "System.Object"],
        [("Task", "Checking EWS API Call Under Oauth"), ("Detail", detail), ("Service", call.text("Service") or "EWS"),
         ("ResultType", result), ("Identity", None), ("IsValid", True)],
        to_string="Microsoft.Exchange.Security.OAuth.ValidationResultNode",
    )  # fmt: skip


def _exchange_table() -> dict[str, _Cmdlet]:
    cmdlets = [
        _Cmdlet("Get-AuthServer", ("Identity",), _get("AuthServer"), f"{_SYS}.GetAuthServer"),
        _Cmdlet(
            "Test-OAuthConnectivity",
            ("Service", "TargetUri", "Mailbox", "AppOnly", "ReloadConfig", "UseCachedToken"),
            _test_oauth_connectivity,
            f"{_SYS}.TestOAuthConnectivity",
        ),
        _Cmdlet("Get-PartnerApplication", ("Identity",), _get("PartnerApplication"), f"{_SYS}.GetPartnerApplication"),
        _Cmdlet("Get-AuthConfig", (), _get_singleton("AuthConfig"), f"{_SYS}.GetAuthConfig"),
        _Cmdlet(
            "Get-ExchangeCertificate",
            ("Identity", "Server", "Thumbprint"),
            _get_exchange_certificate,
            f"{_SYS}.GetExchangeCertificate",
        ),
        _Cmdlet(
            "Get-ExchangeServer", ("Identity", "Status", "Domain"), _get("ExchangeServer"), f"{_SYS}.GetExchangeServer"
        ),
        _Cmdlet("Get-OrganizationConfig", (), _get_singleton("OrganizationConfig"), f"{_SYS}.GetOrganizationConfig"),
        _Cmdlet(
            "Get-IntraOrganizationConnector",
            ("Identity",),
            _get("IntraOrganizationConnector"),
            f"{_SYS}.GetIntraOrganizationConnector",
        ),
        _Cmdlet(
            "Get-AvailabilityAddressSpace",
            ("Identity",),
            _get("AvailabilityAddressSpace"),
            f"{_SYS}.GetAvailabilityAddressSpace",
        ),
        _Cmdlet("Get-SettingOverride", ("Identity",), _get("SettingOverride"), f"{_SYS}.GetSettingOverride"),
        _Cmdlet(
            "Get-ClientAccessService",
            ("Identity", "IncludeAlternateServiceAccountCredentialStatus"),
            _get("ClientAccessService"),
            f"{_SYS}.GetClientAccessService",
        ),
        _Cmdlet("Get-AcceptedDomain", ("Identity",), _get("AcceptedDomain"), f"{_SYS}.GetAcceptedDomain"),
        _Cmdlet(
            "Get-User",
            ("Identity", "ResultSize", "RecipientTypeDetails", "OrganizationalUnit"),
            _get("User"),
            f"{_REC}.GetUser",
        ),
        _Cmdlet(
            "Get-MailUser",
            ("Identity", "ResultSize", "RecipientTypeDetails", "OrganizationalUnit"),
            _get("MailUser"),
            f"{_REC}.GetMailUser",
        ),
        _Cmdlet(
            "Get-ManagementRoleAssignment",
            ("Identity", "RoleAssignee", "Role", "Enabled", "AssignmentMethod", "GetEffectiveUsers"),
            _get_role_assignment,
            f"{_RBAC}.GetManagementRoleAssignment",
        ),
        _Cmdlet(
            "Set-AuthServer",
            (
                "Identity",
                "Enabled",
                "IsDefaultAuthorizationEndpoint",
                "DomainName",
                "RefreshAuthMetadata",
                "AuthMetadataUrl",
                "ApplicationIdentifier",
                "Name",
                "TrustAnySSLCertificate",
            ),
            _set_auth_server,
            f"{_SYS}.SetAuthServer",
            ("Identity",),
        ),
        _Cmdlet(
            "New-AuthServer",
            ("Name", "AuthMetadataUrl", "Type", "DomainName", "Enabled", "TrustAnySSLCertificate"),
            _new_auth_server,
            f"{_SYS}.NewAuthServer",
            ("Name",),
        ),
        _Cmdlet(
            "Set-PartnerApplication",
            (
                "Identity",
                "Enabled",
                "LinkedAccount",
                "AuthMetadataUrl",
                "Realm",
                "UseAuthServer",
                "ApplicationIdentifier",
                "AcceptSecurityIdentifierInformation",
                "Name",
                "RefreshAuthMetadata",
            ),
            _set_partner_application,
            f"{_SYS}.SetPartnerApplication",
            ("Identity",),
        ),
        _Cmdlet(
            "New-ManagementRoleAssignment",
            ("Name", "Role", "User", "SecurityGroup", "App", "Policy"),
            _new_role_assignment,
            f"{_RBAC}.NewManagementRoleAssignment",
            ("Role",),
        ),
        _Cmdlet(
            "Set-IntraOrganizationConnector",
            ("Identity", "Enabled", "TargetAddressDomains", "DiscoveryEndpoint", "TargetSharingEpr", "Name"),
            _set_intra_organization_connector,
            f"{_SYS}.SetIntraOrganizationConnector",
            ("Identity",),
        ),
        _Cmdlet(
            "New-IntraOrganizationConnector",
            ("Name", "DiscoveryEndpoint", "TargetAddressDomains", "Enabled"),
            _new_intra_organization_connector,
            f"{_SYS}.NewIntraOrganizationConnector",
            ("Name", "DiscoveryEndpoint", "TargetAddressDomains"),
        ),
        _Cmdlet(
            "Add-AvailabilityAddressSpace",
            ("ForestName", "AccessMethod", "UseServiceAccount", "ProxyUrl", "TargetAutodiscoverEpr", "Credentials"),
            _add_availability_address_space,
            f"{_SYS}.AddAvailabilityAddressSpace",
            ("ForestName", "AccessMethod"),
        ),
        _Cmdlet(
            "Set-MailUser",
            ("Identity", "HiddenFromAddressListsEnabled", "DisplayName", "ExternalEmailAddress"),
            _set_mail_user,
            f"{_REC}.SetMailUser",
            ("Identity",),
        ),
        _Cmdlet(
            "Set-OrganizationConfig",
            ("OAuth2ClientProfileEnabled", "EnableDownloadDomains"),
            _set_organization_config,
            f"{_SYS}.SetOrganizationConfig",
        ),
        _Cmdlet(
            "New-SettingOverride",
            (
                "Name",
                "Component",
                "Section",
                "Parameters",
                "Reason",
                "Server",
                "MinVersion",
                "MaxVersion",
                "FixVersion",
            ),
            _new_setting_override,
            f"{_SYS}.NewSettingOverride",
            ("Name", "Component", "Section", "Reason"),
        ),
        _Cmdlet(
            "Remove-SettingOverride",
            ("Identity",),
            _remove_setting_override,
            f"{_SYS}.RemoveSettingOverride",
            ("Identity",),
        ),
        # What --rollback sends to take out an object a fix created (New-/Add- above).
        *(
            _Cmdlet(f"Remove-{noun}", ("Identity",), _remove(noun), task, ("Identity",))
            for noun, task in (
                ("AuthServer", f"{_SYS}.RemoveAuthServer"),
                ("ManagementRoleAssignment", f"{_RBAC}.RemoveManagementRoleAssignment"),
                ("IntraOrganizationConnector", f"{_SYS}.RemoveIntraOrganizationConnector"),
                ("AvailabilityAddressSpace", f"{_SYS}.RemoveAvailabilityAddressSpace"),
            )
        ),
        # Set-MapiVirtualDirectory has no boolean switches: the methods are one list.
        _Cmdlet(
            "Set-MapiVirtualDirectory",
            ("Identity", "IISAuthenticationMethods", "ApplyDefaultAuthenticationMethods", *_VDIR_URLS),
            _set_virtual_directory("MapiVirtualDirectory", (), ("IISAuthenticationMethods",)),
            f"{_SYS}.SetMapiVirtualDirectory",
            ("Identity",),
        ),
        _Cmdlet(
            "Set-ActiveSyncVirtualDirectory",
            (
                "Identity",
                "InternalAuthenticationMethods",
                "ExternalAuthenticationMethods",
                "BasicAuthEnabled",
                "WindowsAuthEnabled",
                *_VDIR_URLS,
            ),
            _set_virtual_directory(
                "ActiveSyncVirtualDirectory",
                ("BasicAuthEnabled", "WindowsAuthEnabled"),
                ("InternalAuthenticationMethods", "ExternalAuthenticationMethods"),
            ),
            "Microsoft.Exchange.Management.Tasks.SetMobileSyncVirtualDirectory",
            ("Identity",),
        ),
    ]
    service_switches = (
        "BasicAuthentication",
        "DigestAuthentication",
        "WindowsAuthentication",
        "OAuthAuthentication",
        "WSSecurityAuthentication",
    )
    for noun, switches in (
        ("WebServicesVirtualDirectory", service_switches),
        ("AutodiscoverVirtualDirectory", service_switches),
        ("OabVirtualDirectory", ("BasicAuthentication", "WindowsAuthentication", "OAuthAuthentication")),
        (
            "OwaVirtualDirectory",
            (
                "AdfsAuthentication",
                "BasicAuthentication",
                "FormsAuthentication",
                "DigestAuthentication",
                "WindowsAuthentication",
                "OAuthAuthentication",
            ),
        ),
        (
            "EcpVirtualDirectory",
            (
                "AdfsAuthentication",
                "BasicAuthentication",
                "FormsAuthentication",
                "DigestAuthentication",
                "WindowsAuthentication",
                "OAuthAuthentication",
            ),
        ),
    ):
        cmdlets.append(
            _Cmdlet(
                f"Set-{noun}",
                ("Identity", *switches, *_VDIR_URLS),
                _set_virtual_directory(noun, switches, ()),
                f"{_SYS}.Set{noun}",
                ("Identity",),
            )
        )
    for noun in (
        "MapiVirtualDirectory",
        "WebServicesVirtualDirectory",
        "OabVirtualDirectory",
        "AutodiscoverVirtualDirectory",
        "ActiveSyncVirtualDirectory",
        "OwaVirtualDirectory",
        "EcpVirtualDirectory",
    ):
        cmdlets.append(_Cmdlet(f"Get-{noun}", _VDIR_GET, _get_virtual_directory(noun), f"{_SYS}.Get{noun}"))
    return {c.name.lower(): c for c in cmdlets}


def _sharepoint_table() -> dict[str, _Cmdlet]:
    ps = "Microsoft.SharePoint.PowerShell"
    cmdlets = [
        _Cmdlet("Add-PSSnapin", ("Name", "Identity", "PassThru"), _sp_add_snapin, "AddPSSnapin"),
        _Cmdlet("Get-SPAuthenticationRealm", ("ServiceContext",), _sp_realm, f"{ps}.SPCmdletGetAuthenticationRealm"),
        _Cmdlet(
            "Set-SPAuthenticationRealm",
            ("Realm", "ServiceContext"),
            _sp_set_realm,
            f"{ps}.SPCmdletSetAuthenticationRealm",
            ("Realm",),
        ),
        _Cmdlet(
            "Get-SPTrustedSecurityTokenIssuer",
            ("Identity",),
            _sp_get("TrustedSecurityTokenIssuer"),
            f"{ps}.SPCmdletGetTrustedSecurityTokenIssuer",
        ),
        _Cmdlet(
            "New-SPTrustedSecurityTokenIssuer",
            ("Name", "MetadataEndPoint", "Certificate", "IsTrustBroker", "RegisteredIssuerName", "Description"),
            _sp_new_issuer,
            f"{ps}.SPCmdletNewTrustedSecurityTokenIssuer",
            ("Name",),
        ),
        _Cmdlet(
            "Get-SPServiceApplicationProxy",
            ("Identity",),
            _sp_get("ServiceApplicationProxy"),
            f"{ps}.SPCmdletGetServiceApplicationProxy",
        ),
        _Cmdlet(
            "New-SPAzureAccessControlServiceApplicationProxy",
            ("Name", "MetadataServiceEndpointUri", "DefaultProxyGroup"),
            _sp_new_acs_proxy,
            f"{ps}.SPCmdletNewAzureAccessControlServiceApplicationProxy",
            ("Name", "MetadataServiceEndpointUri"),
        ),
        _Cmdlet(
            "Remove-SPTrustedSecurityTokenIssuer",
            ("Identity",),
            _sp_remove("TrustedSecurityTokenIssuer", "SPTrustedSecurityTokenIssuer"),
            f"{ps}.SPCmdletRemoveTrustedSecurityTokenIssuer",
            ("Identity",),
        ),
        _Cmdlet(
            "Remove-SPServiceApplicationProxy",
            ("Identity", "RemoveData"),
            _sp_remove("ServiceApplicationProxy", "SPServiceApplicationProxy"),
            f"{ps}.SPCmdletRemoveServiceApplicationProxy",
            ("Identity",),
        ),
        _Cmdlet(
            "Get-SPAppPrincipal",
            ("Site", "NameIdentifier"),
            _sp_get_app_principal,
            f"{ps}.SPCmdletGetAppPrincipal",
            ("Site", "NameIdentifier"),
        ),
        _Cmdlet(
            "Register-SPAppPrincipal",
            ("Site", "NameIdentifier", "DisplayName"),
            _sp_register_app_principal,
            f"{ps}.SPCmdletRegisterAppPrincipal",
            ("Site", "NameIdentifier", "DisplayName"),
        ),
        _Cmdlet(
            "Get-SPSecurityTokenServiceConfig",
            (),
            _sp_security_token_service_config,
            f"{ps}.SPCmdletGetSecurityTokenServiceConfig",
        ),
        _Cmdlet(
            "Get-HybridTrustSecurityTokenServiceConfig",
            ("WebApplication",),
            SHAREPOINT_PROJECTIONS["Get-HybridTrustSecurityTokenServiceConfig"],
            "Get-HybridTrustSecurityTokenServiceConfig",
        ),
        _Cmdlet(
            "Get-HybridTrustAuthenticationProvider",
            ("WebApplication", "Zone"),
            SHAREPOINT_PROJECTIONS["Get-HybridTrustAuthenticationProvider"],
            "Get-HybridTrustAuthenticationProvider",
        ),
        _Cmdlet(
            "Get-HybridTrustServiceApplicationProxy",
            (),
            SHAREPOINT_PROJECTIONS["Get-HybridTrustServiceApplicationProxy"],
            "Get-HybridTrustServiceApplicationProxy",
        ),
    ]
    return {c.name.lower(): c for c in cmdlets}


EXCHANGE_CMDLETS = _exchange_table()
SHAREPOINT_CMDLETS = _sharepoint_table()


# -- Select-Object, the one pipeline helper a NoLanguage Exchange session allows ------------------------------------


def _select_object(state: LabState, parameters: Mapping[str, Any], items: list[Any]) -> list[Any]:
    """``Select-Object [-Property <names>] [-First <n>]`` for plain property names, as PowerShell does it.

    Each object becomes a PSCustomObject of type ``Selected.<its type>`` with those properties,
    matched case-insensitively and named as the object names them; a name the object lacks
    gives $null; two names for one property are PowerShell's "already exists" error.
    """
    given = {name.lower(): value for name, value in parameters.items()}
    if given.get("first") is not None:
        items = items[: int(given["first"])]
    properties = given.get("property")
    if properties is None:
        return items
    names = tuple(str(p) for p in (properties if isinstance(properties, (list, tuple)) else [properties]))
    cache = state.output_cache
    selected: list[Any] = []
    for item in items:
        if isinstance(item, BaseException):
            selected.append(item)
        elif cache is None:
            selected.append(_selection(item, names))
        else:  # a benchmark's lab: each object's selection is built (and serialized) once
            selected.append(
                cache.object("Select-Object", item, {"Property": names}, functools.partial(_selection, item, names))
            )
    return selected


def _selection(item: PSObject, names: tuple[str, ...]) -> PSObject | CmdletError:
    members = {p.name.lower(): p for p in (*item.PSObject.adapted_properties, *item.PSObject.extended_properties)}
    values: dict[str, Any] = {}
    for name in names:
        member = members.get(name.lower())
        key = member.name if member is not None else name
        if key.lower() in (existing.lower() for existing in values):
            return CmdletError(
                f'The property cannot be processed because the property "{key}" already exists.',
                error_id="AlreadyExistingUserSpecifiedPropertyNoExpand,Microsoft.PowerShell.Commands.SelectObjectCommand",
                category="InvalidOperation",
                exception_type="System.Management.Automation.PSArgumentException",
                target=_as_text(item),
            )
        values[key] = member.get_value(item) if member is not None else None
    type_names = [
        "Selected." + item.PSObject.type_names[0],
        "System.Management.Automation.PSCustomObject",
        "System.Object",
    ]
    return ps_object(type_names, (), values.items())


def render_selections(state: LabState) -> Iterator[PSObject | CmdletError]:
    """What the live source's projections of the per-server objects return (output_cache.warm builds them)."""
    from hybridtrust.sources.exchange import PROJECTIONS

    for cmdlet, value in _render_by_cmdlet(state):
        names = PROJECTIONS.get(cmdlet)
        if names is not None:
            yield from _select_object(state, {"Property": list(names)}, [value])


# -- SharePoint's full-language statements ----------------------------------------------------------------------------

_STS_TOGGLE = re.compile(
    r"^\s*\$(\w+)\s*=\s*Get-SPSecurityTokenServiceConfig\s*[;\n]\s*\$\1\.AllowOAuthOverHttp\s*=\s*\$(true|false)\s*"
    r"[;\n]\s*\$\1\.Update\(\)\s*;?\s*$",
    re.IGNORECASE,
)
_STS_PROPERTY = re.compile(r"^\s*\(Get-SPSecurityTokenServiceConfig\)\.AllowOAuthOverHttp\s*$", re.IGNORECASE)
_TOKEN = re.compile(r"""\s*(?:'((?:[^']|'')*)'|"((?:[^"`]|`.)*)"|(,)|([^\s,'"]+))""")


def _strip_functions(script: str) -> str:
    """Drop ``function Name { ... }`` definitions (the collector's own; the lab answers them)."""
    result, index = [], 0
    pattern = re.compile(r"\bfunction\s+[\w-]+\s*\{", re.IGNORECASE)
    while True:
        match = pattern.search(script, index)
        if match is None:
            result.append(script[index:])
            return "".join(result)
        result.append(script[index : match.start()])
        depth, position = 1, match.end()
        while depth and position < len(script):
            depth += {"{": 1, "}": -1}.get(script[position], 0)
            position += 1
        index = position


def _literal(token: str) -> Any:
    lowered = token.lower()
    if lowered in ("$true", "$false"):
        return lowered == "$true"
    if lowered == "$null":
        return None
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    return token


def _parse_statement(statement: str) -> Invocation:
    tokens: list[tuple[str, bool]] = []  # (text, quoted)
    position = 0
    while position < len(statement):
        match = _TOKEN.match(statement, position)
        if match is None or match.end() == position:
            break
        position = match.end()
        single, double, comma, bare = match.groups()
        if comma:
            tokens.append((",", False))
        elif single is not None:
            tokens.append((single.replace("''", "'"), True))
        elif double is not None:
            tokens.append((re.sub(r"`(.)", r"\1", double), True))
        elif bare is not None:
            tokens.append((bare, False))
    if not tokens:
        raise ValueError("empty statement")
    name = tokens[0][0]
    parameters: dict[str, Any] = {}
    current: str | None = None
    positional: list[Any] = []
    index = 1
    while index < len(tokens):
        text, quoted = tokens[index]
        if not quoted and text.startswith("-") and not re.fullmatch(r"-\d+", text):
            key, _, inline = text[1:].partition(":")
            current = key
            parameters[key] = _literal(inline) if inline else True
            index += 1
            continue
        value: Any = text if quoted else _literal(text)
        # a, b, c: an array argument
        values = [value]
        while index + 2 < len(tokens) and tokens[index + 1] == (",", False):
            index += 2
            nxt, nxt_quoted = tokens[index]
            values.append(nxt if nxt_quoted else _literal(nxt))
        argument = values if len(values) > 1 else value
        if current is not None and parameters.get(current) is True:
            parameters[current] = argument
            current = None
        else:
            positional.append(argument)
        index += 1
    if positional:
        parameters.setdefault("Identity", positional[0])
    return Invocation(name, parameters)


def _sharepoint_script(state: LabState, script: str) -> Iterator[Any]:
    toggle = _STS_TOGGLE.match(script)
    if toggle:
        with state.changing():
            config = state.sharepoint.get("SecurityTokenServiceConfig")
            if config is not None:
                config["AllowOAuthOverHttp"] = toggle.group(2).lower() == "true"
        return
    if _STS_PROPERTY.match(script):
        with state.lock:
            config = state.sharepoint.get("SecurityTokenServiceConfig") or {}
            value = bool(config.get("AllowOAuthOverHttp"))
        yield value
        return
    body = _strip_functions(script)
    for line in re.split(r"[;\r\n]+", body):
        statement = line.strip()
        if not statement or statement.startswith("#"):
            continue
        try:
            invocation = _parse_statement(statement)
        except ValueError:
            continue
        if not re.fullmatch(r"[A-Za-z]+-[A-Za-z]+", invocation.name) or "|" in statement or "$" in invocation.name:
            raise CmdletError(
                f"The lab's SharePoint endpoint runs simple commands with literal arguments only: {statement!r}",
                error_id="LabUnsupportedStatement",
                category="NotImplemented",
                exception_type=f"{_PS}.RuntimeException",
                target=statement,
                terminating=True,
            )
        yield from _run_command(state, "sharepoint", invocation, [])


# -- invoke -------------------------------------------------------------------------------------------------------------


def _run_command(
    state: LabState, endpoint: Endpoint, invocation: Invocation, pipeline_input: list[Any]
) -> Iterator[Any]:
    table = EXCHANGE_CMDLETS if endpoint == "exchange" else SHAREPOINT_CMDLETS
    cmdlet = table.get(invocation.name.lower())
    if cmdlet is None:
        raise command_not_found(invocation.name)
    parameters = _bind(cmdlet, endpoint, invocation.parameters)
    call = _Call(state, endpoint, cmdlet, parameters, Directory.of(state), pipeline_input)
    for item in cmdlet.handler(call):
        if isinstance(item, CmdletError) and item.terminating:
            raise item
        yield item


def invoke(state: LabState, endpoint: Endpoint, pipeline: list[Invocation]) -> Iterator[PSObject | CmdletError]:
    """Run one pipeline (a statement) on an endpoint: output objects and non-terminating errors.

    A terminating error is raised. A command that follows another in the pipeline
    receives its output as input: a ``Set-`` cmdlet without ``-Identity`` binds
    each input object's Identity (``Get-AuthServer | Set-AuthServer -Enabled $true``).
    """
    if not pipeline:
        return
    if endpoint == "exchange" and any(step.is_script for step in pipeline):
        raise scripts_not_allowed(next(step.name for step in pipeline if step.is_script))
    items: list[Any] = []
    for position, step in enumerate(pipeline):
        if step.is_script:  # SharePoint: full language
            outputs = list(_sharepoint_script(state, step.name))
        elif position == 0:
            outputs = list(_run_command(state, endpoint, step, []))
        elif step.name.lower() == "select-object":
            outputs = _select_object(state, step.parameters, items)
        elif step.name.lower() == "out-default":
            outputs = items
        else:
            outputs = []
            for item in items:
                if isinstance(item, BaseException):
                    outputs.append(item)
                    continue
                parameters = dict(step.parameters)
                if not any(k.lower() == "identity" for k in parameters):
                    parameters["Identity"] = _as_text(item)
                outputs.extend(_run_command(state, endpoint, Invocation(step.name, parameters), [item]))
        items = outputs
    yield from items
