"""hma: Hybrid Modern Authentication for Exchange on-premises (S3)."""

from __future__ import annotations

import datetime as dt

from hybridtrust import subjects
from hybridtrust.checks import assert_auth_certificate_on_server
from hybridtrust.facts import (
    EXCHANGE_2016_CU18,
    EXCHANGE_2019_CU7,
    EXCHANGE_ONLINE_APP_ID,
    HMA_VIRTUAL_DIRECTORIES,
    ExchangeServer,
    Organization,
    Tenant,
    VirtualDirectory,
    version_text,
)
from hybridtrust.subjects import TenantHost
from hybridtrust.testing import NotApplicable, Subject, failure, listing, requirement


@requirement("HMA-SPN-URLS", over=subjects.hma_hosts)
def test_every_hma_url_is_a_service_principal_name(spn_host: TenantHost) -> None:
    principal = spn_host.tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    assert principal.names_https_root(spn_host.host), failure(
        f"https://{spn_host.host}/ is not a service principal name of Exchange Online in tenant {spn_host.tenant} "
        f'(used by {", ".join(spn_host.used_by)}): Outlook gets AADSTS500011 "The resource principal named '
        f'https://{spn_host.host} was not found in the tenant" and keeps prompting',
        found=f"{len(principal.service_principal_names)} names, none https://{spn_host.host}/",
        expected=f"https://{spn_host.host}/",
        fix=f"Graph PATCH /servicePrincipals/{principal.id} servicePrincipalNames = existing + "
        f"['https://{spn_host.host}/'] (re-read, merge, write, re-read: never replace the list as S3's example did)",
    )


@requirement("HMA-VDIR-OAUTH", over=subjects.virtual_directories(*HMA_VIRTUAL_DIRECTORIES))
def test_oauth_is_enabled_on_the_virtual_directory(vdir: VirtualDirectory) -> None:
    sides = {
        "InternalAuthenticationMethods": vdir.internal_authentication,
        "ExternalAuthenticationMethods": vdir.external_authentication,
    }
    if vdir.iis_authentication is not None:
        sides["IISAuthenticationMethods"] = vdir.iis_authentication
    missing = {side: methods for side, methods in sides.items() if "oauth" not in {m.lower() for m in methods}}
    if vdir.kind == "MAPI":
        existing = sorted({m for methods in sides.values() for m in methods} | {"OAuth"})
        fix = f"Set-{vdir.cmdlet_noun} -Identity '{vdir.identity}' -IISAuthenticationMethods {','.join(existing)}"
    elif vdir.kind == "ActiveSync":
        # Set-ActiveSyncVirtualDirectory has no -IISAuthenticationMethods: the lists are set one by one.
        internal = ",".join(sorted({*vdir.internal_authentication, "OAuth"}))
        external = ",".join(sorted({*vdir.external_authentication, "OAuth"}))
        fix = (
            f"Set-{vdir.cmdlet_noun} -Identity '{vdir.identity}' -InternalAuthenticationMethods {internal} "
            f"-ExternalAuthenticationMethods {external}"
        )
    else:
        fix = f"Set-{vdir.cmdlet_noun} -Identity '{vdir.identity}' -OAuthAuthentication $true"
    assert not missing, failure(
        "OAuth missing from "
        + " and ".join(f"{side} {listing(methods)}" for side, methods in missing.items())
        + f" of {vdir}: modern-auth clients get 401 from {vdir.kind} on {vdir.server}",
        found={side: list(methods) for side, methods in sides.items()},
        expected="OAuth in every list",
        fix=fix,
    )


@requirement("HMA-EVOSTS", over=subjects.tenants)
def test_an_enabled_evosts_auth_server_per_tenant(tenant: Tenant, org: Organization) -> None:
    servers = org.auth_servers_of(tenant, "AzureAD")
    assert servers, failure(
        f"No evoSTS (AzureAD) AuthServer for tenant {tenant}: Exchange cannot validate its modern-auth tokens",
        found=[f"{s.name} ({s.type}, realm {s.realm})" for s in org.auth_servers],
        expected=f"an AzureAD AuthServer with Realm {tenant.id}",
        fix="Rerun the Hybrid Configuration Wizard for this tenant (multi-tenant hybrid: once per tenant)",
    )
    assert any(s.enabled for s in servers), failure(
        f"The evoSTS AuthServer {listing(servers)} of tenant {tenant} is disabled",
        found={s.name: s.enabled for s in servers},
        expected="Enabled True",
        fix=f"Set-AuthServer -Identity '{servers[0].name}' -Enabled $true",
    )


@requirement("HMA-DEFAULT-ENDPOINT", over=subjects.organization)
def test_exactly_one_evosts_is_the_default_authorization_endpoint(org: Organization) -> None:
    defaults = [s for s in org.evosts_auth_servers() if s.is_default_authorization_endpoint]
    primary = org.primary_tenant
    candidates = org.auth_servers_of(primary, "AzureAD")
    fix = f"Set-AuthServer -Identity '{candidates[0].name if candidates else '<evoSTS of ' + primary.id + '>'}' -IsDefaultAuthorizationEndpoint $true"
    assert len(defaults) == 1, failure(
        f"{len(defaults)} evoSTS AuthServers are the default authorization endpoint (exactly one must be): "
        "Outlook gets no authorization_uri in the Bearer challenge and falls back to Basic/NTLM",
        found=[s.name for s in defaults],
        expected="exactly one, of the primary tenant",
        fix=fix,
    )
    default = defaults[0]
    owner = next((t for t in org.tenants if default in org.auth_servers_of(t, "AzureAD")), None)
    assert owner is not None, failure(
        f"The default authorization endpoint {default.name} (realm {default.realm}) belongs to no tenant of the "
        "profile",
        found={"Name": default.name, "Realm": default.realm, "AuthMetadataUrl": default.auth_metadata_url},
        expected=f"the evoSTS of a profile tenant ({listing(t.id for t in org.tenants)})",
        fix=fix,
    )


def _modern_servers_only(org: Organization) -> list[Subject]:
    older = [
        s
        for s in org.servers
        if not s.is_edge
        and not (s.at_least(EXCHANGE_2016_CU18) and (s.version[:2] != (15, 2) or s.at_least(EXCHANGE_2019_CU7)))  # type: ignore[index]
    ]
    if older:
        raise NotApplicable(
            f"not every server is Exchange 2016 CU18 ({version_text(EXCHANGE_2016_CU18)}) / 2019 CU7 "
            f"({version_text(EXCHANGE_2019_CU7)}) or later: {listing(f'{s.name} {s.product}' for s in older)}"
        )
    return subjects.tenants(org)


@requirement("HMA-DOMAINNAME", over=_modern_servers_only)
def test_evosts_domain_name_holds_the_initial_domain(tenant: Tenant, org: Organization) -> None:
    servers = org.auth_servers_of(tenant, "AzureAD")
    assert servers, failure(
        f"No evoSTS AuthServer for tenant {tenant} (see HMA-EVOSTS)",
        found=None,
        expected=f"an AzureAD AuthServer with DomainName {tenant.initial_domain}",
    )
    lacking = [s for s in servers if tenant.initial_domain not in {d.lower() for d in s.domain_names}]
    assert not lacking, failure(
        f"DomainName of {listing(lacking)} does not hold {tenant.initial_domain}: in multi-tenant hybrid Exchange "
        "cannot tell which tenant's STS to send users to",
        found={s.name: list(s.domain_names) for s in lacking},
        expected=tenant.initial_domain,
        fix=f"Set-AuthServer -Identity '{lacking[0].name}' -DomainName {tenant.initial_domain}",
    )


@requirement("HMA-CLIENT-PROFILE", over=subjects.organization)
def test_oauth2_client_profile_is_enabled(org: Organization) -> None:
    config = org.organization_config
    assert config.oauth2_client_profile_enabled, failure(
        "OAuth2ClientProfileEnabled is False: Outlook is never offered modern authentication and keeps "
        "prompting for a password",
        found={"OAuth2ClientProfileEnabled": False},
        expected={"OAuth2ClientProfileEnabled": True},
        fix="Set-OrganizationConfig -OAuth2ClientProfileEnabled $true (switches every Outlook client to modern "
        "authentication: announce it first)",
    )


@requirement(
    "HMA-AUTHCERT",
    over=subjects.servers(
        lambda server: server.holds_auth_certificate, none_reason="no Exchange 2013+ Mailbox or Client Access server"
    ),
)
def test_the_oauth_certificate_is_valid_for_hma(server: ExchangeServer, org: Organization, now: dt.datetime) -> None:
    assert_auth_certificate_on_server(org, server, now)
