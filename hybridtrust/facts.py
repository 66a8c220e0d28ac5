"""Facts: the typed organization every requirement test judges.

Sources collect raw documents (`Collection`: CLIXML records of each cmdlet, Graph
JSON of each tenant); this module is the only place that reads them. A check
never parses CLIXML or JSON: it asks `Organization` for auth servers, virtual
directories, certificates or service principals. A document that was not
collected raises `NotCollected` when a check asks for it, which the plugin turns
into an error for that requirement and subject, never into a pass.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from hybridtrust.certificates import Certificate, decode_key_identifier
from hybridtrust.clouds import Cloud
from hybridtrust.matching import authority_of, https_root_host, normalise_url
from hybridtrust.powershell import PSRecord

if TYPE_CHECKING:
    from hybridtrust.profile import Profile

EXCHANGE_ONLINE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
SHAREPOINT_ONLINE_APP_ID = "00000003-0000-0ff1-ce00-000000000000"
SKYPE_ONLINE_APP_ID = "00000004-0000-0ff1-ce00-000000000000"
ACS_ISSUER_ID = "00000001-0000-0000-c000-000000000000"
EXCHANGE_APPLICATION_ACCOUNT = "Exchange Online-ApplicationAccount"
SKYPE_APPLICATION_ACCOUNT = "SfBOnline-ApplicationAccount"
FIRST_PARTY_APP_IDS = (EXCHANGE_ONLINE_APP_ID, SHAREPOINT_ONLINE_APP_ID, SKYPE_ONLINE_APP_ID)


# -- what could not be collected ----------------------------------------------------
@dataclass(frozen=True)
class Missing:
    """A document a source could not collect, and why (in an administrator's words)."""

    key: str
    reason: str
    by_design: bool = False
    """The source never collects this (Exchange Online is not reached live): the administrator must
    supply it. Requirements that need only such documents are skipped with the reason, not errors."""


class NotCollected(Exception):
    """A check asked for facts whose documents were not collected: the requirement errs."""

    def __init__(self, *missing: Missing) -> None:
        self.missing = missing
        super().__init__("; ".join(item.reason for item in missing))

    @property
    def by_design(self) -> bool:
        return all(item.by_design for item in self.missing)


# -- raw documents, as the sources hand them over -------------------------------------
@dataclass
class TenantDocuments:
    """Graph v1.0 response bodies of one tenant, exactly as Graph returned them."""

    organization: dict[str, Any] | Missing
    domains: dict[str, Any] | Missing
    service_principals: dict[str, dict[str, Any] | Missing | None]
    """By appId; None: Graph answered 404, the tenant has no such service principal."""
    applications: dict[str, Any] | Missing


@dataclass
class Collection:
    """Everything one source gathered about one organization, before any judgement."""

    source: Literal["live", "evidence"]
    origin: str
    collected_at: dt.datetime
    exchange: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    certificates: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    exchange_online: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    sharepoint: dict[str, list[PSRecord] | Missing] = field(default_factory=dict)
    tenants: dict[str, TenantDocuments] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Things the report must say about the collection (TLS verification off, ...)."""
    probes: dict[str, Any] = field(default_factory=dict)
    """Results of the opt-in live probes (--connectivity), by probe key; a `Missing` if it failed."""


@dataclass(frozen=True)
class MetadataDocument:
    """An STS metadata document as fetched now (--connectivity): whom it names, what it signs with."""

    url: str
    tenant: str | None
    """The tenant it names: evoSTS ``entityID`` https://sts.windows.net/<tenant>/, ACS ``realm``."""
    signing_keys: tuple[str, ...]
    """Base64 DER of the signing certificates it publishes."""


@dataclass(frozen=True)
class ConnectivityResult:
    """What Test-OAuthConnectivity reported."""

    result_type: str
    detail: str

    @property
    def succeeded(self) -> bool:
        # S0: "The SMTP address has no mailbox associated with it." is expected and ignored.
        return (
            self.result_type.lower() == "success"
            or "the smtp address has no mailbox associated with it" in self.detail.lower()
        )


# -- Exchange --------------------------------------------------------------------------
_VERSION_TEXT = re.compile(r"Version (\d+)\.(\d+) \(Build (\d+)\.(\d+)\)")

Version = tuple[int, int, int, int]
EXCHANGE_2013_SP1: Version = (15, 0, 847, 32)
EXCHANGE_2016_CU18: Version = (15, 1, 2106, 2)
EXCHANGE_2019_CU7: Version = (15, 2, 721, 2)
EXCHANGE_2019_CU14_APR24HU: Version = (15, 2, 1544, 11)


def version_text(version: Version) -> str:
    return ".".join(str(part) for part in version)


def parse_version(value: Any) -> Version | None:
    """AdminDisplayVersion as a record (Major/Minor/Build/Revision) or its text."""
    if isinstance(value, PSRecord):
        parts = [value.get(name) for name in ("Major", "Minor", "Build", "Revision")]
        if all(isinstance(part, int) for part in parts):
            return (parts[0], parts[1], parts[2], parts[3])  # type: ignore[return-value]
        value = value.text
    if isinstance(value, str):
        match = _VERSION_TEXT.search(value)
        if match:
            major, minor, build, revision = (int(group) for group in match.groups())
            return (major, minor, build, revision)
    return None


def product_name(version: Version | None) -> str:
    if version is None:
        return "unknown version"
    major, minor, build, _ = version
    if major == 15 and minor == 2 and build >= 2562:
        return "Exchange Server SE"
    names = {(15, 2): "Exchange 2019", (15, 1): "Exchange 2016", (15, 0): "Exchange 2013", (14, 3): "Exchange 2010"}
    return f"{names.get((major, minor), 'Exchange')} ({version_text(version)})"


@dataclass(frozen=True)
class ExchangeServer:
    name: str
    fqdn: str | None
    version: Version | None
    roles: frozenset[str]
    is_mailbox: bool
    is_client_access: bool
    is_edge: bool

    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "Name",
        "Fqdn",
        "AdminDisplayVersion",
        "ServerRole",
        "IsMailboxServer",
        "IsClientAccessServer",
        "IsEdgeServer",
    )
    """Every property `from_record` reads: all the live source asks Exchange to send (see PROJECTIONS there)."""

    def __str__(self) -> str:
        return self.name

    @property
    def product(self) -> str:
        return product_name(self.version)

    def at_least(self, version: Version) -> bool:
        return self.version is not None and self.version >= version

    @property
    def is_2013_or_later(self) -> bool:
        return self.at_least((15, 0, 0, 0))

    @property
    def holds_auth_certificate(self) -> bool:
        """Exchange 2013+ Mailbox/Client Access servers sign and validate OAuth tokens."""
        return self.is_2013_or_later and (self.is_mailbox or self.is_client_access) and not self.is_edge

    @classmethod
    def from_record(cls, record: PSRecord) -> ExchangeServer:
        roles = frozenset(
            role.strip() for role in (record.text_of("ServerRole") or "").split(",") if role.strip() and role != "None"
        )
        version = parse_version(record.get("AdminDisplayVersion"))
        is_mailbox = bool(record.get("IsMailboxServer")) or "Mailbox" in roles
        # From Exchange 2016 the Mailbox role includes the Client Access services.
        is_client_access = (
            bool(record.get("IsClientAccessServer"))
            or "ClientAccess" in roles
            or (is_mailbox and version is not None and version >= (15, 1, 0, 0))
        )
        return cls(
            name=_required_text(record, "Name"),
            fqdn=record.text_of("Fqdn"),
            version=version,
            roles=roles,
            is_mailbox=is_mailbox,
            is_client_access=is_client_access,
            is_edge=bool(record.get("IsEdgeServer")) or "Edge" in roles,
        )


VirtualDirectoryKind = Literal["MAPI", "EWS", "OAB", "Autodiscover", "ActiveSync", "OWA", "ECP"]

VIRTUAL_DIRECTORY_CMDLETS: dict[VirtualDirectoryKind, str] = {
    "MAPI": "Get-MapiVirtualDirectory",
    "EWS": "Get-WebServicesVirtualDirectory",
    "OAB": "Get-OabVirtualDirectory",
    "Autodiscover": "Get-AutodiscoverVirtualDirectory",
    "ActiveSync": "Get-ActiveSyncVirtualDirectory",
    "OWA": "Get-OwaVirtualDirectory",
    "ECP": "Get-EcpVirtualDirectory",
}
HMA_VIRTUAL_DIRECTORIES: tuple[VirtualDirectoryKind, ...] = ("MAPI", "EWS", "OAB", "Autodiscover", "ActiveSync")

# The boolean flags of OWA/ECP and the AuthenticationMethod names that stand for them.
# Collected with -ADPropertiesOnly the flags can be false while the lists hold the
# method (see shared/real-clixml/README.md), so a method counts as on if either says so.
AUTHENTICATION_FLAGS = {
    "Adfs": "AdfsAuthentication",
    "Basic": "BasicAuthentication",
    "Fba": "FormsAuthentication",
    "Digest": "DigestAuthentication",
    "OAuth": "OAuthAuthentication",
    "WSSecurity": "WSSecurityAuthentication",
    "WindowsIntegrated": "WindowsAuthentication",
}


EXCHANGE_CERTIFICATE_PROPERTIES = ("RawData",)
"""What is read of Get-ExchangeCertificate's objects: everything else is parsed from the DER."""


@dataclass(frozen=True)
class VirtualDirectory:
    kind: VirtualDirectoryKind
    server: str
    name: str
    identity: str
    internal_url: str | None
    external_url: str | None
    internal_authentication: tuple[str, ...]
    external_authentication: tuple[str, ...]
    iis_authentication: tuple[str, ...] | None
    """None when collected with -ADPropertiesOnly (IIS was not asked)."""
    flags: dict[str, bool]

    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "Identity",  # <server>\\<name>: the Server property (another ADObjectId, a kilobyte) is not asked
        "Name",
        "InternalUrl",
        "ExternalUrl",
        "InternalAuthenticationMethods",
        "ExternalAuthenticationMethods",
        "IISAuthenticationMethods",
        *AUTHENTICATION_FLAGS.values(),
    )
    """What the live source asks of the seven kinds (a kind without a flag sends it empty): what
    `from_record` reads, but Server, which it takes from the Identity when absent."""

    def __str__(self) -> str:
        return f"{self.server}/{self.kind}"

    @property
    def cmdlet_noun(self) -> str:
        return VIRTUAL_DIRECTORY_CMDLETS[self.kind].removeprefix("Get-")

    @property
    def urls(self) -> list[str]:
        return [url for url in (self.internal_url, self.external_url) if url]

    def has_method(self, method: str) -> bool:
        """Whether an authentication method is on, from the lists or the boolean flag."""
        lists = (self.internal_authentication, self.external_authentication, self.iis_authentication or ())
        flag = AUTHENTICATION_FLAGS.get(method)
        return any(method.lower() == item.lower() for items in lists for item in items) or bool(
            flag and self.flags.get(flag)
        )

    @classmethod
    def from_record(cls, kind: VirtualDirectoryKind, record: PSRecord) -> VirtualDirectory:
        identity = record.text_of("Identity") or ""
        server = record.text_of("Server") or identity.partition("\\")[0]
        # Collected with -ADPropertiesOnly, IIS is not asked and the list comes back empty: not "no method".
        iis = record.list_of("IISAuthenticationMethods") or None
        return cls(
            kind=kind,
            server=server,
            name=record.text_of("Name") or identity,
            identity=identity or f"{server}\\{record.text_of('Name')}",
            internal_url=record.text_of("InternalUrl"),
            external_url=record.text_of("ExternalUrl"),
            internal_authentication=tuple(str(item) for item in record.list_of("InternalAuthenticationMethods")),
            external_authentication=tuple(str(item) for item in record.list_of("ExternalAuthenticationMethods")),
            iis_authentication=None
            if iis is None
            else tuple(str(item) for item in record.list_of("IISAuthenticationMethods")),
            # A flag the kind does not have is absent from a whole object and empty in a projected one.
            flags={flag: bool(record[flag]) for flag in AUTHENTICATION_FLAGS.values() if record.get(flag) is not None},
        )


@dataclass(frozen=True)
class AuthServer:
    name: str
    type: str
    realm: str | None
    auth_metadata_url: str | None
    enabled: bool
    is_default_authorization_endpoint: bool
    application_identifier: str | None
    domain_names: tuple[str, ...]
    certificate_strings: tuple[str, ...]

    def __str__(self) -> str:
        return self.name

    @property
    def is_evosts(self) -> bool:
        return self.type == "AzureAD"

    @property
    def is_acs(self) -> bool:
        return self.type == "MicrosoftACS"

    @classmethod
    def from_record(cls, record: PSRecord) -> AuthServer:
        return cls(
            name=_required_text(record, "Name"),
            type=record.text_of("Type") or "",
            realm=record.text_of("Realm"),
            auth_metadata_url=record.text_of("AuthMetadataUrl"),
            enabled=bool(record.get("Enabled")),
            is_default_authorization_endpoint=bool(record.get("IsDefaultAuthorizationEndpoint")),
            application_identifier=record.text_of("ApplicationIdentifier"),
            domain_names=tuple(str(item) for item in record.list_of("DomainName")),
            certificate_strings=tuple(str(item) for item in record.list_of("CertificateStrings")),
        )


@dataclass(frozen=True)
class PartnerApplication:
    name: str
    application_identifier: str
    realm: str | None
    enabled: bool
    auth_metadata_url: str | None
    use_auth_server: bool
    linked_account: str | None

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_record(cls, record: PSRecord) -> PartnerApplication:
        return cls(
            name=_required_text(record, "Name"),
            application_identifier=(record.text_of("ApplicationIdentifier") or "").lower(),
            realm=record.text_of("Realm"),
            enabled=bool(record.get("Enabled")),
            auth_metadata_url=record.text_of("AuthMetadataUrl"),
            use_auth_server=bool(record.get("UseAuthServer")),
            linked_account=record.text_of("LinkedAccount"),
        )


@dataclass(frozen=True)
class AuthConfig:
    current_thumbprint: str | None
    next_thumbprint: str | None
    next_effective_date: dt.datetime | None
    previous_thumbprint: str | None

    @classmethod
    def from_record(cls, record: PSRecord) -> AuthConfig:
        def thumb(name: str) -> str | None:
            value = record.text_of(name)
            return value.strip().upper() if value else None

        effective = record.get("NextCertificateEffectiveDate")
        return cls(
            current_thumbprint=thumb("CurrentCertificateThumbprint"),
            next_thumbprint=thumb("NextCertificateThumbprint"),
            next_effective_date=effective if isinstance(effective, dt.datetime) else None,
            previous_thumbprint=thumb("PreviousCertificateThumbprint"),
        )


@dataclass(frozen=True)
class IntraOrganizationConnector:
    name: str
    enabled: bool
    target_address_domains: tuple[str, ...]
    discovery_endpoint: str | None

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_record(cls, record: PSRecord) -> IntraOrganizationConnector:
        return cls(
            name=_required_text(record, "Name"),
            enabled=bool(record.get("Enabled")),
            target_address_domains=tuple(str(item).lower() for item in record.list_of("TargetAddressDomains")),
            discovery_endpoint=record.text_of("DiscoveryEndpoint"),
        )


@dataclass(frozen=True)
class AvailabilityAddressSpace:
    name: str
    forest_name: str | None
    access_method: str | None
    use_service_account: bool
    proxy_url: str | None

    @classmethod
    def from_record(cls, record: PSRecord) -> AvailabilityAddressSpace:
        return cls(
            name=record.text_of("Name") or record.text_of("Identity") or "",
            forest_name=record.text_of("ForestName"),
            access_method=record.text_of("AccessMethod"),
            use_service_account=bool(record.get("UseServiceAccount")),
            proxy_url=record.text_of("ProxyUrl"),
        )


@dataclass(frozen=True)
class SettingOverride:
    name: str
    component: str
    section: str
    parameters: tuple[str, ...]
    server: tuple[str, ...]

    def __str__(self) -> str:
        return self.name

    def parameter(self, name: str) -> str | None:
        for item in self.parameters:
            key, _, value = item.partition("=")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def enabled(self) -> bool | None:
        value = self.parameter("Enabled")
        return None if value is None else value.lower() == "true"

    def matches(self, component: str, section: str) -> bool:
        return self.component.lower() == component.lower() and self.section.lower() == section.lower()

    @classmethod
    def from_record(cls, record: PSRecord) -> SettingOverride:
        return cls(
            name=_required_text(record, "Name"),
            component=record.text_of("ComponentName") or "",
            section=record.text_of("SectionName") or "",
            parameters=tuple(str(item) for item in record.list_of("Parameters")),
            server=tuple(str(item) for item in record.list_of("Server")),
        )


@dataclass(frozen=True)
class ClientAccessService:
    name: str
    autodiscover_internal_uri: str | None

    PROPERTIES: ClassVar[tuple[str, ...]] = ("Name", "AutoDiscoverServiceInternalUri")
    """What `from_record` reads (Select-Object matches names case-insensitively, so one spelling)."""

    @classmethod
    def from_record(cls, record: PSRecord) -> ClientAccessService:
        return cls(
            name=_required_text(record, "Name"),
            autodiscover_internal_uri=record.text_of("AutoDiscoverServiceInternalUri")
            or record.text_of("AutodiscoverServiceInternalUri"),
        )


@dataclass(frozen=True)
class AcceptedDomain:
    domain_name: str
    default: bool
    domain_type: str | None

    @classmethod
    def from_record(cls, record: PSRecord) -> AcceptedDomain:
        return cls(
            domain_name=(record.text_of("DomainName") or record.text_of("Name") or "").lower(),
            default=bool(record.get("Default")),
            domain_type=record.text_of("DomainType"),
        )


@dataclass(frozen=True)
class Account:
    """A User or MailUser: the application accounts partner applications act as."""

    name: str
    identity: str
    external_email_address: str | None
    hidden_from_address_lists: bool
    enabled: bool | None

    def known_as(self, reference: str | None) -> bool:
        if not reference:
            return False
        reference = reference.lower()
        return reference in (self.name.lower(), self.identity.lower()) or self.identity.lower().endswith(
            "/" + reference
        )

    @classmethod
    def from_record(cls, record: PSRecord) -> Account:
        external = record.text_of("ExternalEmailAddress")
        return cls(
            name=_required_text(record, "Name"),
            identity=record.text_of("Identity") or record.text_of("Name") or "",
            external_email_address=external.removeprefix("SMTP:").removeprefix("smtp:") if external else None,
            hidden_from_address_lists=bool(record.get("HiddenFromAddressListsEnabled")),
            enabled=record.get("AccountDisabled") is False if "AccountDisabled" in record else None,
        )


@dataclass(frozen=True)
class RoleAssignment:
    role: str
    assignee: str
    enabled: bool

    @classmethod
    def from_record(cls, record: PSRecord) -> RoleAssignment:
        return cls(
            role=record.text_of("Role") or "",
            assignee=record.text_of("RoleAssigneeName") or record.text_of("RoleAssignee") or "",
            enabled=record.get("Enabled") is not False,
        )


@dataclass(frozen=True)
class OrganizationConfig:
    name: str
    guid: str | None
    oauth2_client_profile_enabled: bool
    enable_download_domains: bool

    @classmethod
    def from_record(cls, record: PSRecord) -> OrganizationConfig:
        return cls(
            name=record.text_of("Name") or "",
            guid=record.text_of("Guid"),
            oauth2_client_profile_enabled=bool(record.get("OAuth2ClientProfileEnabled")),
            enable_download_domains=bool(record.get("EnableDownloadDomains")),
        )


@dataclass(frozen=True)
class ServerCertificates:
    server: str
    certificates: tuple[Certificate, ...]

    def find(self, thumbprint: str | None) -> Certificate | None:
        if not thumbprint:
            return None
        return next((cert for cert in self.certificates if cert.thumbprint == thumbprint.upper()), None)


# -- SharePoint ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustedIssuer:
    name: str
    registered_issuer_name: str | None
    is_self_issuer: bool
    metadata_endpoint: str | None

    @classmethod
    def from_record(cls, record: PSRecord) -> TrustedIssuer:
        return cls(
            name=record.text_of("Name") or "",
            registered_issuer_name=record.text_of("RegisteredIssuerName"),
            is_self_issuer=bool(record.get("IsSelfIssuer")),
            metadata_endpoint=record.text_of("MetadataEndPoint") or record.text_of("MetadataEndpoint"),
        )


@dataclass(frozen=True)
class ServiceApplicationProxy:
    name: str
    type_names: tuple[str, ...]
    metadata_endpoint_uri: str | None
    in_default_proxy_group: bool | None
    """None: not noted (an export of plain Get-SPServiceApplicationProxy); a proxy does not know its groups."""

    @property
    def is_acs(self) -> bool:
        return any("AzureAccessControlServiceApplicationProxy" in name for name in self.type_names) or (
            "Azure Access Control" in (self.name or "")
        )

    @classmethod
    def from_record(cls, record: PSRecord) -> ServiceApplicationProxy:
        return cls(
            name=record.text_of("DisplayName") or record.text_of("Name") or record.text or "",
            type_names=record.type_names + tuple(filter(None, [record.text_of("TypeName")])),
            metadata_endpoint_uri=record.text_of("MetadataEndpointUri"),
            in_default_proxy_group=membership
            if isinstance(membership := record.get("InDefaultProxyGroup"), bool)
            else None,
        )


@dataclass(frozen=True)
class AppPrincipal:
    name_identifier: str
    display_name: str | None
    site: str | None

    @classmethod
    def from_record(cls, record: PSRecord) -> AppPrincipal:
        return cls(
            name_identifier=(record.text_of("NameIdentifier") or "").lower(),
            display_name=record.text_of("DisplayName"),
            site=record.text_of("Site") or record.text_of("SiteUrl"),
        )


@dataclass(frozen=True)
class SecurityTokenServiceConfig:
    allow_oauth_over_http: bool
    signing_certificate: Certificate | None
    web_application_url: str | None

    @classmethod
    def from_record(cls, record: PSRecord) -> SecurityTokenServiceConfig:
        raw = record.get("SigningCertificateRawData")
        return cls(
            allow_oauth_over_http=bool(record.get("AllowOAuthOverHttp")),
            signing_certificate=Certificate.from_der(raw) if isinstance(raw, bytes) else None,
            web_application_url=record.text_of("WebApplicationUrl"),
        )


@dataclass(frozen=True)
class AuthenticationProvider:
    web_application: str
    zone: str
    use_windows_integrated: bool
    disable_kerberos: bool

    def __str__(self) -> str:
        return f"{self.web_application} ({self.zone})"

    @classmethod
    def from_record(cls, record: PSRecord) -> AuthenticationProvider:
        return cls(
            web_application=record.text_of("WebApplicationUrl") or "",
            zone=record.text_of("Zone") or "Default",
            use_windows_integrated=bool(record.get("UseWindowsIntegratedAuthentication")),
            disable_kerberos=bool(record.get("DisableKerberos")),
        )


# -- Entra ID --------------------------------------------------------------------------
def _graph_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class KeyCredential:
    key_id: str | None
    type: str | None
    usage: str | None
    display_name: str | None
    start: dt.datetime | None
    end: dt.datetime | None
    custom_key_identifier: str | None
    key: bytes | None = field(repr=False)

    @property
    def thumbprint(self) -> str | None:
        """The certificate this credential names: SHA-1 of `key` when present, else customKeyIdentifier."""
        if self.key:
            from hybridtrust.certificates import thumbprint

            return thumbprint(self.key)
        return decode_key_identifier(self.custom_key_identifier)

    def names(self, thumbprint: str) -> bool:
        return self.thumbprint == thumbprint.upper()

    def is_verify_certificate(self) -> bool:
        return (self.type or "").lower() == "asymmetricx509cert" and (self.usage or "").lower() == "verify"

    def expired(self, now: dt.datetime) -> bool:
        return self.end is not None and self.end <= now

    def describe(self) -> str:
        end = f", ends {self.end:%Y-%m-%d}" if self.end else ""
        return f"{self.thumbprint or '?'} ({self.type}/{self.usage}{end})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyCredential:
        import base64

        key = data.get("key")
        return cls(
            key_id=data.get("keyId"),
            type=data.get("type"),
            usage=data.get("usage"),
            display_name=data.get("displayName"),
            start=_graph_time(data.get("startDateTime")),
            end=_graph_time(data.get("endDateTime")),
            custom_key_identifier=data.get("customKeyIdentifier"),
            key=base64.b64decode(key) if key else None,
        )


@dataclass(frozen=True)
class ServicePrincipal:
    id: str
    app_id: str
    display_name: str | None
    service_principal_names: tuple[str, ...]
    reply_urls: tuple[str, ...]
    key_credentials: tuple[KeyCredential, ...]

    def __str__(self) -> str:
        return f"{self.display_name or self.app_id} ({self.app_id})"

    # Indexes: a large tenant's principal has hundreds of names and is asked once per host.
    @cached_property
    def _https_roots(self) -> frozenset[str]:
        return frozenset(host for spn in self.service_principal_names if (host := https_root_host(spn)))

    @cached_property
    def _authorities(self) -> dict[str, frozenset[str]]:
        return {}

    def names_https_root(self, host: str) -> bool:
        """Whether ``https://<host>/`` is one of the names (HMA-SPN-URLS)."""
        return host.lower() in self._https_roots

    @cached_property
    def _reply_urls(self) -> frozenset[str]:
        return frozenset(normal for url in self.reply_urls if (normal := normalise_url(url)))

    def lists_reply_url(self, url: str) -> bool:
        """Whether a URL is a reply URL (the rules of `matching.url_is_listed`), from an index: OWA-REPLY-URLS
        asks once per OWA/ECP URL, and a large organization has hundreds of both."""
        wanted = normalise_url(url)
        return wanted is not None and wanted in self._reply_urls

    def registers_authority(self, app_id: str, host: str) -> bool:
        """Whether the names register a host for an application: ``<appId>/<host>``, a one-label
        wildcard ``<appId>/*.<parent>``, or ``https://<host>/`` (EXO-SPN-AUTHORITIES)."""
        host = host.lower().rstrip(".")
        if self.names_https_root(host):
            return True
        key = app_id.lower()
        if key not in self._authorities:
            self._authorities[key] = frozenset(
                authority for spn in self.service_principal_names if (authority := authority_of(spn, key))
            )
        authorities = self._authorities[key]
        _, dot, parent = host.partition(".")
        return host in authorities or (bool(dot) and f"*.{parent}" in authorities)

    def verify_credential_for(self, thumbprint: str) -> KeyCredential | None:
        matches = [cred for cred in self.key_credentials if cred.names(thumbprint)]
        return next((cred for cred in matches if cred.is_verify_certificate()), matches[0] if matches else None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServicePrincipal:
        return cls(
            id=data.get("id") or "",
            app_id=(data.get("appId") or "").lower(),
            display_name=data.get("displayName"),
            service_principal_names=tuple(data.get("servicePrincipalNames") or ()),
            reply_urls=tuple(data.get("replyUrls") or ()),
            key_credentials=tuple(KeyCredential.from_json(item) for item in data.get("keyCredentials") or ()),
        )


@dataclass(frozen=True)
class Application:
    id: str
    app_id: str
    display_name: str | None
    key_credentials: tuple[KeyCredential, ...]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.app_id})"

    def verify_credential_for(self, thumbprint: str) -> KeyCredential | None:
        return next((cred for cred in self.key_credentials if cred.names(thumbprint)), None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Application:
        return cls(
            id=data.get("id") or "",
            app_id=(data.get("appId") or "").lower(),
            display_name=data.get("displayName"),
            key_credentials=tuple(KeyCredential.from_json(item) for item in data.get("keyCredentials") or ()),
        )


@dataclass(frozen=True)
class Domain:
    name: str
    is_verified: bool
    is_initial: bool
    is_default: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Domain:
        return cls(
            name=(data.get("id") or "").lower(),
            is_verified=bool(data.get("isVerified")),
            is_initial=bool(data.get("isInitial")),
            is_default=bool(data.get("isDefault")),
        )


class Tenant:
    """One Entra ID tenant of the profile, with its Graph documents turned into facts."""

    def __init__(self, tenant_id: str, initial_domain: str, cloud: Cloud, documents: TenantDocuments | None) -> None:
        self.id = tenant_id.lower()
        self.profile_initial_domain = initial_domain.lower()
        self.cloud = cloud
        self._documents = documents
        self.label = self.profile_initial_domain.split(".")[0]
        self._principals: dict[str, ServicePrincipal | None] = {}

    def __str__(self) -> str:
        return f"{self.label} ({self.id})"

    __repr__ = __str__

    def _document(self, name: str, value: Any) -> Any:
        if self._documents is None:
            raise NotCollected(Missing(f"entra:{name}", f"not collected: Entra ID tenant {self.id} was not read"))
        if isinstance(value, Missing):
            raise NotCollected(value)
        return value

    @cached_property
    def domains(self) -> tuple[Domain, ...]:
        document = self._document("domains", self._documents and self._documents.domains)
        return tuple(Domain.from_json(item) for item in document.get("value", []))

    @property
    def verified_domains(self) -> list[str]:
        return [domain.name for domain in self.domains if domain.is_verified]

    @property
    def initial_domain(self) -> str:
        initial = next((domain.name for domain in self.domains if domain.is_initial), None)
        return initial or self.profile_initial_domain

    @property
    def coexistence_domain(self) -> str | None:
        """`<name>.mail.onmicrosoft.com` (or the sovereign equivalent), taken from Graph's domains."""
        for domain in self.domains:
            if self.cloud.coexistence_suffix and domain.name.endswith("." + self.cloud.coexistence_suffix):
                return domain.name
            if self.cloud.coexistence_suffix is None and ".mail." in domain.name and domain.name.endswith(".cn"):
                return domain.name
        return None

    def names_domain(self, domain_or_id: str) -> bool:
        """Whether a domain or id in a URL names this tenant (its id or a verified domain)."""
        value = domain_or_id.lower()
        return value == self.id or value in self.verified_domains

    def has_service_principal(self, app_id: str) -> bool:
        return self.service_principal_or_none(app_id) is not None

    def service_principal_or_none(self, app_id: str) -> ServicePrincipal | None:
        if self._documents is None:
            raise NotCollected(Missing(f"entra:servicePrincipals/{app_id}", f"not collected: tenant {self.id}"))
        document = self._documents.service_principals.get(
            app_id,
            Missing(
                f"entra:servicePrincipals/{app_id}",
                f"not collected: entra/{self.id}/servicePrincipals/{app_id}.json",
            ),
        )
        if isinstance(document, Missing):
            raise NotCollected(document)
        if app_id not in self._principals:
            self._principals[app_id] = None if document is None else ServicePrincipal.from_json(document)
        return self._principals[app_id]

    def service_principal(self, app_id: str) -> ServicePrincipal:
        principal = self.service_principal_or_none(app_id)
        if principal is None:
            raise NotCollected(
                Missing(
                    f"entra:servicePrincipals/{app_id}",
                    f"tenant {self.id} has no service principal {app_id}: the first-party application is not "
                    "provisioned (or the audit identity cannot read it)",
                )
            )
        return principal

    @cached_property
    def applications(self) -> tuple[Application, ...]:
        document = self._document("applications", self._documents and self._documents.applications)
        return tuple(Application.from_json(item) for item in document.get("value", []))

    def application(self, app_id: str | None) -> Application | None:
        if not app_id:
            return None
        return next((app for app in self.applications if app.app_id == app_id.lower()), None)

    def missing(self, needs: Iterable[str]) -> list[Missing]:
        """Which of a requirement's Entra documents were not collected for this tenant."""
        found: list[Missing] = []
        for need in needs:
            if not need.startswith("entra:"):
                continue
            try:
                if need == "entra:domains":
                    _ = self.domains
                elif need == "entra:applications":
                    _ = self.applications
                elif need == "entra:organization":
                    self._document("organization", self._documents and self._documents.organization)
                elif need.startswith("entra:servicePrincipals/"):
                    self.service_principal_or_none(need.rsplit("/", 1)[1])
            except NotCollected as error:
                found.extend(error.missing)
        return found


# -- the organization ---------------------------------------------------------------------
def _required_text(record: PSRecord, name: str) -> str:
    value = record.text_of(name)
    if not value:
        raise ValueError(f"{record.text or record.type_names[:1]}: property {name!r} is empty")
    return value


def host_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    return host.lower() if host else None


class Organization:
    """The facts of one organization (one profile), built lazily from a `Collection`.

    Every property raises `NotCollected` when its documents are missing; nothing
    here ever substitutes an empty list for data that was not collected.
    """

    def __init__(self, profile: Profile, collection: Collection, cloud: Cloud, tenants: list[Tenant]) -> None:
        self.profile = profile
        self.profile_name = profile.name
        self.collection = collection
        self.cloud = cloud
        self.tenants = tenants
        self.now = collection.collected_at

    def __str__(self) -> str:
        return self.profile_name

    def __repr__(self) -> str:
        return f"<organization of profile {self.profile_name}>"

    # -- raw access ----------------------------------------------------------------
    def _records(self, area: str, cmdlet: str) -> list[PSRecord]:
        store: dict[str, list[PSRecord] | Missing] = getattr(self.collection, area.replace("-", "_"))
        documents = store.get(cmdlet)
        if documents is None:
            documents = Missing(f"{area}:{cmdlet}", f"not collected: {area}/{cmdlet}.xml")
        if isinstance(documents, Missing):
            raise NotCollected(documents)
        return documents

    def exchange_records(self, cmdlet: str) -> list[PSRecord]:
        return self._records("exchange", cmdlet)

    def _parse(self, area: str, cmdlet: str, parse: Any) -> tuple[Any, ...]:
        records = self._records(area, cmdlet)
        try:
            return tuple(parse(record) for record in records)
        except (ValueError, TypeError, KeyError) as error:
            raise NotCollected(
                Missing(f"{area}:{cmdlet}", f"{area}/{cmdlet}: an object cannot be read: {error}")
            ) from error

    def missing(self, needs: Iterable[str], tenant: Tenant | None = None, server: str | None = None) -> list[Missing]:
        """The documents among a requirement's needs that were not collected."""
        found: list[Missing] = []
        for need in needs:
            area, _, name = need.partition(":")
            if area == "entra":
                for candidate in [tenant] if tenant else self.tenants:
                    found.extend(candidate.missing([need]))
                continue
            if need == "exchange:Get-ExchangeCertificate":
                if server:
                    found.extend(self.missing_certificates([server]))
                else:
                    # An organization- or tenant-wide row needs the certificate from *a* server: one
                    # server that did not answer errs its own certificate test, not every row.
                    missing = self.missing_certificates(None)
                    if missing and len(missing) >= len(self._auth_certificate_server_names()):
                        found.extend(missing)
                continue
            store = getattr(self.collection, area.replace("-", "_"))
            value = store.get(name)
            if value is None:
                found.append(Missing(need, f"not collected: {area}/{name}.xml"))
            elif isinstance(value, Missing):
                found.append(value)
        return found

    def _auth_certificate_server_names(self) -> list[str]:
        try:
            return [server.name for server in self.auth_certificate_servers]
        except NotCollected:
            return []

    def missing_certificates(self, servers: list[str] | None) -> list[Missing]:
        names = servers
        if names is None:
            try:
                names = [server.name for server in self.servers if server.holds_auth_certificate]
            except NotCollected as error:
                return list(error.missing)
        found = []
        for name in names:
            value = self._certificate_documents(name)
            if isinstance(value, Missing):
                found.append(value)
        return found

    @cached_property
    def _certificates_by_server(self) -> dict[str, list[PSRecord] | Missing]:
        return {name.lower(): documents for name, documents in self.collection.certificates.items()}

    def _certificate_documents(self, server: str) -> list[PSRecord] | Missing:
        documents = self._certificates_by_server.get(server.lower())
        if documents is not None:
            return documents
        return Missing(
            f"exchange:Get-ExchangeCertificate/{server}",
            f"not collected: exchange/Get-ExchangeCertificate/{server}.xml",
        )

    # -- Exchange ---------------------------------------------------------------------
    @cached_property
    def servers(self) -> tuple[ExchangeServer, ...]:
        return self._parse("exchange", "Get-ExchangeServer", ExchangeServer.from_record)

    @cached_property
    def _servers_by_name(self) -> dict[str, ExchangeServer]:
        return {server.name.lower(): server for server in self.servers}

    def server(self, name: str) -> ExchangeServer | None:
        return self._servers_by_name.get(name.lower())

    def virtual_directories(self, *kinds: VirtualDirectoryKind) -> list[VirtualDirectory]:
        found: list[VirtualDirectory] = []
        for kind in kinds or tuple(VIRTUAL_DIRECTORY_CMDLETS):
            found.extend(self._virtual_directories(kind))
        return found

    def _virtual_directories(self, kind: VirtualDirectoryKind) -> tuple[VirtualDirectory, ...]:
        cache = self.__dict__.setdefault("_vdir_cache", {})
        if kind not in cache:
            cache[kind] = self._parse(
                "exchange", VIRTUAL_DIRECTORY_CMDLETS[kind], lambda record: VirtualDirectory.from_record(kind, record)
            )
        return cache[kind]

    @cached_property
    def auth_servers(self) -> tuple[AuthServer, ...]:
        return self._parse("exchange", "Get-AuthServer", AuthServer.from_record)

    @cached_property
    def partner_applications(self) -> tuple[PartnerApplication, ...]:
        return self._parse("exchange", "Get-PartnerApplication", PartnerApplication.from_record)

    @cached_property
    def auth_config(self) -> AuthConfig:
        configs = self._parse("exchange", "Get-AuthConfig", AuthConfig.from_record)
        if len(configs) != 1:
            raise NotCollected(
                Missing(
                    "exchange:Get-AuthConfig", f"exchange/Get-AuthConfig: expected one object, found {len(configs)}"
                )
            )
        return configs[0]

    def certificates_of(self, server: str) -> ServerCertificates:
        cache: dict[str, ServerCertificates] = self.__dict__.setdefault("_certificate_cache", {})
        if server.lower() not in cache:
            cache[server.lower()] = self._read_certificates(server)
        return cache[server.lower()]

    def _read_certificates(self, server: str) -> ServerCertificates:
        documents = self._certificate_documents(server)
        if isinstance(documents, Missing):
            raise NotCollected(documents)
        try:
            certificates = tuple(
                Certificate.from_der(record["RawData"]) for record in documents if record.get("RawData") is not None
            )
        except ValueError as error:
            raise NotCollected(
                Missing(
                    f"exchange:Get-ExchangeCertificate/{server}",
                    f"exchange/Get-ExchangeCertificate/{server}: a certificate's RawData is not DER: {error}",
                )
            ) from error
        return ServerCertificates(server, certificates)

    @cached_property
    def auth_certificate_servers(self) -> list[ExchangeServer]:
        """The servers that must hold the auth certificate (computed once: every server's test asks)."""
        return [server for server in self.servers if server.holds_auth_certificate]

    def auth_certificate(self, thumbprint: str | None = None) -> Certificate | None:
        """The auth certificate (current, or the one named) as found on any server."""
        thumbprint = thumbprint or self.auth_config.current_thumbprint
        if not thumbprint:
            return None
        # Every server's EXO-AUTHCERT and HMA-AUTHCERT asks for the same certificate: found once.
        found: dict[str, Certificate | None] = self.__dict__.setdefault("_auth_certificate_cache", {})
        if thumbprint.upper() not in found:
            found[thumbprint.upper()] = self._find_auth_certificate(thumbprint)
        return found[thumbprint.upper()]

    def _find_auth_certificate(self, thumbprint: str) -> Certificate | None:
        unread: list[Missing] = []
        for server in self.auth_certificate_servers:
            documents = self._certificate_documents(server.name)
            if isinstance(documents, Missing):
                unread.append(documents)
                continue
            found = self.certificates_of(server.name).find(thumbprint)
            if found:
                return found
        if unread:
            # Not on any server that answered: it may be on one that did not. Unknown, not absent.
            raise NotCollected(*unread)
        return None

    @cached_property
    def organization_config(self) -> OrganizationConfig:
        configs = self._parse("exchange", "Get-OrganizationConfig", OrganizationConfig.from_record)
        if not configs:
            raise NotCollected(Missing("exchange:Get-OrganizationConfig", "exchange/Get-OrganizationConfig: no object"))
        return configs[0]

    @cached_property
    def intra_organization_connectors(self) -> tuple[IntraOrganizationConnector, ...]:
        return self._parse("exchange", "Get-IntraOrganizationConnector", IntraOrganizationConnector.from_record)

    @cached_property
    def cloud_intra_organization_connectors(self) -> tuple[IntraOrganizationConnector, ...]:
        return self._parse("exchange-online", "Get-IntraOrganizationConnector", IntraOrganizationConnector.from_record)

    @cached_property
    def availability_address_spaces(self) -> tuple[AvailabilityAddressSpace, ...]:
        return self._parse("exchange", "Get-AvailabilityAddressSpace", AvailabilityAddressSpace.from_record)

    @cached_property
    def setting_overrides(self) -> tuple[SettingOverride, ...]:
        return self._parse("exchange", "Get-SettingOverride", SettingOverride.from_record)

    def overrides(self, component: str, section: str) -> list[SettingOverride]:
        return [override for override in self.setting_overrides if override.matches(component, section)]

    @cached_property
    def client_access_services(self) -> tuple[ClientAccessService, ...]:
        return self._parse("exchange", "Get-ClientAccessService", ClientAccessService.from_record)

    @cached_property
    def accepted_domains(self) -> tuple[AcceptedDomain, ...]:
        return self._parse("exchange", "Get-AcceptedDomain", AcceptedDomain.from_record)

    @cached_property
    def users(self) -> tuple[Account, ...]:
        return self._parse("exchange", "Get-User", Account.from_record)

    @cached_property
    def mail_users(self) -> tuple[Account, ...]:
        return self._parse("exchange", "Get-MailUser", Account.from_record)

    @cached_property
    def role_assignments(self) -> tuple[RoleAssignment, ...]:
        return self._parse("exchange", "Get-ManagementRoleAssignment", RoleAssignment.from_record)

    def roles_of(self, account: Account) -> set[str]:
        return {
            assignment.role
            for assignment in self.role_assignments
            if assignment.enabled and account.known_as(assignment.assignee)
        }

    def partner_application(self, app_id: str) -> PartnerApplication | None:
        return next(
            (app for app in self.partner_applications if app.application_identifier == app_id and not app.realm),
            None,
        )

    # The accounts the partner applications act as (S0, S1): one lookup, shared by checks and fixes.
    @property
    def exchange_application_account_name(self) -> str:
        partner = self.partner_application(EXCHANGE_ONLINE_APP_ID)
        return partner.linked_account if partner and partner.linked_account else EXCHANGE_APPLICATION_ACCOUNT

    def exchange_application_account(self) -> Account | None:
        return next((u for u in self.users if u.known_as(self.exchange_application_account_name)), None)

    def skype_application_account(self) -> Account | None:
        return next((u for u in self.mail_users if u.known_as(SKYPE_APPLICATION_ACCOUNT)), None)

    @property
    def dedicated_hybrid_app_enabled(self) -> bool:
        """S5: the SettingOverride that switches Exchange to the dedicated hybrid application."""
        return any(override.enabled for override in self.overrides("Global", "ExchangeOnpremAsThirdPartyAppId"))

    def evosts_auth_servers(self) -> list[AuthServer]:
        return [server for server in self.auth_servers if server.is_evosts]

    def auth_servers_of(self, tenant: Tenant, kind: Literal["AzureAD", "MicrosoftACS"]) -> list[AuthServer]:
        """AuthServers of a type that belong to a tenant, by Realm or by the metadata URL's tenant segment."""
        found = []
        for server in self.auth_servers:
            if server.type != kind:
                continue
            if server.realm and server.realm.lower() == tenant.id:
                found.append(server)
                continue
            segment = metadata_tenant_segment(server.auth_metadata_url)
            if segment and tenant.names_domain(segment):
                found.append(server)
        return found

    @property
    def primary_tenant(self) -> Tenant:
        primary = self.profile.primary_tenant.id
        return next(tenant for tenant in self.tenants if tenant.id == primary)

    @property
    def smtp_domains(self) -> list[str]:
        return list(self.profile.organization.smtp_domains)

    # -- live probes (--connectivity) ------------------------------------------------------
    def _probe(self, key: str, what: str) -> Any:
        value = self.collection.probes.get(key)
        if value is None:
            value = Missing(f"probe:{key}", f"not probed: {what} (live runs with --connectivity only)")
        if isinstance(value, Missing):
            raise NotCollected(value)
        return value

    def metadata_document(self, url: str | None) -> MetadataDocument:
        """An STS metadata document as it is published now (fetched by the live probe)."""
        return self._probe(f"metadata:{url}", f"the metadata document {url}")

    def oauth_connectivity(self, tenant: Tenant) -> ConnectivityResult:
        return self._probe(f"oauth-connectivity:{tenant.id}", f"Test-OAuthConnectivity for tenant {tenant.id}")

    # -- SharePoint ---------------------------------------------------------------------
    @property
    def sharepoint_tenant(self) -> Tenant:
        """SharePoint Server is joined to one tenant: the primary one."""
        return self.primary_tenant

    @cached_property
    def sharepoint_realm(self) -> str | None:
        records = self._records("sharepoint", "Get-SPAuthenticationRealm")
        return (records[0].text or "").strip().lower() or None if records else None

    @cached_property
    def trusted_issuers(self) -> tuple[TrustedIssuer, ...]:
        return self._parse("sharepoint", "Get-SPTrustedSecurityTokenIssuer", TrustedIssuer.from_record)

    @cached_property
    def service_application_proxies(self) -> tuple[ServiceApplicationProxy, ...]:
        return self._parse("sharepoint", "Get-SPServiceApplicationProxy", ServiceApplicationProxy.from_record)

    @cached_property
    def app_principals(self) -> tuple[AppPrincipal, ...]:
        return self._parse("sharepoint", "Get-SPAppPrincipal", AppPrincipal.from_record)

    @cached_property
    def security_token_service(self) -> SecurityTokenServiceConfig:
        configs = self._parse(
            "sharepoint", "Get-HybridTrustSecurityTokenServiceConfig", SecurityTokenServiceConfig.from_record
        )
        if len(configs) != 1:
            raise NotCollected(
                Missing(
                    "sharepoint:Get-HybridTrustSecurityTokenServiceConfig",
                    f"sharepoint/Get-HybridTrustSecurityTokenServiceConfig: expected one object, found {len(configs)}",
                )
            )
        return configs[0]

    @cached_property
    def authentication_providers(self) -> tuple[AuthenticationProvider, ...]:
        return self._parse("sharepoint", "Get-HybridTrustAuthenticationProvider", AuthenticationProvider.from_record)


_METADATA_SEGMENT = re.compile(r"^https?://[^/]+/([^/]+)/", re.IGNORECASE)


def metadata_tenant_segment(url: str | None) -> str | None:
    """The domain or tenant id an STS metadata URL names (its first path segment)."""
    if not url:
        return None
    match = _METADATA_SEGMENT.match(url.strip())
    return match.group(1).lower() if match else None


def iter_unique(values: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for value in values:
        if value not in seen:
            seen.add(value)
            yield value
