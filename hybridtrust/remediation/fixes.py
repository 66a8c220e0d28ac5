"""The documented fixes: requirement id -> a planner that turns one failure into changes.

A planner reads the failure's subject and the organization's facts (the very records
and Graph documents the requirement was judged on) and returns the `Change`s of the
catalog's "fix" column, with the value before each change, the value after, and its
undo. It raises `NoFix` with a sentence an administrator can act on when the
organization is in a state the documented fix does not cover (the object is missing
and only the Hybrid Configuration Wizard may create it, a list holds a name that would
have to be removed, ...). Remediation never removes anything the fix did not add;
the only removal of the catalog, HYB-SHARED-SP-CLEAN, removes on-premises auth
certificates only, and the record keeps each one (with its key) first.

Rows whose catalog fix is "-" have no planner: they are reported, never changed.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hybridtrust.certificates import Certificate
from hybridtrust.checks import dedicated_application, on_premises_auth_thumbprints
from hybridtrust.facts import (
    EXCHANGE_2013_SP1,
    EXCHANGE_ONLINE_APP_ID,
    SHAREPOINT_ONLINE_APP_ID,
    SKYPE_ONLINE_APP_ID,
    VIRTUAL_DIRECTORY_CMDLETS,
    Missing,
    Organization,
    Tenant,
    VirtualDirectory,
    host_of,
)
from hybridtrust.matching import normalise_url
from hybridtrust.remediation.exchange import (
    cmdlet_target,
    command_text,
    planned_value,
    probe,
    restored_value,
    undo_command,
)
from hybridtrust.remediation.graph import describe_items, item_key, merged
from hybridtrust.remediation.model import Change, Failure, NoFix
from hybridtrust.remediation.sharepoint import STS_PROBE, sts_toggle_script

Planner = Callable[[Failure], list[Change]]
PLANNERS: dict[str, Planner] = {}

EXCHANGE_APPLICATION_ROLES = (
    "UserApplication",
    "ArchiveApplication",
    "LegalHoldApplication",
    "Mailbox Search",
    "TeamMailboxLifecycleApplication",
    "MailboxSearchApplication",
    "MeetingGraphApplication",
)
SFB_ACCOUNT = "SfBOnline-ApplicationAccount"
SFB_ROLES = ("UserApplication", "ArchiveApplication")
OTHER_OWA_METHODS = {
    "Adfs": "AdfsAuthentication",
    "Basic": "BasicAuthentication",
    "Fba": "FormsAuthentication",
    "Digest": "DigestAuthentication",
}
# S3's order for HMA in OWA/ECP: the other methods off on ECP and OWA first, then OAuth on ECP, then on OWA.
OWA_STAGES = {("disable", "ECP"): 10, ("disable", "OWA"): 11, ("oauth", "ECP"): 12, ("oauth", "OWA"): 13}


def planner(*requirement_ids: str) -> Callable[[Planner], Planner]:
    def register(function: Planner) -> Planner:
        for requirement_id in requirement_ids:
            PLANNERS[requirement_id] = function
        return function

    return register


def plan_failure(failure: Failure) -> list[Change]:
    """The changes that fix one failure; `NoFix` when there is no automatic fix here."""
    function = PLANNERS.get(failure.requirement.id)
    if function is None:
        raise NoFix(f"no automatic fix: {failure.requirement.fix}")
    changes = function(failure)
    if not changes:
        raise NoFix("nothing to change was found in the collected facts")
    for change in changes:
        if failure.requirement.risky and not change.risky:
            change.risky = True
            change.risk = change.risk or f"the catalog marks {failure.requirement.id}'s fix risky"
    return changes


# -- Exchange building blocks -------------------------------------------------------------------------------
def _records(org: Organization, cmdlet: str) -> list[Any]:
    return list(org.exchange_records(cmdlet))


def _set_change(
    failure: Failure,
    get: str,
    set_cmdlet: str,
    identity: str | None,
    parameters: Sequence[tuple[str, Any]],
    expect: dict[str, Any],
    *,
    undo: str | Sequence[tuple[str, Any]] | None = "restore",
    restore: dict[str, list[str]] | None = None,
    expect_before: Sequence[str] | None = None,
    merge: dict[str, dict[str, list[str]]] | None = None,
    probe_parameters: Sequence[tuple[str, Any]] = (),
    endpoint: str = "exchange",
    records: list[Any] | None = None,
    risky: bool = False,
    risk: str | None = None,
    stage: int = 0,
    undo_note: str | None = None,
) -> Change:
    """A Set- cmdlet on one existing object; before/after are the probe's view of the object.

    ``merge`` names list parameters computed again at write time from the object as
    re-read then (``from`` properties + ``add``), so an earlier change of the same run
    is never overwritten. The undo is ``"restore"`` (each parameter takes back its
    property's value recorded just before the write; ``restore`` maps a parameter to
    other properties), explicit parameters, or None (``undo_note`` says why).
    ``expect_before`` are the properties rollback must bring back to that value.
    """
    identity_parameters: list[tuple[str, Any]] = [("Identity", identity)] if identity is not None else []
    spec = probe(get, [*identity_parameters, *probe_parameters])
    found = records if records is not None else _records(failure.organization, get)
    before = planned_value(found, spec, identity)
    if before is None:
        raise NoFix(f"{get} in this run's facts has no single object {identity!r} to change")
    after = dict(before) if isinstance(before, dict) else before
    if isinstance(after, dict):
        for name, wanted in expect.items():
            if isinstance(wanted, dict) and "contains" in wanted:
                after[name] = [
                    *(after.get(name) or []),
                    *(v for v in wanted["contains"] if v not in (after.get(name) or [])),
                ]
            elif isinstance(wanted, dict) and "excludes" in wanted:
                after[name] = [v for v in after.get(name) or [] if v not in wanted["excludes"]]
            else:
                after[name] = wanted
    elif "value" in expect:
        after = expect["value"]
    command_parameters = [*identity_parameters, *parameters]
    target = cmdlet_target(endpoint, set_cmdlet, command_parameters, spec, expect)
    if merge:
        target["merge"] = merge
    undo_spec = None
    if undo is not None:
        if undo == "restore":
            sources = restore or {name: [name if isinstance(before, dict) else "$value"] for name, _ in parameters}
            shown = [(name, restored_value(before, sources[name])) for name, _ in parameters]
        else:
            sources = restore or {}
            shown = list(undo)  # type: ignore[arg-type]
        undo_spec = undo_command(set_cmdlet, [*identity_parameters, *shown], {})
        undo_spec["restore"] = sources
        undo_spec["expect_before"] = list(
            expect_before if expect_before is not None else (expect if isinstance(before, dict) else ["$value"])
        )
    return Change(
        requirement=failure.requirement.id,
        subject=failure.subject.label,
        kind="cmdlet",
        summary=command_text(target["command"]),
        target=target,
        before=before,
        after=after,
        risky=risky,
        risk=risk,
        stage=stage,
        undo=undo_spec,
        undo_note=undo_note,
    )


def _new_change(
    failure: Failure,
    get: str,
    probe_parameters: Sequence[tuple[str, Any]],
    match: dict[str, str],
    new_cmdlet: str,
    parameters: Sequence[tuple[str, Any]],
    expect: dict[str, Any],
    remove_cmdlet: str | None,
    remove_identity: str,
    *,
    endpoint: str = "exchange",
    records: list[Any] | None = None,
    risky: bool = False,
    risk: str | None = None,
    undo_note: str | None = None,
) -> Change:
    """A New-/Add-/Register- cmdlet; before is "absent", the undo removes exactly the object it created."""
    spec = probe(get, probe_parameters, match)
    if records is not None and planned_value(records, spec) is not None:
        raise NoFix(f"{get} already shows an object {match}: change or remove it by hand")
    target = cmdlet_target(endpoint, new_cmdlet, parameters, spec, {"exists": True, **expect})
    undo = (
        undo_command(remove_cmdlet, [("Identity", remove_identity), ("Confirm", False)], {"exists": False})
        if remove_cmdlet
        else None
    )
    return Change(
        requirement=failure.requirement.id,
        subject=failure.subject.label,
        kind="cmdlet",
        summary=command_text(target["command"]),
        target=target,
        before=None,
        after=dict(expect),
        risky=risky,
        risk=risk,
        undo=undo,
        undo_note=undo_note,
    )


def _contains(*values: str) -> dict[str, list[str]]:
    return {"contains": list(values)}


def _vdir_spec(vdir: VirtualDirectory) -> tuple[str, str, list[tuple[str, Any]]]:
    get = VIRTUAL_DIRECTORY_CMDLETS[vdir.kind]
    # The audit read virtual directories from Active Directory only; so does the probe (same shape).
    return get, f"Set-{vdir.cmdlet_noun}", [("ADPropertiesOnly", None)]


def _vdir_before(failure: Failure, vdir: VirtualDirectory) -> dict[str, Any]:
    get, _, extra = _vdir_spec(vdir)
    before = planned_value(
        _records(failure.organization, get), probe(get, [("Identity", vdir.identity), *extra]), vdir.identity
    )
    if not isinstance(before, dict):
        raise NoFix(f"{get} in this run's facts has no single object {vdir.identity!r}")
    return before


def _has(methods: Iterable[Any] | None, method: str) -> bool:
    return any(str(item).lower() == method.lower() for item in methods or [])


def _with(methods: Iterable[Any] | None, method: str) -> list[str]:
    items = [str(item) for item in methods or []]
    return items if _has(items, method) else [*items, method]


def _switch_change(
    failure: Failure, vdir: VirtualDirectory, switch: str, method: str, *, stage: int = 0, risky: bool = False
) -> Change:
    """``-<switch> $true`` on a virtual directory: adds `method` to both method lists."""
    get, set_cmdlet, extra = _vdir_spec(vdir)
    before = _vdir_before(failure, vdir)
    internal, external = before.get("InternalAuthenticationMethods"), before.get("ExternalAuthenticationMethods")
    lists = ("InternalAuthenticationMethods", "ExternalAuthenticationMethods")
    expect: dict[str, Any] = {name: _contains(method) for name in lists}
    undo_parameters: list[tuple[str, Any]] | None = [(switch, False)]
    note = None
    if _has(internal, method) or _has(external, method):
        # -<switch> $false would take the method out of BOTH lists, also where it was before the fix.
        undo_parameters = None
        side = "InternalAuthenticationMethods" if _has(internal, method) else "ExternalAuthenticationMethods"
        note = (
            f"{method} was already in {side} before the fix; {set_cmdlet} -{switch} $false would remove it from "
            "both lists, so rollback leaves it on"
        )
    return _set_change(
        failure,
        get,
        set_cmdlet,
        vdir.identity,
        [(switch, True)],
        expect,
        undo=undo_parameters,
        expect_before=lists,
        probe_parameters=extra,
        stage=stage,
        risky=risky,
        undo_note=note,
    )


# -- exchange-oauth -------------------------------------------------------------------------------------------
def _enable_auth_server(failure: Failure, name: str) -> Change:
    return _set_change(failure, "Get-AuthServer", "Set-AuthServer", name, [("Enabled", True)], {"Enabled": True})


@planner("EXO-AUTHSERVER", "HMA-EVOSTS")
def _auth_server(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    kind = org.cloud.auth_server_type if failure.requirement.id == "EXO-AUTHSERVER" else "AzureAD"
    candidates = org.auth_servers_of(tenant, kind)
    if failure.requirement.id == "EXO-AUTHSERVER" and org.cloud.name == "china":
        candidates = [server for server in candidates if host_of(server.auth_metadata_url) == org.cloud.acs_host]
    if candidates:
        if any(server.enabled for server in candidates):
            raise NoFix(f"an AuthServer of tenant {tenant} is enabled already")
        return [_enable_auth_server(failure, candidates[0].name)]
    if failure.requirement.id == "HMA-EVOSTS":
        raise NoFix(f"no evoSTS AuthServer for tenant {tenant}: rerun the Hybrid Configuration Wizard for it")
    metadata = (
        org.cloud.acs_metadata_url(tenant.id)
        if kind == "MicrosoftACS"
        else org.cloud.federation_metadata_urls(tenant.id)[0]
    )
    name = f"EvoSts - {tenant.id}" if kind == "AzureAD" else "MicrosoftAzureACS"
    return [
        _new_change(
            failure,
            "Get-AuthServer",
            (),
            {"Name": name},
            "New-AuthServer",
            [("Name", name), ("AuthMetadataUrl", metadata), ("Type", kind)],
            {"Name": name, "Enabled": True},
            "Remove-AuthServer",
            name,
            records=_records(org, "Get-AuthServer"),
            risky=True,
            risk="creates a new trust anchor for tokens of the tenant (REQUIREMENTS.md marks it risky)",
        )
    ]


@planner("SFB-AUTHSERVER")
def _sfb_auth_server(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    wanted = {normalise_url(org.cloud.acs_metadata_url(name)) for name in (tenant.id, *tenant.verified_domains)}
    servers = [s for s in org.auth_servers if s.is_acs and normalise_url(s.auth_metadata_url or "") in wanted]
    if not servers:
        raise NoFix(
            "no ACS AuthServer reads the tenant's metadata: New-AuthServer -Name WindowsAzureACS -AuthMetadataUrl "
            f"{org.cloud.acs_metadata_url(tenant.id)} (S1 step 4), by hand"
        )
    if any(s.enabled for s in servers):
        raise NoFix(f"the ACS AuthServer {servers[0].name} is enabled but its Realm is not {tenant.id}: fix it by hand")
    return [_enable_auth_server(failure, servers[0].name)]


def _partner(failure: Failure, app_id: str, *, link: str | None = None) -> list[Change]:
    org = failure.organization
    partner = org.partner_application(app_id)
    if partner is None:
        raise NoFix(f"there is no PartnerApplication {app_id}: rerun the Hybrid Configuration Wizard")
    parameters: list[tuple[str, Any]] = []
    expect: dict[str, Any] = {}
    if not partner.enabled:
        parameters.append(("Enabled", True))
        expect["Enabled"] = True
    if link is not None:
        parameters.append(("LinkedAccount", link))
        expect["LinkedAccount"] = link
    if not parameters:
        raise NoFix(
            f"{partner.name} is enabled; its other settings (UseAuthServer, AuthMetadataUrl) have no documented "
            "automatic fix: rerun the Hybrid Configuration Wizard"
        )
    note = (
        None if link is None or partner.linked_account else "LinkedAccount was empty before: rollback leaves the link"
    )
    return [
        _set_change(
            failure,
            "Get-PartnerApplication",
            "Set-PartnerApplication",
            partner.name,
            parameters,
            expect,
            undo_note=note,
        )
    ]


@planner("EXO-PARTNERAPP")
def _exchange_online_partner(failure: Failure) -> list[Change]:
    return _partner(failure, EXCHANGE_ONLINE_APP_ID)


@planner("SFB-PARTNERAPP")
def _skype_partner(failure: Failure) -> list[Change]:
    org = failure.organization
    account = org.skype_application_account()
    partner = org.partner_application(SKYPE_ONLINE_APP_ID)
    link = None
    if partner is not None and (account is None or not account.known_as(partner.linked_account)):
        if account is None:
            raise NoFix(f"the mail user {SFB_ACCOUNT} does not exist, so the partner application cannot be linked")
        link = account.identity
    return _partner(failure, SKYPE_ONLINE_APP_ID, link=link)


def _role_assignments(failure: Failure, account: Any, roles: Iterable[str]) -> list[Change]:
    changes = []
    for role in roles:
        name = f"{role}-{account.name}"
        changes.append(
            _new_change(
                failure,
                "Get-ManagementRoleAssignment",
                [("RoleAssignee", account.identity)],
                {"Role": role},
                "New-ManagementRoleAssignment",
                [("Name", name), ("Role", role), ("User", account.identity)],
                {"Role": role},
                "Remove-ManagementRoleAssignment",
                name,
            )
        )
    return changes


@planner("EXO-APPACCOUNT")
def _exchange_online_roles(failure: Failure) -> list[Change]:
    org = failure.organization
    reference = org.exchange_application_account_name
    account = org.exchange_application_account()
    if account is None:
        raise NoFix(f"the account {reference} does not exist: rerun the Hybrid Configuration Wizard, which creates it")
    held = org.roles_of(account)
    return _role_assignments(failure, account, [role for role in EXCHANGE_APPLICATION_ROLES if role not in held])


@planner("SFB-ROLES")
def _skype_roles(failure: Failure) -> list[Change]:
    org = failure.organization
    account = org.skype_application_account()
    if account is None:
        raise NoFix(f"the mail user {SFB_ACCOUNT} does not exist (S1 step 3 creates it)")
    held = org.roles_of(account)
    return _role_assignments(failure, account, [role for role in SFB_ROLES if role not in held])


@planner("SFB-APPACCOUNT")
def _skype_account_hidden(failure: Failure) -> list[Change]:
    org = failure.organization
    account = org.skype_application_account()
    if account is None:
        raise NoFix(f"the mail user {SFB_ACCOUNT} does not exist: New-MailUser (S1 step 3), by hand")
    return [
        _set_change(
            failure,
            "Get-MailUser",
            "Set-MailUser",
            account.identity,
            [("HiddenFromAddressListsEnabled", True)],
            {"HiddenFromAddressListsEnabled": True},
        )
    ]


@planner("EXO-IOC-ONPREM")
def _intra_organization_connector(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    coexistence = tenant.coexistence_domain
    if not coexistence:
        raise NoFix(f"tenant {tenant} has no coexistence domain: rerun the Hybrid Configuration Wizard")
    endpoints = org.cloud.autodiscover_endpoints()
    accepted = {normalise_url(url) for url in endpoints}
    connectors = [c for c in org.intra_organization_connectors if coexistence in c.target_address_domains]
    if not connectors:
        names = {domain.name for domain in tenant.domains} | {tenant.initial_domain}
        connectors = [
            c
            for c in org.intra_organization_connectors
            if tenant.id in c.name.lower() or names & set(c.target_address_domains)
        ]
    if not connectors:
        name = f"HybridIOC - {tenant.id}"
        return [
            _new_change(
                failure,
                "Get-IntraOrganizationConnector",
                (),
                {"Name": name},
                "New-IntraOrganizationConnector",
                [("Name", name), ("DiscoveryEndpoint", endpoints[0]), ("TargetAddressDomains", [coexistence])],
                {"Name": name, "Enabled": True, "DiscoveryEndpoint": endpoints[0]},
                "Remove-IntraOrganizationConnector",
                name,
                records=_records(org, "Get-IntraOrganizationConnector"),
            )
        ]
    connector = connectors[0]
    spec = probe("Get-IntraOrganizationConnector", [("Identity", connector.name)])
    before = planned_value(_records(org, "Get-IntraOrganizationConnector"), spec, connector.name)
    if not isinstance(before, dict):
        raise NoFix(f"Get-IntraOrganizationConnector has no single object {connector.name!r}")
    parameters: list[tuple[str, Any]] = []
    expect: dict[str, Any] = {}
    domains = [str(d) for d in before.get("TargetAddressDomains") or []]
    merge = {}
    if coexistence not in {d.lower() for d in domains}:
        # existing + the coexistence domain, computed again from the connector as it is when written
        parameters.append(("TargetAddressDomains", [*domains, coexistence]))
        merge["TargetAddressDomains"] = {"from": ["TargetAddressDomains"], "add": [coexistence]}
        expect["TargetAddressDomains"] = _contains(coexistence)
    if not connector.enabled:
        parameters.append(("Enabled", True))
        expect["Enabled"] = True
    if normalise_url(connector.discovery_endpoint or "") not in accepted:
        parameters.append(("DiscoveryEndpoint", endpoints[0]))
        expect["DiscoveryEndpoint"] = endpoints[0]
    return [
        _set_change(
            failure,
            "Get-IntraOrganizationConnector",
            "Set-IntraOrganizationConnector",
            connector.name,
            parameters,
            expect,
            merge=merge,
        )
    ]


@planner("EXO-AVAILABILITY-LEGACY")
def _availability_address_space(failure: Failure) -> list[Change]:
    org = failure.organization
    primary = org.primary_tenant
    forests = [t.coexistence_domain for t in (primary, *org.tenants) if t.coexistence_domain]
    if not forests:
        raise NoFix("no tenant has a coexistence domain to name as ForestName")
    forest = forests[0]
    proxies = sorted(
        vdir.external_url
        for vdir in org.virtual_directories("EWS")
        if vdir.external_url and (server := org.server(vdir.server)) is not None and server.at_least(EXCHANGE_2013_SP1)
    )
    if not proxies:
        raise NoFix("no Exchange 2013 SP1+ server publishes an external EWS URL to proxy through")
    if any((space.forest_name or "").lower() == forest for space in org.availability_address_spaces):
        raise NoFix(f"an AvailabilityAddressSpace for {forest} exists with other settings: correct it by hand")
    return [
        _new_change(
            failure,
            "Get-AvailabilityAddressSpace",
            (),
            {"ForestName": forest},
            "Add-AvailabilityAddressSpace",
            [
                ("ForestName", forest),
                ("AccessMethod", "InternalProxy"),
                ("ProxyUrl", proxies[0]),
                ("UseServiceAccount", True),
            ],
            {"AccessMethod": "InternalProxy", "UseServiceAccount": True, "ProxyUrl": proxies[0]},
            "Remove-AvailabilityAddressSpace",
            forest,
        )
    ]


@planner("EXO-WSSECURITY")
def _wssecurity(failure: Failure) -> list[Change]:
    return [_switch_change(failure, failure.subject.value, "WSSecurityAuthentication", "WSSecurity")]


@planner("EXO-AUTHMETADATA-FRESH")
def _refresh_metadata(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    changes = []
    for server in org.auth_servers_of(tenant, org.cloud.auth_server_type):
        if not server.enabled:
            continue
        held = set(server.certificate_strings)
        if held & org.metadata_signing_keys(server.auth_metadata_url):
            continue
        changes.append(
            _set_change(
                failure,
                "Get-AuthServer",
                "Set-AuthServer",
                server.name,
                [("RefreshAuthMetadata", None)],
                {},
                undo=None,
                undo_note="refreshing metadata reads the current document; there is nothing to restore",
            )
        )
    return changes


# -- dedicated-hybrid-app -------------------------------------------------------------------------------------
@planner("HYB-AUDIENCE-VALIDATION")
def _audience_validation(failure: Failure) -> list[Change]:
    org = failure.organization
    records = _records(org, "Get-SettingOverride")
    changes = []
    for override in org.overrides("OAuth", "AppIdBasedAudienceValidation"):
        if override.enabled is not False:
            continue
        spec = probe("Get-SettingOverride", (), {"Name": override.name})
        before = planned_value(records, spec)
        if not isinstance(before, dict):
            raise NoFix(f"the SettingOverride {override.name} cannot be read back from the facts")
        undo = [
            ("Name", override.name),
            ("Component", before.get("ComponentName")),
            ("Section", before.get("SectionName")),
            ("Parameters", before.get("Parameters") or []),
            ("Reason", before.get("Reason") or "Restored by hybridtrust --rollback"),
        ]
        if before.get("Server"):
            undo.append(("Server", before["Server"]))
        target = cmdlet_target(
            "exchange",
            "Remove-SettingOverride",
            [("Identity", override.name), ("Confirm", False)],
            spec,
            {"exists": False},
        )
        changes.append(
            Change(
                requirement=failure.requirement.id,
                subject=failure.subject.label,
                kind="cmdlet",
                summary=command_text(target["command"]),
                target=target,
                before=before,
                after=None,
                undo={
                    "command": {"cmdlet": "New-SettingOverride", "parameters": [list(item) for item in undo]},
                    "expect": {"exists": True, "Parameters": before.get("Parameters") or []},
                },
            )
        )
    return changes


# -- hma ----------------------------------------------------------------------------------------------------------
@planner("HMA-VDIR-OAUTH")
def _vdir_oauth(failure: Failure) -> list[Change]:
    vdir: VirtualDirectory = failure.subject.value
    if vdir.kind not in ("MAPI", "ActiveSync"):
        return [_switch_change(failure, vdir, "OAuthAuthentication", "OAuth")]
    get, set_cmdlet, extra = _vdir_spec(vdir)
    before = _vdir_before(failure, vdir)
    internal = [str(m) for m in before.get("InternalAuthenticationMethods") or []]
    external = [str(m) for m in before.get("ExternalAuthenticationMethods") or []]
    lists = ("InternalAuthenticationMethods", "ExternalAuthenticationMethods")
    expect = {name: _contains("OAuth") for name in lists}
    if vdir.kind == "ActiveSync":
        # Set-ActiveSyncVirtualDirectory has no -IISAuthenticationMethods: both lists, each existing + OAuth
        # (computed again from the directory as it is when written); rollback sets each back as it was.
        parameters = [
            ("InternalAuthenticationMethods", _with(internal, "OAuth")),
            ("ExternalAuthenticationMethods", _with(external, "OAuth")),
        ]
        merge = {name: {"from": [name], "add": ["OAuth"]} for name in lists}
        return [
            _set_change(
                failure, get, set_cmdlet, vdir.identity, parameters, expect, merge=merge, probe_parameters=extra
            )
        ]
    # MAPI: one list for IIS and both AD lists (Set-MapiVirtualDirectory has no other).
    union: list[str] = []
    for method in [*internal, *external, *(vdir.iis_authentication or ())]:
        if not _has(union, method):
            union.append(str(method))
    undo: str | None = "restore"
    note = None
    if _has(union, "OAuth"):
        undo = None
        note = (
            "OAuth was already in one list before the fix and Set-MapiVirtualDirectory sets every list alike "
            "(-IISAuthenticationMethods only): rollback cannot take OAuth out of one list alone, so it leaves it"
        )
    elif internal != external:
        note = "InternalAuthenticationMethods and ExternalAuthenticationMethods differed before: rollback sets both to their union"
    return [
        _set_change(
            failure,
            get,
            set_cmdlet,
            vdir.identity,
            [("IISAuthenticationMethods", _with(union, "OAuth"))],
            expect,
            merge={"IISAuthenticationMethods": {"from": list(lists), "add": ["OAuth"]}},
            undo=undo,
            restore={"IISAuthenticationMethods": list(lists)},
            expect_before=lists,
            probe_parameters=extra,
            undo_note=note,
        )
    ]


@planner("HMA-DEFAULT-ENDPOINT")
def _default_endpoint(failure: Failure) -> list[Change]:
    org = failure.organization
    primary = org.primary_tenant
    candidates = org.auth_servers_of(primary, "AzureAD")
    if not candidates:
        raise NoFix(f"the primary tenant {primary} has no evoSTS AuthServer (see HMA-EVOSTS)")
    chosen = candidates[0]
    others = [s for s in org.evosts_auth_servers() if s.is_default_authorization_endpoint and s.name != chosen.name]
    risk = (
        f"moves the default authorization endpoint away from {', '.join(s.name for s in others)}: Outlook clients "
        "of that tenant are sent elsewhere"
        if others
        else None
    )
    changes = [
        _set_change(
            failure,
            "Get-AuthServer",
            "Set-AuthServer",
            server.name,
            [("IsDefaultAuthorizationEndpoint", False)],
            {"IsDefaultAuthorizationEndpoint": False},
            risky=True,
            risk=risk,
        )
        for server in others
    ]
    if not chosen.is_default_authorization_endpoint:
        changes.append(
            _set_change(
                failure,
                "Get-AuthServer",
                "Set-AuthServer",
                chosen.name,
                [("IsDefaultAuthorizationEndpoint", True)],
                {"IsDefaultAuthorizationEndpoint": True},
                risky=bool(others),
                risk=risk,
            )
        )
    return changes


@planner("HMA-DOMAINNAME")
def _domain_name(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    servers = org.auth_servers_of(tenant, "AzureAD")
    if not servers:
        raise NoFix(f"tenant {tenant} has no evoSTS AuthServer to name its initial domain on (see HMA-EVOSTS)")
    changes = []
    for server in servers:
        if tenant.initial_domain in {d.lower() for d in server.domain_names}:
            continue
        existing = list(server.domain_names)
        changes.append(
            _set_change(
                failure,
                "Get-AuthServer",
                "Set-AuthServer",
                server.name,
                [("DomainName", [*existing, tenant.initial_domain])],
                {"DomainName": _contains(tenant.initial_domain)},
                merge={"DomainName": {"from": ["DomainName"], "add": [tenant.initial_domain]}},
            )
        )
    return changes


@planner("HMA-CLIENT-PROFILE")
def _client_profile(failure: Failure) -> list[Change]:
    return [
        _set_change(
            failure,
            "Get-OrganizationConfig",
            "Set-OrganizationConfig",
            None,
            [("OAuth2ClientProfileEnabled", True)],
            {"OAuth2ClientProfileEnabled": True},
            risky=True,
            risk="switches every Outlook client of the organization to modern authentication",
        )
    ]


# -- hma-owa-ecp --------------------------------------------------------------------------------------------------
@planner("OWA-VDIR-AUTH")
def _owa_ecp_auth(failure: Failure) -> list[Change]:
    vdir: VirtualDirectory = failure.subject.value
    risk = "sign-in to OWA/ECP stops for accounts not synced to Entra ID (the built-in Administrator among them)"
    changes = []
    on = [flag for method, flag in OTHER_OWA_METHODS.items() if vdir.has_method(method)]
    if on:
        get, set_cmdlet, extra = _vdir_spec(vdir)
        lists = ("InternalAuthenticationMethods", "ExternalAuthenticationMethods")
        changes.append(
            _set_change(
                failure,
                get,
                set_cmdlet,
                vdir.identity,
                [(flag, False) for flag in on],
                {name: {"excludes": [m for m, f in OTHER_OWA_METHODS.items() if f in on]} for name in lists},
                undo=[(flag, True) for flag in on],
                expect_before=lists,
                probe_parameters=extra,
                stage=OWA_STAGES[("disable", vdir.kind)],
                risky=True,
                risk=risk,
            )
        )
    if not vdir.has_method("OAuth"):
        changes.append(
            _switch_change(
                failure, vdir, "OAuthAuthentication", "OAuth", stage=OWA_STAGES[("oauth", vdir.kind)], risky=True
            )
        )
        changes[-1].risk = risk
    return changes


def _new_override(failure: Failure, name: str, section: str, reason: str) -> list[Change]:
    org = failure.organization
    if any(o.name.lower() == name.lower() for o in org.setting_overrides):
        raise NoFix(f"a SettingOverride named {name!r} exists (not enabled): correct it by hand")
    return [
        _new_change(
            failure,
            "Get-SettingOverride",
            (),
            {"Name": name},
            "New-SettingOverride",
            [
                ("Name", name),
                ("Component", "OAuth"),
                ("Section", section),
                ("Parameters", ["Enabled=true"]),
                ("Reason", reason),
            ],
            {"ComponentName": "OAuth", "SectionName": section},
            "Remove-SettingOverride",
            name,
        )
    ]


@planner("OWA-DOWNLOAD-DOMAINS")
def _download_domains(failure: Failure) -> list[Change]:
    return _new_override(
        failure,
        "OWA HMA Download Domain Support",
        "OAuthIdentityCacheFixForDownloadDomains",
        "Enable support for OWA HMA when Download Domains are in use",
    )


@planner("OWA-RESOURCE-FOREST")
def _resource_forest(failure: Failure) -> list[Change]:
    return _new_override(failure, "OWA HMA AFRF Support", "OwaHMAFixForAfRfScenarios", "Enable OWA HMA in AF/RF")


# -- sharepoint-s2s ------------------------------------------------------------------------------------------------
def _sharepoint_records(org: Organization, name: str) -> list[Any]:
    documents = org.collection.sharepoint.get(name)
    if documents is None or isinstance(documents, Missing):
        raise NoFix(f"sharepoint/{name} was not collected in this run")
    return list(documents)


@planner("SPS-OAUTH-HTTP")
def _oauth_over_http(failure: Failure) -> list[Change]:
    org = failure.organization
    config = org.security_token_service
    profile = org.profile
    web_application = (
        profile.sharepoint.web_application if profile.sharepoint is not None else config.web_application_url or ""
    )
    wanted = web_application.lower().startswith("http://")
    before = config.allow_oauth_over_http
    script = sts_toggle_script(wanted)
    return [
        Change(
            requirement=failure.requirement.id,
            subject=failure.subject.label,
            kind="script",
            summary=script,
            target={"endpoint": "sharepoint", "script": script, "probe_script": STS_PROBE, "expect": wanted},
            before=before,
            after=wanted,
            undo={"script": sts_toggle_script(before), "expect": before},
        )
    ]


@planner("SPS-REALM", "SPS-ACS-METADATA")
def _realm(failure: Failure) -> list[Change]:
    org = failure.organization
    tenant = org.sharepoint_tenant
    records = _sharepoint_records(org, "Get-SPAuthenticationRealm")
    if org.sharepoint_realm == tenant.id:
        # SPS-ACS-METADATA can fail with the farm already right: then ACS's side differs, which no cmdlet here fixes.
        raise NoFix(f"the farm's realm is the tenant id {tenant.id} already; the difference is on the ACS side")
    change = _set_change(
        failure,
        "Get-SPAuthenticationRealm",
        "Set-SPAuthenticationRealm",
        None,
        [("Realm", tenant.id)],
        {"value": tenant.id},
        endpoint="sharepoint",
        records=records,
        risky=True,
        risk="S4: changing the realm breaks existing trusts that use the old one (provider-hosted add-ins)",
    )
    return [change]


@planner("SPS-ACS-PROXY")
def _acs_proxy(failure: Failure) -> list[Change]:
    org = failure.organization
    metadata = org.cloud.acs_metadata_url(org.sharepoint_tenant.id)
    if any(
        p.is_acs and normalise_url(p.metadata_endpoint_uri or "") == normalise_url(metadata)
        for p in org.service_application_proxies
    ):
        raise NoFix(
            "the ACS proxy exists but is not in the default proxy group: Add-SPServiceApplicationProxyGroupMember, by hand"
        )
    return [
        _new_change(
            failure,
            "Get-SPServiceApplicationProxy",
            (),
            {"Name": "ACS"},
            "New-SPAzureAccessControlServiceApplicationProxy",
            [("Name", "ACS"), ("MetadataServiceEndpointUri", metadata), ("DefaultProxyGroup", None)],
            {"MetadataEndpointUri": metadata},
            "Remove-SPServiceApplicationProxy",
            "ACS",
            endpoint="sharepoint",
            records=_sharepoint_records(org, "Get-SPServiceApplicationProxy"),
        )
    ]


@planner("SPS-TRUSTED-ISSUER")
def _trusted_issuer(failure: Failure) -> list[Change]:
    org = failure.organization
    tenant = org.sharepoint_tenant
    issuer = f"00000001-0000-0000-c000-000000000000@{tenant.id}"
    if any((i.registered_issuer_name or "").lower() == issuer for i in org.trusted_issuers):
        raise NoFix(
            "the ACS issuer exists with other settings: S4's fix removes and recreates it, which this suite leaves to "
            "an administrator (Remove-SPTrustedSecurityTokenIssuer; New-SPTrustedSecurityTokenIssuer -IsTrustBroker)"
        )
    metadata = org.cloud.acs_metadata_url(tenant.id)
    return [
        _new_change(
            failure,
            "Get-SPTrustedSecurityTokenIssuer",
            (),
            {"Name": "ACS"},
            "New-SPTrustedSecurityTokenIssuer",
            [("MetadataEndPoint", metadata), ("IsTrustBroker", None), ("Name", "ACS")],
            {"RegisteredIssuerName": issuer, "IsSelfIssuer": False},
            "Remove-SPTrustedSecurityTokenIssuer",
            "ACS",
            endpoint="sharepoint",
            records=_sharepoint_records(org, "Get-SPTrustedSecurityTokenIssuer"),
        )
    ]


@planner("SPS-APP-PRINCIPAL")
def _app_principal(failure: Failure) -> list[Change]:
    org = failure.organization
    tenant = org.sharepoint_tenant
    principal = tenant.service_principal(SHAREPOINT_ONLINE_APP_ID)
    wanted = f"{principal.id}@{tenant.id}".lower()
    sharepoint = org.profile.sharepoint
    if sharepoint is None:
        raise NoFix("the profile has no [sharepoint] section naming the hybrid site")
    site = sharepoint.hybrid_site or sharepoint.web_application
    return [
        _new_change(
            failure,
            "Get-SPAppPrincipal",
            [("Site", site), ("NameIdentifier", wanted)],
            {"NameIdentifier": wanted},
            "Register-SPAppPrincipal",
            [("Site", site), ("NameIdentifier", wanted), ("DisplayName", "SharePoint Online")],
            {"NameIdentifier": wanted},
            None,
            wanted,
            endpoint="sharepoint",
            undo_note=f"Unregister-SPAppPrincipal needs the principal object: run Unregister-SPAppPrincipal -Site {site} "
            f"-AppPrincipal (Get-SPAppPrincipal -Site {site} -NameIdentifier {wanted}) by hand",
        )
    ]


# -- Entra ID lists ------------------------------------------------------------------------------------------------
def _principal_document(org: Organization, tenant: Tenant, app_id: str) -> dict[str, Any]:
    documents = org.collection.tenants.get(tenant.id)
    document = documents.service_principals.get(app_id) if documents else None
    if not isinstance(document, dict) or not document.get("id"):
        raise NoFix(f"the {app_id} service principal of tenant {tenant} was not read in this run")
    return document


def _application_document(org: Organization, tenant: Tenant, object_id: str) -> dict[str, Any]:
    documents = org.collection.tenants.get(tenant.id)
    listing = documents.applications if documents else None
    if not isinstance(listing, dict):
        raise NoFix(f"the applications of tenant {tenant} were not read in this run")
    found = next((app for app in listing.get("value") or [] if app.get("id") == object_id), None)
    if found is None:
        raise NoFix(f"application {object_id} is not among the applications read in tenant {tenant}")
    return found


def _list_change(
    failure: Failure,
    tenant: Tenant,
    object_path: str,
    property_name: str,
    before: list[Any],
    add: list[Any],
    remove: Sequence[str] = (),
) -> Change:
    after = merged(property_name, before, add, list(remove))
    shown_add = describe_items(property_name, add)
    shown_remove = describe_items(property_name, [i for i in before if item_key(property_name, i) in set(remove)])
    body = f"{property_name} = existing ({len(before)})"
    if shown_add:
        body += f" + {shown_add}"
    if shown_remove:
        body += f" - {shown_remove}"
    return Change(
        requirement=failure.requirement.id,
        subject=failure.subject.label,
        kind="graph-list",
        summary=f"PATCH /{object_path} {body}",
        target={
            "tenant": tenant.id,
            "object": object_path,
            "method": "PATCH",
            "url": "",
            "property": property_name,
            "add": add,
            "remove": list(remove),
            "body": body,
        },
        before=before,
        after=after,
    )


def _principal_list_change(failure: Failure, tenant: Tenant, app_id: str, property_name: str, add: list[Any]) -> Change:
    document = _principal_document(failure.organization, tenant, app_id)
    before = list(document.get(property_name) or [])
    return _list_change(failure, tenant, f"servicePrincipals/{document['id']}", property_name, before, add)


def key_credential(certificate: Certificate) -> dict[str, Any]:
    """A Verify keyCredential for a certificate, with a keyId of our own so rollback removes exactly it."""
    identifier = base64.b64encode(hashlib.sha1(certificate.der, usedforsecurity=False).digest()).decode("ascii")
    return {
        "customKeyIdentifier": identifier,
        "displayName": certificate.subject,
        "endDateTime": certificate.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": base64.b64encode(certificate.der).decode("ascii"),
        "keyId": str(uuid.uuid4()),
        "startDateTime": certificate.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    }


def _publish(
    failure: Failure, tenant: Tenant, holder: Any, object_path: str, before: list[Any], certificates: list[Certificate]
) -> list[Change]:
    missing = []
    for certificate in certificates:
        if holder.verify_credential_for(certificate.thumbprint) is None and certificate not in missing:
            missing.append(certificate)
    if not missing:
        raise NoFix(
            f"{holder} holds the certificate, but not as a valid AsymmetricX509Cert/Verify credential: replace that "
            "credential by hand (remediation never removes a credential it did not add)"
        )
    return [_list_change(failure, tenant, object_path, "keyCredentials", before, [key_credential(c) for c in missing])]


@planner("EXO-AUTHCERT-PUBLISHED")
def _publish_auth_certificate(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    current = org.auth_certificate()
    if current is None:
        raise NoFix("the current auth certificate is on no server: renew it first (EXO-AUTHCERT)")
    certificates = [current]
    staged_thumbprint = org.auth_config.next_thumbprint
    staged = org.auth_certificate(staged_thumbprint) if staged_thumbprint else None
    if staged is not None:
        certificates.append(staged)
    if org.dedicated_hybrid_app_enabled:
        _, application = dedicated_application(org, tenant)
        if application is None:
            raise NoFix("the dedicated hybrid application is missing: ConfigureExchangeHybridApplication.ps1")
        document = _application_document(org, tenant, application.id)
        return _publish(
            failure,
            tenant,
            application,
            f"applications/{application.id}",
            list(document.get("keyCredentials") or []),
            certificates,
        )
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    document = _principal_document(org, tenant, EXCHANGE_ONLINE_APP_ID)
    return _publish(
        failure,
        tenant,
        principal,
        f"servicePrincipals/{principal.id}",
        list(document.get("keyCredentials") or []),
        certificates,
    )


@planner("SFB-AUTHCERT-PUBLISHED")
def _publish_to_skype(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    current = org.auth_certificate()
    if current is None:
        raise NoFix("the current auth certificate is on no server: renew it first (EXO-AUTHCERT)")
    principal = tenant.service_principal(SKYPE_ONLINE_APP_ID)
    document = _principal_document(org, tenant, SKYPE_ONLINE_APP_ID)
    return _publish(
        failure,
        tenant,
        principal,
        f"servicePrincipals/{principal.id}",
        list(document.get("keyCredentials") or []),
        [current],
    )


@planner("SPS-STS-CERT-PUBLISHED")
def _publish_sts_certificate(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    certificate = org.security_token_service.signing_certificate
    if certificate is None:
        raise NoFix("the farm reports no STS signing certificate")
    principal = tenant.service_principal(SHAREPOINT_ONLINE_APP_ID)
    document = _principal_document(org, tenant, SHAREPOINT_ONLINE_APP_ID)
    return _publish(
        failure,
        tenant,
        principal,
        f"servicePrincipals/{principal.id}",
        list(document.get("keyCredentials") or []),
        [certificate],
    )


@planner("EXO-SPN-AUTHORITIES", "HMA-SPN-URLS")
def _host_name(failure: Failure) -> list[Change]:
    spn_host = failure.subject.value
    return [
        _principal_list_change(
            failure, spn_host.tenant, EXCHANGE_ONLINE_APP_ID, "servicePrincipalNames", [f"https://{spn_host.host}/"]
        )
    ]


@planner("SFB-SPN")
def _skype_wildcard(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    domains = [d for d in org.smtp_domains if d in tenant.verified_domains] or [
        d for d in tenant.verified_domains if not d.endswith((".onmicrosoft.com", ".onmicrosoft.us"))
    ]
    if not domains:
        raise NoFix(f"tenant {tenant} has no verified on-premises domain to name")
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    prefix = EXCHANGE_ONLINE_APP_ID + "/"
    present = {spn.lower() for spn in principal.service_principal_names}
    add = [f"{prefix}*.{d}" for d in domains if f"{prefix}*.{d}".lower() not in present]
    return (
        [_principal_list_change(failure, tenant, EXCHANGE_ONLINE_APP_ID, "servicePrincipalNames", add)] if add else []
    )


@planner("SPS-SPN")
def _sharepoint_spn(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    if org.profile.sharepoint is None:
        raise NoFix("the profile has no [sharepoint] public_root_domain")
    wanted = f"{SHAREPOINT_ONLINE_APP_ID}/*.{org.profile.sharepoint.public_root_domain}"
    principal = tenant.service_principal(SHAREPOINT_ONLINE_APP_ID)
    if wanted.lower() in {spn.lower() for spn in principal.service_principal_names}:
        raise NoFix(
            f"{wanted} is there; the other names for the root domain must be removed by hand (remediation never "
            "removes a name it did not add)"
        )
    return [_principal_list_change(failure, tenant, SHAREPOINT_ONLINE_APP_ID, "servicePrincipalNames", [wanted])]


@planner("OWA-REPLY-URLS")
def _reply_url(failure: Failure) -> list[Change]:
    reply_url = failure.subject.value
    return [_principal_list_change(failure, reply_url.tenant, EXCHANGE_ONLINE_APP_ID, "replyUrls", [reply_url.url])]


@planner("HYB-SHARED-SP-CLEAN")
def _shared_principal_clean(failure: Failure) -> list[Change]:
    org, tenant = failure.organization, failure.subject.value
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    on_premises = on_premises_auth_thumbprints(org)
    leftover = [c.key_id for c in principal.key_credentials if c.thumbprint in on_premises and c.key_id]
    if not leftover:
        raise NoFix("the on-premises credentials on the shared principal carry no keyId to remove them by")
    document = _principal_document(org, tenant, EXCHANGE_ONLINE_APP_ID)
    before = list(document.get("keyCredentials") or [])
    change = _list_change(
        failure,
        tenant,
        f"servicePrincipals/{principal.id}",
        "keyCredentials",
        before,
        [],
        [k.lower() for k in leftover if k],
    )
    return [change]
