"""The requirement catalog: every documented requirement, as data, in one place.

Each entry is one row of REQUIREMENTS.md. The ids are stable (reports, waivers,
baselines and remediation records refer to them): add rows, never rename one.
A requirement test in ``tests_hybrid/`` names its id with ``@requirement(...)``
and takes everything else (scenarios, severity, source, documented fix, the
evidence it needs) from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")

SCENARIOS = ("exchange-oauth", "sfb-online", "hma", "hma-owa-ecp", "sharepoint-s2s", "dedicated-hybrid-app")

SOURCES = {
    "S0": "Configure OAuth authentication between Exchange and Exchange Online organizations",
    "S1": "Configure OAuth between Skype for Business Online and Exchange on premises",
    "S2": "Configure OAuth authentication between Exchange and Exchange Online organizations "
    "(Office 365 operated by 21Vianet)",
    "S3": "How to configure Exchange Server on-premises to use Hybrid Modern Authentication",
    "S4": "Configure server-to-server authentication from SharePoint Server to SharePoint Online",
    "S5": "Deploy dedicated Exchange hybrid app (April 2025 guidance, CVE-2025-53786; "
    "CSS-Exchange ConfigureExchangeHybridApplication, HealthChecker)",
    "S6": "CSS-Exchange HealthChecker, MonitorExchangeAuthCertificate and FreeBusyChecker",
}

# The evidence a requirement reads. Keys name a collected document: an Exchange or
# SharePoint cmdlet (its evidence file is <area>/<Cmdlet>.xml), a per-server query,
# or a per-tenant Graph document. A key that was not collected makes the
# requirement an error, never a pass.
Need = str
EXCHANGE = "exchange:"
EXCHANGE_ONLINE = "exchange-online:"
SHAREPOINT = "sharepoint:"
ENTRA = "entra:"
CERTIFICATES = "exchange:Get-ExchangeCertificate"  # one document per server
EXO_SP = "entra:servicePrincipals/00000002-0000-0ff1-ce00-000000000000"
SPO_SP = "entra:servicePrincipals/00000003-0000-0ff1-ce00-000000000000"
SFB_SP = "entra:servicePrincipals/00000004-0000-0ff1-ce00-000000000000"
DOMAINS = "entra:domains"
ORGANIZATION = "entra:organization"
APPLICATIONS = "entra:applications"

VDIRS_HMA = tuple(
    f"{EXCHANGE}Get-{kind}VirtualDirectory" for kind in ("Mapi", "WebServices", "Oab", "Autodiscover", "ActiveSync")
)
VDIRS_OWA_ECP = (f"{EXCHANGE}Get-OwaVirtualDirectory", f"{EXCHANGE}Get-EcpVirtualDirectory")


@dataclass(frozen=True)
class Requirement:
    id: str
    title: str
    scenarios: tuple[str, ...]
    severity: Severity
    subject: str
    source: str
    fix: str
    """The documented fix, in words and cmdlets; failures fill in the real values."""
    needs: tuple[Need, ...]
    risky: bool = False
    live_only: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def source_title(self) -> str:
        return " / ".join(f"[{key}] {SOURCES[key]}" for key in self.source.split(","))

    @property
    def markers(self) -> tuple[str, ...]:
        return (*(scenario.replace("-", "_") for scenario in self.scenarios), self.severity)


def _r(
    id: str,
    title: str,
    scenarios: str,
    severity: Severity,
    subject: str,
    source: str,
    fix: str,
    needs: tuple[Need, ...],
    **extra: object,
) -> Requirement:
    return Requirement(id, title, tuple(scenarios.split()), severity, subject, source, fix, needs, **extra)  # type: ignore[arg-type]


_AUTH = f"{EXCHANGE}Get-AuthServer"
_PARTNER = f"{EXCHANGE}Get-PartnerApplication"
_AUTHCONFIG = f"{EXCHANGE}Get-AuthConfig"
_SERVERS = f"{EXCHANGE}Get-ExchangeServer"
_ORGCONFIG = f"{EXCHANGE}Get-OrganizationConfig"
_OVERRIDES = f"{EXCHANGE}Get-SettingOverride"
_ACCEPTED = f"{EXCHANGE}Get-AcceptedDomain"
_ALL_VDIRS = (*VDIRS_HMA, *VDIRS_OWA_ECP)
_CAS = f"{EXCHANGE}Get-ClientAccessService"
_ROLES = f"{EXCHANGE}Get-ManagementRoleAssignment"

REQUIREMENTS: tuple[Requirement, ...] = (
    # -- exchange-oauth (S0, S2) ------------------------------------------------------
    _r(
        "EXO-AUTHSERVER",
        "An enabled evoSTS AuthServer for the tenant (ACS in the China cloud)",
        "exchange-oauth",
        "critical",
        "tenant",
        "S0,S2",
        "Set-AuthServer -Identity <name> -Enabled $true; if it is missing: New-AuthServer -Name <name> "
        "-AuthMetadataUrl <metadata URL> -Type AzureAD (Hybrid Configuration Wizard does this)",
        (_AUTH, DOMAINS),
        risky=False,
    ),
    _r(
        "EXO-AUTHSERVER-METADATA",
        "The AuthServer's AuthMetadataUrl is the cloud's STS metadata URL",
        "exchange-oauth",
        "high",
        "tenant",
        "S0,S2",
        "Set-AuthServer -Identity <name> -AuthMetadataUrl <metadata URL>, then -RefreshAuthMetadata",
        (_AUTH, DOMAINS),
    ),
    _r(
        "EXO-PARTNERAPP",
        "The Exchange Online partner application is enabled and uses the auth server",
        "exchange-oauth sfb-online",
        "critical",
        "organization",
        "S0,S1",
        "Set-PartnerApplication -Identity <name> -Enabled $true",
        (_PARTNER,),
    ),
    _r(
        "EXO-APPACCOUNT",
        "The Exchange Online application account holds its management roles",
        "exchange-oauth",
        "medium",
        "organization",
        "S0",
        "New-ManagementRoleAssignment -Role <role> -User <linked account>, once per missing role",
        (_PARTNER, f"{EXCHANGE}Get-User", _ROLES),
    ),
    _r(
        "EXO-AUTHCERT",
        "The current auth certificate exists on every server and has more than 30 days left",
        "exchange-oauth hma",
        "critical",
        "server",
        "S0,S3,S6",
        "Renew the Exchange OAuth certificate (New-ExchangeCertificate -KeySize 2048 -PrivateKeyExportable "
        "$true -SubjectName 'cn=Microsoft Exchange Server Auth Certificate' -DomainName @() "
        "-Services SMTP; Set-AuthConfig -NewCertificateThumbprint <thumbprint> -NewCertificateEffectiveDate "
        "(Get-Date); Set-AuthConfig -PublishCertificate; Set-AuthConfig -ClearPreviousCertificate), or "
        "export it to the server that lacks it; then rerun the Hybrid Configuration Wizard",
        (_AUTHCONFIG, _SERVERS, CERTIFICATES),
        notes=("<= 30 days left is high, expired or missing is critical",),
    ),
    _r(
        "EXO-AUTHCERT-RENEWAL",
        "A next auth certificate is staged when the current one has 60 days or less",
        "exchange-oauth",
        "medium",
        "organization",
        "S6",
        "Stage the next certificate: New-ExchangeCertificate ...; Set-AuthConfig -NewCertificateThumbprint "
        "<thumbprint> -NewCertificateEffectiveDate <date before expiry>; copy it to every server "
        "(MonitorExchangeAuthCertificate.ps1 automates this)",
        (_AUTHCONFIG, _SERVERS, CERTIFICATES),
    ),
    _r(
        "EXO-AUTHCERT-PUBLISHED",
        "The auth certificate is published to the application Exchange Online validates",
        "exchange-oauth",
        "critical",
        "tenant",
        "S0,S5",
        "Publish the certificate as a Verify keyCredential (Graph PATCH keyCredentials = existing + missing; "
        "the Hybrid Configuration Wizard or ConfigureExchangeHybridApplication.ps1 does this)",
        (_AUTHCONFIG, _SERVERS, CERTIFICATES, _OVERRIDES, _AUTH, EXO_SP, APPLICATIONS),
    ),
    _r(
        "EXO-SPN-AUTHORITIES",
        "Every on-premises Exchange host is a service principal name of Exchange Online",
        "exchange-oauth",
        "high",
        "tenant x host",
        "S0",
        "Add 00000002-0000-0ff1-ce00-000000000000/<host> to the Exchange Online service principal "
        "(Graph PATCH servicePrincipalNames = existing + missing; never replace the list)",
        (*_ALL_VDIRS, EXO_SP),
    ),
    _r(
        "EXO-IOC-ONPREM",
        "An on-premises IntraOrganizationConnector reaches the tenant's coexistence domain",
        "exchange-oauth",
        "high",
        "tenant",
        "S0,S2",
        "Set-IntraOrganizationConnector -Identity <name> -Enabled $true -TargetAddressDomains "
        "@{Add='<coexistence domain>'}; missing: New-IntraOrganizationConnector -Name <name> "
        "-DiscoveryEndpoint <cloud Autodiscover> -TargetAddressDomains <coexistence domain>",
        (f"{EXCHANGE}Get-IntraOrganizationConnector", DOMAINS),
    ),
    _r(
        "EXO-IOC-CLOUD",
        "Exchange Online's IntraOrganizationConnector reaches on-premises Autodiscover",
        "exchange-oauth",
        "high",
        "tenant",
        "S0",
        "In Exchange Online: Set-IntraOrganizationConnector -Identity <name> -Enabled $true "
        "-DiscoveryEndpoint https://autodiscover.<domain>/autodiscover/autodiscover.svc "
        "-TargetAddressDomains <on-premises domains>",
        (f"{EXCHANGE_ONLINE}Get-IntraOrganizationConnector", EXO_SP),
    ),
    _r(
        "EXO-AVAILABILITY-LEGACY",
        "Legacy servers have an InternalProxy availability address space",
        "exchange-oauth",
        "medium",
        "organization",
        "S0",
        "Add-AvailabilityAddressSpace -AccessMethod InternalProxy -ProxyUrl <external EWS URL of a 2013 SP1+ "
        "server> -ForestName <coexistence domain> -UseServiceAccount $true",
        (
            _SERVERS,
            f"{EXCHANGE}Get-AvailabilityAddressSpace",
            f"{EXCHANGE}Get-WebServicesVirtualDirectory",
            DOMAINS,
        ),
    ),
    _r(
        "EXO-HYBRID-SERVERS",
        "Servers publishing external EWS are 2013 SP1+ Mailbox and Client Access servers",
        "exchange-oauth",
        "medium",
        "server",
        "S0",
        "Upgrade the server, or remove its external EWS URL so hybrid traffic does not reach it",
        (_SERVERS, f"{EXCHANGE}Get-WebServicesVirtualDirectory"),
    ),
    _r(
        "EXO-WSSECURITY",
        "WSSecurity is enabled on the EWS and Autodiscover virtual directories",
        "exchange-oauth",
        "medium",
        "server x vdir",
        "S6",
        "Set-WebServicesVirtualDirectory / Set-AutodiscoverVirtualDirectory -Identity <vdir> "
        "-WSSecurityAuthentication $true",
        (f"{EXCHANGE}Get-WebServicesVirtualDirectory", f"{EXCHANGE}Get-AutodiscoverVirtualDirectory"),
    ),
    _r(
        "EXO-AUTHMETADATA-FRESH",
        "Each AuthServer's signing keys match its current metadata document",
        "exchange-oauth",
        "high",
        "tenant",
        "S0",
        "Set-AuthServer -Identity <name> -RefreshAuthMetadata",
        (_AUTH,),
        live_only=True,
    ),
    _r(
        "EXO-OAUTH-CONNECTIVITY",
        "Test-OAuthConnectivity to Exchange Online succeeds",
        "exchange-oauth",
        "high",
        "tenant",
        "S0",
        "Follow the failing step Test-OAuthConnectivity reports (usually EXO-AUTHCERT-PUBLISHED or EXO-PARTNERAPP)",
        (),
        live_only=True,
    ),
    # -- dedicated-hybrid-app (S5) ---------------------------------------------------
    _r(
        "HYB-DEDICATED-APP",
        "The dedicated Exchange hybrid application is configured",
        "dedicated-hybrid-app",
        "high",
        "tenant",
        "S5",
        "Run ConfigureExchangeHybridApplication.ps1 -FullyConfigureExchangeHybridApplication (or HCW 2025+): "
        "it creates ExchangeServerApp-<organization guid>, the SettingOverride and the AuthServer",
        (_OVERRIDES, _AUTH, APPLICATIONS),
    ),
    _r(
        "HYB-SHARED-SP-CLEAN",
        "No on-premises auth certificate remains on the shared Exchange Online principal",
        "dedicated-hybrid-app",
        "high",
        "tenant",
        "S5",
        "ConfigureExchangeHybridApplication.ps1 -ResetFirstPartyServicePrincipalKeyCredentials (Graph PATCH "
        "keyCredentials = existing - on-premises auth certificates, backed up first)",
        (_OVERRIDES, _AUTH, APPLICATIONS, _AUTHCONFIG, _SERVERS, CERTIFICATES, EXO_SP),
    ),
    _r(
        "HYB-AUDIENCE-VALIDATION",
        "OAuth AppId-based audience validation is not disabled",
        "dedicated-hybrid-app",
        "medium",
        "organization",
        "S5,S6",
        "Remove-SettingOverride -Identity <name>",
        (_OVERRIDES,),
        risky=True,
    ),
    # -- sfb-online (S1) ---------------------------------------------------------------
    _r(
        "SFB-AUTHSERVER",
        "An enabled ACS AuthServer for Skype for Business Online",
        "sfb-online",
        "high",
        "tenant",
        "S1",
        "Set-AuthServer -Identity <name> -Enabled $true; missing: New-AuthServer -Name WindowsAzureACS "
        "-AuthMetadataUrl https://accounts.accesscontrol.windows.net/<tenant id>/metadata/json/1",
        (_AUTH, DOMAINS, SFB_SP),
    ),
    _r(
        "SFB-APPACCOUNT",
        "The SfBOnline-ApplicationAccount mail user exists and is hidden",
        "sfb-online",
        "medium",
        "organization",
        "S1",
        "Set-MailUser -Identity SfBOnline-ApplicationAccount -HiddenFromAddressListsEnabled $true",
        (f"{EXCHANGE}Get-MailUser", DOMAINS),
    ),
    _r(
        "SFB-ROLES",
        "The SfBOnline-ApplicationAccount holds UserApplication and ArchiveApplication",
        "sfb-online",
        "medium",
        "organization",
        "S1",
        "New-ManagementRoleAssignment -Role <role> -User SfBOnline-ApplicationAccount",
        (f"{EXCHANGE}Get-MailUser", _ROLES),
    ),
    _r(
        "SFB-PARTNERAPP",
        "The Skype for Business Online partner application is enabled and linked",
        "sfb-online",
        "high",
        "organization",
        "S1",
        "Set-PartnerApplication -Identity <name> -Enabled $true -LinkedAccount <SfBOnline-ApplicationAccount>",
        (_PARTNER, f"{EXCHANGE}Get-MailUser"),
    ),
    _r(
        "SFB-AUTHCERT-PUBLISHED",
        "The auth certificate is published on Skype for Business Online",
        "sfb-online",
        "high",
        "tenant",
        "S1",
        "Graph PATCH keyCredentials of 00000004-0000-0ff1-ce00-000000000000 = existing + missing",
        (_AUTHCONFIG, _SERVERS, CERTIFICATES, SFB_SP),
    ),
    _r(
        "SFB-SPN",
        "Exchange Online carries the wildcard SPN Skype for Business needs",
        "sfb-online",
        "medium",
        "tenant",
        "S1",
        "Add 00000002-0000-0ff1-ce00-000000000000/*.<verified domain> (Graph PATCH servicePrincipalNames "
        "= existing + missing)",
        (DOMAINS, EXO_SP, SFB_SP),
    ),
    # -- hma (S3) --------------------------------------------------------------------
    _r(
        "HMA-SPN-URLS",
        "Every on-premises HMA URL is a service principal name of Exchange Online",
        "hma",
        "critical",
        "tenant x host",
        "S3",
        "Add https://<host>/ to the Exchange Online service principal (Graph PATCH servicePrincipalNames = "
        "existing + missing). S3's own example replaced the whole list: always merge",
        (*VDIRS_HMA, _CAS, EXO_SP),
    ),
    _r(
        "HMA-VDIR-OAUTH",
        "OAuth is enabled on every MAPI, EWS, OAB, Autodiscover and ActiveSync directory",
        "hma",
        "critical",
        "server x vdir",
        "S3",
        "Set-WebServicesVirtualDirectory/-OabVirtualDirectory/-AutodiscoverVirtualDirectory -Identity <vdir> "
        "-OAuthAuthentication $true; MAPI: -IISAuthenticationMethods <existing + OAuth>; ActiveSync: -InternalAuthenticationMethods/-ExternalAuthenticationMethods <existing + OAuth>",
        VDIRS_HMA,
    ),
    _r(
        "HMA-EVOSTS",
        "An enabled evoSTS AuthServer for every tenant",
        "hma",
        "critical",
        "tenant",
        "S3",
        "Set-AuthServer -Identity <name> -Enabled $true (missing: rerun the Hybrid Configuration Wizard)",
        (_AUTH, DOMAINS),
    ),
    _r(
        "HMA-DEFAULT-ENDPOINT",
        "Exactly one evoSTS AuthServer is the default authorization endpoint",
        "hma",
        "critical",
        "organization",
        "S3",
        "Set-AuthServer -Identity <evoSTS of the primary tenant> -IsDefaultAuthorizationEndpoint $true",
        (_AUTH, DOMAINS),
    ),
    _r(
        "HMA-DOMAINNAME",
        "Each evoSTS AuthServer's DomainName holds its tenant's initial domain",
        "hma",
        "medium",
        "tenant",
        "S3",
        "Set-AuthServer -Identity <name> -DomainName <initial domain>",
        (_AUTH, _SERVERS, DOMAINS),
    ),
    _r(
        "HMA-CLIENT-PROFILE",
        "OAuth2ClientProfileEnabled is on",
        "hma",
        "critical",
        "organization",
        "S3",
        "Set-OrganizationConfig -OAuth2ClientProfileEnabled $true (switches every Outlook client to modern auth)",
        (_ORGCONFIG,),
        risky=True,
    ),
    _r(
        "HMA-AUTHCERT",
        "The Exchange OAuth certificate is valid (EXO-AUTHCERT under HMA)",
        "hma",
        "critical",
        "server",
        "S3",
        "See EXO-AUTHCERT: renew or copy the Exchange OAuth certificate",
        (_AUTHCONFIG, _SERVERS, CERTIFICATES),
    ),
    # -- hma-owa-ecp (S3) ------------------------------------------------------------
    _r(
        "OWA-BUILD",
        "Every server runs Exchange 2019 CU14 Apr24HU or later, or Exchange Server SE",
        "hma-owa-ecp",
        "high",
        "server",
        "S3",
        "Install Exchange 2019 CU14 with the April 2024 hotfix update (15.2.1544.11) or later, or Exchange SE",
        (_SERVERS,),
    ),
    _r(
        "OWA-REPLY-URLS",
        "Every OWA and ECP URL is a reply URL of Exchange Online",
        "hma-owa-ecp",
        "high",
        "tenant x URL",
        "S3",
        "Add the URL to replyUrls of the Exchange Online service principal (Graph PATCH replyUrls = existing "
        "+ missing)",
        (*VDIRS_OWA_ECP, EXO_SP),
    ),
    _r(
        "OWA-VDIR-AUTH",
        "OWA and ECP use OAuth only",
        "hma-owa-ecp",
        "high",
        "server x vdir",
        "S3",
        "Set-EcpVirtualDirectory and Set-OwaVirtualDirectory -Identity <vdir> -AdfsAuthentication $false "
        "-BasicAuthentication $false -DigestAuthentication $false -FormsAuthentication $false; then "
        "Set-EcpVirtualDirectory -OAuthAuthentication $true, then Set-OwaVirtualDirectory -OAuthAuthentication "
        "$true (S3's order)",
        VDIRS_OWA_ECP,
        risky=True,
    ),
    _r(
        "OWA-DOWNLOAD-DOMAINS",
        "Download domains have the OAuth identity cache override",
        "hma-owa-ecp",
        "medium",
        "organization",
        "S3",
        'New-SettingOverride -Name "OWA HMA Download Domain Support" -Component "OAuth" -Section '
        '"OAuthIdentityCacheFixForDownloadDomains" -Parameters ("Enabled=true") -Reason "Enable support '
        'for OWA HMA when Download Domains are in use"',
        (_ORGCONFIG, _OVERRIDES),
    ),
    _r(
        "OWA-RESOURCE-FOREST",
        "Resource forests have the OWA HMA override",
        "hma-owa-ecp",
        "medium",
        "organization",
        "S3",
        'New-SettingOverride -Name "OWA HMA AFRF Support" -Component "OAuth" -Section '
        '"OwaHMAFixForAfRfScenarios" -Parameters ("Enabled=true") -Reason "Enable OWA HMA in AF/RF"; and '
        "the web.config keys S3 lists, on every server (they cannot be read remotely)",
        (_OVERRIDES,),
    ),
    # -- sharepoint-s2s (S4) ---------------------------------------------------------
    _r(
        "SPS-WEBAPP-NTLM",
        "The hybrid web application zone uses Windows authentication with NTLM",
        "sharepoint-s2s",
        "medium",
        "web app x zone",
        "S4",
        "Central Administration > Manage Web Applications > Authentication Providers: Integrated Windows "
        "authentication, NTLM",
        (f"{SHAREPOINT}Get-HybridTrustAuthenticationProvider",),
    ),
    _r(
        "SPS-OAUTH-HTTP",
        "AllowOAuthOverHttp is on only for an http web application",
        "sharepoint-s2s",
        "high",
        "farm",
        "S4",
        "$c = Get-SPSecurityTokenServiceConfig; $c.AllowOAuthOverHttp = <true for http, false for https>; $c.Update()",
        (f"{SHAREPOINT}Get-HybridTrustSecurityTokenServiceConfig",),
    ),
    _r(
        "SPS-STS-CERT-PUBLISHED",
        "The SharePoint STS signing certificate is published on SharePoint Online",
        "sharepoint-s2s",
        "critical",
        "tenant",
        "S4",
        "New-MsolServicePrincipalCredential -AppPrincipalId 00000003-0000-0ff1-ce00-000000000000 -Type "
        "asymmetric -Usage Verify -Value <STS certificate> (Graph PATCH keyCredentials = existing + missing)",
        (f"{SHAREPOINT}Get-HybridTrustSecurityTokenServiceConfig", SPO_SP),
    ),
    _r(
        "SPS-SPN",
        "SharePoint Online carries exactly one SPN for the public root domain",
        "sharepoint-s2s",
        "high",
        "tenant",
        "S4",
        "Add 00000003-0000-0ff1-ce00-000000000000/*.<public root domain> (Graph PATCH servicePrincipalNames = "
        "existing + missing)",
        (SPO_SP,),
    ),
    _r(
        "SPS-APP-PRINCIPAL",
        "SharePoint Online's app principal is registered on the hybrid site",
        "sharepoint-s2s",
        "high",
        "farm",
        "S4",
        "Register-SPAppPrincipal -site <hybrid site> -NameIdentifier <SPO object id>@<tenant id> -DisplayName "
        '"SharePoint Online"',
        (f"{SHAREPOINT}Get-SPAppPrincipal", SPO_SP),
    ),
    _r(
        "SPS-REALM",
        "The farm's authentication realm is the tenant id",
        "sharepoint-s2s",
        "critical",
        "farm",
        "S4",
        "Set-SPAuthenticationRealm -realm <tenant id> (S4 warns: this breaks existing trusts that use the old realm)",
        (f"{SHAREPOINT}Get-SPAuthenticationRealm",),
        risky=True,
    ),
    _r(
        "SPS-ACS-PROXY",
        "An ACS application proxy for the tenant is in the default proxy group",
        "sharepoint-s2s",
        "high",
        "farm",
        "S4",
        'New-SPAzureAccessControlServiceApplicationProxy -Name "ACS" -MetadataServiceEndpointUri '
        "<ACS metadata URL> -DefaultProxyGroup",
        (f"{SHAREPOINT}Get-SPServiceApplicationProxy",),
    ),
    # Not a row of REQUIREMENTS.md: S4's trust rests on ACS naming the same realm as the farm,
    # which only a live probe can prove (issue: "the realm, proven live").
    _r(
        "SPS-ACS-METADATA",
        "The tenant's ACS metadata names the farm's realm (live probe)",
        "sharepoint-s2s",
        "high",
        "farm",
        "S4",
        "Set-SPAuthenticationRealm -realm <tenant id>, then re-register the trusts that used the old realm",
        (f"{SHAREPOINT}Get-SPAuthenticationRealm",),
        live_only=True,
    ),
    _r(
        "SPS-TRUSTED-ISSUER",
        "The ACS trusted security token issuer is registered as a trust broker",
        "sharepoint-s2s",
        "critical",
        "farm",
        "S4",
        'New-SPTrustedSecurityTokenIssuer -MetadataEndpoint <ACS metadata URL> -IsTrustBroker -Name "ACS"',
        (f"{SHAREPOINT}Get-SPTrustedSecurityTokenIssuer",),
    ),
)

BY_ID: dict[str, Requirement] = {requirement.id: requirement for requirement in REQUIREMENTS}


def get(requirement_id: str) -> Requirement:
    try:
        return BY_ID[requirement_id]
    except KeyError:
        raise KeyError(f"no requirement {requirement_id!r} in the catalog") from None
