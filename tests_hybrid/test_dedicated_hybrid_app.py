"""dedicated-hybrid-app: the 2025 end state with a dedicated Exchange hybrid application (S5)."""

from __future__ import annotations

from hybridtrust import subjects
from hybridtrust.checks import dedicated_application, on_premises_auth_thumbprints
from hybridtrust.facts import EXCHANGE_ONLINE_APP_ID, Organization, Tenant
from hybridtrust.testing import NotApplicable, Subject, failure, listing, requirement


@requirement("HYB-DEDICATED-APP", over=subjects.tenants)
def test_the_dedicated_hybrid_application_is_configured(tenant: Tenant, org: Organization) -> None:
    overrides = [
        override for override in org.overrides("Global", "ExchangeOnpremAsThirdPartyAppId") if override.enabled
    ]
    assert len(overrides) == 1, failure(
        f"{len(overrides)} enabled SettingOverrides Global/ExchangeOnpremAsThirdPartyAppId (exactly one is "
        "needed): Exchange still calls EWS through the shared Exchange Online principal, which Microsoft "
        "blocks (CVE-2025-53786)",
        found=[str(override) for override in overrides],
        expected="exactly one, Parameters Enabled=true",
        fix="ConfigureExchangeHybridApplication.ps1 -FullyConfigureExchangeHybridApplication (or "
        "New-SettingOverride -Name 'EnableExchangeHybrid3PAppFeature' -Component 'Global' -Section "
        "'ExchangeOnpremAsThirdPartyAppId' -Parameters @('Enabled=true') -Reason 'Dedicated hybrid app')",
    )
    auth_server, application = dedicated_application(org, tenant)
    assert auth_server is not None, failure(
        f"No AzureAD AuthServer of tenant {tenant} names a dedicated application (ApplicationIdentifier)",
        found={server.name: server.application_identifier for server in org.auth_servers if server.is_evosts},
        expected="an evoSTS AuthServer with ApplicationIdentifier = the appId of ExchangeServerApp-<org guid>",
        fix="ConfigureExchangeHybridApplication.ps1 -FullyConfigureExchangeHybridApplication",
    )
    assert application is not None, failure(
        f"AuthServer {auth_server.name} names application {auth_server.application_identifier}, which tenant "
        f"{tenant} does not have",
        found=[str(app) for app in tenant.applications],
        expected=f"an application with appId {auth_server.application_identifier}",
        fix="ConfigureExchangeHybridApplication.ps1 -FullyConfigureExchangeHybridApplication (creates the "
        "application and points the AuthServer at it)",
    )


def _tenants_using_the_dedicated_app(org: Organization) -> list[Subject]:
    if not org.dedicated_hybrid_app_enabled:
        raise NotApplicable(
            "the dedicated hybrid application is not in use (no ExchangeOnpremAsThirdPartyAppId override)"
        )
    return subjects.tenants(org)


@requirement("HYB-SHARED-SP-CLEAN", over=_tenants_using_the_dedicated_app)
def test_no_auth_certificate_remains_on_the_shared_principal(tenant: Tenant, org: Organization) -> None:
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    on_premises = on_premises_auth_thumbprints(org)
    left = [cred for cred in principal.key_credentials if cred.thumbprint in on_premises]
    assert not left, failure(
        f"{len(left)} on-premises auth certificate(s) remain on the shared Exchange Online service principal of "
        f"tenant {tenant} although the dedicated application is in use",
        found=[cred.describe() for cred in left],
        expected="no on-premises auth certificate on 00000002-0000-0ff1-ce00-000000000000",
        fix=f"ConfigureExchangeHybridApplication.ps1 -ResetFirstPartyServicePrincipalKeyCredentials (Graph PATCH "
        f"/servicePrincipals/{principal.id} keyCredentials = existing - {listing(c.thumbprint for c in left)}, "
        "backed up first)",
    )


@requirement("HYB-AUDIENCE-VALIDATION", over=subjects.organization)
def test_audience_validation_is_not_disabled(org: Organization) -> None:
    disabling = [
        override for override in org.overrides("OAuth", "AppIdBasedAudienceValidation") if override.enabled is False
    ]
    assert not disabling, failure(
        f"SettingOverride {listing(disabling)} disables OAuth AppId-based audience validation (HealthChecker "
        "flags it): tokens for other applications are accepted",
        found=[f"{override.name}: {list(override.parameters)}" for override in disabling],
        expected="no override with Enabled=false",
        fix="; ".join(f"Remove-SettingOverride -Identity '{override.name}'" for override in disabling),
    )
