"""A small Entra ID world for exercising the lab Graph endpoint and the live Graph source.

The full lab organization (``hybridtrust.lab.contoso``) describes a whole hybrid
deployment; tests of the Graph plumbing need less: two tenants, the first-party
service principals (one absent, as Skype for Business Online is in most tenants
since its retirement), a dedicated Exchange hybrid application, and the two
audit identities a real deployment would register: a read-only one for audits
and a read-write one for ``--remediate``. Objects carry the properties Graph
returns for them, so responses look like Graph's.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hybridtrust.lab.state import FORMAT, LabState

EXCHANGE_ONLINE = "00000002-0000-0ff1-ce00-000000000000"
SHAREPOINT_ONLINE = "00000003-0000-0ff1-ce00-000000000000"
SKYPE_ONLINE = "00000004-0000-0ff1-ce00-000000000000"
MICROSOFT_GRAPH = "00000003-0000-0000-c000-000000000000"
FIRST_PARTY_OWNER = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"

READ_ONLY_PERMISSIONS = ["Application.Read.All", "Domain.Read.All", "Organization.Read.All"]
READ_WRITE_PERMISSIONS = ["Application.ReadWrite.All", "Domain.Read.All", "Organization.Read.All"]


@dataclass(frozen=True)
class SampleCertificate:
    der: bytes
    pem: bytes
    """Private key and certificate in one PEM, as azure-identity's CertificateCredential reads it."""

    @property
    def private_key_pem(self) -> str:
        return self.pem.decode("ascii").split("-----BEGIN CERTIFICATE-----")[0]

    @property
    def b64(self) -> str:
        return base64.b64encode(self.der).decode("ascii")

    @property
    def thumbprint(self) -> str:
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest().upper()


def make_certificate(common_name: str, not_before: dt.datetime, not_after: dt.datetime) -> SampleCertificate:
    """A self-signed RSA certificate, like New-ExchangeCertificate or an app's client certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    return SampleCertificate(certificate.public_bytes(serialization.Encoding.DER), pem)


def key_credential(certificate: SampleCertificate, *, display_name: str | None = None) -> dict[str, Any]:
    parsed = x509.load_der_x509_certificate(certificate.der)
    return {
        "customKeyIdentifier": certificate.thumbprint,
        "displayName": display_name or parsed.subject.rfc4514_string(),
        "endDateTime": parsed.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": certificate.b64,
        "keyId": str(uuid.uuid5(uuid.NAMESPACE_OID, certificate.thumbprint)),
        "startDateTime": parsed.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    }


def service_principal(
    object_id: str,
    app_id: str,
    display_name: str,
    *,
    names: list[str] | None = None,
    reply_urls: list[str] | None = None,
    key_credentials: list[dict[str, Any]] | None = None,
    owner: str = FIRST_PARTY_OWNER,
) -> dict[str, Any]:
    """A servicePrincipal object with the properties Graph v1.0 returns by default."""
    return {
        "id": object_id,
        "deletedDateTime": None,
        "accountEnabled": True,
        "alternativeNames": [],
        "appDisplayName": display_name,
        "appDescription": None,
        "appId": app_id,
        "applicationTemplateId": None,
        "appOwnerOrganizationId": owner,
        "appRoleAssignmentRequired": False,
        "description": None,
        "displayName": display_name,
        "homepage": None,
        "loginUrl": None,
        "logoutUrl": None,
        "notes": None,
        "notificationEmailAddresses": [],
        "preferredSingleSignOnMode": None,
        "preferredTokenSigningKeyThumbprint": None,
        "replyUrls": list(reply_urls or []),
        "servicePrincipalNames": list(names if names is not None else [app_id]),
        "servicePrincipalType": "Application",
        "signInAudience": "AzureADMultipleOrgs",
        "tags": [],
        "tokenEncryptionKeyId": None,
        "keyCredentials": list(key_credentials or []),
        "passwordCredentials": [],
    }


def application(
    object_id: str, app_id: str, display_name: str, *, key_credentials: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": object_id,
        "deletedDateTime": None,
        "appId": app_id,
        "createdDateTime": "2025-08-12T09:30:00Z",
        "description": None,
        "displayName": display_name,
        "identifierUris": [],
        "publisherDomain": None,
        "signInAudience": "AzureADMyOrg",
        "tags": [],
        "keyCredentials": list(key_credentials or []),
        "passwordCredentials": [],
        "web": {"homePageUrl": None, "logoutUrl": None, "redirectUris": []},
    }


@dataclass(frozen=True)
class SampleClient:
    tenant_id: str
    app_id: str
    secret: str
    permissions: tuple[str, ...]
    certificate: SampleCertificate | None


@dataclass
class SampleGraphWorld:
    state: LabState
    tenant_ids: list[str]
    read_only: dict[str, SampleClient]
    """Per tenant: the audit identity (Application/Domain/Organization.Read.All)."""
    read_write: dict[str, SampleClient]
    """Per tenant: the remediation identity (Application.ReadWrite.All)."""
    auth_certificate: SampleCertificate
    """The Exchange OAuth certificate published on 00000002 and the dedicated app."""
    organization_guid: str


def _guid(tenant_id: str, name: str) -> str:
    # Deterministic object ids: a rebuilt world has the same ids (readable diffs).
    return str(uuid.uuid5(uuid.UUID(tenant_id), name))


def sample_graph_world(
    now: dt.datetime | None = None,
    *,
    tenants: tuple[tuple[str, str], ...] = (
        ("8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35", "contoso"),
        ("2b7e4d90-3c1a-4f6e-8d52-7a9c0e1f3b64", "fabrikam"),
    ),
    extra_service_principals: int = 3,
) -> SampleGraphWorld:
    """Tenants with organization, domains, service principals, applications and two clients each.

    `extra_service_principals` adds ordinary third-party principals so that list
    queries page with a small page size.
    """
    now = now or dt.datetime.now(dt.UTC)
    organization_guid = "5d3c0e42-8a61-4b9f-9e2d-0c7a1f6b2e18"
    auth = make_certificate(
        "Microsoft Exchange Server Auth Certificate", now - dt.timedelta(days=300), now + dt.timedelta(days=400)
    )
    client_certificate = make_certificate("hybridtrust audit", now - dt.timedelta(days=1), now + dt.timedelta(days=365))
    document: dict[str, Any] = {"format": FORMAT, "tenants": {}}
    read_only: dict[str, SampleClient] = {}
    read_write: dict[str, SampleClient] = {}
    for tenant_id, name in tenants:
        title = name.capitalize()
        domains = [
            {"id": f"{name}.com", "isDefault": True, "isInitial": False, "isVerified": True, "isRoot": True},
            {
                "id": f"{name}.onmicrosoft.com",
                "isDefault": False,
                "isInitial": True,
                "isVerified": True,
                "isRoot": True,
            },
            {
                "id": f"{name}.mail.onmicrosoft.com",
                "isDefault": False,
                "isInitial": False,
                "isVerified": True,
                "isRoot": False,
            },
        ]
        for domain in domains:
            domain.update(
                {
                    "authenticationType": "Managed",
                    "availabilityStatus": None,
                    "isAdminManaged": True,
                    "passwordNotificationWindowInDays": None,
                    "passwordValidityPeriodInDays": None,
                    "supportedServices": ["Email", "OfficeCommunicationsOnline"],
                    "state": None,
                }
            )
        principals = [
            service_principal(
                _guid(tenant_id, EXCHANGE_ONLINE),
                EXCHANGE_ONLINE,
                "Office 365 Exchange Online",
                names=[
                    EXCHANGE_ONLINE,
                    f"{EXCHANGE_ONLINE}/outlook.office365.com",
                    f"{EXCHANGE_ONLINE}/*.{name}.com",
                    f"https://mail.{name}.com/",
                    "https://outlook.office365.com/",
                ],
                reply_urls=["https://outlook.office365.com/owa/", f"https://mail.{name}.com/owa"],
                key_credentials=[key_credential(auth, display_name="CN=Microsoft Exchange Server Auth Certificate")],
            ),
            service_principal(
                _guid(tenant_id, SHAREPOINT_ONLINE),
                SHAREPOINT_ONLINE,
                "Office 365 SharePoint Online",
                names=[SHAREPOINT_ONLINE, f"{SHAREPOINT_ONLINE}/*.{name}.com"],
            ),
            service_principal(
                _guid(tenant_id, MICROSOFT_GRAPH),
                MICROSOFT_GRAPH,
                "Microsoft Graph",
                names=[MICROSOFT_GRAPH, "https://graph.microsoft.com"],
            ),
        ]
        for index in range(extra_service_principals):
            app_id = _guid(tenant_id, f"third-party-{index}")
            principals.append(
                service_principal(
                    _guid(tenant_id, f"sp-third-party-{index}"),
                    app_id,
                    f"Line of business app {index}",
                    owner=tenant_id,
                )
            )
        dedicated_app_id = _guid(tenant_id, "ExchangeServerApp")
        applications = [
            application(
                _guid(tenant_id, "app-ExchangeServerApp"),
                dedicated_app_id,
                f"ExchangeServerApp-{organization_guid}",
                key_credentials=[key_credential(auth)],
            ),
            application(_guid(tenant_id, "app-hr"), _guid(tenant_id, "hr"), f"{title} HR portal"),
        ]
        reader = SampleClient(
            tenant_id,
            _guid(tenant_id, "hybridtrust-audit"),
            f"lab-ro-{name}-{uuid.uuid5(uuid.UUID(tenant_id), 'ro').hex[:12]}",
            tuple(READ_ONLY_PERMISSIONS),
            client_certificate,
        )
        writer = SampleClient(
            tenant_id,
            _guid(tenant_id, "hybridtrust-remediate"),
            f"lab-rw-{name}-{uuid.uuid5(uuid.UUID(tenant_id), 'rw').hex[:12]}",
            tuple(READ_WRITE_PERMISSIONS),
            None,
        )
        read_only[tenant_id] = reader
        read_write[tenant_id] = writer
        document["tenants"][tenant_id] = {
            "organization": {
                "id": tenant_id,
                "deletedDateTime": None,
                "businessPhones": [],
                "city": None,
                "country": None,
                "countryLetterCode": "US",
                "createdDateTime": "2017-03-01T10:00:00Z",
                "displayName": title,
                "tenantType": "AAD",
                "verifiedDomains": [
                    {
                        "capabilities": "Email, OfficeCommunicationsOnline",
                        "isDefault": domain["isDefault"],
                        "isInitial": domain["isInitial"],
                        "name": domain["id"],
                        "type": "Managed",
                    }
                    for domain in domains
                ],
            },
            "domains": domains,
            "servicePrincipals": principals,
            "applications": applications,
            "clients": [
                {
                    "appId": client.app_id,
                    "displayName": f"hybridtrust {'audit' if client is reader else 'remediation'}",
                    "secret": client.secret,
                    "certificate": client.certificate.b64 if client.certificate else None,
                    "certificate_private_key": client.certificate.private_key_pem if client.certificate else None,
                    "permissions": list(client.permissions),
                }
                for client in (reader, writer)
            ],
        }
    return SampleGraphWorld(
        state=LabState(document),
        tenant_ids=[tenant_id for tenant_id, _ in tenants],
        read_only=read_only,
        read_write=read_write,
        auth_certificate=auth,
        organization_guid=organization_guid,
    )
