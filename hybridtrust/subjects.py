"""What requirement tests are parametrized over, read from an organization's facts.

Each function returns a `SubjectSource` for ``@requirement(..., over=...)``. A
source may raise `NotCollected` (the facts it enumerates were not collected:
the requirement errs) or `NotApplicable` (it does not apply: it is skipped with
the reason in words).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from hybridtrust.facts import (
    ExchangeServer,
    Organization,
    Tenant,
    VirtualDirectory,
    VirtualDirectoryKind,
    host_of,
)
from hybridtrust.testing import NotApplicable, Subject, SubjectSource


def organization(org: Organization) -> list[Subject]:
    """The organization as a whole (one test per profile)."""
    return [Subject("organization", "organization", org)]


def farm(org: Organization) -> list[Subject]:
    """The SharePoint farm of the profile."""
    return [Subject("farm", "farm", org)]


def tenants(org: Organization) -> list[Subject]:
    """Every tenant of the profile (multi-tenant hybrid: tenant-scoped rows run once per tenant)."""
    return [Subject(tenant.label, tenant.label, tenant, tenant_id=tenant.id) for tenant in org.tenants]


def servers(
    which: Callable[[ExchangeServer], bool] = lambda server: True,
    *,
    none_reason: str = "the organization has no Exchange server",
) -> SubjectSource:
    def source(org: Organization) -> list[Subject]:
        chosen = [server for server in org.servers if which(server)]
        if not chosen:
            raise NotApplicable(none_reason)
        return [Subject(server.name, server.name, server, server=server.name) for server in chosen]

    return source


def virtual_directories(*kinds: VirtualDirectoryKind) -> SubjectSource:
    """Every virtual directory of these kinds on every server (`EX01/MAPI`)."""

    def source(org: Organization) -> list[Subject]:
        found = org.virtual_directories(*kinds)
        if not found:
            raise NotApplicable(f"no {'/'.join(kinds)} virtual directory in the organization")
        subjects = []
        seen: dict[str, int] = {}
        for vdir in sorted(found, key=lambda item: (item.server.lower(), kinds.index(item.kind))):
            label = str(vdir)
            # A server may host a second web site with its own virtual directory.
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}#{seen[label]}"
            subjects.append(Subject(label.replace("/", "-"), label, vdir, server=vdir.server))
        return subjects

    return source


@dataclass(frozen=True)
class TenantHost:
    """A host name an on-premises endpoint uses, judged in one tenant (HMA-SPN-URLS, EXO-SPN-AUTHORITIES)."""

    tenant: Tenant
    host: str
    used_by: tuple[str, ...] = field(default=())
    """Where the organization uses the host: ``EX01/MAPI ExternalUrl``..."""

    def __str__(self) -> str:
        return self.host


@dataclass(frozen=True)
class TenantUrl:
    tenant: Tenant
    url: str
    used_by: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.url


def _per_tenant(org: Organization, items: dict[str, list[str]], make: Callable[..., object]) -> list[Subject]:
    subjects = []
    for tenant in org.tenants:
        for item, used_by in sorted(items.items()):
            subjects.append(
                Subject(
                    f"{tenant.label}-{item}",
                    f"{tenant.label}/{item}",
                    make(tenant, item, tuple(used_by)),
                    tenant_id=tenant.id,
                )
            )
    return subjects


def _hosts(urls: Iterable[tuple[str | None, str]]) -> dict[str, list[str]]:
    hosts: dict[str, list[str]] = {}
    for url, where in urls:
        host = host_of(url)
        if host:
            hosts.setdefault(host, []).append(where)
    return hosts


def _vdir_urls(vdirs: Iterable[VirtualDirectory], *, internal: bool = True) -> Iterator[tuple[str | None, str]]:
    for vdir in vdirs:
        if internal:
            yield vdir.internal_url, f"{vdir} InternalUrl"
        yield vdir.external_url, f"{vdir} ExternalUrl"


def hma_hosts(org: Organization) -> list[Subject]:
    """Hosts of every Internal/ExternalUrl of the HMA virtual directories and of AutodiscoverServiceInternalUri."""
    urls = list(_vdir_urls(org.virtual_directories("MAPI", "EWS", "OAB", "Autodiscover", "ActiveSync")))
    urls += [
        (cas.autodiscover_internal_uri, f"{cas.name} AutodiscoverServiceInternalUri")
        for cas in org.client_access_services
    ]
    hosts = _hosts(urls)
    if not hosts:
        raise NotApplicable("no virtual directory or Client Access service has a URL")
    return _per_tenant(org, hosts, TenantHost)


def exchange_authorities(org: Organization) -> list[Subject]:
    """External hosts of every Exchange HTTP endpoint, plus autodiscover.<domain> of each primary SMTP domain."""
    vdirs = org.virtual_directories()
    urls = list(_vdir_urls(vdirs, internal=False))
    for domain in org.smtp_domains:
        urls.append((f"https://autodiscover.{domain}/", f"Autodiscover of the SMTP domain {domain}"))
    hosts = _hosts(urls)
    if not hosts:
        raise NotApplicable("no virtual directory has an ExternalUrl: nothing is published to Exchange Online")
    return _per_tenant(org, hosts, TenantHost)


def owa_ecp_urls(org: Organization) -> list[Subject]:
    """Every OWA and ECP InternalUrl and ExternalUrl, as the reply URL form ``https://<host>/owa``."""
    urls: dict[str, list[str]] = {}
    for vdir in org.virtual_directories("OWA", "ECP"):
        for url, side in ((vdir.internal_url, "InternalUrl"), (vdir.external_url, "ExternalUrl")):
            if url:
                urls.setdefault(url.strip().rstrip("/"), []).append(f"{vdir} {side}")
    if not urls:
        raise NotApplicable("no OWA or ECP virtual directory has a URL")
    return _per_tenant(org, urls, TenantUrl)


def authentication_providers(org: Organization) -> list[Subject]:
    providers = org.authentication_providers
    if not providers:
        raise NotApplicable("the hybrid web application reported no authentication provider")
    return [Subject(f"{provider.web_application}-{provider.zone}", str(provider), provider) for provider in providers]
