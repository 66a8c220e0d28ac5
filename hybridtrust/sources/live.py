"""The live source: one organization collected from its servers and tenants, once per audit.

`collect_live(profile)` gathers, in this order (each step needs the one before):

1. Exchange over PowerShell remoting (`hybridtrust.sources.exchange`);
2. Entra ID over Graph for every tenant of the profile (`hybridtrust.sources.graph`),
   looking up the dedicated hybrid applications the AuthServers name (S5);
3. SharePoint over PowerShell remoting when the profile selects ``sharepoint-s2s``
   (`hybridtrust.sources.sharepoint`); Get-SPAppPrincipal needs the object id of the
   tenant's SharePoint Online service principal, which step 2 read;
4. Exchange Online documents from the folder the profile names in
   ``[exchange_online] evidence`` (Exchange Online is not reached live).

Nothing here raises for what a server, a tenant or the network does: whatever could
not be collected is a `Missing` whose reason names the endpoint and the cause, so
exactly the requirements that need it turn into errors.

Lab profiles (``[lab]``): ``mode = "embedded"`` starts the lab in this process
(`hybridtrust.lab.server.start_lab`, with ``[lab] state`` or the shipped flawed
Contoso) on first use and points the sources at it with the lab's own credentials
and CA. The lab is kept for the rest of the process, shared by every audit of the
same profile, and stopped when the interpreter exits (the `Lab` registers that
itself) or earlier by `stop_embedded_labs()`; pytest ends its process at the end of
the session, so the lab ends with it (each xdist worker runs its own).
``mode = "external"`` reads the JSON line ``python -m hybridtrust.lab serve`` printed,
saved in the file ``[lab] connection`` names.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridtrust.facts import FIRST_PARTY_APP_IDS, SHAREPOINT_ONLINE_APP_ID, Collection, Missing, TenantDocuments
from hybridtrust.limits import LAB_CONNECTION_BYTES, NESTING_ERRORS, TooLarge, read_bounded
from hybridtrust.powershell import PSRecord
from hybridtrust.sources.evidence import EXCHANGE_CMDLETS, EXCHANGE_ONLINE_CMDLETS, SHAREPOINT_DOCUMENTS
from hybridtrust.sources.exchange import EXCHANGE_CONFIGURATION, application_ids_of, collect_exchange
from hybridtrust.sources.remoting import (
    REMOTING_ERRORS,
    Command,
    RemotingSettings,
    SettingsError,
    close_pool,
    describe_transport_error,
    open_pool,
    run_commands,
)
from hybridtrust.sources.sharepoint import SHAREPOINT_CONFIGURATION, collect_sharepoint

if TYPE_CHECKING:
    from hybridtrust.lab.server import Lab
    from hybridtrust.profile import Profile
    from hybridtrust.sources.graph import GraphEndpoints, SignIn, TenantRequest

log = logging.getLogger(__name__)

EXCHANGE_ONLINE_NOT_REACHED = (
    "not collected: Exchange Online is not reached live; export Get-IntraOrganizationConnector from Exchange "
    "Online with Export-Clixml and name the folder in [exchange_online] evidence"
)


# -- where to connect ----------------------------------------------------------------------------------
@dataclass
class LiveConnections:
    """Where the live sources connect, and as whom (from a profile, or from a running lab)."""

    origin: str
    exchange: RemotingSettings | SettingsError | None
    """None: the profile has no [exchange] section, so Exchange is not collected."""
    sharepoint: RemotingSettings | SettingsError | None
    graph: GraphConnection | Missing
    notes: list[str] = field(default_factory=list)
    metadata_base: str | None = None
    """--connectivity against the lab: its token service answers for Microsoft's STS metadata hosts."""
    metadata_ca_file: Path | None = None


@dataclass
class GraphConnection:
    endpoints: GraphEndpoints
    requests: Callable[[list[str]], list[TenantRequest]]
    """hybrid application ids -> one request per tenant of the profile (with its credential)."""
    unreachable: dict[str, str] = field(default_factory=dict)
    """tenant id -> why that tenant cannot be read at all (a lab without that tenant)."""


def profile_connections(profile: Profile) -> LiveConnections:
    """A real organization: the profile's [exchange], [sharepoint], [entra] and tenant credentials."""

    def remoting(section: Any, configuration: str) -> RemotingSettings | SettingsError | None:
        if section is None:
            return None
        try:
            return RemotingSettings.from_section(section, default_configuration=configuration, resolve=profile.resolve)
        except SettingsError as error:
            return error

    return LiveConnections(
        origin=f"live: {profile.exchange.uri if profile.exchange else 'no [exchange]'}",
        exchange=remoting(profile.exchange, EXCHANGE_CONFIGURATION),
        sharepoint=remoting(profile.sharepoint, SHAREPOINT_CONFIGURATION),
        graph=_profile_graph(profile),
    )


def _profile_graph(profile: Profile) -> GraphConnection | Missing:
    try:
        from hybridtrust.sources import graph
    except ImportError as error:
        return Missing(
            "entra:graph", f"not collected: the live Graph source is not available in this installation ({error})"
        )
    endpoints = graph.endpoints_from_profile(profile)
    return GraphConnection(endpoints, lambda app_ids: graph.tenant_requests_from_profile(profile, app_ids))


def lab_connections(profile: Profile, description: Mapping[str, Any], *, origin: str) -> LiveConnections:
    """A running lab (its `Lab.describe()` / the JSON line of ``serve``): its endpoints, credentials and CAs."""

    def remoting(name: str, configuration: str, section: Any) -> RemotingSettings | SettingsError:
        endpoint = description.get(name)
        if not isinstance(endpoint, Mapping) or not endpoint.get("uri"):
            return SettingsError(f"the lab connection has no {name} endpoint")
        # The lab's https listener takes Basic and presents a certificate of its own CA.
        return RemotingSettings(
            uri=str(endpoint["uri"]),
            configuration_name=str(endpoint.get("configuration_name") or configuration),
            auth="basic",
            username=str(endpoint.get("username") or ""),
            password=str(endpoint.get("password") or ""),
            verify_tls=True,
            ca_file=Path(str(endpoint["ca_file"])) if endpoint.get("ca_file") else None,
            # A lab answers at once: shorter waits than a profile's defaults for a real farm, unless the
            # profile's section sets them (a benchmark's slow lab, a test of timeouts).
            connect_timeout=_explicit(section, "connect_timeout_seconds", 10),
            operation_timeout=_explicit(section, "operation_timeout_seconds", 60),
            max_concurrency=section.max_concurrency if section is not None else 8,
        )

    return LiveConnections(
        origin=origin,
        exchange=remoting("exchange", EXCHANGE_CONFIGURATION, profile.exchange),
        sharepoint=remoting("sharepoint", SHAREPOINT_CONFIGURATION, profile.sharepoint),
        graph=_lab_graph(profile, description.get("graph")),
        metadata_base=str(graph["authority"]) if isinstance(graph := description.get("graph"), Mapping) else None,
        metadata_ca_file=Path(str(graph["ca_file"])) if isinstance(graph, Mapping) and graph.get("ca_file") else None,
    )


def _explicit(section: Any, name: str, lab_default: float) -> float:
    """The profile section's value when the file sets it, else the lab's own default."""
    if section is not None and name in section.model_fields_set:
        return float(getattr(section, name))
    return lab_default


def _lab_graph(profile: Profile, description: Any) -> GraphConnection | Missing:
    if not isinstance(description, Mapping):
        return Missing("entra:graph", "not collected: the lab runs no Graph endpoint (hybridtrust.lab.graph_server)")
    try:
        from hybridtrust.sources import graph
    except ImportError as error:
        return Missing(
            "entra:graph", f"not collected: the live Graph source is not available in this installation ({error})"
        )
    endpoints = graph.GraphEndpoints(
        authority=str(description["authority"]),
        graph_base_url=str(description["base_url"]),
        ca_file=Path(str(description["ca_file"])),
        timeout_s=profile.entra.timeout_seconds,
    )
    tenants: Mapping[str, Any] = description.get("tenants") or {}
    unreachable: dict[str, str] = {}
    credentials: dict[str, Any] = {}
    for tenant in profile.tenants:
        # The audit reads with the lab's read-only client, signing in with its certificate.
        client = (tenants.get(tenant.id) or {}).get("read_only")
        if not client or not client.get("certificate_file"):
            unreachable[tenant.id] = f"the lab has no read-only client for tenant {tenant.id}"
            continue
        credentials[tenant.id] = graph.CredentialSpec(
            method="certificate", client_id=client["client_id"], certificate_file=Path(client["certificate_file"])
        )

    def requests(app_ids: list[str]) -> list[TenantRequest]:
        return [graph.TenantRequest(tenant_id, spec, tuple(app_ids)) for tenant_id, spec in credentials.items()]

    return GraphConnection(endpoints, requests, unreachable)


# -- the embedded lab ----------------------------------------------------------------------------------
_LABS: dict[str, Lab] = {}
_LABS_LOCK = threading.Lock()


def embedded_lab(profile: Profile, now: dt.datetime | None = None) -> Lab:
    """The lab of an embedded lab profile: started on first use, then shared for the process's life."""
    from hybridtrust.lab.server import start_lab
    from hybridtrust.lab.state import LabState

    assert profile.lab is not None
    state_path = profile.resolve(profile.lab.state)
    key = f"{profile.path or profile.name}|{state_path or 'flawed-contoso'}"
    with _LABS_LOCK:
        lab = _LABS.get(key)
        if lab is None:
            if state_path is not None:
                state = LabState.load(state_path)
            else:
                from hybridtrust.lab.contoso import flawed_contoso

                state = flawed_contoso(now or dt.datetime.now(dt.UTC))
            # start_lab binds 127.0.0.1 only; the Lab stops itself at interpreter exit.
            lab = start_lab(state, latency_ms=profile.lab.latency_ms)
            _LABS[key] = lab
        return lab


def stop_embedded_labs() -> None:
    """Stop every lab `embedded_lab` started (they would otherwise stop at interpreter exit)."""
    with _LABS_LOCK:
        labs = list(_LABS.values())
        _LABS.clear()
    for lab in labs:
        lab.stop()


def _lab_profile_connections(profile: Profile) -> LiveConnections:
    assert profile.lab is not None
    if profile.lab.mode == "embedded":
        try:
            lab = embedded_lab(profile)
        except (OSError, ValueError) as error:  # an unreadable state file, no free port on 127.0.0.1
            return _unreachable(profile, f"the embedded lab could not start: {error}")
        where = f"state {profile.resolve(profile.lab.state)}" if profile.lab.state else "the shipped flawed Contoso"
        connections = lab_connections(profile, lab.describe(), origin=f"lab (embedded, {where})")
        connections.notes.append(f"the embedded lab ({where}) answered on 127.0.0.1 for this run")
        return connections
    path = profile.resolve(profile.lab.connection)
    if path is None:
        return _unreachable(profile, "[lab] mode = 'external' needs connection, the file with the lab's JSON line")
    try:
        # Bounded: a connection file is one short line; a huge file is not read whole (limits.py says why).
        content = read_bounded(path, LAB_CONNECTION_BYTES).decode("utf-8")
        line = next((text for text in content.splitlines() if text.strip()), "")
        description = json.loads(line)
        if not isinstance(description, dict):
            raise ValueError("not a JSON object")
    except TooLarge as error:
        return _unreachable(profile, f"the lab connection file {path} is refused: {error}")
    except (OSError, ValueError, *NESTING_ERRORS) as error:
        return _unreachable(profile, f"the lab connection file {path} cannot be read: {error}")
    connections = lab_connections(profile, description, origin=f"lab (external, {path})")
    connections.notes.append(f"an external lab ({path}) answered for this run")
    return connections


def _unreachable(profile: Profile, reason: str) -> LiveConnections:
    error = SettingsError(reason)
    return LiveConnections(
        origin="lab (unreachable)",
        exchange=error,
        sharepoint=error,
        graph=Missing("entra:graph", f"not collected: {reason}"),
    )


# -- collecting ----------------------------------------------------------------------------------------
def collect_live(profile: Profile, *, connectivity: bool = False, keep_clixml: bool = True) -> Collection:
    """Everything the requirement tests need about one organization, from the live systems.

    `keep_clixml`: keep each Exchange record's CLIXML as sent, for --save-evidence only.
    """
    connections = _lab_profile_connections(profile) if profile.lab is not None else profile_connections(profile)
    return collect_with(profile, connections, connectivity=connectivity, keep_clixml=keep_clixml)


def collect_with(
    profile: Profile,
    connections: LiveConnections,
    *,
    now: dt.datetime | None = None,
    connectivity: bool = False,
    keep_clixml: bool = True,
) -> Collection:
    collection = Collection(
        source="live", origin=connections.origin, collected_at=(now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    )
    collection.notes.extend(connections.notes)

    # 1. Exchange, in the background: Entra ID needs only its AuthServers (their application ids), so
    # Graph and SharePoint run while the per-server certificate queries, most of a large audit, go on.
    later = Collection(source="live", origin=connections.origin, collected_at=collection.collected_at)
    app_ids: list[str] = []
    sign_ins: dict[str, SignIn] = {}
    if connections.exchange is None:
        for cmdlet in EXCHANGE_CMDLETS:
            collection.exchange[cmdlet] = Missing(
                f"exchange:{cmdlet}",
                "not collected: the profile has no [exchange] section (uri of Exchange's /PowerShell)",
            )
        exchange = None
    else:
        settings = connections.exchange
        auth_servers: list[list[PSRecord] | None] = []
        answered = threading.Event()

        def early(cmdlet: str, records: list[PSRecord] | None) -> None:
            if cmdlet == "Get-AuthServer":
                auth_servers.append(records)
                answered.set()

        background = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridtrust-exchange")
        exchange = background.submit(collect_exchange, settings, early=early, keep_clixml=keep_clixml)
        background.shutdown(wait=False)
        # Graph's credentials are CPU (azure-identity imported, each private key loaded and checked): built
        # now, while Exchange opens its pools and waits for its first answers, they do not take turns at
        # the interpreter lock with the per-server queries, as they did when built after Get-AuthServer.
        sign_ins = _prepare_sign_ins(connections.graph)
        while not answered.wait(0.05) and not exchange.done():
            pass
        if auth_servers and auth_servers[0] is not None:
            app_ids = application_ids_of(auth_servers[0])
        elif exchange.done():
            app_ids = exchange.result().auth_server_application_ids()

    # 2. Entra ID
    evidence_files = _collect_tenants(profile, connections.graph, app_ids, later, sign_ins)
    remember_graph_files(later, evidence_files)

    # 3. SharePoint
    if "sharepoint-s2s" in profile.scenarios:
        _collect_farm(profile, connections.sharepoint, later)

    # The documents in the order the collection always had: Exchange's (and its notes) first.
    if exchange is not None:
        exchange.result().apply_to(collection)
    collection.tenants.update(later.tenants)
    collection.sharepoint.update(later.sharepoint)
    collection.notes.extend(later.notes)

    # 4. Exchange Online
    collection.exchange_online.update(exchange_online_documents(profile))

    # 5. The opt-in live probes (--connectivity)
    if connectivity:
        _probe(profile, connections, collection)
    return collection


def _probe(profile: Profile, connections: LiveConnections, collection: Collection) -> None:
    """Fetch every AuthServer's metadata and each tenant's ACS metadata; run Test-OAuthConnectivity."""
    from hybridtrust.sources import probes

    urls = [profile.cloud.acs_metadata_url(tenant.id) for tenant in profile.tenants]
    auth_servers = collection.exchange.get("Get-AuthServer")
    if isinstance(auth_servers, list):
        urls += [url for record in auth_servers if (url := record.text_of("AuthMetadataUrl"))]
    ca_file = connections.metadata_ca_file or profile.resolve(profile.entra.ca_file)
    for url, document in probes.fetch_all(urls, base=connections.metadata_base, ca_file=ca_file).items():
        collection.probes[f"metadata:{url}"] = document

    primary = profile.primary_tenant.id
    mailboxes = {
        tenant.id: tenant.test_mailbox or (profile.organization.test_mailbox if tenant.id == primary else None)
        for tenant in profile.tenants
    }
    commands = [
        Command(
            f"oauth-connectivity:{tenant_id}",
            "Test-OAuthConnectivity",
            (("Service", "EWS"), ("TargetUri", profile.cloud.exchange_online_ews_url), ("Mailbox", mailbox)),
        )
        for tenant_id, mailbox in mailboxes.items()
        if mailbox
    ]
    for tenant_id, mailbox in mailboxes.items():
        if not mailbox:
            collection.probes[f"oauth-connectivity:{tenant_id}"] = Missing(
                f"probe:oauth-connectivity:{tenant_id}",
                f"no test mailbox for tenant {tenant_id}: name one in its [[tenants]] test_mailbox "
                "([organization] test_mailbox serves the primary tenant)",
                by_design=True,
            )
    settings = connections.exchange
    if not commands:
        return
    if not isinstance(settings, RemotingSettings):
        reason = f"not probed: Exchange cannot be reached ({settings or 'no [exchange] section'})"
        for command in commands:
            collection.probes[command.key] = Missing(f"probe:{command.key}", reason)
        return
    try:
        pool = open_pool(settings, min(len(commands), settings.max_concurrency))
    except REMOTING_ERRORS as error:
        reason = f"not probed: {describe_transport_error(error, settings)}"
        for command in commands:
            collection.probes[command.key] = Missing(f"probe:{command.key}", reason)
        return
    try:
        outcomes = run_commands(pool, commands, settings)
    finally:
        close_pool(pool)
    for command in commands:
        outcome = outcomes[command.key]
        collection.probes[command.key] = (
            Missing(f"probe:{command.key}", f"not probed: Test-OAuthConnectivity on {settings.uri}: {outcome.error}")
            if outcome.error
            else probes.connectivity_result(list(outcome.records))
        )


def _prepare_sign_ins(connection: GraphConnection | Missing) -> dict[str, SignIn]:
    """Each tenant's Graph credential, by tenant id (`graph.prepare_sign_in`); nothing is sent yet."""
    if isinstance(connection, Missing):
        return {}
    try:
        from hybridtrust.sources import graph

        return {
            request.tenant_id: graph.prepare_sign_in(request, connection.endpoints)
            for request in connection.requests([])
        }
    except Exception:  # fail closed where it is reported: the Graph collection builds them again and says why
        log.debug("preparing the Graph sign-ins failed", exc_info=True)
        return {}


def _collect_tenants(
    profile: Profile,
    connection: GraphConnection | Missing,
    app_ids: list[str],
    collection: Collection,
    sign_ins: Mapping[str, SignIn] | None = None,
) -> dict[str, dict[str, Any]]:
    tenant_ids = [tenant.id for tenant in profile.tenants]
    if isinstance(connection, Missing):
        for tenant_id in tenant_ids:
            collection.tenants[tenant_id] = _missing_tenant(connection.reason)
        return {}
    from hybridtrust.sources import graph

    for tenant_id, reason in connection.unreachable.items():
        collection.tenants[tenant_id] = _missing_tenant(f"not collected: {reason}")
    requests = connection.requests(app_ids)
    files: dict[str, dict[str, Any]] = {}
    if not requests:
        return files
    try:
        results = graph.collect(requests, connection.endpoints, sign_ins=sign_ins)
    except Exception as error:  # fail closed: the Graph source promises not to raise, but never trust a promise
        log.debug("graph source failed", exc_info=True)
        for request in requests:
            collection.tenants[request.tenant_id] = _missing_tenant(
                f"Graph collection failed: {type(error).__name__}: {error}"
            )
        return files
    for tenant_id, result in results.items():
        collection.tenants[tenant_id] = result.to_facts()
        collection.notes.extend(result.notes)
        files.update(result.evidence_files())
    return files


def _missing_tenant(reason: str) -> TenantDocuments:
    return TenantDocuments(
        organization=Missing("entra:organization", reason),
        domains=Missing("entra:domains", reason),
        service_principals={
            app_id: Missing(f"entra:servicePrincipals/{app_id}", reason) for app_id in FIRST_PARTY_APP_IDS
        },
        applications=Missing("entra:applications", reason),
    )


def app_principal_name_identifier(profile: Profile, collection: Collection) -> str | Missing | None:
    """``<object id of the 00000003 service principal>@<tenant id>`` of the SharePoint tenant (S4 step 8)."""
    tenant_id = profile.primary_tenant.id  # SharePoint Server is joined to one tenant: the primary one
    tenant = collection.tenants.get(tenant_id)
    principal = tenant.service_principals.get(SHAREPOINT_ONLINE_APP_ID) if tenant else None
    if tenant is None or isinstance(principal, Missing):
        why = principal.reason if isinstance(principal, Missing) else f"tenant {tenant_id} was not read"
        return Missing(
            "sharepoint:Get-SPAppPrincipal",
            f"not collected: Get-SPAppPrincipal needs the object id of the {SHAREPOINT_ONLINE_APP_ID} service "
            f"principal of tenant {tenant_id}, which could not be read: {why}",
        )
    if principal is None:
        return None  # the tenant has no SharePoint Online principal: no app principal can be registered for it
    return f"{principal.get('id')}@{tenant_id}"


def _collect_farm(profile: Profile, settings: RemotingSettings | SettingsError | None, collection: Collection) -> None:
    if settings is None or profile.sharepoint is None:
        for name in SHAREPOINT_DOCUMENTS:
            collection.sharepoint[name] = Missing(
                f"sharepoint:{name}", "not collected: scenario sharepoint-s2s needs a [sharepoint] section"
            )
        return
    documents = collect_sharepoint(
        settings,
        web_application=profile.sharepoint.web_application,
        hybrid_site=profile.sharepoint.hybrid_site,
        app_principal=app_principal_name_identifier(profile, collection),
    )
    documents.apply_to(collection)


def exchange_online_documents(profile: Profile) -> dict[str, Any]:
    """The Exchange Online exports the profile names, or why they are not there."""
    folder = profile.resolve(profile.exchange_online.evidence)
    if folder is None:
        # By design: the administrator supplies these, so what needs only them is skipped with this reason.
        return {
            cmdlet: Missing(f"exchange-online:{cmdlet}", EXCHANGE_ONLINE_NOT_REACHED, by_design=True)
            for cmdlet in EXCHANGE_ONLINE_CMDLETS
        }
    if not folder.is_dir():
        reason = f"not collected: [exchange_online] evidence {folder} is not a folder"
        return {cmdlet: Missing(f"exchange-online:{cmdlet}", reason) for cmdlet in EXCHANGE_ONLINE_CMDLETS}
    # The same reader as an evidence bundle's exchange-online/ folder (Export-Clixml, GetX.xml accepted).
    from hybridtrust.sources.evidence import _clixml_document

    documents: dict[str, Any] = {}
    for cmdlet in EXCHANGE_ONLINE_CMDLETS:
        document = _clixml_document(folder, "exchange-online", cmdlet)
        if isinstance(document, Missing) and document.reason.startswith("not collected"):
            document = Missing(document.key, f"not collected: {folder / (cmdlet + '.xml')} does not exist")
        documents[cmdlet] = document
    return documents


# -- what --save-evidence needs beyond the facts --------------------------------------------------------
_GRAPH_FILES: dict[int, dict[str, dict[str, Any]]] = {}


def remember_graph_files(collection: Collection, files: dict[str, dict[str, Any]]) -> None:
    """Graph's documents as the bundle stores them (404 bodies included), kept beside the collection."""
    key = id(collection)
    _GRAPH_FILES[key] = files
    weakref.finalize(collection, _GRAPH_FILES.pop, key, None)


def graph_files(collection: Collection) -> dict[str, dict[str, Any]] | None:
    return _GRAPH_FILES.get(id(collection))


__all__ = [
    "EXCHANGE_ONLINE_NOT_REACHED",
    "LiveConnections",
    "collect_live",
    "collect_with",
    "embedded_lab",
    "graph_files",
    "lab_connections",
    "profile_connections",
    "stop_embedded_labs",
]
