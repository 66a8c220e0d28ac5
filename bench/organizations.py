"""Synthetic organizations for the benchmark: N Exchange servers, T tenants, in the lab's vocabulary.

Built from the same builders as the shipped lab organization (`hybridtrust.lab.contoso`),
so every object reads like a real one and every requirement that applies can pass, only
larger:

- servers ``EX0001`` .. ``EXnnnn`` (Exchange 2019 CU14 + April 2024 HU and Exchange Server
  SE, alternating), each with all seven virtual directories carrying an internal and an
  external URL;
- servers are grouped in sites of `SITE_SIZE`, each site publishing its own namespace
  (``mail-s001.contoso.com`` outside, ``mail-s001.corp.contoso.com`` inside), as large
  organizations publish one namespace per region or datacenter; that keeps the number of
  distinct hosts (and so of service principal names) in the hundreds at 1,000 servers;
- tenants: contoso and fabrikam as in the lab, then ``tenant03`` .. ``tenantNN``, each with
  its own evoSTS AuthServer, dedicated hybrid application, IntraOrganizationConnector and
  accepted domains; every tenant's Exchange Online service principal lists Microsoft's own
  names plus every on-premises host (hundreds of names) and every OWA/ECP URL as a reply URL;
- certificates: one auth certificate, one namespace (SAN) certificate and one CA for the
  whole organization, as real organizations share them across servers; each server keeps
  the self-signed certificate Setup made for it (signed with the lab's pooled keys, so
  1,000 servers cost 1,000 signatures, not 1,000 RSA key generations).

A few defects are seeded (`seed_defects`) so the reports carry failures with messages,
found/expected values and fixes, which is what makes report writing cost something.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hybridtrust.lab import contoso
from hybridtrust.lab.state import FORMAT, LabState

SITE_SIZE = 10
"""Servers per site (one published namespace per site)."""
BUILDS = (contoso.EXCHANGE_2019_CU14_APR24HU, contoso.EXCHANGE_SE_RTM)
SCENARIOS = ("exchange-oauth", "sfb-online", "hma", "hma-owa-ecp", "sharepoint-s2s", "dedicated-hybrid-app")

# Microsoft's own names on the Exchange Online service principal of a real tenant (a selection of
# what `Get-MgServicePrincipal -Filter "appId eq '00000002-...'"` shows): the on-premises names
# are appended to these, so a lookup must find a host among hundreds of strings.
_MICROSOFT_HOSTS = (
    "outlook.office365.com",
    "outlook.office.com",
    "ps.outlook.com",
    "outlook.com",
    "*.outlook.com",
    "mail.office365.com",
    "attachments.office.net",
    "outlook-sdf.office.com",
    "substrate.office.com",
    "autodiscover-s.outlook.com",
    "pop.office365.com",
    "imap.office365.com",
    "smtp.office365.com",
    "webmail.apps.mil",
    "outlook.live.com",
    "outlook-sdf.office365.com",
)


def tenants(count: int) -> tuple[contoso.Tenant, ...]:
    """contoso and fabrikam (the lab's), then generated tenants ``tenant03`` ... (at least one)."""
    chosen = list(contoso.TENANTS[: max(1, min(count, 2))])
    for number in range(3, count + 1):
        name = f"tenant{number:02d}"
        chosen.append(
            contoso.Tenant(
                contoso._guid("bench-tenant", name), name, f"Tenant {number:02d}", f"{name}.com", False, False
            )
        )
    return tuple(chosen)


def server_names(count: int) -> list[tuple[str, str]]:
    return [(f"EX{number:04d}", BUILDS[number % 2]) for number in range(1, count + 1)]


def site_hosts(index: int) -> tuple[str, str]:
    """(internal host, external host) of the site of the server at `index` (0-based)."""
    site = index // SITE_SIZE + 1
    return f"mail-s{site:03d}.corp.contoso.com", f"mail-s{site:03d}.contoso.com"


# The URL path of each virtual directory (Autodiscover's as Outlook asks for it).
_PATHS = {
    "MapiVirtualDirectory": "/mapi",
    "WebServicesVirtualDirectory": "/EWS/Exchange.asmx",
    "OabVirtualDirectory": "/OAB",
    "AutodiscoverVirtualDirectory": "/Autodiscover/Autodiscover.xml",
    "ActiveSyncVirtualDirectory": "/Microsoft-Server-ActiveSync",
    "OwaVirtualDirectory": "/owa",
    "EcpVirtualDirectory": "/ecp",
}


def smtp_domains(chosen: tuple[contoso.Tenant, ...]) -> list[str]:
    return [tenant.verified_domain for tenant in chosen]


def _exchange_online_names(hosts: list[str], domains: list[str]) -> list[str]:
    app = contoso.EXCHANGE_ONLINE
    names = [f"{app}/{host}" for host in _MICROSOFT_HOSTS]
    names += [f"https://{host}/" for host in _MICROSOFT_HOSTS if "*" not in host]
    names += ["Office 365 Exchange Online", app]
    names += [f"{app}/*.{domain}" for domain in domains]  # S0/S1: one wildcard authority per SMTP domain
    names += [f"https://{host}/" for host in hosts]  # S3: every on-premises host
    return names


def _reply_urls(owa_ecp_urls: list[str]) -> list[str]:
    urls = [
        "https://outlook.office365.com/owa/",
        "https://outlook.office.com/owa/",
        "https://outlook.office365.com/ecp/",
    ]
    for url in owa_ecp_urls:
        urls += [url, f"{url}/oauthsignin.aspx"]
    return urls


def organization(servers: int, tenant_count: int, now: dt.datetime, *, defects: bool = True) -> LabState:
    """A compliant organization of `servers` Exchange servers and `tenant_count` tenants (plus seeded defects)."""
    now = now.astimezone(dt.UTC)
    chosen = tenants(tenant_count)
    names = server_names(servers)
    certificates = contoso._certificates(now, now + dt.timedelta(days=4 * 365))
    exchange = contoso._exchange(chosen, names, certificates, now)

    # Every virtual directory gets its site's namespace, inside and outside.
    index_of = {name: index for index, (name, _) in enumerate(names)}
    hosts: dict[str, None] = {"autodiscover.contoso.com": None}  # AutodiscoverServiceInternalUri
    owa_ecp: dict[str, None] = {}
    for noun, path in _PATHS.items():
        for vdir in exchange[noun]:
            internal, external = site_hosts(index_of[vdir["Server"]])
            vdir["InternalUrl"] = f"https://{internal}{path}"
            vdir["ExternalUrl"] = f"https://{external}{path}"
            hosts.update({internal: None, external: None})
            if noun in ("OwaVirtualDirectory", "EcpVirtualDirectory"):
                owa_ecp.update({vdir["InternalUrl"]: None, vdir["ExternalUrl"]: None})
    domains = smtp_domains(chosen)
    known = {domain["DomainName"] for domain in exchange["AcceptedDomain"]}
    for domain in domains:
        if domain not in known:
            exchange["AcceptedDomain"].append({**exchange["AcceptedDomain"][1], "DomainName": domain, "Name": domain,
                                               "Identity": domain, "Guid": contoso._guid("accepteddomain", domain)})  # fmt: skip

    documents = {
        tenant.id: contoso._tenant_document(tenant, certificates, now, sharepoint_realm_tenant=contoso.CONTOSO_TENANT)
        for tenant in chosen
    }
    for document in documents.values():
        principal = next(sp for sp in document["servicePrincipals"] if sp["appId"] == contoso.EXCHANGE_ONLINE)
        principal["servicePrincipalNames"] = _exchange_online_names(list(hosts), domains)
        principal["replyUrls"] = _reply_urls(list(owa_ecp))
    state = LabState(
        {
            "format": FORMAT,
            "organization": {
                "Name": "Contoso",
                "Guid": contoso.EXCHANGE_ORGANIZATION_GUID,
                "AdDomain": contoso.AD_DOMAIN,
                "DomainController": contoso.DOMAIN_CONTROLLER,
                "PartitionGuid": contoso._guid("partition", contoso.AD_DOMAIN),
                "WhenCreated": contoso._iso(now - dt.timedelta(days=6 * 365)),
                "SmtpDomains": domains,
                "NamespaceCertificateAuthority": contoso._b64(certificates.namespace_ca.der),
            },
            "exchange": exchange,
            "exchange_online": contoso._exchange_online(now),
            "sharepoint": contoso._sharepoint(documents, certificates),
            "tenants": documents,
            "credentials": {
                "exchange": {
                    "username": "CONTOSO\\svc-hybridtrust",
                    "password": contoso._lab_secret("exchange", "svc"),
                },
                "sharepoint": {
                    "username": "CONTOSO\\svc-hybridtrust-sp",
                    "password": contoso._lab_secret("sharepoint", "svc"),
                },
            },
            "lab": {"servers_down": []},
        }
    )
    if defects:
        seed_defects(state)
    return state


def seed_defects(state: LabState) -> list[str]:
    """Drift at scale: OAuth gone from every 50th server's MAPI directory, one host missing in the last tenant.

    Returns the (requirement, subject) pairs it seeds, as ``"REQ subject"`` texts.
    """
    exchange = state.document["exchange"]
    seeded = []
    for number, vdir in enumerate(exchange["MapiVirtualDirectory"], start=1):
        if number % 50 == 2:
            vdir["ExternalAuthenticationMethods"] = [m for m in vdir["ExternalAuthenticationMethods"] if m != "OAuth"]
            seeded.append(f"HMA-VDIR-OAUTH {vdir['Server']}/MAPI")
    last = list(state.document["tenants"].values())[-1]
    principal = next(sp for sp in last["servicePrincipals"] if sp["appId"] == contoso.EXCHANGE_ONLINE)
    _, external = site_hosts(0)
    principal["servicePrincipalNames"].remove(f"https://{external}/")
    seeded.append(f"HMA-SPN-URLS {last['organization']['id']}/{external}")
    return seeded


def profile_text(
    name: str,
    state: LabState,
    *,
    connection: str | None = None,
    state_file: str | None = None,
    latency_ms: int = 0,
    max_concurrency: int = 16,
) -> str:
    """A profile for the organization: an external lab (``connection``) or an embedded one (``state_file``)."""
    chosen = list(state.document["tenants"].values())
    domains = state.document["organization"]["SmtpDomains"]
    lines = [
        f"# Generated by bench/benchmark.py: {len(state.document['exchange']['ExchangeServer'])} servers, "
        f"{len(chosen)} tenants.",
        "[organization]",
        f'name = "{name}"',
        'cloud = "global"',
        f"scenarios = {list(SCENARIOS)!r}".replace("'", '"'),
        f"smtp_domains = {domains!r}".replace("'", '"'),
    ]
    for index, tenant in enumerate(chosen):
        initial = next(d["id"] for d in tenant["domains"] if d["isInitial"])
        lines += ["", "[[tenants]]", f'id = "{tenant["organization"]["id"]}"', f'initial_domain = "{initial}"']
        if index == 0:
            lines.append("primary = true")
    lines += [
        "",
        "[exchange]",
        'uri = "https://ex01.contoso.com/PowerShell"',
        # Exchange throttles remote PowerShell per user at PowerShellMaxConcurrency (18 by default):
        # stay under it, leaving room for an administrator's own session.
        f"max_concurrency = {max_concurrency}",
        "",
        "[sharepoint]",
        'uri = "https://sp01.contoso.com:5986/wsman"',
        'web_application = "https://sharepoint.contoso.com"',
        'public_root_domain = "contoso.com"',
        "",
        "[lab]",
    ]
    if connection is not None:
        lines += ['mode = "external"', f'connection = "{connection}"']
    else:
        lines += ['mode = "embedded"', f'state = "{state_file}"', f"latency_ms = {latency_ms}"]
    return "\n".join(lines) + "\n"


def counts(state: LabState) -> dict[str, Any]:
    """What the organization holds (servers, virtual directories, distinct hosts, names per principal)."""
    exchange = state.document["exchange"]
    vdirs = sum(len(exchange[noun]) for noun in _PATHS)
    tenant = next(iter(state.document["tenants"].values()))
    principal = next(sp for sp in tenant["servicePrincipals"] if sp["appId"] == contoso.EXCHANGE_ONLINE)
    return {
        "servers": len(exchange["ExchangeServer"]),
        "virtual_directories": vdirs,
        "certificates": len(exchange["ExchangeCertificate"]),
        "tenants": len(state.document["tenants"]),
        "service_principal_names": len(principal["servicePrincipalNames"]),
        "reply_urls": len(principal["replyUrls"]),
    }
