"""The lab organizations: Contoso as it should be, and Contoso as it is.

`compliant_organization(now)` builds a multi-tenant hybrid organization in which
every requirement of the catalog that applies passes: the scenarios
exchange-oauth, sfb-online, hma, hma-owa-ecp, sharepoint-s2s and
dedicated-hybrid-app are all configured the documented way. `flawed_contoso(now)`
is the same organization with the defects listed in `DEFECTS`, the realistic
drift a real hybrid organization shows a few years after the Hybrid
Configuration Wizard ran (the shipped lab profile uses it, so the first report a
new user sees is interesting).

Decisions worth knowing:

- EX04 is Exchange Server SE in the compliant organization so that every server
  satisfies OWA-BUILD; in the flawed organization it is still the Exchange 2016
  CU23 box a migration left behind (OWA-BUILD fails for it, nothing else does).
- Both tenants use a dedicated Exchange hybrid application (S5), so the Exchange
  auth certificate is published on each tenant's `ExchangeServerApp-<org guid>`
  application, not on the shared `00000002-...` service principal; that
  service principal keeps no on-premises keyCredential (HYB-SHARED-SP-CLEAN).
  The Skype for Business Online service principal (contoso only) does carry the
  certificate (SFB-AUTHCERT-PUBLISHED).
- The SharePoint farm trusts one tenant, contoso (its realm); fabrikam has no
  SharePoint hybrid configuration.
- Exchange Online's IntraOrganizationConnector is the contoso tenant's one (the
  lab state keeps one Exchange Online organization).
- Clients' secrets are derived from the tenant and the client name, so a lab is
  reproducible; they are lab secrets and never leave the state file.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hybridtrust.lab import pki
from hybridtrust.lab.exchange_objects import admin_display_version
from hybridtrust.lab.state import FORMAT, LabState

CONTOSO_TENANT = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
FABRIKAM_TENANT = "3c9e7b21-6d4f-4a8e-b5c1-92f0d7e4a6b8"
EXCHANGE_ORGANIZATION_GUID = "b7e2c9a4-3f1d-4e6b-8a5c-0d9f2e7b1c63"
AD_DOMAIN = "contoso.local"
DOMAIN_CONTROLLER = "dc01.contoso.local"
SITE = "Default-First-Site-Name"

EXCHANGE_ONLINE = "00000002-0000-0ff1-ce00-000000000000"
SHAREPOINT_ONLINE = "00000003-0000-0ff1-ce00-000000000000"
SKYPE_FOR_BUSINESS_ONLINE = "00000004-0000-0ff1-ce00-000000000000"
ACS_ISSUER = "00000001-0000-0000-c000-000000000000"
MICROSOFT_TENANT = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
MS_GRAPH = "00000003-0000-0000-c000-000000000000"
APPLICATION_READ_ALL = "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30"
APPLICATION_READWRITE_ALL = "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9"
FULL_ACCESS_AS_APP = "dc890d15-9560-4a4c-9b7f-a736ec74ec40"

MAIL_HOST = "mail.contoso.com"
AUTODISCOVER_HOST = "autodiscover.contoso.com"
SHAREPOINT_WEB_APPLICATION = "https://sharepoint.contoso.com"
ON_PREMISES_AUTODISCOVER = "https://autodiscover.contoso.com/autodiscover/autodiscover.svc"
CLOUD_AUTODISCOVER = "https://autodiscover-s.outlook.com/autodiscover/autodiscover.svc"

EXCHANGE_APPLICATION_ACCOUNT = "Exchange Online-ApplicationAccount"
SFB_APPLICATION_ACCOUNT = "SfBOnline-ApplicationAccount"
EXCHANGE_APPLICATION_ROLES = (
    "UserApplication",
    "ArchiveApplication",
    "LegalHoldApplication",
    "Mailbox Search",
    "TeamMailboxLifecycleApplication",
    "MailboxSearchApplication",
    "MeetingGraphApplication",
)
SFB_APPLICATION_ROLES = ("UserApplication", "ArchiveApplication")

# Builds: 2019 CU14 with the April 2024 HU, Exchange Server SE RTM, 2016 CU23, 2010 SP3 RU32.
EXCHANGE_2019_CU14_APR24HU = "15.2.1544.11"
EXCHANGE_SE_RTM = "15.2.2562.17"
EXCHANGE_2016_CU23 = "15.1.2507.39"
EXCHANGE_2010_SP3 = "14.3.513.0"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str  # the prefix of <name>.onmicrosoft.com
    display_name: str
    verified_domain: str
    default_authorization_endpoint: bool
    has_skype_for_business: bool

    @property
    def initial_domain(self) -> str:
        return f"{self.name}.onmicrosoft.com"

    @property
    def coexistence_domain(self) -> str:
        return f"{self.name}.mail.onmicrosoft.com"


TENANTS = (
    Tenant(CONTOSO_TENANT, "contoso", "Contoso", "contoso.com", True, True),
    Tenant(FABRIKAM_TENANT, "fabrikam", "Fabrikam", "fabrikam.com", False, False),
)


@dataclass(frozen=True)
class Defect:
    """One seeded defect of the flawed organization."""

    requirement: str
    subject: str
    what: str


DEFECTS: list[Defect] = [
    Defect(
        "EXO-AVAILABILITY-LEGACY",
        "organization",
        "EX2010 (Exchange 2010 SP3) is still in the organization and no AvailabilityAddressSpace "
        "(InternalProxy, coexistence domain) lets cloud users see its mailboxes' free/busy",
    ),
    Defect(
        "OWA-BUILD",
        "EX04",
        "EX04 is still Exchange 2016 CU23 (15.1.2507.39); EX2010 also predates HMA for OWA/ECP",
    ),
    Defect(
        "HMA-SPN-URLS",
        f"{FABRIKAM_TENANT} x {AUTODISCOVER_HOST}",
        f"https://{AUTODISCOVER_HOST}/ is missing from the servicePrincipalNames of fabrikam's "
        f"{EXCHANGE_ONLINE} service principal",
    ),
    Defect(
        "HMA-VDIR-OAUTH",
        "EX02/MAPI",
        "OAuth was removed from the ExternalAuthenticationMethods of EX02's MAPI virtual directory",
    ),
    Defect(
        "EXO-AUTHCERT",
        "EX04",
        "the current auth certificate was never imported on EX04 (missing from its certificate store)",
    ),
    Defect(
        "HMA-AUTHCERT",
        "EX04",
        "EXO-AUTHCERT evaluated under hma: the auth certificate is missing on EX04",
    ),
    Defect(
        "EXO-AUTHCERT-RENEWAL",
        "organization",
        "the auth certificate expires in 45 days and no next certificate is staged "
        "(EXO-AUTHCERT passes for the other servers but is close to its 30-day threshold)",
    ),
    Defect(
        "EXO-AUTHCERT-PUBLISHED",
        FABRIKAM_TENANT,
        "the dedicated hybrid application is in use, and the current auth certificate is missing from "
        "fabrikam's ExchangeServerApp application keyCredentials (and, correctly, from its 00000002 SP)",
    ),
    Defect(
        "OWA-VDIR-AUTH",
        "EX01/OWA",
        "FormsAuthentication is back on EX01's OWA virtual directory (Basic and Fba in its methods)",
    ),
    Defect(
        "OWA-REPLY-URLS",
        f"{CONTOSO_TENANT} x https://{MAIL_HOST}/ecp",
        f"https://{MAIL_HOST}/ecp is missing from the replyUrls of contoso's {EXCHANGE_ONLINE} service principal",
    ),
    Defect(
        "EXO-WSSECURITY",
        "EX02/Autodiscover",
        "WSSecurity is missing from both authentication method lists of EX02's Autodiscover virtual directory",
    ),
    Defect(
        "HMA-DOMAINNAME",
        FABRIKAM_TENANT,
        "fabrikam's evoSTS AuthServer has an empty DomainName (visible where the check considers only "
        "Exchange 2013+ servers: EX2010 makes 'every server is 2016 CU18+' false)",
    ),
    Defect(
        "EXO-APPACCOUNT",
        "organization",
        f"the MeetingGraphApplication role assignment of {EXCHANGE_APPLICATION_ACCOUNT} is missing",
    ),
    Defect(
        "SFB-APPACCOUNT",
        "organization",
        f"{SFB_APPLICATION_ACCOUNT} is not hidden from address lists",
    ),
    Defect(
        "HYB-SHARED-SP-CLEAN",
        CONTOSO_TENANT,
        f"the on-premises auth certificate is still a keyCredential of contoso's {EXCHANGE_ONLINE} "
        "service principal although the dedicated hybrid application is in use",
    ),
    Defect(
        "SPS-REALM",
        "farm",
        "the SharePoint authentication realm is the farm's own GUID, not the contoso tenant id",
    ),
    Defect(
        "SPS-OAUTH-HTTP",
        "farm",
        "AllowOAuthOverHttp is True although the hybrid web application is served over https",
    ),
    Defect(
        "EXO-IOC-ONPREM",
        FABRIKAM_TENANT,
        "fabrikam's on-premises IntraOrganizationConnector targets fabrikam.onmicrosoft.com instead of the "
        "coexistence domain fabrikam.mail.onmicrosoft.com",
    ),
]


# -- helpers ---------------------------------------------------------------------------------------------------


def _guid(*parts: str) -> str:
    """A stable GUID per name: the lab rebuilds alike, and objects keep their identity."""
    return str(uuid.UUID(bytes=hashlib.sha256("|".join(parts).encode()).digest()[:16], version=4))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _lab_secret(*parts: str) -> str:
    # Shaped like an Entra client secret (40 characters with a "~"), derived so the lab is reproducible.
    digest = base64.b64encode(hashlib.sha256("|".join(parts).encode()).digest()).decode()
    return (digest[:3] + "8Q~" + digest[3:37]).replace("+", "-").replace("/", "_")


@dataclass(frozen=True)
class _Certificates:
    auth: pki.LabCertificate
    namespace: pki.LabCertificate
    namespace_ca: pki.LabCertificate
    sts_signing: pki.LabCertificate
    microsoft_sts: pki.LabCertificate


def _certificates(now: datetime, auth_not_after: datetime) -> _Certificates:
    ca_start = now - timedelta(days=3 * 365)
    ca = pki.certificate_authority("Contoso Issuing CA 01", ca_start, ca_start + timedelta(days=10 * 365))
    return _Certificates(
        auth=pki.auth_certificate(auth_not_after - timedelta(days=5 * 365), auth_not_after),
        namespace=pki.server_certificate(
            MAIL_HOST,
            [MAIL_HOST, AUTODISCOVER_HOST, "autodiscover.fabrikam.com"],
            now - timedelta(days=100),
            now + timedelta(days=265),
            issuer=ca,
        ),
        namespace_ca=ca,
        sts_signing=pki.sts_signing_certificate(now - timedelta(days=400), now + timedelta(days=15 * 365)),
        microsoft_sts=pki.server_certificate(
            "accounts.accesscontrol.windows.net",
            ["accounts.accesscontrol.windows.net"],
            now - timedelta(days=60),
            now + timedelta(days=5 * 365),
        ),
    )


# -- Exchange on-premises ------------------------------------------------------------------------------------------


def _server(name: str, build: str, when_created: datetime) -> dict[str, Any]:
    exchange_2010 = build.startswith("14.")
    fqdn = f"{name.lower()}.{AD_DOMAIN}"
    # 2016 and later show the merged role as "Mailbox"; the 2010 box lost its CAS role in the migration.
    role = "Mailbox, HubTransport" if exchange_2010 else "Mailbox"
    return {
        "Name": name,
        "Domain": AD_DOMAIN,
        "Edition": "Enterprise",
        "ExchangeLegacyDN": (
            "/o=Contoso/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Configuration/cn=Servers/cn=" + name
        ),
        "ExchangeLegacyServerRole": 0,
        "Fqdn": fqdn,
        "IsHubTransportServer": True,
        "IsClientAccessServer": not exchange_2010,
        "IsExchange2007OrLater": True,
        "IsEdgeServer": False,
        "IsMailboxServer": True,
        "IsE14OrLater": True,
        "IsE15OrLater": not exchange_2010,
        "IsProvisionedServer": False,
        "IsUnifiedMessagingServer": build.startswith("15.1"),
        "IsFrontendTransportServer": not exchange_2010,
        "OrganizationalUnit": f"{AD_DOMAIN}/{name}",
        "AdminDisplayVersion": admin_display_version(build),
        "Site": SITE,
        "ServerRole": role,
        "MitigationsEnabled": not exchange_2010,
        "StaticDomainControllers": [],
        "StaticGlobalCatalogs": [],
        "CurrentDomainControllers": [DOMAIN_CONTROLLER],
        "CurrentGlobalCatalogs": [DOMAIN_CONTROLLER],
        "ProductID": "",
        "IsExchangeTrialEdition": False,
        "IsExpiredExchangeTrialEdition": False,
        "Identity": name,
        "Guid": _guid("server", name),
        "ObjectClass": ["top", "server", "msExchExchangeServer"],
        "WhenCreated": _iso(when_created),
    }


# Methods per virtual directory as HCW/HMA leave them on 2019 and SE.
_VDIR_METHODS = {
    "MapiVirtualDirectory": ["Ntlm", "OAuth", "Negotiate"],
    "WebServicesVirtualDirectory": ["Ntlm", "WindowsIntegrated", "WSSecurity", "OAuth"],
    "OabVirtualDirectory": ["WindowsIntegrated", "OAuth"],
    "AutodiscoverVirtualDirectory": ["Basic", "Ntlm", "WindowsIntegrated", "WSSecurity", "OAuth"],
    "ActiveSyncVirtualDirectory": ["Basic", "OAuth"],
    "OwaVirtualDirectory": ["OAuth"],
    "EcpVirtualDirectory": ["OAuth"],
}
_VDIR_NAMES = {
    "MapiVirtualDirectory": ("mapi", "/mapi"),
    "WebServicesVirtualDirectory": ("EWS", "/EWS/Exchange.asmx"),
    "OabVirtualDirectory": ("OAB", "/OAB"),
    "AutodiscoverVirtualDirectory": ("Autodiscover", None),
    "ActiveSyncVirtualDirectory": ("Microsoft-Server-ActiveSync", "/Microsoft-Server-ActiveSync"),
    "OwaVirtualDirectory": ("owa", "/owa"),
    "EcpVirtualDirectory": ("ecp", "/ecp"),
}


def _virtual_directory(noun: str, server: str, build: str, when_created: datetime) -> dict[str, Any]:
    short, path = _VDIR_NAMES[noun]
    name = f"{short} (Default Web Site)"
    methods = _VDIR_METHODS[noun]
    # Split DNS: the published namespace inside and outside; the Autodiscover vdir keeps no URLs (SCP + DNS do).
    url = f"https://{MAIL_HOST}{path}" if path else None
    frontend = "FrontEnd\\HttpProxy\\" + (short.lower() if noun != "ActiveSyncVirtualDirectory" else "sync")
    data: dict[str, Any] = {"Name": name}
    if noun == "MapiVirtualDirectory":
        data["IISAuthenticationMethods"] = list(methods)
    data.update(
        {
            "InternalAuthenticationMethods": list(methods),
            "ExternalAuthenticationMethods": list(methods),
            "MetabasePath": f"IIS://{server.lower()}.{AD_DOMAIN}/W3SVC/1/ROOT/{short}",
            "Path": f"C:\\Program Files\\Microsoft\\Exchange Server\\V15\\{frontend}",
            "ExtendedProtectionTokenChecking": "None",
            "ExtendedProtectionFlags": [],
            "ExtendedProtectionSPNList": [],
            "AdminDisplayVersion": admin_display_version(build),
            "Server": server,
            "InternalUrl": url,
            "ExternalUrl": url,
            "Identity": f"{server}\\{name}",
            "Guid": _guid("vdir", server, noun),
            "WhenCreated": _iso(when_created),
        }
    )
    if noun == "OwaVirtualDirectory":
        data["DefaultDomain"] = ""
        data["LogonFormat"] = "FullDomain"
    if noun == "WebServicesVirtualDirectory":
        data["MRSProxyEnabled"] = True
    return data


def _exchange(
    tenants: tuple[Tenant, ...],
    servers: list[tuple[str, str]],
    certificates: _Certificates,
    now: datetime,
) -> dict[str, list[dict[str, Any]]]:
    created = now - timedelta(days=2 * 365)
    exchange: dict[str, list[dict[str, Any]]] = {}
    exchange["ExchangeServer"] = [_server(name, build, created) for name, build in servers]
    modern = [(name, build) for name, build in servers if not build.startswith("14.")]

    for noun in _VDIR_METHODS:
        exchange[noun] = [_virtual_directory(noun, name, build, created) for name, build in modern]

    exchange["ClientAccessService"] = [
        {
            "Name": name,
            "Fqdn": f"{name.lower()}.{AD_DOMAIN}",
            "AutoDiscoverServiceInternalUri": f"https://{AUTODISCOVER_HOST}/Autodiscover/Autodiscover.xml",
            "AutoDiscoverSiteScope": [SITE],
            "IsOutOfService": False,
            "Identity": name,
            "Guid": _guid("server", name),
            "WhenCreated": _iso(created),
        }
        for name, _ in modern
    ]

    certificate_list: list[dict[str, Any]] = []
    for name, build in servers:
        own = pki.self_signed_server_certificate(name, f"{name.lower()}.{AD_DOMAIN}", created)
        installed = [own] if build.startswith("14.") else [certificates.auth, certificates.namespace, own]
        for certificate in installed:
            certificate_list.append(
                {"Server": name, "RawData": _b64(certificate.der), "Identity": f"{name}\\{certificate.thumbprint}"}
            )
    exchange["ExchangeCertificate"] = certificate_list

    exchange["AuthConfig"] = [
        {
            "CurrentCertificateThumbprint": certificates.auth.thumbprint,
            "PreviousCertificateThumbprint": "",
            "NextCertificateThumbprint": "",
            "NextCertificateEffectiveDate": None,
            "ServiceName": EXCHANGE_ONLINE,
            "Realm": "",
            "DeploymentId": "",
            "IssuerIdentifier": "",
            "Name": "Auth Configuration",
            "Identity": "Auth Configuration",
            "Guid": _guid("authconfig"),
            "WhenCreated": _iso(created),
            "WhenChanged": _iso(certificates.auth.not_before),
        }
    ]

    microsoft_signing = [_b64(certificates.microsoft_sts.der)]
    auth_servers: list[dict[str, Any]] = []
    for tenant in tenants:
        auth_servers.append(
            {
                "IssuerIdentifier": f"https://sts.windows.net/{tenant.id}/",
                "TokenIssuingEndpoint": f"https://login.windows.net/{tenant.id}/oauth2/token",
                "AuthorizationEndpoint": f"https://login.windows.net/{tenant.id}/oauth2/authorize",
                "ApplicationIdentifier": _dedicated_app_id(tenant),
                "AuthMetadataUrl": (
                    f"https://login.windows.net/{tenant.initial_domain}/FederationMetadata/2007-06/"
                    "FederationMetadata.xml"
                ),
                "Realm": tenant.id,
                "Type": "AzureAD",
                "CertificateStrings": list(microsoft_signing),
                "IsDefaultAuthorizationEndpoint": tenant.default_authorization_endpoint,
                "Enabled": True,
                "DomainName": [tenant.initial_domain],
                "Name": f"EvoSts - {tenant.id}",
                "Identity": f"EvoSts - {tenant.id}",
                "Guid": _guid("authserver", "evosts", tenant.id),
                "WhenCreated": _iso(created),
            }
        )
        if tenant.has_skype_for_business:
            auth_servers.append(
                {
                    "IssuerIdentifier": ACS_ISSUER,
                    "TokenIssuingEndpoint": f"https://accounts.accesscontrol.windows.net/{tenant.id}/tokens/OAuth/2",
                    "AuthorizationEndpoint": "",
                    "ApplicationIdentifier": "",
                    "AuthMetadataUrl": f"https://accounts.accesscontrol.windows.net/{tenant.id}/metadata/json/1",
                    "Realm": tenant.id,
                    "Type": "MicrosoftACS",
                    "CertificateStrings": list(microsoft_signing),
                    "IsDefaultAuthorizationEndpoint": False,
                    "Enabled": True,
                    "DomainName": [],
                    "Name": f"ACS - {tenant.id}",
                    "Identity": f"ACS - {tenant.id}",
                    "Guid": _guid("authserver", "acs", tenant.id),
                    "WhenCreated": _iso(created),
                }
            )
    exchange["AuthServer"] = auth_servers

    def partner(name: str, app_id: str, account: str) -> dict[str, Any]:
        return {
            "Enabled": True,
            "ApplicationIdentifier": app_id,
            "CertificateStrings": [],
            "AuthMetadataUrl": "",
            "Realm": "",
            "UseAuthServer": True,
            "AcceptSecurityIdentifierInformation": app_id == EXCHANGE_ONLINE,
            "LinkedAccount": f"{AD_DOMAIN}/Users/{account}",
            "IssuerIdentifier": "",
            "AppOnlyPermissions": [],
            "ActAsPermissions": [],
            "Name": name,
            "Identity": name,
            "Guid": _guid("partnerapp", app_id),
            "WhenCreated": _iso(created),
        }

    exchange["PartnerApplication"] = [
        partner("Exchange Online", EXCHANGE_ONLINE, EXCHANGE_APPLICATION_ACCOUNT),
        partner("SfBOnline", SKYPE_FOR_BUSINESS_ONLINE, SFB_APPLICATION_ACCOUNT),
    ]

    exchange["OrganizationConfig"] = [
        {
            "Name": "Contoso",
            "OAuth2ClientProfileEnabled": True,
            "EnableDownloadDomains": True,
            "IsGuidPrefixedLegacyDnDisabled": False,
            "DisplayName": "",
            "Identity": "Contoso",
            "Guid": EXCHANGE_ORGANIZATION_GUID,
            "WhenCreated": _iso(created),
        }
    ]

    exchange["IntraOrganizationConnector"] = [
        {
            "TargetAddressDomains": [tenant.coexistence_domain],
            "DiscoveryEndpoint": CLOUD_AUTODISCOVER,
            "TargetSharingEpr": None,
            "Enabled": True,
            "Name": f"HybridIOC - {tenant.id}",
            "Identity": f"HybridIOC - {tenant.id}",
            "Guid": _guid("ioc", tenant.id),
            "WhenCreated": _iso(created),
        }
        for tenant in tenants
    ]
    exchange["AvailabilityAddressSpace"] = []

    def override(name: str, component: str, section: str, reason: str) -> dict[str, Any]:
        return {
            "ComponentName": component,
            "SectionName": section,
            "Parameters": ["Enabled=True"],
            "Reason": reason,
            "Server": [],
            "MinVersion": None,
            "MaxVersion": None,
            "FixVersion": None,
            "Name": name,
            "Identity": name,
            "Guid": _guid("override", name),
            "WhenCreated": _iso(now - timedelta(days=120)),
        }

    exchange["SettingOverride"] = [
        override(
            "EnableExchangeHybrid3PAppFeature",
            "Global",
            "ExchangeOnpremAsThirdPartyAppId",
            "Enable dedicated Exchange hybrid app feature",
        ),
        override(
            "OAuthIdentityCacheFixForDownloadDomains",
            "OAuth",
            "OAuthIdentityCacheFixForDownloadDomains",
            "Enable OAuth Identity Cache Fix For Download Domains",
        ),
    ]

    def accepted(domain: str, default: bool, coexistence: bool) -> dict[str, Any]:
        return {
            "DomainName": domain,
            "CatchAllRecipientID": None,
            "DomainType": "Authoritative",
            "MatchSubDomains": False,
            "AddressBookEnabled": True,
            "Default": default,
            "EmailOnly": False,
            "ExternallyManaged": False,
            "PendingRemoval": False,
            "PendingCompletion": False,
            "OutboundOnly": False,
            "IsCoexistenceDomain": coexistence,
            "InitialDomain": False,
            "Name": domain,
            "Identity": domain,
            "Guid": _guid("accepteddomain", domain),
            "WhenCreated": _iso(created),
        }

    exchange["AcceptedDomain"] = [
        accepted("contoso.com", True, False),
        accepted("fabrikam.com", False, False),
        *(accepted(tenant.coexistence_domain, False, True) for tenant in tenants),
    ]

    exchange["User"] = [
        {
            "Name": EXCHANGE_APPLICATION_ACCOUNT,
            "DisplayName": EXCHANGE_APPLICATION_ACCOUNT,
            "SamAccountName": "$731000-" + EXCHANGE_ORGANIZATION_GUID[:8].upper(),
            "UserPrincipalName": f"{EXCHANGE_APPLICATION_ACCOUNT.replace(' ', '_')}@{AD_DOMAIN}",
            "RecipientType": "User",
            "RecipientTypeDetails": "DisabledUser",
            "AccountDisabled": True,
            "IsLinked": False,
            "OrganizationalUnit": f"{AD_DOMAIN}/Users",
            "Identity": f"{AD_DOMAIN}/Users/{EXCHANGE_APPLICATION_ACCOUNT}",
            "Guid": _guid("user", EXCHANGE_APPLICATION_ACCOUNT),
            "WhenCreated": _iso(created),
        },
        {
            "Name": SFB_APPLICATION_ACCOUNT,
            "DisplayName": SFB_APPLICATION_ACCOUNT,
            "SamAccountName": SFB_APPLICATION_ACCOUNT[:20],
            "UserPrincipalName": f"{SFB_APPLICATION_ACCOUNT}@contoso.com",
            "RecipientType": "MailUser",
            "RecipientTypeDetails": "MailUser",
            "AccountDisabled": False,
            "IsLinked": False,
            "OrganizationalUnit": f"{AD_DOMAIN}/Users",
            "Identity": f"{AD_DOMAIN}/Users/{SFB_APPLICATION_ACCOUNT}",
            "Guid": _guid("user", SFB_APPLICATION_ACCOUNT),
            "WhenCreated": _iso(created),
        },
    ]
    sfb_address = f"{SFB_APPLICATION_ACCOUNT}@contoso.com"
    exchange["MailUser"] = [
        {
            "Name": SFB_APPLICATION_ACCOUNT,
            "Alias": SFB_APPLICATION_ACCOUNT,
            "DisplayName": SFB_APPLICATION_ACCOUNT,
            "ExternalEmailAddress": f"SMTP:{sfb_address}",
            "PrimarySmtpAddress": sfb_address,
            "EmailAddresses": [f"SMTP:{sfb_address}"],
            "HiddenFromAddressListsEnabled": True,
            "RecipientType": "MailUser",
            "RecipientTypeDetails": "MailUser",
            "UserPrincipalName": sfb_address,
            "OrganizationalUnit": f"{AD_DOMAIN}/Users",
            "Identity": f"{AD_DOMAIN}/Users/{SFB_APPLICATION_ACCOUNT}",
            "Guid": _guid("user", SFB_APPLICATION_ACCOUNT),
            "WhenCreated": _iso(created),
        }
    ]
    exchange["ManagementRoleAssignment"] = [
        role_assignment(role, EXCHANGE_APPLICATION_ACCOUNT, created) for role in EXCHANGE_APPLICATION_ROLES
    ] + [role_assignment(role, SFB_APPLICATION_ACCOUNT, created) for role in SFB_APPLICATION_ROLES]
    return exchange


def role_assignment(role: str, assignee: str, when_created: datetime) -> dict[str, Any]:
    """A direct role assignment as New-ManagementRoleAssignment -Role -User creates it."""
    name = f"{role}-{assignee}"
    return {
        "Name": name,
        "Role": role,
        "RoleAssignee": assignee,
        "RoleAssigneeName": assignee,
        "RoleAssigneeType": "User",
        "AssignmentMethod": "Direct",
        "EffectiveUserName": assignee,
        "AssignmentChain": [],
        "CustomRecipientWriteScope": None,
        "CustomConfigWriteScope": None,
        "RecipientReadScope": "Organization",
        "ConfigReadScope": "OrganizationConfig",
        "RecipientWriteScope": "Organization",
        "ConfigWriteScope": "OrganizationConfig",
        "Enabled": True,
        "RoleAssignmentDelegationType": "Regular",
        "Identity": name,
        "Guid": _guid("roleassignment", name),
        "WhenCreated": _iso(when_created),
    }


# -- Entra ID -----------------------------------------------------------------------------------------------------


def _dedicated_app_id(tenant: Tenant) -> str:
    return _guid("dedicated-app", tenant.id)


def key_credential(certificate: pki.LabCertificate, key_id: str, *, identifier_encoding: str = "raw") -> dict[str, Any]:
    """A keyCredential as Graph returns it for an uploaded certificate.

    ``identifier_encoding`` picks one of the three forms customKeyIdentifier is
    found in: "raw" (base64 of the SHA-1, as the Entra portal and Graph uploads
    write it), "hex-text" (base64 of the hex thumbprint text, as the MSOnline
    module wrote it) and "hex" (the 40-hex thumbprint itself, as some scripts do).
    """
    sha1 = hashlib.sha1(certificate.der).digest()  # the thumbprint *is* SHA-1
    identifier = {
        "raw": _b64(sha1),
        "hex-text": _b64(certificate.thumbprint.encode()),
        "hex": certificate.thumbprint,
    }[identifier_encoding]
    return {
        "customKeyIdentifier": identifier,
        "displayName": certificate.certificate.subject.rfc4514_string(),
        "endDateTime": _iso(certificate.not_after),
        "key": _b64(certificate.der),
        "keyId": key_id,
        "startDateTime": _iso(certificate.not_before),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    }


def _service_principal(
    tenant: Tenant,
    app_id: str,
    display_name: str,
    names: list[str],
    reply_urls: list[str],
    key_credentials: list[dict[str, Any]],
    created: datetime,
    *,
    owner: str = MICROSOFT_TENANT,
) -> dict[str, Any]:
    return {
        "id": _guid("sp", tenant.id, app_id),
        "deletedDateTime": None,
        "accountEnabled": True,
        "alternativeNames": [],
        "appDisplayName": display_name,
        "appDescription": None,
        "appId": app_id,
        "applicationTemplateId": None,
        "appOwnerOrganizationId": owner,
        "appRoleAssignmentRequired": False,
        "createdDateTime": _iso(created),
        "description": None,
        "disabledByMicrosoftStatus": None,
        "displayName": display_name,
        "homepage": None,
        "loginUrl": None,
        "logoutUrl": None,
        "notes": None,
        "notificationEmailAddresses": [],
        "preferredSingleSignOnMode": None,
        "preferredTokenSigningKeyThumbprint": None,
        "replyUrls": reply_urls,
        "servicePrincipalNames": names,
        "servicePrincipalType": "Application",
        "signInAudience": "AzureADMultipleOrgs" if owner == MICROSOFT_TENANT else "AzureADMyOrg",
        "tags": [],
        "tokenEncryptionKeyId": None,
        "addIns": [],
        "appRoles": [],
        "info": {
            "logoUrl": None,
            "marketingUrl": None,
            "privacyStatementUrl": None,
            "supportUrl": None,
            "termsOfServiceUrl": None,
        },
        "keyCredentials": key_credentials,
        "oauth2PermissionScopes": [],
        "passwordCredentials": [],
        "resourceSpecificApplicationPermissions": [],
        "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None, "addedDateTime": None},
    }


def _exchange_online_names(tenant: Tenant) -> list[str]:
    microsoft = [
        f"{EXCHANGE_ONLINE}/outlook.office365.com",
        f"{EXCHANGE_ONLINE}/outlook.office.com",
        f"{EXCHANGE_ONLINE}/ps.outlook.com",
        f"{EXCHANGE_ONLINE}/outlook.com",
        f"{EXCHANGE_ONLINE}/*.outlook.com",
        "https://outlook.office365.com/",
        "https://outlook.office.com/",
        "https://ps.outlook.com/",
        "https://outlook.office365.com",
        "https://outlook.office.com",
        "Office 365 Exchange Online",
        EXCHANGE_ONLINE,
    ]
    on_premises = [
        # S0 step 4 / S1 step 7: the wildcard authority for each SMTP domain.
        f"{EXCHANGE_ONLINE}/*.contoso.com",
        f"{EXCHANGE_ONLINE}/*.fabrikam.com",
        # S3: every host the on-premises HTTP endpoints are published under.
        f"https://{MAIL_HOST}/",
        f"https://{AUTODISCOVER_HOST}/",
    ]
    return microsoft + on_premises


def _exchange_online_reply_urls() -> list[str]:
    return [
        "https://outlook.office365.com/owa/",
        "https://outlook.office.com/owa/",
        "https://outlook.office365.com/ecp/",
        f"https://{MAIL_HOST}/owa",
        f"https://{MAIL_HOST}/ecp",
        f"https://{MAIL_HOST}/owa/oauthsignin.aspx",
        f"https://{MAIL_HOST}/ecp/oauthsignin.aspx",
    ]


def _tenant_document(
    tenant: Tenant, certificates: _Certificates, now: datetime, *, sharepoint_realm_tenant: str
) -> dict[str, Any]:
    created = now - timedelta(days=6 * 365)
    domain_rows = [
        (tenant.verified_domain, True, False, True, ["Email", "OfficeCommunicationsOnline"]),
        (tenant.initial_domain, True, True, False, ["Email", "OfficeCommunicationsOnline"]),
        (tenant.coexistence_domain, True, False, False, ["Email"]),
    ]
    domains = [
        {
            "authenticationType": "Managed",
            "availabilityStatus": None,
            "id": name,
            "isAdminManaged": not initial,
            "isDefault": default,
            "isInitial": initial,
            "isRoot": not name.endswith(".mail.onmicrosoft.com"),
            "isVerified": verified,
            "passwordNotificationWindowInDays": None,
            "passwordValidityPeriodInDays": None,
            "state": None,
            "supportedServices": services,
        }
        for name, verified, initial, default, services in domain_rows
    ]
    organization = {
        "id": tenant.id,
        "deletedDateTime": None,
        "businessPhones": ["+31 20 555 0100"],
        "city": "Amsterdam",
        "country": None,
        "countryLetterCode": "NL",
        "createdDateTime": _iso(created),
        "defaultUsageLocation": None,
        "displayName": tenant.display_name,
        "marketingNotificationEmails": [],
        "onPremisesLastSyncDateTime": _iso(now - timedelta(minutes=17)),
        "onPremisesSyncEnabled": True,
        "postalCode": "1017 CE",
        "preferredLanguage": "en",
        "securityComplianceNotificationMails": [],
        "securityComplianceNotificationPhones": [],
        "state": None,
        "street": "Keizersgracht 1",
        "technicalNotificationMails": [f"messaging-team@{tenant.verified_domain}"],
        "tenantType": "AAD",
        "directorySizeQuota": {"used": 4127, "total": 300000},
        "assignedPlans": [],
        "privacyProfile": None,
        "provisionedPlans": [],
        "verifiedDomains": [
            {
                "capabilities": ", ".join(services),
                "isDefault": default,
                "isInitial": initial,
                "name": name,
                "type": "Managed",
            }
            for name, _verified, initial, default, services in domain_rows
        ],
    }

    auth_key_id = _guid("key", tenant.id, certificates.auth.thumbprint)
    service_principals = [
        _service_principal(
            tenant,
            EXCHANGE_ONLINE,
            "Office 365 Exchange Online",
            _exchange_online_names(tenant),
            _exchange_online_reply_urls(),
            [],
            created,
        )
    ]
    sharepoint_names = [
        f"{SHAREPOINT_ONLINE}/{tenant.name}.sharepoint.com",
        f"{SHAREPOINT_ONLINE}/{tenant.name}-my.sharepoint.com",
        f"https://{tenant.name}.sharepoint.com/",
        "Microsoft.SharePoint",
        SHAREPOINT_ONLINE,
    ]
    sharepoint_keys: list[dict[str, Any]] = []
    if tenant.id == sharepoint_realm_tenant:
        # S4: the farm's STS certificate and the wildcard of the farm's public root domain.
        sharepoint_names.insert(0, f"{SHAREPOINT_ONLINE}/*.contoso.com")
        sharepoint_keys.append(
            key_credential(certificates.sts_signing, _guid("key", tenant.id, certificates.sts_signing.thumbprint))
        )
    service_principals.append(
        _service_principal(
            tenant,
            SHAREPOINT_ONLINE,
            "Office 365 SharePoint Online",
            sharepoint_names,
            [f"https://{tenant.name}.sharepoint.com/_forms/default.aspx"],
            sharepoint_keys,
            created,
        )
    )
    if tenant.has_skype_for_business:
        service_principals.append(
            _service_principal(
                tenant,
                SKYPE_FOR_BUSINESS_ONLINE,
                "Skype for Business Online",
                [
                    f"{SKYPE_FOR_BUSINESS_ONLINE}/lync.com",
                    f"{SKYPE_FOR_BUSINESS_ONLINE}/*.lync.com",
                    "https://api.skypeforbusiness.com/",
                    SKYPE_FOR_BUSINESS_ONLINE,
                ],
                [],
                # The MSOnline module (S1's tooling) wrote customKeyIdentifier as base64 of the hex text.
                [key_credential(certificates.auth, auth_key_id, identifier_encoding="hex-text")],
                created,
            )
        )

    dedicated_app_id = _dedicated_app_id(tenant)
    dedicated_name = f"ExchangeServerApp-{EXCHANGE_ORGANIZATION_GUID}"
    application = {
        "id": _guid("application", tenant.id, dedicated_app_id),
        "deletedDateTime": None,
        "appId": dedicated_app_id,
        "applicationTemplateId": None,
        "createdDateTime": _iso(now - timedelta(days=120)),
        "description": None,
        "disabledByMicrosoftStatus": None,
        "displayName": dedicated_name,
        "groupMembershipClaims": None,
        "identifierUris": [],
        "isFallbackPublicClient": None,
        "notes": None,
        "publisherDomain": tenant.initial_domain,
        "serviceManagementReference": None,
        "signInAudience": "AzureADMyOrg",
        "tags": [],
        "tokenEncryptionKeyId": None,
        "keyCredentials": [key_credential(certificates.auth, auth_key_id)],
        "passwordCredentials": [],
        "requiredResourceAccess": [
            {"resourceAppId": EXCHANGE_ONLINE, "resourceAccess": [{"id": FULL_ACCESS_AS_APP, "type": "Role"}]}
        ],
        "web": {"homePageUrl": None, "logoutUrl": None, "redirectUris": []},
    }
    service_principals.append(
        _service_principal(
            tenant,
            dedicated_app_id,
            dedicated_name,
            [dedicated_app_id],
            [],
            [],
            now - timedelta(days=120),
            owner=tenant.id,
        )
    )

    clients = []
    # The least an audit needs: Application.Read.All for the service principals and applications,
    # Organization.Read.All and Domain.Read.All for /organization and /domains (Graph's documented
    # app-only permissions); fixes need Application.ReadWrite.All instead of Application.Read.All.
    for client_name, permission in (
        ("HybridTrust Audit", ["Application.Read.All", "Organization.Read.All", "Domain.Read.All"]),
        ("HybridTrust Remediation", ["Application.ReadWrite.All", "Organization.Read.All", "Domain.Read.All"]),
    ):
        client_certificate = pki.client_certificate(client_name, now - timedelta(days=30), now + timedelta(days=335))
        clients.append(
            {
                "appId": _guid("client", tenant.id, client_name),
                "displayName": client_name,
                "secret": _lab_secret(tenant.id, client_name),
                "certificate": _b64(client_certificate.der),
                "certificate_private_key": client_certificate.private_key_pem.decode(),
                "permissions": permission,
            }
        )

    return {
        "organization": organization,
        "domains": domains,
        "servicePrincipals": service_principals,
        "applications": [application],
        "clients": clients,
        # What the tenant's token service signs with (the AuthServers' CertificateStrings
        # and the lab's metadata documents publish the same certificate).
        "stsSigningCertificates": [_b64(certificates.microsoft_sts.der)],
    }


# -- SharePoint and Exchange Online -----------------------------------------------------------------------------


def _sharepoint(tenants_document: dict[str, Any], certificates: _Certificates) -> dict[str, Any]:
    realm_tenant = CONTOSO_TENANT
    metadata = f"https://accounts.accesscontrol.windows.net/{realm_tenant}/metadata/json/1"
    sharepoint_sp = next(
        sp for sp in tenants_document[realm_tenant]["servicePrincipals"] if sp["appId"] == SHAREPOINT_ONLINE
    )
    return {
        "AuthenticationRealm": realm_tenant,
        "TrustedSecurityTokenIssuer": [
            {
                "Name": "ACS",
                "NameId": f"{ACS_ISSUER}@{realm_tenant}",
                "RegisteredIssuerName": f"{ACS_ISSUER}@{realm_tenant}",
                "IsSelfIssuer": False,
                "MetadataEndPoint": metadata,
                "SigningCertificate": _b64(certificates.microsoft_sts.der),
                "Description": "",
                "Id": _guid("sp-issuer", realm_tenant),
            }
        ],
        "ServiceApplicationProxy": [
            {
                "Name": "ACS",
                "TypeName": "Azure Access Control Service Application Proxy",
                "MetadataEndpointUri": metadata,
                "Id": _guid("sp-proxy", realm_tenant),
                "InDefaultProxyGroup": True,
            }
        ],
        "AppPrincipal": [
            {
                "NameIdentifier": f"{sharepoint_sp['id']}@{realm_tenant}",
                "DisplayName": "SharePoint Online",
                "EncodedIdentityClaim": f"i:0i.t|ms.sp.ext|{sharepoint_sp['id']}@{realm_tenant}",
                "Site": SHAREPOINT_WEB_APPLICATION,
            }
        ],
        "SecurityTokenServiceConfig": {
            "Name": "SecurityTokenServiceManager",
            "AllowOAuthOverHttp": False,
            "SigningCertificate": _b64(certificates.sts_signing.der),
            "WebApplicationUrl": SHAREPOINT_WEB_APPLICATION,
        },
        "AuthenticationProvider": [
            {
                "WebApplicationUrl": SHAREPOINT_WEB_APPLICATION,
                "Zone": "Default",
                "DisplayName": "Windows Authentication",
                "ClaimProviderName": "AD",
                "UseWindowsIntegratedAuthentication": True,
                "DisableKerberos": True,
                "UseBasicAuthentication": False,
                "AllowAnonymous": False,
            }
        ],
    }


def _exchange_online(now: datetime) -> dict[str, list[dict[str, Any]]]:
    return {
        "IntraOrganizationConnector": [
            {
                "TargetAddressDomains": ["contoso.com", "fabrikam.com"],
                "DiscoveryEndpoint": ON_PREMISES_AUTODISCOVER,
                "TargetSharingEpr": None,
                "Enabled": True,
                "Name": f"HybridIOC - {EXCHANGE_ORGANIZATION_GUID}",
                "Identity": f"HybridIOC - {EXCHANGE_ORGANIZATION_GUID}",
                "Guid": _guid("exo-ioc", EXCHANGE_ORGANIZATION_GUID),
                "WhenCreated": _iso(now - timedelta(days=400)),
            }
        ]
    }


# -- the organizations --------------------------------------------------------------------------------------------


def _organization(now: datetime, servers: list[tuple[str, str]], auth_not_after: datetime) -> LabState:
    now = now.astimezone(UTC)
    certificates = _certificates(now, auth_not_after)
    tenants = {
        tenant.id: _tenant_document(tenant, certificates, now, sharepoint_realm_tenant=CONTOSO_TENANT)
        for tenant in TENANTS
    }
    document = {
        "format": FORMAT,
        "organization": {
            "Name": "Contoso",
            "Guid": EXCHANGE_ORGANIZATION_GUID,
            "AdDomain": AD_DOMAIN,
            "DomainController": DOMAIN_CONTROLLER,
            "PartitionGuid": _guid("partition", AD_DOMAIN),
            "WhenCreated": _iso(now - timedelta(days=6 * 365)),
            "SmtpDomains": ["contoso.com", "fabrikam.com"],
            "NamespaceCertificateAuthority": _b64(certificates.namespace_ca.der),
        },
        "exchange": _exchange(TENANTS, servers, certificates, now),
        "exchange_online": _exchange_online(now),
        "sharepoint": _sharepoint(tenants, certificates),
        "tenants": tenants,
        "credentials": {
            "exchange": {"username": "CONTOSO\\svc-hybridtrust", "password": _lab_secret("exchange", "svc")},
            "sharepoint": {"username": "CONTOSO\\svc-hybridtrust-sp", "password": _lab_secret("sharepoint", "svc")},
        },
        "lab": {"servers_down": []},
    }
    return LabState(document)


def compliant_organization(now: datetime) -> LabState:
    """Contoso with every scenario configured the documented way: every applicable row passes."""
    servers = [
        ("EX01", EXCHANGE_2019_CU14_APR24HU),
        ("EX02", EXCHANGE_2019_CU14_APR24HU),
        ("EX03", EXCHANGE_SE_RTM),
        ("EX04", EXCHANGE_SE_RTM),
    ]
    return _organization(now, servers, now + timedelta(days=4 * 365))


def flawed_contoso(now: datetime) -> LabState:
    """Contoso as a real organization drifts: the compliant one plus every defect in `DEFECTS`."""
    servers = [
        ("EX01", EXCHANGE_2019_CU14_APR24HU),
        ("EX02", EXCHANGE_2019_CU14_APR24HU),
        ("EX03", EXCHANGE_SE_RTM),
        ("EX04", EXCHANGE_2016_CU23),
        ("EX2010", EXCHANGE_2010_SP3),
    ]
    state = _organization(now, servers, now.astimezone(UTC) + timedelta(days=45))
    document = state.document
    exchange = document["exchange"]
    contoso, fabrikam = document["tenants"][CONTOSO_TENANT], document["tenants"][FABRIKAM_TENANT]
    auth_thumbprint = exchange["AuthConfig"][0]["CurrentCertificateThumbprint"]

    def one(noun: str, **match: Any) -> dict[str, Any]:
        return next(o for o in exchange[noun] if all(o.get(k) == v for k, v in match.items()))

    def service_principal(tenant: dict[str, Any], app_id: str) -> dict[str, Any]:
        return next(sp for sp in tenant["servicePrincipals"] if sp["appId"] == app_id)

    # HMA-SPN-URLS
    names = service_principal(fabrikam, EXCHANGE_ONLINE)["servicePrincipalNames"]
    names.remove(f"https://{AUTODISCOVER_HOST}/")
    # HMA-VDIR-OAUTH
    mapi = one("MapiVirtualDirectory", Server="EX02")
    mapi["ExternalAuthenticationMethods"] = [m for m in mapi["ExternalAuthenticationMethods"] if m != "OAuth"]
    # EXO-AUTHCERT
    exchange["ExchangeCertificate"] = [
        c
        for c in exchange["ExchangeCertificate"]
        if not (c["Server"] == "EX04" and c["Identity"].endswith(auth_thumbprint))
    ]
    # EXO-AUTHCERT-PUBLISHED (the dedicated app is what Exchange Online validates against here)
    fabrikam["applications"][0]["keyCredentials"] = []
    # OWA-VDIR-AUTH
    owa = one("OwaVirtualDirectory", Server="EX01")
    owa["InternalAuthenticationMethods"] = ["Basic", "Fba", "OAuth"]
    owa["ExternalAuthenticationMethods"] = ["Basic", "Fba", "OAuth"]
    # OWA-REPLY-URLS
    reply_urls = service_principal(contoso, EXCHANGE_ONLINE)["replyUrls"]
    reply_urls[:] = [u for u in reply_urls if not u.startswith(f"https://{MAIL_HOST}/ecp")]
    # EXO-WSSECURITY
    autodiscover = one("AutodiscoverVirtualDirectory", Server="EX02")
    for key in ("InternalAuthenticationMethods", "ExternalAuthenticationMethods"):
        autodiscover[key] = [m for m in autodiscover[key] if m != "WSSecurity"]
    # HMA-DOMAINNAME
    one("AuthServer", Realm=FABRIKAM_TENANT, Type="AzureAD")["DomainName"] = []
    # EXO-APPACCOUNT
    exchange["ManagementRoleAssignment"] = [
        a
        for a in exchange["ManagementRoleAssignment"]
        if a["Name"] != f"MeetingGraphApplication-{EXCHANGE_APPLICATION_ACCOUNT}"
    ]
    # SFB-APPACCOUNT
    one("MailUser", Name=SFB_APPLICATION_ACCOUNT)["HiddenFromAddressListsEnabled"] = False
    # HYB-SHARED-SP-CLEAN: left behind from before the dedicated application
    dedicated_key = contoso["applications"][0]["keyCredentials"][0]
    leftover = copy.deepcopy(dedicated_key)
    leftover["keyId"] = _guid("leftover-key", CONTOSO_TENANT)
    service_principal(contoso, EXCHANGE_ONLINE)["keyCredentials"].append(leftover)
    # SPS-REALM and SPS-OAUTH-HTTP
    document["sharepoint"]["AuthenticationRealm"] = _guid("farm-realm", "SP2019")
    document["sharepoint"]["SecurityTokenServiceConfig"]["AllowOAuthOverHttp"] = True
    # EXO-IOC-ONPREM
    one("IntraOrganizationConnector", Name=f"HybridIOC - {FABRIKAM_TENANT}")["TargetAddressDomains"] = [
        "fabrikam.onmicrosoft.com"
    ]
    return state
