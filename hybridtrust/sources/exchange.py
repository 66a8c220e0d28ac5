"""The live Exchange source: Exchange's remote PowerShell (``Microsoft.Exchange``) over pypsrp.

One runspace pool, once per audit, whatever the number of servers or tests:

- every cmdlet of `EXCHANGE_CMDLETS` once for the whole organization (virtual
  directories with ``-ADPropertiesOnly``: Active Directory only, so a server whose
  IIS is down costs nothing), `Get-ManagementRoleAssignment` once per application
  account (a not-found account just has no assignment);
- then ``Get-ExchangeCertificate -Server <Name>`` for each Exchange 2013+
  Mailbox/Client Access server Get-ExchangeServer names (certificates carry no
  reliable server name, and only those servers must hold the auth certificate).
  That is the only part that grows with the organization: one pipeline per server.

The objects there is one of per server (servers, their Client Access services, virtual
directories and certificates) come back as `PROJECTIONS`: ``| Select-Object -Property``
the properties facts read. A virtual directory is some sixty properties on the wire, and at
a thousand servers whole objects are 60 MB that both ends serialize and parse, for a
dozen properties. When the CLIXML is kept to be saved as an evidence bundle
(``--save-evidence``), whole objects are asked for, as the collector script exports them:
a bundle may be read by people and tools that need more than this audit. An endpoint that
refuses Select-Object (a custom restricted one) is asked again for whole objects, and the
report's notes say so.

Up to ``max_concurrency`` (at most 18, Exchange's PowerShellMaxConcurrency) pools of one
runspace each, one thread and one connection per pool, take the pipelines from one queue
(`hybridtrust.sources.remoting.run_commands_on_pools`), so that many requests are in
flight at once and the network's latency is paid once per pipeline per pool.

The runspace is NoLanguage: only ``add_cmdlet(...).add_parameter(...)`` is ever sent,
never a script and never a string-built command, so no value from a profile can
become PowerShell code.

Failures never raise out of `collect_exchange`: a cmdlet that fails becomes
``Missing("exchange:<Cmdlet>", "<Cmdlet> on <uri>: <the server's own words>")``; one
server's certificates failing becomes a `Missing` naming that server; a connection
that cannot be made (refused, TLS, 401, timeout) makes every Exchange document
`Missing` with the endpoint and the cause. No message carries a password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from hybridtrust.facts import (
    EXCHANGE_CERTIFICATE_PROPERTIES,
    VIRTUAL_DIRECTORY_CMDLETS,
    ClientAccessService,
    Collection,
    ExchangeServer,
    Missing,
    VirtualDirectory,
)
from hybridtrust.powershell import PSRecord
from hybridtrust.sources.evidence import CERTIFICATES_FOLDER, EXCHANGE_CMDLETS
from hybridtrust.sources.remoting import (
    REMOTING_ERRORS,
    Command,
    Outcome,
    RemotingSettings,
    SettingsError,
    describe_transport_error,
    open_pool,
    run_commands_on_pools,
    scrub,
)

log = logging.getLogger(__name__)

EXCHANGE_CONFIGURATION = "Microsoft.Exchange"
ROLE_ASSIGNMENTS = "Get-ManagementRoleAssignment"
APPLICATION_ACCOUNTS = ("Exchange Online-ApplicationAccount", "SfBOnline-ApplicationAccount")
"""The accounts partner applications act as (S0's Exchange Online, S1's Skype for Business Online)."""
CERTIFICATES = "Get-ExchangeCertificate"
PROJECTIONS: dict[str, tuple[str, ...]] = {
    "Get-ExchangeServer": ExchangeServer.PROPERTIES,
    "Get-ClientAccessService": ClientAccessService.PROPERTIES,
    **{cmdlet: VirtualDirectory.PROPERTIES for cmdlet in VIRTUAL_DIRECTORY_CMDLETS.values()},
    CERTIFICATES: EXCHANGE_CERTIFICATE_PROPERTIES,
}
"""The properties asked of the cmdlets whose objects grow with the servers: what facts read of them."""


@dataclass
class ExchangeDocuments:
    """What the Exchange source collected: the `Collection.exchange` and `.certificates` parts."""

    uri: str
    exchange: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    certificates: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pipelines: int = 0
    """PSRP pipelines sent (one per cmdlet, per application account, per certificate server)."""

    def apply_to(self, collection: Collection) -> None:
        collection.exchange.update(self.exchange)
        collection.certificates.update(self.certificates)
        collection.notes.extend(self.notes)

    def auth_server_application_ids(self) -> list[str]:
        """ApplicationIdentifier of every AzureAD AuthServer (the dedicated hybrid app lookup, S5)."""
        records = self.exchange.get("Get-AuthServer")
        return application_ids_of(records) if isinstance(records, list) else []


def application_ids_of(auth_servers: list[PSRecord]) -> list[str]:
    """ApplicationIdentifier of every AzureAD AuthServer among Get-AuthServer's records, once each."""
    from hybridtrust.facts import AuthServer

    found: list[str] = []
    for record in auth_servers:
        try:
            server = AuthServer.from_record(record)
        except ValueError:
            continue
        if server.is_evosts and server.application_identifier and server.application_identifier not in found:
            found.append(server.application_identifier)
    return found


def organization_commands(*, projected: bool = True) -> list[Command]:
    """The org-wide pipelines, Get-ExchangeServer first so the certificate queries can start early.

    `projected`: the per-server objects as `PROJECTIONS` (False: whole objects, for an evidence bundle).
    """
    ordered = ["Get-ExchangeServer", *(cmdlet for cmdlet in EXCHANGE_CMDLETS if cmdlet != "Get-ExchangeServer")]
    virtual_directories = set(VIRTUAL_DIRECTORY_CMDLETS.values())
    commands: list[Command] = []
    for cmdlet in ordered:
        select = PROJECTIONS.get(cmdlet, ()) if projected else ()
        if cmdlet == ROLE_ASSIGNMENTS:
            commands.extend(
                Command(f"{cmdlet}/{account}", cmdlet, (("RoleAssignee", account),)) for account in APPLICATION_ACCOUNTS
            )
        elif cmdlet in virtual_directories:
            commands.append(Command(cmdlet, cmdlet, (("ADPropertiesOnly", None),), select))
        else:
            commands.append(Command(cmdlet, cmdlet, select=select))
    return commands


def certificate_servers(records: Iterable[PSRecord]) -> list[str]:
    """Names of the servers that must hold the auth certificate, as Get-ExchangeServer gives them."""
    names: list[str] = []
    for record in records:
        try:
            server = ExchangeServer.from_record(record)
        except ValueError:
            continue  # a nameless object cannot be asked about; facts reports it when it parses the list
        if server.holds_auth_certificate and server.name not in names:
            names.append(server.name)
    return names


def certificate_command(server: str, *, projected: bool = True) -> Command:
    select = PROJECTIONS[CERTIFICATES] if projected else ()
    return Command(f"{CERTIFICATES_FOLDER}/{server}", CERTIFICATES, (("Server", server),), select)


def collect_exchange(
    settings: RemotingSettings | SettingsError,
    *,
    early: Callable[[str, list[PSRecord] | None], None] | None = None,
    keep_clixml: bool = True,
) -> ExchangeDocuments:
    """Every Exchange document of the organization; never raises (failures become `Missing`).

    `early` hears each organization-wide cmdlet's records (None if it failed) as soon as they
    arrive, from a collection thread: the live source starts Graph once Get-AuthServer answered.
    `keep_clixml`: remember each record's CLIXML as the server sent it (`remoting.original_clixml`),
    which only --save-evidence reads; whole objects are then asked for, not `PROJECTIONS`.
    """
    uri = settings.uri if isinstance(settings, RemotingSettings) else "the profile's [exchange] uri"
    documents = ExchangeDocuments(uri=uri)
    if isinstance(settings, SettingsError):
        _fail_all(documents, f"cannot connect to Exchange remote PowerShell: {settings}")
        return documents
    documents.notes.extend(settings.notes())
    try:
        _collect(settings, documents, early, keep_clixml)
    except Exception as error:  # fail closed: an unexpected failure is "not collected", never a crash or a pass
        log.debug("exchange source failed", exc_info=True)
        reason = scrub(
            f"collection from Exchange at {settings.uri} failed: {type(error).__name__}: {error}", settings.secrets
        )
        for cmdlet in EXCHANGE_CMDLETS:
            documents.exchange.setdefault(cmdlet, Missing(f"exchange:{cmdlet}", reason))
    return documents


def _fail_all(documents: ExchangeDocuments, reason: str) -> None:
    for cmdlet in EXCHANGE_CMDLETS:
        documents.exchange[cmdlet] = Missing(f"exchange:{cmdlet}", f"{cmdlet}: {reason}")


def _collect(
    settings: RemotingSettings,
    documents: ExchangeDocuments,
    early: Callable[[str, list[PSRecord] | None], None] | None = None,
    keep_clixml: bool = True,
) -> None:
    try:
        # One pool first: whether Exchange answers at all (and why not) is known before any thread starts.
        pool = open_pool(settings, 1, raw_output=True)
    except REMOTING_ERRORS as error:
        cause = describe_transport_error(error, settings)
        _fail_all(documents, f"could not open Exchange remote PowerShell at {settings.uri} as {settings.who}: {cause}")
        return
    projected = not keep_clixml
    whole_objects: list[str] = []
    queried: set[str] = set()

    def certificate_queries(servers: list[PSRecord]) -> list[Command]:
        project = projected and not whole_objects
        names = [name for name in certificate_servers(servers) if name not in queried]
        queried.update(names)
        return [certificate_command(name, projected=project) for name in names]

    def as_output_arrives(command: Command, records: list[PSRecord]) -> list[Command]:
        # A thousand servers take Get-ExchangeServer several Receives: their queries start with the first.
        return certificate_queries(records) if command.cmdlet == "Get-ExchangeServer" else []

    def follow_up(command: Command, outcome: Outcome) -> list[Command]:
        if command.select and outcome.error is not None and "Select-Object" in outcome.error:
            # A session without Select-Object (a custom restricted endpoint): ask again for whole objects.
            whole_objects.append(command.cmdlet)
            return [replace(command, select=())]
        if early is not None:
            early(command.cmdlet, outcome.records if outcome.error is None else None)
        # The certificate queries of servers not yet asked about (as_output_arrives queued the others).
        if command.cmdlet != "Get-ExchangeServer" or outcome.error is not None:
            return []
        return certificate_queries(outcome.records)

    # Up to max_concurrency pools, one thread and connection each (run_commands_on_pools says why);
    # every pool is closed when the work is done.
    outcomes = run_commands_on_pools(
        pool,
        organization_commands(projected=projected),
        settings,
        pools=settings.max_concurrency,
        follow_up=follow_up,
        as_output_arrives=as_output_arrives,
        opener=lambda: open_pool(settings, 1, raw_output=True),
        remember=keep_clixml,
    )
    documents.pipelines = len(outcomes) + len(whole_objects)
    if whole_objects:
        documents.notes.append(
            f"Exchange at {settings.uri} refused Select-Object, so {len(whole_objects)} queries "
            f"({', '.join(sorted(set(whole_objects)))}) were asked again for whole objects: slower, same facts"
        )
    _file(documents, settings, outcomes)


def _file(documents: ExchangeDocuments, settings: RemotingSettings, outcomes: dict[str, Outcome]) -> None:
    for cmdlet in EXCHANGE_CMDLETS:
        if cmdlet == ROLE_ASSIGNMENTS:
            documents.exchange[cmdlet] = _role_assignments(settings, outcomes)
            continue
        outcome = outcomes.get(cmdlet)
        if outcome is None:
            documents.exchange[cmdlet] = Missing(f"exchange:{cmdlet}", f"{cmdlet} on {settings.uri}: not run")
        elif outcome.error is not None:
            documents.exchange[cmdlet] = Missing(f"exchange:{cmdlet}", f"{cmdlet} on {settings.uri}: {outcome.error}")
        else:
            documents.exchange[cmdlet] = outcome.records
    prefix = f"{CERTIFICATES_FOLDER}/"
    for key, outcome in outcomes.items():
        if not key.startswith(prefix):
            continue
        server = key[len(prefix) :]
        if outcome.error is not None:
            documents.certificates[server] = Missing(
                f"exchange:{CERTIFICATES_FOLDER}/{server}",
                f"{CERTIFICATES} -Server {server} on {settings.uri}: {outcome.error}",
            )
        else:
            documents.certificates[server] = outcome.records


def _role_assignments(settings: RemotingSettings, outcomes: dict[str, Outcome]) -> list[PSRecord] | Missing:
    records: list[PSRecord] = []
    for account in APPLICATION_ACCOUNTS:
        outcome = outcomes.get(f"{ROLE_ASSIGNMENTS}/{account}")
        if outcome is None:
            return Missing(f"exchange:{ROLE_ASSIGNMENTS}", f"{ROLE_ASSIGNMENTS} on {settings.uri}: not run")
        if outcome.error is not None and not outcome.not_found:
            return Missing(
                f"exchange:{ROLE_ASSIGNMENTS}",
                f"{ROLE_ASSIGNMENTS} -RoleAssignee '{account}' on {settings.uri}: {outcome.error}",
            )
        # An account that does not exist holds no role: the requirement says so, not the collection.
        records.extend(outcome.records)
    return records


__all__ = [
    "APPLICATION_ACCOUNTS",
    "EXCHANGE_CONFIGURATION",
    "ExchangeDocuments",
    "certificate_servers",
    "collect_exchange",
    "organization_commands",
]
