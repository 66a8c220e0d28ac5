"""exchange-oauth: OAuth between Exchange on-premises and Exchange Online (S0; S2 for 21Vianet)."""

from __future__ import annotations

import datetime as dt

import pytest

from hybridtrust import subjects
from hybridtrust.checks import (
    RENEWAL_DAYS,
    assert_auth_certificate_on_server,
    assert_certificate_published,
    dedicated_application,
)
from hybridtrust.facts import (
    EXCHANGE_2013_SP1,
    EXCHANGE_ONLINE_APP_ID,
    ExchangeServer,
    Organization,
    Tenant,
    VirtualDirectory,
    host_of,
    version_text,
)
from hybridtrust.matching import normalise_url
from hybridtrust.subjects import TenantHost
from hybridtrust.testing import failure, listing, requirement

APPLICATION_ACCOUNT_ROLES = (
    "UserApplication",
    "ArchiveApplication",
    "LegalHoldApplication",
    "Mailbox Search",
    "TeamMailboxLifecycleApplication",
    "MailboxSearchApplication",
    "MeetingGraphApplication",
)


def _auth_servers_found(org: Organization) -> list[str]:
    return [
        f"{server.name} ({server.type}, {server.auth_metadata_url or 'no metadata URL'})" for server in org.auth_servers
    ]


@requirement("EXO-AUTHSERVER", over=subjects.tenants)
def test_an_enabled_auth_server_trusts_the_tenant(tenant: Tenant, org: Organization) -> None:
    cloud = org.cloud
    kind = cloud.auth_server_type
    candidates = org.auth_servers_of(tenant, kind)
    if cloud.name == "china":
        candidates = [server for server in candidates if host_of(server.auth_metadata_url) == cloud.acs_host]
    metadata = (
        cloud.acs_metadata_url(tenant.id) if kind == "MicrosoftACS" else cloud.federation_metadata_urls(tenant.id)[0]
    )
    assert candidates, failure(
        f"No {kind} AuthServer trusts tenant {tenant}: none has Realm {tenant.id} or an AuthMetadataUrl naming "
        f"one of its verified domains {listing(tenant.verified_domains)}",
        found=_auth_servers_found(org),
        expected=f"an AuthServer of Type {kind} for {tenant.id}",
        fix=f"New-AuthServer -Name 'EvoSts - {tenant.id}' -AuthMetadataUrl '{metadata}' -Type {kind} "
        "(or rerun the Hybrid Configuration Wizard, which creates it)",
    )
    enabled = [server for server in candidates if server.enabled]
    assert enabled, failure(
        f"The AuthServer {listing(candidates)} of tenant {tenant} is disabled: Exchange accepts no token from "
        "Exchange Online",
        found=[f"{server.name}: Enabled False" for server in candidates],
        expected="Enabled True",
        fix=f"Set-AuthServer -Identity '{candidates[0].name}' -Enabled $true",
    )


@requirement("EXO-AUTHSERVER-METADATA", over=subjects.tenants)
def test_the_auth_server_reads_the_cloud_metadata(tenant: Tenant, org: Organization) -> None:
    cloud = org.cloud
    kind = cloud.auth_server_type
    servers = org.auth_servers_of(tenant, kind)
    assert servers, failure(
        f"No {kind} AuthServer of tenant {tenant} whose metadata URL could be judged (see EXO-AUTHSERVER)",
        found=_auth_servers_found(org),
        expected=f"an AuthServer of Type {kind} for {tenant.id}",
    )
    names = [tenant.id, *tenant.verified_domains]
    if kind == "MicrosoftACS":
        expected = [cloud.acs_metadata_url(name) for name in names]
    else:
        expected = [url for name in names for url in cloud.federation_metadata_urls(name)]
    wanted = {normalise_url(url) for url in expected}
    wrong = [server for server in servers if normalise_url(server.auth_metadata_url or "") not in wanted]
    assert not wrong, failure(
        f"AuthMetadataUrl of {listing(wrong)} is not the {cloud.title} STS metadata of tenant {tenant}",
        found={server.name: server.auth_metadata_url for server in wrong},
        expected=expected[0],
        fix=f"Set-AuthServer -Identity '{wrong[0].name}' -AuthMetadataUrl '{expected[0]}'; then "
        f"Set-AuthServer -Identity '{wrong[0].name}' -RefreshAuthMetadata",
    )


@requirement("EXO-PARTNERAPP", over=subjects.organization)
def test_the_exchange_online_partner_application_is_enabled(org: Organization) -> None:
    partner = org.partner_application(EXCHANGE_ONLINE_APP_ID)
    assert partner is not None, failure(
        f"No PartnerApplication with ApplicationIdentifier {EXCHANGE_ONLINE_APP_ID} and an empty Realm: "
        "Exchange does not know Exchange Online as a partner",
        found=[f"{app.name} ({app.application_identifier}, Realm {app.realm})" for app in org.partner_applications],
        expected=f"PartnerApplication {EXCHANGE_ONLINE_APP_ID}, Realm empty, Enabled",
        fix="Rerun the Hybrid Configuration Wizard, or New-PartnerApplication -Name 'Exchange Online' "
        f"-ApplicationIdentifier {EXCHANGE_ONLINE_APP_ID} -Enabled $true -LinkedAccount "
        "'<domain>/Users/Exchange Online-ApplicationAccount'",
    )
    problems = []
    if not partner.enabled:
        problems.append("Enabled is False")
    if partner.auth_metadata_url:
        problems.append(f"AuthMetadataUrl is {partner.auth_metadata_url!r} (must be empty)")
    if not partner.use_auth_server:
        problems.append("UseAuthServer is False")
    assert not problems, failure(
        f"The Exchange Online partner application {partner.name}: {'; '.join(problems)}",
        found={
            "Enabled": partner.enabled,
            "AuthMetadataUrl": partner.auth_metadata_url,
            "UseAuthServer": partner.use_auth_server,
        },
        expected={"Enabled": True, "AuthMetadataUrl": None, "UseAuthServer": True},
        fix=f"Set-PartnerApplication -Identity '{partner.name}' -Enabled $true",
    )


@requirement("EXO-APPACCOUNT", over=subjects.organization)
def test_the_exchange_online_application_account_holds_its_roles(org: Organization) -> None:
    reference = org.exchange_application_account_name
    account = org.exchange_application_account()
    assert account is not None, failure(
        f'The Exchange Online application account {reference} does not exist: "The application is missing a '
        'linked account for RBAC roles"',
        found=f"no user {reference}",
        expected="the user Exchange Online-ApplicationAccount (disabled by design)",
        fix="Rerun the Hybrid Configuration Wizard, which recreates the account and its role assignments",
    )
    missing = [role for role in APPLICATION_ACCOUNT_ROLES if role not in org.roles_of(account)]
    assert not missing, failure(
        f"{account.name} lacks the management roles {listing(missing)}",
        found=sorted(org.roles_of(account)),
        expected=list(APPLICATION_ACCOUNT_ROLES),
        fix="; ".join(f"New-ManagementRoleAssignment -Role '{role}' -User '{account.identity}'" for role in missing),
    )


@requirement(
    "EXO-AUTHCERT",
    over=subjects.servers(
        lambda server: server.holds_auth_certificate, none_reason="no Exchange 2013+ Mailbox or Client Access server"
    ),
)
def test_the_auth_certificate_is_on_the_server(server: ExchangeServer, org: Organization, now: dt.datetime) -> None:
    assert_auth_certificate_on_server(org, server, now)


@requirement("EXO-AUTHCERT-RENEWAL", over=subjects.organization)
def test_a_next_auth_certificate_is_staged_before_expiry(org: Organization, now: dt.datetime) -> None:
    config = org.auth_config
    current = org.auth_certificate()
    if current is not None and current.days_left(now) > RENEWAL_DAYS:
        return  # nothing is due yet: the current certificate has more than 60 days
    due = (
        f"the current auth certificate expires on {current.not_after:%Y-%m-%d} ({current.days_left(now):.0f} days)"
        if current
        else "the current auth certificate is on no server"
    )
    assert config.next_thumbprint, failure(
        f"No next auth certificate is staged and {due}",
        found="NextCertificateThumbprint empty",
        expected=f"a next certificate staged {RENEWAL_DAYS} days before expiry",
        fix="New-ExchangeCertificate -KeySize 2048 -PrivateKeyExportable $true -SubjectName "
        "'cn=Microsoft Exchange Server Auth Certificate' -DomainName @() -Services SMTP; Set-AuthConfig "
        "-NewCertificateThumbprint <thumbprint> -NewCertificateEffectiveDate <a date before expiry> "
        "(MonitorExchangeAuthCertificate.ps1 does this)",
    )
    lacking = [
        server.name
        for server in org.auth_certificate_servers
        if org.certificates_of(server.name).find(config.next_thumbprint) is None
    ]
    assert not lacking, failure(
        f"The staged certificate {config.next_thumbprint} is missing on {listing(lacking)}",
        found=lacking,
        expected="the next certificate on every server",
        fix=f"Export {config.next_thumbprint} with its private key and import it on {', '.join(lacking)}",
    )
    if current is not None and config.next_effective_date is not None:
        assert config.next_effective_date < current.not_after, failure(
            f"The next certificate becomes effective on {config.next_effective_date:%Y-%m-%d}, after the current "
            f"one expires ({current.not_after:%Y-%m-%d})",
            found=f"NextCertificateEffectiveDate {config.next_effective_date:%Y-%m-%d}",
            expected=f"before {current.not_after:%Y-%m-%d}",
            fix=f"Set-AuthConfig -NewCertificateThumbprint {config.next_thumbprint} -NewCertificateEffectiveDate "
            f"{(current.not_after - dt.timedelta(days=7)):%Y-%m-%d}",
        )


@requirement("EXO-AUTHCERT-PUBLISHED", over=subjects.tenants)
def test_the_auth_certificate_is_published_to_exchange_online(
    tenant: Tenant, org: Organization, now: dt.datetime
) -> None:
    config = org.auth_config
    current = org.auth_certificate()
    assert current is not None, failure(
        f"The current auth certificate {config.current_thumbprint} is on no server, so it cannot be published",
        found=config.current_thumbprint,
        expected="the auth certificate in the servers' certificate stores (see EXO-AUTHCERT)",
    )
    if org.dedicated_hybrid_app_enabled:
        auth_server, application = dedicated_application(org, tenant)
        assert application is not None, failure(
            f"The dedicated hybrid application is switched on but tenant {tenant} has no application "
            f"{auth_server.application_identifier if auth_server else '(no AuthServer names one)'}",
            found=auth_server.application_identifier if auth_server else None,
            expected="ExchangeServerApp-<organization guid> in the tenant",
            fix="ConfigureExchangeHybridApplication.ps1 -FullyConfigureExchangeHybridApplication",
        )
        target, patch = application, f"/applications/{application.id}"
    else:
        target = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
        patch = f"/servicePrincipals/{target.id}"
    assert_certificate_published(target, current, now, patch_target=patch)
    if config.next_thumbprint:
        staged = org.auth_certificate(config.next_thumbprint)
        if staged is not None:
            assert_certificate_published(target, staged, now, patch_target=patch)


@requirement("EXO-SPN-AUTHORITIES", over=subjects.exchange_authorities)
def test_every_exchange_host_is_registered_in_exchange_online(spn_host: TenantHost) -> None:
    principal = spn_host.tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    assert principal.registers_authority(EXCHANGE_ONLINE_APP_ID, spn_host.host), failure(
        f"{spn_host.host} is not a service principal name of Exchange Online in tenant {spn_host.tenant} "
        f'(used by {", ".join(spn_host.used_by)}): AADSTS500011 "The resource principal named '
        f'https://{spn_host.host} was not found in the tenant"',
        found=f"{len(principal.service_principal_names)} names, none for {spn_host.host}",
        expected=f"{EXCHANGE_ONLINE_APP_ID}/{spn_host.host}, a one-label wildcard, or https://{spn_host.host}/",
        fix=f"Graph PATCH /servicePrincipals/{principal.id} servicePrincipalNames = existing + "
        f"['https://{spn_host.host}/'] (re-read first; never replace the list)",
    )


@requirement("EXO-IOC-ONPREM", over=subjects.tenants)
def test_an_on_premises_connector_reaches_the_tenant(tenant: Tenant, org: Organization) -> None:
    coexistence = tenant.coexistence_domain
    assert coexistence, failure(
        f"Tenant {tenant} has no coexistence domain among its Graph domains {listing(d.name for d in tenant.domains)}",
        found=[domain.name for domain in tenant.domains],
        expected=f"<name>.{org.cloud.coexistence_suffix or 'partner.mail.onmschina.cn'}",
        fix="Rerun the Hybrid Configuration Wizard, which adds the coexistence domain",
    )
    endpoints = {normalise_url(url) for url in org.cloud.autodiscover_endpoints()}
    connectors = [c for c in org.intra_organization_connectors if coexistence in c.target_address_domains]
    assert connectors, failure(
        f"No IntraOrganizationConnector targets {coexistence}: free/busy from on-premises to cloud mailboxes "
        'fails ("Configuration information for forest/domain could not be found")',
        found={c.name: list(c.target_address_domains) for c in org.intra_organization_connectors},
        expected=f"a connector with TargetAddressDomains {coexistence}",
        fix=(
            f"Set-IntraOrganizationConnector -Identity '{org.intra_organization_connectors[0].name}' "
            f"-TargetAddressDomains @{{Add='{coexistence}'}}"
            if org.intra_organization_connectors
            else f"New-IntraOrganizationConnector -Name 'HybridIOC - {tenant.id}' -DiscoveryEndpoint "
            f"{org.cloud.autodiscover_endpoints()[0]} -TargetAddressDomains {coexistence}"
        ),
    )
    good = [c for c in connectors if c.enabled and normalise_url(c.discovery_endpoint or "") in endpoints]
    assert good, failure(
        f"The IntraOrganizationConnector {listing(connectors)} for {coexistence} is "
        + ("disabled" if not any(c.enabled for c in connectors) else "not pointed at the cloud's Autodiscover"),
        found={c.name: {"Enabled": c.enabled, "DiscoveryEndpoint": c.discovery_endpoint} for c in connectors},
        expected={"Enabled": True, "DiscoveryEndpoint": org.cloud.autodiscover_endpoints()[0]},
        fix=f"Set-IntraOrganizationConnector -Identity '{connectors[0].name}' -Enabled $true -DiscoveryEndpoint "
        f"{org.cloud.autodiscover_endpoints()[0]}",
    )


@requirement("EXO-IOC-CLOUD", over=subjects.tenants)
def test_exchange_online_reaches_on_premises_autodiscover(tenant: Tenant, org: Organization) -> None:
    domains = [domain for domain in org.smtp_domains if domain in tenant.verified_domains] or org.smtp_domains
    connectors = [c for c in org.cloud_intra_organization_connectors if set(domains) & set(c.target_address_domains)]
    assert connectors, failure(
        f"No Exchange Online IntraOrganizationConnector targets {listing(domains)}: cloud mailboxes see no "
        "free/busy of on-premises mailboxes",
        found={c.name: list(c.target_address_domains) for c in org.cloud_intra_organization_connectors},
        expected=f"a connector in Exchange Online with TargetAddressDomains {listing(domains)}",
        fix=f"In Exchange Online: New-IntraOrganizationConnector -Name 'HybridIOC' -DiscoveryEndpoint "
        f"https://autodiscover.{domains[0]}/autodiscover/autodiscover.svc -TargetAddressDomains {','.join(domains)}",
    )
    connector = connectors[0]
    missing = [domain for domain in domains if domain not in connector.target_address_domains]
    allowed = {
        normalise_url(f"https://{prefix}{domain}/autodiscover/autodiscover.svc")
        for domain in org.smtp_domains
        for prefix in ("autodiscover.", "")
    }
    endpoint = normalise_url(connector.discovery_endpoint or "")
    host = host_of(connector.discovery_endpoint)
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    registered = bool(host) and principal.registers_authority(EXCHANGE_ONLINE_APP_ID, host)  # type: ignore[arg-type]
    problems = []
    if not connector.enabled:
        problems.append("it is disabled")
    if missing:
        problems.append(f"TargetAddressDomains lacks {listing(missing)}")
    if endpoint not in allowed or not (connector.discovery_endpoint or "").lower().startswith("https://"):
        problems.append(f"DiscoveryEndpoint {connector.discovery_endpoint} is not the on-premises Autodiscover")
    elif not registered:
        problems.append(f"its host {host} is not a service principal name of Exchange Online")
    assert not problems, failure(
        f"Exchange Online's connector {connector.name}: {'; '.join(problems)}",
        found={
            "Enabled": connector.enabled,
            "TargetAddressDomains": list(connector.target_address_domains),
            "DiscoveryEndpoint": connector.discovery_endpoint,
        },
        expected={
            "Enabled": True,
            "TargetAddressDomains": domains,
            "DiscoveryEndpoint": f"https://autodiscover.{domains[0]}/autodiscover/autodiscover.svc",
        },
        fix=f"In Exchange Online: Set-IntraOrganizationConnector -Identity '{connector.name}' -Enabled $true "
        f"-DiscoveryEndpoint https://autodiscover.{domains[0]}/autodiscover/autodiscover.svc",
    )


def _legacy(server: ExchangeServer) -> bool:
    return server.version is not None and server.version < EXCHANGE_2013_SP1


def _legacy_servers(org: Organization) -> list[subjects.Subject]:
    legacy = [server for server in org.servers if _legacy(server)]
    if not legacy:
        raise subjects.NotApplicable(f"no server older than Exchange 2013 SP1 ({version_text(EXCHANGE_2013_SP1)})")
    return subjects.organization(org)


@requirement("EXO-AVAILABILITY-LEGACY", over=_legacy_servers)
def test_legacy_servers_have_an_availability_address_space(org: Organization) -> None:
    legacy = [server.name for server in org.servers if _legacy(server)]
    coexistence = {tenant.coexistence_domain for tenant in org.tenants} - {None}
    proxies = {
        normalise_url(vdir.external_url)
        for vdir in org.virtual_directories("EWS")
        if vdir.external_url and (server := org.server(vdir.server)) is not None and server.at_least(EXCHANGE_2013_SP1)
    }
    matching = [
        space
        for space in org.availability_address_spaces
        if (space.access_method or "").lower() == "internalproxy"
        and space.use_service_account
        and (space.forest_name or "").lower() in coexistence
        and normalise_url(space.proxy_url or "") in proxies
    ]
    proxy = sorted(p for p in proxies if p) or ["https://mail.<domain>/ews/exchange.asmx"]
    assert matching, failure(
        f"Legacy servers {listing(legacy)} have no InternalProxy availability address space to the cloud: their "
        "mailboxes see no free/busy of cloud mailboxes",
        found=[f"{s.name}: {s.access_method}, {s.forest_name}, {s.proxy_url}" for s in org.availability_address_spaces],
        expected=f"AccessMethod InternalProxy, UseServiceAccount True, ForestName {listing(sorted(coexistence))}, "
        f"ProxyUrl {proxy[0]}",
        fix=f"Add-AvailabilityAddressSpace -AccessMethod InternalProxy -ProxyUrl {proxy[0]} -ForestName "
        f"{sorted(coexistence)[0] if coexistence else '<coexistence domain>'} -UseServiceAccount $true",
    )


def _external_ews_servers(org: Organization) -> list[subjects.Subject]:
    names = {vdir.server.lower() for vdir in org.virtual_directories("EWS") if vdir.external_url}
    chosen = [server for server in org.servers if server.name.lower() in names]
    if not chosen:
        raise subjects.NotApplicable("no server publishes an external EWS URL")
    return [subjects.Subject(server.name, server.name, server, server=server.name) for server in chosen]


@requirement("EXO-HYBRID-SERVERS", over=_external_ews_servers)
def test_servers_publishing_external_ews_can_do_hybrid(server: ExchangeServer) -> None:
    problems = []
    if not server.at_least(EXCHANGE_2013_SP1):
        problems.append(f"it runs {server.product}, older than Exchange 2013 SP1 ({version_text(EXCHANGE_2013_SP1)})")
    if not (server.is_mailbox and server.is_client_access):
        problems.append(f"it holds the roles {listing(sorted(server.roles))}, not Mailbox and Client Access")
    assert not problems, failure(
        f"{server.name} publishes an external EWS URL but {'; '.join(problems)}",
        found={"version": server.product, "roles": sorted(server.roles)},
        expected="Exchange 2013 SP1 or later with the Mailbox and Client Access roles",
        fix=f"Upgrade {server.name}, or remove its EWS ExternalUrl (Set-WebServicesVirtualDirectory -Identity "
        f"'{server.name}\\EWS (Default Web Site)' -ExternalUrl $null)",
    )


@requirement("EXO-WSSECURITY", over=subjects.virtual_directories("EWS", "Autodiscover"))
def test_wssecurity_is_enabled(vdir: VirtualDirectory) -> None:
    missing = [
        side
        for side, methods in (
            ("InternalAuthenticationMethods", vdir.internal_authentication),
            ("ExternalAuthenticationMethods", vdir.external_authentication),
        )
        if "wssecurity" not in {method.lower() for method in methods}
    ]
    assert not missing, failure(
        f"WSSecurity missing from {' and '.join(missing)} of {vdir}: hybrid free/busy through "
        "/autodiscover/autodiscover.svc/WSSecurity gets 401 (HCW8064)",
        found={
            "InternalAuthenticationMethods": list(vdir.internal_authentication),
            "ExternalAuthenticationMethods": list(vdir.external_authentication),
        },
        expected="WSSecurity in both lists",
        fix=f"Set-{vdir.cmdlet_noun} -Identity '{vdir.identity}' -WSSecurityAuthentication $true",
    )


@requirement("EXO-AUTHMETADATA-FRESH", over=subjects.tenants)
def test_auth_server_signing_keys_match_current_metadata(tenant: Tenant, org: Organization) -> None:
    servers = [
        server
        for kind in ("AzureAD", "MicrosoftACS")
        for server in org.auth_servers_of(tenant, kind)  # type: ignore[arg-type]
        if server.enabled and server.auth_metadata_url
    ]
    if not servers:
        pytest.skip(f"no enabled AuthServer of tenant {tenant} to probe (see EXO-AUTHSERVER)")
    for server in servers:
        document = org.metadata_document(server.auth_metadata_url)
        assert document.tenant == tenant.id, failure(
            f"The metadata document of AuthServer {server.name} ({server.auth_metadata_url}) names tenant "
            f"{document.tenant}, not {tenant.id}: Exchange trusts another tenant's tokens under this realm",
            found=document.tenant,
            expected=tenant.id,
            fix=f"Set-AuthServer -Identity '{server.name}' -AuthMetadataUrl "
            f"{org.cloud.federation_metadata_urls(tenant.initial_domain)[0] if server.is_evosts else org.cloud.acs_metadata_url(tenant.id)}",
        )
        held = set(server.certificate_strings)
        assert held & set(document.signing_keys), failure(
            f"None of the {len(held)} signing keys AuthServer {server.name} holds is in its current metadata "
            f"document {server.auth_metadata_url}: tokens fail with 401 x-ms-diagnostics 2000000 invalid_signature",
            found=f"{len(held)} CertificateStrings, none of the {len(document.signing_keys)} published",
            expected=f"a key of {server.auth_metadata_url}",
            fix=f"Set-AuthServer -Identity '{server.name}' -RefreshAuthMetadata",
        )


@requirement("EXO-OAUTH-CONNECTIVITY", over=subjects.tenants)
def test_oauth_connectivity_to_exchange_online_succeeds(tenant: Tenant, org: Organization) -> None:
    result = org.oauth_connectivity(tenant)
    assert result.succeeded, failure(
        f"Test-OAuthConnectivity -Service EWS -TargetUri {org.cloud.exchange_online_ews_url} for tenant {tenant} "
        f"ended with {result.result_type}: {result.detail}",
        found=result.result_type,
        expected="Success",
        fix="Read the failing step in the detail; it usually points at EXO-AUTHCERT-PUBLISHED or EXO-PARTNERAPP",
    )
