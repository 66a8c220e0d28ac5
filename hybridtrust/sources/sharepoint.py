"""The live SharePoint source: the farm's remote PowerShell (``Microsoft.PowerShell``) over pypsrp.

SharePoint's cmdlets live in a snap-in that needs a full-language session on a farm
server (CredSSP or Kerberos delegation reaches the farm's databases). One runspace
pool with ONE runspace, so that what the first pipeline loads stays for the others:

1. ``Add-PSSnapin -Name Microsoft.SharePoint.PowerShell`` and the function part of
   the collector script (`projection_functions`: the projections of objects too
   deep for Export-Clixml, and of proxies noted with their default-group membership, defined in ``hybridtrust/collector/HybridTrust-Collect.ps1``,
   the script an administrator runs by hand for an evidence bundle). This is the only
   script this source sends, on a full-language endpoint, and it is the package's own
   text: nothing from a profile is ever part of it.
2. One pipeline per document, commands with literal parameters only:
   Get-SPAuthenticationRealm, Get-SPTrustedSecurityTokenIssuer,
   ``Get-HybridTrustServiceApplicationProxy`` (Get-SPServiceApplicationProxy, each proxy
   noted with ``InDefaultProxyGroup``), ``Get-SPAppPrincipal -Site <hybrid site>
   -NameIdentifier <object id of the 00000003 service principal>@<tenant id>`` (the
   NameIdentifier comes from Graph, so this source runs after the Graph source),
   ``Get-HybridTrustSecurityTokenServiceConfig -WebApplication <url>`` and
   ``Get-HybridTrustAuthenticationProvider -WebApplication <url>``.

As with Exchange, nothing raises out of `collect_sharepoint`: a failed document is a
`Missing` with the server's words, a failed connection or snap-in makes every
SharePoint document `Missing` with the endpoint and the cause.

Known difference from the hand-run collector: the script notes ``Site`` on the app
principal; the live source asks for one site only and no check reads the note.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from pypsrp.powershell import PowerShell, RunspacePool

from hybridtrust.facts import Collection, Missing
from hybridtrust.powershell import PSRecord
from hybridtrust.sources.evidence import SHAREPOINT_DOCUMENTS
from hybridtrust.sources.remoting import (
    REMOTING_ERRORS,
    Command,
    Outcome,
    RemotingSettings,
    SettingsError,
    close_pool,
    describe_transport_error,
    error_text,
    open_pool,
    run_commands,
    scrub,
)

log = logging.getLogger(__name__)

SHAREPOINT_CONFIGURATION = "Microsoft.PowerShell"
SNAP_IN = "Microsoft.SharePoint.PowerShell"
COLLECTOR_SCRIPT = "HybridTrust-Collect.ps1"
APP_PRINCIPAL = "Get-SPAppPrincipal"

_REGION = re.compile(
    r"^#region hybridtrust projections[^\n]*\n(?P<body>.*?)^#endregion hybridtrust projections",
    re.MULTILINE | re.DOTALL,
)


@cache
def collector_script() -> str:
    """The collector script shipped in the package (hybridtrust/collector/HybridTrust-Collect.ps1)."""
    return resources.files("hybridtrust").joinpath("collector", COLLECTOR_SCRIPT).read_text(encoding="utf-8")


@cache
def projection_functions() -> str:
    """The function part of the collector script: what the live source defines in the farm's runspace."""
    match = _REGION.search(collector_script())
    if match is None:
        raise RuntimeError(f"{COLLECTOR_SCRIPT}: the 'hybridtrust projections' region is missing")
    return match.group("body").strip() + "\n"


@dataclass
class SharePointDocuments:
    """What the SharePoint source collected: the `Collection.sharepoint` part."""

    uri: str
    sharepoint: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pipelines: int = 0

    def apply_to(self, collection: Collection) -> None:
        collection.sharepoint.update(self.sharepoint)
        collection.notes.extend(self.notes)


def sharepoint_commands(
    web_application: str, hybrid_site: str | None, app_principal: str | Missing | None
) -> list[Command]:
    """The document pipelines; the app principal only when its NameIdentifier is known."""
    commands = [
        Command("Get-SPAuthenticationRealm", "Get-SPAuthenticationRealm"),
        Command("Get-SPTrustedSecurityTokenIssuer", "Get-SPTrustedSecurityTokenIssuer"),
        # Each proxy noted with its membership of the default proxy group (the collector's projection).
        Command("Get-SPServiceApplicationProxy", "Get-HybridTrustServiceApplicationProxy"),
        Command(
            "Get-HybridTrustSecurityTokenServiceConfig",
            "Get-HybridTrustSecurityTokenServiceConfig",
            (("WebApplication", web_application),),
        ),
        Command(
            "Get-HybridTrustAuthenticationProvider",
            "Get-HybridTrustAuthenticationProvider",
            (("WebApplication", web_application),),
        ),
    ]
    if isinstance(app_principal, str):
        site = hybrid_site or web_application
        commands.append(Command(APP_PRINCIPAL, APP_PRINCIPAL, (("Site", site), ("NameIdentifier", app_principal))))
    return commands


def collect_sharepoint(
    settings: RemotingSettings | SettingsError,
    *,
    web_application: str,
    hybrid_site: str | None = None,
    app_principal: str | Missing | None = None,
) -> SharePointDocuments:
    """Every SharePoint document of the farm; never raises (failures become `Missing`).

    `app_principal` is the NameIdentifier to look up (``<object id>@<tenant id>``), a
    `Missing` saying why it is not known, or None when the tenant has no SharePoint
    Online service principal (then no app principal can exist: an empty document).
    """
    uri = settings.uri if isinstance(settings, RemotingSettings) else "the profile's [sharepoint] uri"
    documents = SharePointDocuments(uri=uri)
    if isinstance(settings, SettingsError):
        _fail_all(documents, f"cannot connect to SharePoint remote PowerShell: {settings}")
        return documents
    documents.notes.extend(settings.notes())
    try:
        _collect(settings, documents, web_application, hybrid_site, app_principal)
    except Exception as error:  # fail closed
        log.debug("sharepoint source failed", exc_info=True)
        reason = scrub(
            f"collection from SharePoint at {settings.uri} failed: {type(error).__name__}: {error}", settings.secrets
        )
        for name in SHAREPOINT_DOCUMENTS:
            documents.sharepoint.setdefault(name, Missing(f"sharepoint:{name}", reason))
    return documents


def _fail_all(documents: SharePointDocuments, reason: str) -> None:
    for name in SHAREPOINT_DOCUMENTS:
        documents.sharepoint[name] = Missing(f"sharepoint:{name}", f"{name}: {reason}")


def _prepare(pool: RunspacePool, settings: RemotingSettings) -> str | None:
    """Load the snap-in and define the projections in the pool's one runspace; the error, if any."""
    shell = PowerShell(pool).add_cmdlet("Add-PSSnapin").add_parameter("Name", SNAP_IN)
    shell.add_statement()
    # The collector's own function definitions, unchanged (full-language endpoint only).
    shell.add_script(projection_functions())
    shell.invoke()
    # A snap-in a profile already loaded is not a failure (PowerShell: "... because it is already added").
    errors = [error for error in shell.streams.error if "already added" not in error_text(error)]
    if errors:
        return scrub(error_text(errors[0]), settings.secrets)
    return None


def _collect(
    settings: RemotingSettings,
    documents: SharePointDocuments,
    web_application: str,
    hybrid_site: str | None,
    app_principal: str | Missing | None,
) -> None:
    try:
        # One runspace: the snap-in and the functions are session state of that runspace.
        pool = open_pool(settings, 1)
    except REMOTING_ERRORS as error:
        cause = describe_transport_error(error, settings)
        _fail_all(
            documents, f"could not open SharePoint remote PowerShell at {settings.uri} as {settings.who}: {cause}"
        )
        return
    try:
        try:
            failure = _prepare(pool, settings)
        except REMOTING_ERRORS as error:
            failure = describe_transport_error(error, settings)
        if failure is not None:
            _fail_all(documents, f"Add-PSSnapin {SNAP_IN} on {settings.uri}: {failure}")
            return
        commands = sharepoint_commands(web_application, hybrid_site, app_principal)
        outcomes = run_commands(pool, commands, settings, window=1)
    finally:
        close_pool(pool)
    documents.pipelines = len(outcomes) + 1
    _file(documents, settings, outcomes, app_principal)


def _file(
    documents: SharePointDocuments,
    settings: RemotingSettings,
    outcomes: dict[str, Outcome],
    app_principal: str | Missing | None,
) -> None:
    for name in SHAREPOINT_DOCUMENTS:
        if name == APP_PRINCIPAL and not isinstance(app_principal, str):
            documents.sharepoint[name] = app_principal if isinstance(app_principal, Missing) else []
            continue
        outcome = outcomes.get(name)
        if outcome is None:
            documents.sharepoint[name] = Missing(f"sharepoint:{name}", f"{name} on {settings.uri}: not run")
        elif outcome.error is not None:
            documents.sharepoint[name] = Missing(f"sharepoint:{name}", f"{name} on {settings.uri}: {outcome.error}")
        else:
            documents.sharepoint[name] = outcome.records


__all__ = [
    "SHAREPOINT_CONFIGURATION",
    "SharePointDocuments",
    "collect_sharepoint",
    "collector_script",
    "projection_functions",
    "sharepoint_commands",
]
