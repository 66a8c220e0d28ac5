"""sharepoint-s2s: server-to-server authentication from SharePoint Server to SharePoint Online (S4).

SharePoint Server is joined to one tenant: the profile's primary tenant.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

from hybridtrust import subjects
from hybridtrust.checks import assert_certificate_published
from hybridtrust.facts import (
    ACS_ISSUER_ID,
    SHAREPOINT_ONLINE_APP_ID,
    AuthenticationProvider,
    Missing,
    NotCollected,
    Organization,
    Tenant,
)
from hybridtrust.matching import normalise_url
from hybridtrust.profile import Profile
from hybridtrust.testing import Subject, failure, listing, requirement


def _sharepoint_tenant(org: Organization) -> list[Subject]:
    tenant = org.sharepoint_tenant
    return [Subject(tenant.label, tenant.label, tenant, tenant_id=tenant.id)]


def _web_application(org: Organization, profile: Profile) -> str:
    if profile.sharepoint is not None:
        return profile.sharepoint.web_application
    return org.security_token_service.web_application_url or ""


@requirement("SPS-WEBAPP-NTLM", over=subjects.authentication_providers)
def test_the_hybrid_zone_uses_windows_authentication_with_ntlm(provider: AuthenticationProvider) -> None:
    problems = []
    if not provider.use_windows_integrated:
        problems.append("Integrated Windows authentication is off")
    if not provider.disable_kerberos:
        problems.append("it negotiates Kerberos (DisableKerberos False)")
    assert not problems, failure(
        f"The hybrid web application {provider}: {'; '.join(problems)}",
        found={
            "UseWindowsIntegratedAuthentication": provider.use_windows_integrated,
            "DisableKerberos": provider.disable_kerberos,
        },
        expected={"UseWindowsIntegratedAuthentication": True, "DisableKerberos": True},
        fix=f"Central Administration > Manage Web Applications > {provider.web_application} > Authentication "
        f"Providers > {provider.zone}: Integrated Windows authentication, NTLM",
    )


@requirement("SPS-OAUTH-HTTP", over=subjects.farm)
def test_oauth_over_http_only_for_an_http_web_application(org: Organization, profile: Profile) -> None:
    config = org.security_token_service
    web_application = _web_application(org, profile)
    over_http = urlsplit(web_application).scheme.lower() == "http"
    assert config.allow_oauth_over_http == over_http, failure(
        f"AllowOAuthOverHttp is {config.allow_oauth_over_http} but the hybrid web application {web_application} "
        f"is served over {'http' if over_http else 'https'}"
        + ("" if over_http else ": OAuth tokens may travel unencrypted"),
        found={"AllowOAuthOverHttp": config.allow_oauth_over_http, "web application": web_application},
        expected={"AllowOAuthOverHttp": over_http},
        fix=f"$c = Get-SPSecurityTokenServiceConfig; $c.AllowOAuthOverHttp = ${str(over_http).lower()}; $c.Update()",
    )


@requirement("SPS-STS-CERT-PUBLISHED", over=_sharepoint_tenant)
def test_the_sts_certificate_is_published_to_sharepoint_online(
    tenant: Tenant, org: Organization, now: dt.datetime
) -> None:
    certificate = org.security_token_service.signing_certificate
    assert certificate is not None, failure(
        "The farm's security token service reports no signing certificate",
        found=None,
        expected="LocalLoginProvider.SigningCertificate",
    )
    principal = tenant.service_principal(SHAREPOINT_ONLINE_APP_ID)
    assert_certificate_published(principal, certificate, now, patch_target=f"/servicePrincipals/{principal.id}")


@requirement("SPS-SPN", over=_sharepoint_tenant)
def test_sharepoint_online_names_the_public_root_domain(tenant: Tenant, org: Organization, profile: Profile) -> None:
    assert profile.sharepoint is not None, failure(
        "The profile has no [sharepoint] public_root_domain to judge", found=None, expected="[sharepoint] section"
    )
    root = profile.sharepoint.public_root_domain
    wanted = f"{SHAREPOINT_ONLINE_APP_ID}/*.{root}"
    principal = tenant.service_principal(SHAREPOINT_ONLINE_APP_ID)
    naming_root = [
        spn for spn in principal.service_principal_names if spn.lower().rstrip("/").endswith(root) and "/" in spn
    ]
    assert wanted.lower() in {spn.lower() for spn in principal.service_principal_names}, failure(
        f"SharePoint Online in tenant {tenant} lacks the SPN {wanted}: hybrid search and OneDrive redirection get 401",
        found=naming_root or list(principal.service_principal_names)[:10],
        expected=wanted,
        fix=f"Graph PATCH /servicePrincipals/{principal.id} servicePrincipalNames = existing + ['{wanted}']",
    )
    others = [spn for spn in naming_root if spn.lower() != wanted.lower()]
    assert not others, failure(
        f"SharePoint Online carries other SPNs for {root} besides {wanted}: {listing(others)} (S4: it must be the "
        "only one naming the root domain)",
        found=naming_root,
        expected=[wanted],
        fix="Remove the other names (MSOnline/Graph) after checking no other hybrid feature uses them",
    )


@requirement("SPS-APP-PRINCIPAL", over=subjects.farm)
def test_sharepoint_online_app_principal_is_registered(org: Organization, profile: Profile) -> None:
    tenant = org.sharepoint_tenant
    principal = tenant.service_principal(SHAREPOINT_ONLINE_APP_ID)
    wanted = f"{principal.id}@{tenant.id}".lower()
    site = profile.sharepoint.hybrid_site or profile.sharepoint.web_application if profile.sharepoint else None
    found = [p for p in org.app_principals if p.name_identifier == wanted]
    assert found, failure(
        f"No SPAppPrincipal {wanted} is registered on the hybrid site {site}: SharePoint Online's calls get 401",
        found=[p.name_identifier for p in org.app_principals],
        expected=wanted,
        fix=f"Register-SPAppPrincipal -site (Get-SPSite {site}).RootWeb -NameIdentifier {wanted} -DisplayName "
        '"SharePoint Online"',
    )


@requirement("SPS-REALM", over=subjects.farm)
def test_the_authentication_realm_is_the_tenant_id(org: Organization) -> None:
    tenant = org.sharepoint_tenant
    assert org.sharepoint_realm == tenant.id, failure(
        f"Get-SPAuthenticationRealm is {org.sharepoint_realm!r}, not the tenant id {tenant.id}: tokens from ACS "
        'are refused (ULS "The issuer of the token is not a trusted issuer")',
        found=org.sharepoint_realm,
        expected=tenant.id,
        fix=f"Set-SPAuthenticationRealm -realm {tenant.id} (S4 warns: trusts that use the old realm, such as "
        "provider-hosted add-ins, stop working until they are re-registered)",
    )


@requirement("SPS-ACS-PROXY", over=subjects.farm)
def test_an_acs_proxy_is_in_the_default_proxy_group(org: Organization) -> None:
    tenant = org.sharepoint_tenant
    metadata = org.cloud.acs_metadata_url(tenant.id)
    proxies = [
        p
        for p in org.service_application_proxies
        if p.is_acs and normalise_url(p.metadata_endpoint_uri or "") == normalise_url(metadata)
    ]
    assert proxies, failure(
        f"No Azure Access Control Service application proxy reads {metadata}",
        found=[f"{p.name} ({p.metadata_endpoint_uri})" for p in org.service_application_proxies if p.is_acs],
        expected=f"an ACS proxy with MetadataEndpointUri {metadata}",
        fix=f'New-SPAzureAccessControlServiceApplicationProxy -Name "ACS" -MetadataServiceEndpointUri {metadata} '
        "-DefaultProxyGroup",
    )
    if not any(p.in_default_proxy_group for p in proxies) and any(p.in_default_proxy_group is None for p in proxies):
        raise NotCollected(
            Missing(
                "sharepoint:Get-SPServiceApplicationProxy",
                "sharepoint/Get-SPServiceApplicationProxy does not say which proxies are in the default proxy group: "
                "collect it with HybridTrust-Collect.ps1 (Get-HybridTrustServiceApplicationProxy)",
            )
        )
    assert any(p.in_default_proxy_group for p in proxies), failure(
        f"The ACS proxy {listing(p.name for p in proxies)} is not in the default proxy group",
        found={p.name: p.in_default_proxy_group for p in proxies},
        expected="in the default proxy group",
        fix="Add-SPServiceApplicationProxyGroupMember -Identity (Get-SPServiceApplicationProxyGroup -Default) "
        f"-Member (Get-SPServiceApplicationProxy | ? Name -eq '{proxies[0].name}')",
    )


@requirement("SPS-TRUSTED-ISSUER", over=subjects.farm)
def test_acs_is_a_trusted_token_issuer(org: Organization) -> None:
    tenant = org.sharepoint_tenant
    issuer_name = f"{ACS_ISSUER_ID}@{tenant.id}"
    metadata = org.cloud.acs_metadata_url(tenant.id)
    issuers = [i for i in org.trusted_issuers if (i.registered_issuer_name or "").lower() == issuer_name]
    assert issuers, failure(
        f"No SPTrustedSecurityTokenIssuer {issuer_name}: SharePoint does not trust ACS tokens for the tenant",
        found=[f"{i.name} ({i.registered_issuer_name})" for i in org.trusted_issuers],
        expected=issuer_name,
        fix=f'New-SPTrustedSecurityTokenIssuer -MetadataEndpoint {metadata} -IsTrustBroker -Name "ACS"',
    )
    issuer = issuers[0]
    problems = []
    if issuer.is_self_issuer:
        problems.append("it is a self issuer, not a trust broker")
    if normalise_url(issuer.metadata_endpoint or "") != normalise_url(metadata):
        problems.append(f"MetadataEndPoint is {issuer.metadata_endpoint}")
    assert not problems, failure(
        f"The trusted issuer {issuer.name}: {'; '.join(problems)}",
        found={"IsSelfIssuer": issuer.is_self_issuer, "MetadataEndPoint": issuer.metadata_endpoint},
        expected={"IsSelfIssuer": False, "MetadataEndPoint": metadata},
        fix=f"Remove-SPTrustedSecurityTokenIssuer '{issuer.name}'; New-SPTrustedSecurityTokenIssuer "
        f'-MetadataEndpoint {metadata} -IsTrustBroker -Name "ACS"',
    )


@requirement("SPS-ACS-METADATA", over=subjects.farm)
def test_acs_metadata_names_the_farm_realm(org: Organization) -> None:
    tenant = org.sharepoint_tenant
    url = org.cloud.acs_metadata_url(tenant.id)
    document = org.metadata_document(url)
    assert document.tenant == tenant.id == org.sharepoint_realm, failure(
        f"ACS metadata {url} names realm {document.tenant}; the farm's realm is {org.sharepoint_realm} and the "
        f"tenant is {tenant.id}: they must be one and the same",
        found={"ACS realm": document.tenant, "farm realm": org.sharepoint_realm},
        expected=tenant.id,
        fix=f"Set-SPAuthenticationRealm -realm {tenant.id} (S4: after which the trusts that use the old realm "
        "must be re-registered)",
    )
    assert document.signing_keys, failure(
        f"ACS metadata {url} publishes no signing key", found=[], expected="at least one signing certificate"
    )
