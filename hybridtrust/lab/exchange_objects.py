"""Exchange and SharePoint objects as the products return them, built from lab state.

The lab state keeps each object as plain JSON in the product's vocabulary (see
`hybridtrust.lab.state`). This module is the "type table" that knows what
Exchange really sends for each property (an enum object with a ToString and an
I32, a multi-valued property of enums, a URI, a DateTime, an ADObjectId, a
ServerVersion, a certificate's RawData) and turns a state object into a psrpcore
`PSObject` with the same type names, property order and nesting as the real
cmdlet output. The shapes are taken from the Export-Clixml captures of real
Exchange 2016/2019 organizations in ``/work/shared/real-clixml``.

What is deliberately left out, and why:

- The binary ``SerializationData`` blobs Exchange attaches (``<MS><BA
  N="SerializationData">``): they are .NET BinaryFormatter streams no client
  reads, and a fabricated one would be a lie about the data.
- ``Deserialized.`` prefixes: Export-Clixml on the server writes the type names
  without it, and a PSRP client adds it itself when it deserializes.

`export_clixml` writes the text of an Export-Clixml file (PowerShell's element
order, two-space indentation, ``<S N="x"></S>`` for empty strings) from the same
objects, so an evidence bundle made by the lab reads exactly like one made by
``Get-AuthServer | Export-Clixml`` in the Exchange Management Shell.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from cryptography import x509
from psrpcore.types import (
    PSByte,
    PSCryptoProvider,
    PSCustomObject,
    PSDateTime,
    PSEnumBase,
    PSFlagBase,
    PSGuid,
    PSInt,
    PSInt64,
    PSList,
    PSNoteProperty,
    PSObject,
    PSType,
    PSUri,
    deserialize_clixml,
)
from psrpcore.types._enum import PSEnumMeta

# psrpcore's public serialize_clixml() shares one enum member between all the
# places it occurs (a <Ref> to the first), while PowerShell boxes every enum value
# anew. The serializer class is psrpcore's own; only the reference rule differs.
from psrpcore.types._serializer import _Serializer

from hybridtrust.lab.pki import thumbprint
from hybridtrust.lab.state import LabState

PS_NAMESPACE = "http://schemas.microsoft.com/powershell/2004/04"
UTF8_BOM = "\ufeff"

_D = "Microsoft.Exchange.Data"
_DD = "Microsoft.Exchange.Data.Directory"
_SC = "Microsoft.Exchange.Data.Directory.SystemConfiguration"
_MGMT = "Microsoft.Exchange.Data.Directory.Management"
_DIRECTORY_ASSEMBLY = (
    "Microsoft.Exchange.Data.Directory, Version=15.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35"
)
_DATA_ASSEMBLY = "Microsoft.Exchange.Data, Version=15.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35"
_MSCORLIB_STRING = "System.String, mscorlib, Version=4.0.0.0, Culture=neutral, PublicKeyToken=b77a5c561934e089"

AD_CONFIGURATION_OBJECT = [
    f"{_SC}.ADConfigurationObject",
    f"{_DD}.ADObject",
    f"{_DD}.ADRawEntry",
    f"{_D}.ConfigurableObject",
    "System.Object",
]
AD_PRESENTATION_OBJECT = [
    f"{_DD}.ADPresentationObject",
    f"{_D}.ConfigurableObject",
    "System.Object",
]


def _multi_valued(element_type: str, *, ad: bool) -> list[str]:
    names = [
        f"{_D}.MultiValuedProperty`1[[{element_type}]]",
        f"{_D}.MultiValuedPropertyBase",
        "System.Object",
    ]
    if ad:
        names.insert(0, f"{_DD}.ADMultiValuedProperty`1[[{element_type}]]")
    return names


STRING_LIST_TYPE = _multi_valued(_MSCORLIB_STRING, ad=False)


# -- .NET enums ---------------------------------------------------------------------------------------------

_enum_classes: dict[str, type[PSEnumBase] | type[PSFlagBase]] = {}


def dotnet_enum(type_name: str, members: Mapping[str, int], *, flags: bool = False, int64: bool = False) -> type:
    """A psrpcore enum class for a .NET enum, created once per type name.

    rehydrate=False: a lab running in the same process as the suite must not
    teach psrpcore's deserializer about Exchange types the real client never knows.
    """
    existing = _enum_classes.get(type_name)
    if existing is not None:
        return existing
    base: type = PSFlagBase if flags else PSEnumBase
    short = type_name.rsplit(".", 1)[-1]
    kwargs = {"base_type": PSInt64} if int64 else {}
    namespace = PSEnumMeta.__prepare__(short, (base,))
    for name, value in members.items():
        namespace[name] = value
    cls = PSEnumMeta(short, (base,), namespace, **kwargs)  # type: ignore[arg-type]
    cls = PSType([type_name], rehydrate=False)(cls)
    _enum_classes[type_name] = cls
    return cls


AuthenticationMethod = dotnet_enum(
    f"{_SC}.AuthenticationMethod",
    {
        "Basic": 0,
        "Digest": 1,
        "Ntlm": 2,
        "Fba": 3,
        "WindowsIntegrated": 4,
        "LiveIdFba": 5,
        "LiveIdBasic": 6,
        "WSSecurity": 7,
        "Certificate": 8,
        "NegoEx": 9,
        "OAuth": 10,
        "Adfs": 11,
        "Kerberos": 12,
        "Negotiate": 13,
        "LiveIdNegotiate": 14,
    },
)
ServerRole = dotnet_enum(
    f"{_SC}.ServerRole",
    {"None": 0, "Mailbox": 2, "ClientAccess": 4, "UnifiedMessaging": 16, "HubTransport": 32, "Edge": 64},
    flags=True,
)
ServerEditionType = dotnet_enum(
    f"{_D}.ServerEditionType",
    {"Unknown": 0, "Standard": 1, "StandardEvaluation": 2, "Enterprise": 3, "EnterpriseEvaluation": 4},
)
AuthServerType = dotnet_enum(
    f"{_SC}.AuthServerType",
    {"MicrosoftACS": 0, "Facebook": 1, "LinkedIn": 2, "ADFS": 3, "AzureAD": 4, "Unknown": 5},
)
AcceptedDomainType = dotnet_enum(
    f"{_SC}.AcceptedDomainType", {"Authoritative": 0, "ExternalRelay": 1, "InternalRelay": 2}
)
AvailabilityAccessMethod = dotnet_enum(
    f"{_SC}.AvailabilityAccessMethod",
    {"PerUserFB": 0, "OrgWideFB": 1, "PublicFolder": 2, "InternalProxy": 3, "OrgWideFBBasic": 4},
)
RecipientType = dotnet_enum(
    f"{_DD}.Recipient.RecipientType",
    {"Invalid": 0, "User": 1, "UserMailbox": 2, "MailUser": 3, "Contact": 4, "MailContact": 5},
)
RecipientTypeDetails = dotnet_enum(
    f"{_DD}.Recipient.RecipientTypeDetails",
    {
        "None": 0,
        "UserMailbox": 1,
        "SharedMailbox": 4,
        "MailContact": 64,
        "MailUser": 128,
        "User": 65536,
        "DisabledUser": 2097152,
    },
    int64=True,
)
RoleAssigneeType = dotnet_enum(
    f"{_DD}.SystemConfiguration.RoleAssigneeType",
    {"User": 0, "SecurityGroup": 2, "RoleAssignmentPolicy": 4, "ForeignSecurityPrincipal": 6, "RoleGroup": 10},
)
RoleAssignmentDelegationType = dotnet_enum(
    f"{_DD}.SystemConfiguration.RoleAssignmentDelegationType",
    {"Regular": 0, "DelegatingOrgWide": 1, "Delegating": 2},
)
AssignmentMethod = dotnet_enum(
    f"{_DD}.Management.AssignmentMethod",
    {"Direct": 0, "SecurityGroup": 1, "RoleAssignmentPolicy": 2, "RoleGroup": 3},
)
ObjectState = dotnet_enum(f"{_D}.ObjectState", {"New": 0, "Unchanged": 1, "Changed": 2, "Deleted": 3})
GzipLevel = dotnet_enum(f"{_SC}.GzipLevel", {"Off": 0, "Low": 1, "High": 2, "Error": 3})
ExtendedProtectionTokenCheckingMode = dotnet_enum(
    f"{_SC}.ExtendedProtectionTokenCheckingMode", {"None": 0, "Allow": 1, "Require": 2}
)
SPObjectStatus = dotnet_enum(
    "Microsoft.SharePoint.Administration.SPObjectStatus",
    {"Online": 0, "Disabled": 1, "Offline": 2, "Unprovisioning": 3, "Provisioning": 4, "Upgrading": 5},
)


def enum_value(enum_class: type, text: str) -> enum.Enum:
    """The member for a state value; flags accept PowerShell's "Mailbox, ClientAccess"."""
    if issubclass(enum_class, PSFlagBase):
        value = enum_class(0)
        for part in text.split(","):
            value |= enum_class[part.strip()]
        return value
    return enum_class[text]


# -- the directory context ADObjectIds are made from ---------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    """Where the organization lives in Active Directory (names in DNs and ObjectIds)."""

    organization_name: str
    ad_domain: str
    domain_controller: str
    partition_guid: str
    when_created: str

    @classmethod
    def of(cls, state: LabState) -> Directory:
        organization = state.document.get("organization", {})
        ad_domain = organization.get("AdDomain", "contoso.local")
        # Hashed only when the state has none: this runs for every command the lab answers.
        if "PartitionGuid" in organization:
            partition_guid = organization["PartitionGuid"]
        else:
            partition_guid = str(_stable_guid("partition", ad_domain))
        return cls(
            organization_name=organization.get("Name", "Contoso"),
            ad_domain=ad_domain,
            domain_controller=organization.get("DomainController", f"dc01.{ad_domain}"),
            partition_guid=partition_guid,
            when_created=organization.get("WhenCreated", "2019-03-04T10:12:45+00:00"),
        )

    @property
    def domain_dn(self) -> str:
        return ",".join(f"DC={part}" for part in self.ad_domain.split("."))

    @property
    def configuration_dn(self) -> str:
        return f"CN=Configuration,{self.domain_dn}"

    @property
    def exchange_dn(self) -> str:
        return f"CN={self.organization_name},CN=Microsoft Exchange,CN=Services,{self.configuration_dn}"

    def server_dn(self, server: str) -> str:
        return (
            f"CN={server},CN=Servers,CN=Exchange Administrative Group (FYDIBOHF23SPDLT),"
            f"CN=Administrative Groups,{self.exchange_dn}"
        )

    def canonical(self, dn: str) -> str:
        """``CN=x,CN=Users,DC=contoso,DC=local`` as ``contoso.local/Users/x``."""
        parts = [p.split("=", 1) for p in _split_dn(dn)]
        names = [value for key, value in reversed(parts) if key.upper() != "DC"]
        return "/".join([self.ad_domain, *names])


def _split_dn(dn: str) -> list[str]:
    return [part for part in re.split(r"(?<!\\),", dn) if part]


@functools.lru_cache(maxsize=4096)
def _stable_guid(*parts: str) -> uuid.UUID:
    # Cached: the same few names (schema classes, runspaces) are hashed for every object built.
    return uuid.UUID(bytes=hashlib.sha256("|".join(parts).encode()).digest()[:16], version=4)


# -- small constructors for Exchange value objects -------------------------------------------------------------


def ps_object(
    type_names: list[str],
    adapted: Iterable[tuple[str, Any]] = (),
    extended: Iterable[tuple[str, Any]] = (),
    to_string: str | None = None,
) -> PSObject:
    """A PSObject with the given .NET type names, Props (adapted) and MS (extended) properties."""
    obj = PSObject()
    obj.PSObject.type_names = list(type_names)
    obj.PSObject.adapted_properties = [PSNoteProperty(name, value) for name, value in adapted]
    obj.PSObject.extended_properties = [PSNoteProperty(name, value) for name, value in extended]
    if to_string is not None:
        obj.PSObject.to_string = to_string
    return obj


def ps_list(type_names: list[str], values: Iterable[Any]) -> PSList:
    items = PSList(values)
    items.PSObject.type_names = list(type_names)
    return items


def ad_object_id(
    directory: Directory,
    dn: str,
    to_string: str,
    object_guid: str | None = None,
    *,
    parent: str | None = None,
) -> PSObject:
    """An ADObjectId (Identity, Server, LinkedAccount, ...) the way Exchange serializes it."""
    parts = _split_dn(dn)
    rdn = parts[0]
    name = rdn.split("=", 1)[1]
    parent_name = parent if parent is not None else (parts[1].split("=", 1)[1] if len(parts) > 1 else "")
    return ps_object(
        [f"{_DD}.ADObjectId", f"{_D}.ObjectId", "System.Object"],
        [
            ("OrgHierarchyToIgnore", None),
            ("IsDeleted", False),
            ("Rdn", rdn),
            ("Parent", parent_name),
            ("Depth", PSInt(len(parts) - 1)),
            ("DistinguishedName", dn),
            ("IsRelativeDn", False),
            ("DomainId", directory.ad_domain),
            ("PartitionGuid", PSGuid(directory.partition_guid)),
            ("PartitionFQDN", directory.ad_domain),
            ("ObjectGuid", PSGuid(object_guid or "00000000-0000-0000-0000-000000000000")),
            ("Name", name),
        ],
        to_string=to_string,
    )


def server_version(text: str) -> PSObject:
    """AdminDisplayVersion: "Version 15.2 (Build 1544.11)" with Major/Minor/Build/Revision."""
    match = re.fullmatch(r"Version (\d+)\.(\d+) \(Build (\d+)\.(\d+)\)", text)
    if match is None:
        raise ValueError(f"AdminDisplayVersion {text!r} is not like 'Version 15.2 (Build 1544.11)'")
    major, minor, build, revision = (int(g) for g in match.groups())
    return ps_object(
        [f"{_D}.ServerVersion", "System.Object"],
        [
            ("Major", PSInt(major)),
            ("Minor", PSInt(minor)),
            ("Build", PSInt(build)),
            ("Revision", PSInt(revision)),
            ("FilePatchLevelDescription", None),
        ],
        to_string=text,
    )


def admin_display_version(build: str) -> str:
    """``15.2.1544.11`` as Exchange shows it: ``Version 15.2 (Build 1544.11)``."""
    major, minor, number, revision = build.split(".")
    return f"Version {major}.{minor} (Build {number}.{revision})"


def exchange_object_version(text: str) -> PSObject:
    """ExchangeVersion such as "0.20 (15.0.0.0)"."""
    match = re.fullmatch(r"(\d+)\.(\d+) \(([\d.]+)\)", text)
    if match is None:
        raise ValueError(f"ExchangeVersion {text!r} is not like '0.20 (15.0.0.0)'")
    major, minor, build = int(match.group(1)), int(match.group(2)), match.group(3)
    return ps_object(
        [f"{_D}.ExchangeObjectVersion", "System.Object"],
        [
            ("NextMajorVersion", f"{major + 1}.0 (0.0.0.0)"),
            ("NextMinorVersion", f"{major}.{minor + 1} (0.0.0.0)"),
            ("Major", PSByte(major)),
            ("Minor", PSByte(minor)),
            ("ExchangeBuild", build),
        ],
        to_string=text,
    )


def smtp_domain(domain: str, *, with_subdomains: bool) -> PSObject:
    if with_subdomains:
        star = domain.startswith("*.")
        bare = domain[2:] if star else domain
        return ps_object(
            [f"{_D}.SmtpDomainWithSubdomains", "System.Object"],
            [
                ("Address", domain),
                ("IncludeSubDomains", star),
                ("Domain", bare),
                ("SmtpDomain", bare),
                ("IsStar", domain == "*"),
            ],
            to_string=domain,
        )
    return ps_object([f"{_D}.SmtpDomain", "System.Object"], [("Domain", domain)], to_string=domain)


def smtp_address(address: str) -> PSObject:
    local, _, domain = address.partition("@")
    return ps_object(
        [f"{_D}.SmtpAddress", "System.ValueType", "System.Object"],
        [("Local", local), ("Domain", domain), ("Address", address), ("IsValidAddress", True)],
        to_string=address,
    )


def proxy_address(text: str) -> PSObject:
    """ExternalEmailAddress: "SMTP:SfBOnline-ApplicationAccount@contoso.com"."""
    prefix, _, address = text.partition(":")
    return ps_object(
        [f"{_D}.SmtpProxyAddress", f"{_D}.ProxyAddress", f"{_D}.ProxyAddressBase", "System.Object"],
        [
            ("SmtpAddress", address),
            ("AddressString", address),
            ("IsPrimaryAddress", prefix.isupper()),
            ("PrefixString", prefix),
        ],
        to_string=text,
    )


def date_time(text: str) -> PSDateTime:
    return PSDateTime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))


class _ServerLocalTime(dt.tzinfo):
    """A server clock set to UTC: written "+00:00" where a UTC value is written "Z"."""

    def utcoffset(self, moment: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def dst(self, moment: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, moment: dt.datetime | None) -> str:
        return "Coordinated Universal Time"


def _local_and_utc(text: str) -> tuple[PSDateTime, PSDateTime]:
    # WhenChanged is the server's local time with its offset, WhenChangedUTC the
    # same instant with "Z"; the lab's servers run on UTC like the captured ones.
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)
    local = PSDateTime(moment.replace(tzinfo=_ServerLocalTime()))
    return local, PSDateTime(moment)


def certificate_to_string(der: bytes) -> str:
    """X509Certificate.ToString(): the "[Subject] ... [Thumbprint]" block Exchange shows.

    The CR LF line breaks are written pre-escaped (``_x000D__x000A_``) because
    psrpcore 0.3 writes ToString text without escaping it, and a raw CR would be
    normalised away by any XML parser on the way.
    """
    certificate = x509.load_der_x509_certificate(der)

    def windows_name(name: x509.Name) -> str:
        return ", ".join(reversed(name.rfc4514_string().split(",")))

    def when(moment: dt.datetime) -> str:
        return moment.strftime("%m/%d/%Y %H:%M:%S")

    crlf = "_x000D__x000A_"
    sections = [
        ("Subject", windows_name(certificate.subject)),
        ("Issuer", windows_name(certificate.issuer)),
        ("Serial Number", f"{certificate.serial_number:X}".zfill(32)),
        ("Not Before", when(certificate.not_valid_before_utc)),
        ("Not After", when(certificate.not_valid_after_utc)),
        ("Thumbprint", thumbprint(der)),
    ]
    return crlf.join(f"[{title}]{crlf}  {value}{crlf}" for title, value in sections)


# -- the type table ----------------------------------------------------------------------------------------------

Converter = Callable[[Any, Directory], Any]


def _enum_kind(enum_class: type) -> Converter:
    return lambda value, _d: None if value in (None, "") else enum_value(enum_class, value)


def _enum_list_kind(enum_class: type, *, ad: bool = True) -> Converter:
    type_names = _multi_valued(f"{enum_class.PSObject.type_names[0]}, {_DIRECTORY_ASSEMBLY}", ad=ad)
    return lambda values, _d: ps_list(type_names, [enum_value(enum_class, v) for v in values or []])


def _string_list_kind(values: Any, _d: Directory) -> Any:
    return ps_list(STRING_LIST_TYPE, list(values or []))


def _uri_kind(value: Any, _d: Directory) -> Any:
    return None if value in (None, "") else PSUri(value)


def _date_kind(value: Any, _d: Directory) -> Any:
    return None if value in (None, "") else date_time(value)


def _bytes_kind(value: Any, _d: Directory) -> Any:
    return None if value in (None, "") else base64.b64decode(value)


def _guid_kind(value: Any, _d: Directory) -> Any:
    return None if value in (None, "") else PSGuid(value)


def _version_kind(value: Any, _d: Directory) -> Any:
    return server_version(value)


def _server_id_kind(value: Any, directory: Directory) -> Any:
    return None if not value else ad_object_id(directory, directory.server_dn(value), value)


def _user_id_kind(value: Any, directory: Directory) -> Any:
    """``contoso.local/Users/Exchange Online-ApplicationAccount`` as an ADObjectId."""
    if not value:
        return None
    path = value.split("/")
    dn = ",".join([*(f"CN={p}" for p in reversed(path[1:])), directory.domain_dn])
    return ad_object_id(directory, dn, value)


def _role_id_kind(value: Any, directory: Directory) -> Any:
    dn = f"CN={value},CN=Roles,CN=RBAC,{directory.exchange_dn}"
    return ad_object_id(directory, dn, value)


def _role_assignee_kind(value: Any, directory: Directory) -> Any:
    dn = f"CN={value},CN=Users,{directory.domain_dn}"
    return ad_object_id(directory, dn, value)


def _site_kind(value: Any, directory: Directory) -> Any:
    dn = f"CN={value},CN=Sites,{directory.configuration_dn}"
    return ad_object_id(directory, dn, f"{directory.ad_domain}/Configuration/Sites/{value}")


def _smtp_domain_kind(*, many: bool, with_subdomains: bool, ad: bool = False) -> Converter:
    element = f"{_D}.SmtpDomainWithSubdomains" if with_subdomains else f"{_D}.SmtpDomain"
    type_names = _multi_valued(f"{element}, {_DATA_ASSEMBLY}", ad=ad)

    def convert(value: Any, _d: Directory) -> Any:
        if many:
            return ps_list(type_names, [smtp_domain(v, with_subdomains=with_subdomains) for v in value or []])
        return None if not value else smtp_domain(value, with_subdomains=with_subdomains)

    return convert


def _smtp_address_kind(value: Any, _d: Directory) -> Any:
    return None if not value else smtp_address(value)


def _proxy_address_kind(value: Any, _d: Directory) -> Any:
    return None if not value else proxy_address(value)


def _proxy_address_list_kind(values: Any, _d: Directory) -> Any:
    return ps_list(
        [
            f"{_D}.ProxyAddressCollection",
            f"{_D}.ProxyAddressBaseCollection`1[[{_D}.ProxyAddress]]",
            *_multi_valued(f"{_D}.ProxyAddress, {_DATA_ASSEMBLY}", ad=False),
        ],
        [proxy_address(v) for v in values or []],
    )


def _int64_kind(value: Any, _d: Directory) -> Any:
    return None if value is None else PSInt64(value)


# Property kinds shared by every noun; a noun's own table overrides these.
COMMON_KINDS: dict[str, Converter] = {
    "InternalAuthenticationMethods": _enum_list_kind(AuthenticationMethod),
    "ExternalAuthenticationMethods": _enum_list_kind(AuthenticationMethod),
    "IISAuthenticationMethods": _enum_list_kind(AuthenticationMethod),
    "InternalUrl": _uri_kind,
    "ExternalUrl": _uri_kind,
    "InternalNLBBypassUrl": _uri_kind,
    "AdminDisplayVersion": _version_kind,
    "Server": _server_id_kind,
    "Guid": _guid_kind,
    "RawData": _bytes_kind,
    "ObjectClass": _string_list_kind,
    "CertificateStrings": _string_list_kind,
    "NextCertificateEffectiveDate": _date_kind,
    "GzipLevel": _enum_kind(GzipLevel),
    "ExtendedProtectionTokenChecking": _enum_kind(ExtendedProtectionTokenCheckingMode),
    "ExtendedProtectionSPNList": _string_list_kind,
    "ExtendedProtectionFlags": lambda v, _d: ps_list(
        _multi_valued(f"{_SC}.ExtendedProtectionFlag, {_DIRECTORY_ASSEMBLY}", ad=False), []
    ),
}


@dataclass(frozen=True)
class NounType:
    """What a cmdlet noun's objects look like on the wire."""

    type_names: list[str]
    exchange_version: str | None
    object_category: str | None
    distinguished_name: Callable[[Mapping[str, Any], Directory], str]
    kinds: dict[str, Converter] = field(default_factory=dict)
    # Keys the lab keeps on a state object that are not properties of the real one.
    lab_only: frozenset[str] = frozenset()
    # Properties read from IIS/the registry rather than AD: what -ADPropertiesOnly leaves unset.
    iis_properties: Mapping[str, Any] = field(default_factory=dict)
    ad_object: bool = True
    identity_parent: Callable[[Mapping[str, Any], Directory], str] | None = None


def _vdir_dn(obj: Mapping[str, Any], d: Directory) -> str:
    return f"CN={obj['Name']},CN=HTTP,CN=Protocols,{d.server_dn(obj['Server'])}"


def _vdir_type(primary: str, *middle: str) -> list[str]:
    return [
        f"{_SC}.{primary}",
        *(f"{_SC}.{m}" for m in middle),
        f"{_SC}.ExchangeVirtualDirectory",
        f"{_SC}.ADVirtualDirectory",
        *AD_CONFIGURATION_OBJECT,
    ]


# Without -ADPropertiesOnly these flags are read from IIS; with it Exchange
# leaves them false (or $null), as the captures show: decide from the lists.
_IIS_AUTH_FLAGS = {
    "BasicAuthentication": False,
    "DigestAuthentication": False,
    "WindowsAuthentication": False,
    "OAuthAuthentication": False,
    "AdfsAuthentication": False,
}
_SERVICE_VDIR_IIS = {
    **_IIS_AUTH_FLAGS,
    "WSSecurityAuthentication": False,
    "LiveIdNegotiateAuthentication": None,
    "LiveIdBasicAuthentication": False,
    "CertificateAuthentication": None,
}
_WEBAPP_VDIR_IIS = {**_IIS_AUTH_FLAGS, "FormsAuthentication": False, "LiveIdAuthentication": False}


def _config_dn(container: str) -> Callable[[Mapping[str, Any], Directory], str]:
    return lambda obj, d: f"CN={obj['Name']},{container.format(org=d.exchange_dn)}"


NOUNS: dict[str, NounType] = {
    "ExchangeServer": NounType(
        [f"{_MGMT}.ExchangeServer", *AD_PRESENTATION_OBJECT],
        "0.1 (8.0.535.0)",
        "ms-Exch-Exchange-Server",
        lambda obj, d: d.server_dn(obj["Name"]),
        {
            "ServerRole": _enum_kind(ServerRole),
            "Edition": _enum_kind(ServerEditionType),
            "Site": _site_kind,
            "StaticDomainControllers": _string_list_kind,
            "StaticGlobalCatalogs": _string_list_kind,
            "CurrentDomainControllers": _string_list_kind,
            "CurrentGlobalCatalogs": _string_list_kind,
            "MitigationsAppliedTime": _date_kind,
        },
    ),
    "ClientAccessService": NounType(
        [f"{_MGMT}.ClientAccessServer", *AD_PRESENTATION_OBJECT],
        "0.1 (8.0.535.0)",
        "ms-Exch-Exchange-Server",
        lambda obj, d: d.server_dn(obj["Name"]),
        {"AutoDiscoverServiceInternalUri": _uri_kind, "AutoDiscoverSiteScope": _string_list_kind},
    ),
    "AuthConfig": NounType(
        [f"{_SC}.AuthConfig", *AD_CONFIGURATION_OBJECT],
        "0.20 (15.0.0.0)",
        "ms-Exch-Auth-Auth-Config",
        lambda obj, d: f"CN=Auth Configuration,{d.exchange_dn}",
    ),
    "AuthServer": NounType(
        [f"{_SC}.AuthServer", *AD_CONFIGURATION_OBJECT],
        "0.20 (15.0.0.0)",
        "ms-Exch-Auth-Trusted-Server",
        _config_dn("CN=Auth Servers,CN=Auth Configuration,{org}"),
        {
            "Type": _enum_kind(AuthServerType),
            "DomainName": _smtp_domain_kind(many=True, with_subdomains=True),
        },
    ),
    "PartnerApplication": NounType(
        [f"{_SC}.PartnerApplication", *AD_CONFIGURATION_OBJECT],
        "0.20 (15.0.0.0)",
        "ms-Exch-Auth-Partner-Application",
        _config_dn("CN=Partner Applications,CN=Auth Configuration,{org}"),
        {
            "LinkedAccount": _user_id_kind,
            "AppOnlyPermissions": _string_list_kind,
            "ActAsPermissions": _string_list_kind,
        },
    ),
    "OrganizationConfig": NounType(
        [f"{_MGMT}.OrganizationConfig", *AD_PRESENTATION_OBJECT],
        "0.1 (8.0.535.0)",
        "ms-Exch-Organization-Container",
        lambda obj, d: d.exchange_dn,
    ),
    "IntraOrganizationConnector": NounType(
        [f"{_SC}.IntraOrganizationConnector", *AD_CONFIGURATION_OBJECT],
        "0.20 (15.0.0.0)",
        "ms-Exch-Intra-Organization-Connector",
        _config_dn("CN=Intra Organization Connectors,CN=Federation,{org}"),
        {
            "TargetAddressDomains": _smtp_domain_kind(many=True, with_subdomains=False),
            "DiscoveryEndpoint": _uri_kind,
            "TargetSharingEpr": _uri_kind,
        },
    ),
    "AvailabilityAddressSpace": NounType(
        [f"{_SC}.AvailabilityAddressSpace", *AD_CONFIGURATION_OBJECT],
        "0.1 (8.0.535.0)",
        "ms-Exch-Availability-Address-Space",
        _config_dn("CN=Availability Configuration,{org}"),
        {
            "AccessMethod": _enum_kind(AvailabilityAccessMethod),
            "ProxyUrl": _uri_kind,
            "TargetAutodiscoverEpr": _uri_kind,
        },
    ),
    "SettingOverride": NounType(
        [f"{_SC}.SettingOverride", *AD_CONFIGURATION_OBJECT],
        "0.20 (15.0.0.0)",
        "ms-Exch-Config-Settings",
        _config_dn("CN=Setting Overrides,CN=Global Settings,{org}"),
        {"Parameters": _string_list_kind, "Server": _string_list_kind},
    ),
    "AcceptedDomain": NounType(
        [f"{_SC}.AcceptedDomain", *AD_CONFIGURATION_OBJECT],
        "0.20 (15.0.0.0)",
        "ms-Exch-Accepted-Domain",
        _config_dn("CN=Accepted Domains,CN=Transport Settings,{org}"),
        {
            "DomainName": _smtp_domain_kind(many=False, with_subdomains=True),
            "DomainType": _enum_kind(AcceptedDomainType),
        },
    ),
    "User": NounType(
        [f"{_MGMT}.User", f"{_MGMT}.ADPresentationObject", f"{_D}.ConfigurableObject", "System.Object"],
        "0.10 (14.0.100.0)",
        "Person",
        lambda obj, d: f"CN={obj['Name']},CN=Users,{d.domain_dn}",
        {
            "RecipientType": _enum_kind(RecipientType),
            "RecipientTypeDetails": _enum_kind(RecipientTypeDetails),
        },
    ),
    "MailUser": NounType(
        [
            f"{_MGMT}.MailUser",
            f"{_MGMT}.MailEnabledOrgPerson",
            f"{_MGMT}.MailEnabledRecipient",
            f"{_MGMT}.ADPresentationObject",
            f"{_D}.ConfigurableObject",
            "System.Object",
        ],
        "0.10 (14.0.100.0)",
        "Person",
        lambda obj, d: f"CN={obj['Name']},CN=Users,{d.domain_dn}",
        {
            "RecipientType": _enum_kind(RecipientType),
            "RecipientTypeDetails": _enum_kind(RecipientTypeDetails),
            "ExternalEmailAddress": _proxy_address_kind,
            "PrimarySmtpAddress": _smtp_address_kind,
            "EmailAddresses": _proxy_address_list_kind,
        },
    ),
    "ManagementRoleAssignment": NounType(
        [f"{_MGMT}.ExchangeRoleAssignmentPresentation", *AD_PRESENTATION_OBJECT],
        "0.11 (14.0.550.0)",
        "ms-Exch-Role-Assignment",
        _config_dn("CN=Role Assignments,CN=RBAC,{org}"),
        {
            "Role": _role_id_kind,
            "RoleAssignee": _role_assignee_kind,
            "RoleAssigneeType": _enum_kind(RoleAssigneeType),
            "AssignmentMethod": _enum_kind(AssignmentMethod),
            "RoleAssignmentDelegationType": _enum_kind(RoleAssignmentDelegationType),
        },
    ),
    "ExchangeCertificate": NounType(
        [
            "Microsoft.Exchange.Management.SystemConfigurationTasks.ExchangeCertificate",
            "System.Security.Cryptography.X509Certificates.X509Certificate2",
            "System.Security.Cryptography.X509Certificates.X509Certificate",
            "System.Object",
        ],
        None,
        None,
        lambda obj, d: "",
        lab_only=frozenset({"Server", "Identity", "Guid"}),
        ad_object=False,
    ),
    "MapiVirtualDirectory": NounType(
        _vdir_type("ADMapiVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-Mapi-Virtual-Directory",
        _vdir_dn,
        iis_properties={**_IIS_AUTH_FLAGS, "IISAuthenticationMethods": []},
    ),
    "WebServicesVirtualDirectory": NounType(
        _vdir_type("ADWebServicesVirtualDirectory", "ADExchangeServiceVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-Web-Services-Virtual-Directory",
        _vdir_dn,
        iis_properties=_SERVICE_VDIR_IIS,
    ),
    "OabVirtualDirectory": NounType(
        _vdir_type("ADOabVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-OAB-Virtual-Directory",
        _vdir_dn,
        iis_properties=_IIS_AUTH_FLAGS,
    ),
    "AutodiscoverVirtualDirectory": NounType(
        _vdir_type("ADAutodiscoverVirtualDirectory", "ADExchangeServiceVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-Autodiscover-Virtual-Directory",
        _vdir_dn,
        iis_properties=_SERVICE_VDIR_IIS,
    ),
    "ActiveSyncVirtualDirectory": NounType(
        _vdir_type("ADMobileVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-Mobile-Virtual-Directory",
        _vdir_dn,
        iis_properties={"BasicAuthEnabled": False, "WindowsAuthEnabled": False},
    ),
    "OwaVirtualDirectory": NounType(
        _vdir_type("ADOwaVirtualDirectory", "ExchangeWebAppVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-OWA-Virtual-Directory",
        _vdir_dn,
        iis_properties=_WEBAPP_VDIR_IIS,
    ),
    "EcpVirtualDirectory": NounType(
        _vdir_type("ADEcpVirtualDirectory", "ExchangeWebAppVirtualDirectory"),
        "0.10 (14.0.100.0)",
        "ms-Exch-ECP-Virtual-Directory",
        _vdir_dn,
        iis_properties=_WEBAPP_VDIR_IIS,
    ),
}

VIRTUAL_DIRECTORY_NOUNS = (
    "MapiVirtualDirectory",
    "WebServicesVirtualDirectory",
    "OabVirtualDirectory",
    "AutodiscoverVirtualDirectory",
    "ActiveSyncVirtualDirectory",
    "OwaVirtualDirectory",
    "EcpVirtualDirectory",
)

# Which IIS-read flag reflects which method of the AD lists, when the lab
# answers as the real cmdlet does without -ADPropertiesOnly.
_FLAG_METHODS = {
    "BasicAuthentication": {"Basic"},
    "DigestAuthentication": {"Digest"},
    "WindowsAuthentication": {"Ntlm", "WindowsIntegrated", "Negotiate", "Kerberos"},
    "OAuthAuthentication": {"OAuth"},
    "AdfsAuthentication": {"Adfs"},
    "WSSecurityAuthentication": {"WSSecurity"},
    "FormsAuthentication": {"Fba"},
    "BasicAuthEnabled": {"Basic"},
    "WindowsAuthEnabled": {"Ntlm", "WindowsIntegrated", "Negotiate"},
    "LiveIdBasicAuthentication": {"LiveIdBasic"},
    "LiveIdAuthentication": {"LiveIdFba"},
}


def _iis_view(noun: NounType, data: Mapping[str, Any], ad_properties_only: bool) -> dict[str, Any]:
    """The IIS-derived properties of a virtual directory for this invocation."""
    if ad_properties_only:
        return dict(noun.iis_properties)
    internal = set(data.get("InternalAuthenticationMethods") or [])
    view: dict[str, Any] = {}
    for name, empty in noun.iis_properties.items():
        if name == "IISAuthenticationMethods":
            view[name] = list(data.get("IISAuthenticationMethods") or internal)
        elif name in _FLAG_METHODS:
            view[name] = bool(internal & _FLAG_METHODS[name])
        else:
            view[name] = empty
    return view


def _convert(name: str, value: Any, kinds: Mapping[str, Converter], directory: Directory) -> Any:
    converter = kinds.get(name) or COMMON_KINDS.get(name)
    if converter is not None:
        return converter(value, directory)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return PSInt(value)
    if isinstance(value, list):
        return ps_list(STRING_LIST_TYPE, [str(v) for v in value])
    raise TypeError(f"lab state property {name!r} has a value of type {type(value).__name__} the lab cannot type")


def exchange_object(
    noun: str,
    data: Mapping[str, Any],
    directory: Directory,
    *,
    ad_properties_only: bool = True,
    computer_name: str | None = None,
    runspace_id: str | None = None,
) -> PSObject:
    """One Exchange object as the cmdlet returns it.

    ``computer_name`` adds what an Exchange Management Shell session (itself a
    remote session) attaches before Export-Clixml sees the object
    (PSComputerName, RunspaceId, PSShowComputerName); the raw PSRP output of the
    Microsoft.Exchange endpoint has none of them.
    """
    table = NOUNS[noun]
    if noun == "ExchangeCertificate":
        return _exchange_certificate(data, computer_name, runspace_id)
    props: list[tuple[str, Any]] = []
    view = dict(data)
    view.update(_iis_view(table, data, ad_properties_only) if table.iis_properties else {})
    tail_names = {"Identity", "Guid", "DistinguishedName", "WhenChanged", "WhenCreated", "ExchangeVersion"}
    for name, value in view.items():
        if name in table.lab_only or name in tail_names:
            continue
        props.append((name, _convert(name, value, table.kinds, directory)))

    identity_text = data.get("Identity") or data.get("Name", "")
    identity = None
    if table.ad_object:
        dn = table.distinguished_name(data, directory)
        identity = ad_object_id(directory, dn, identity_text, data.get("Guid"))
        created, created_utc = _local_and_utc(data.get("WhenCreated") or directory.when_created)
        changed, changed_utc = _local_and_utc(
            data.get("WhenChanged") or data.get("WhenCreated") or directory.when_created
        )
        schema_dn = f"CN={table.object_category},CN=Schema,{directory.configuration_dn}"
        props += [
            ("AdminDisplayName", data.get("AdminDisplayName", "")),
            ("ExchangeVersion", exchange_object_version(data.get("ExchangeVersion") or table.exchange_version)),
            ("DistinguishedName", dn),
            ("Identity", identity),
            ("Guid", _guid_kind(data.get("Guid"), directory)),
            (
                "ObjectCategory",
                ad_object_id(
                    directory,
                    schema_dn,
                    f"{directory.ad_domain}/Configuration/Schema/{table.object_category}",
                    str(_stable_guid("schema", table.object_category or "")),
                    parent=f"{directory.ad_domain}/Configuration/Schema",
                ),
            ),
            ("WhenChanged", changed),
            ("WhenCreated", created),
            ("WhenChangedUTC", changed_utc),
            ("WhenCreatedUTC", created_utc),
            (
                "OrganizationId",
                ps_object(
                    [f"{_DD}.OrganizationId", "System.Object"],
                    [
                        ("OrganizationalUnit", None),
                        ("ConfigurationUnit", None),
                        ("IsConsumerOrganization", False),
                        ("IdForEventLog", ""),
                    ],
                ),
            ),
            # The same ADObjectId instance: the serializer writes <Ref N="Id"> like PowerShell.
            ("Id", identity),
            ("OriginatingServer", directory.domain_controller),
            ("IsValid", True),
            ("ObjectState", ObjectState.Unchanged),
        ]
        # ObjectClass sits before the dates in real output; keep it if the state has it.
    extended = _remoting_properties(computer_name, runspace_id)
    return ps_object(table.type_names, props, extended, to_string=identity_text)


def _remoting_properties(computer_name: str | None, runspace_id: str | None) -> list[tuple[str, Any]]:
    if computer_name is None:
        return []
    return [
        ("PSComputerName", computer_name),
        ("RunspaceId", PSGuid(runspace_id or str(_stable_guid("runspace", computer_name)))),
        ("PSShowComputerName", False),
    ]


def _exchange_certificate(data: Mapping[str, Any], computer_name: str | None, runspace_id: str | None) -> PSObject:
    # The captures hold nothing but RawData: thumbprint, dates and names come from the DER.
    der = base64.b64decode(data["RawData"])
    return ps_object(
        NOUNS["ExchangeCertificate"].type_names,
        [("RawData", der)],
        _remoting_properties(computer_name, runspace_id),
        to_string=certificate_to_string(der),
    )


def exchange_objects(
    state: LabState,
    noun: str,
    *,
    ad_properties_only: bool = True,
    computer_name: str | None = None,
) -> list[PSObject]:
    directory = Directory.of(state)
    with state.lock:
        return [
            exchange_object(noun, data, directory, ad_properties_only=ad_properties_only, computer_name=computer_name)
            for data in state.objects(noun)
        ]


# -- SharePoint ------------------------------------------------------------------------------------------------

_SP_PERSISTED = [
    "Microsoft.SharePoint.Administration.SPPersistedUpgradableObject",
    "Microsoft.SharePoint.Administration.SPPersistedObject",
    "Microsoft.SharePoint.Administration.SPAutoSerializingObject",
    "System.Object",
]

SHAREPOINT_TYPES: dict[str, list[str]] = {
    "TrustedSecurityTokenIssuer": [
        "Microsoft.SharePoint.Administration.Claims.SPTrustedSecurityTokenIssuer",
        "Microsoft.SharePoint.Administration.Claims.SPTrustedSecurityTokenService",
        *_SP_PERSISTED,
    ],
    "ServiceApplicationProxy": [
        "Microsoft.SharePoint.Administration.SPAzureAccessControlServiceApplicationProxy",
        "Microsoft.SharePoint.Administration.SPServiceApplicationProxy",
        "Microsoft.SharePoint.Administration.SPPersistedUpgradableObject",
        "Microsoft.SharePoint.Administration.SPPersistedObject",
        "Microsoft.SharePoint.Administration.SPAutoSerializingObject",
        "System.Object",
    ],
    "AppPrincipal": ["Microsoft.SharePoint.SPAppPrincipal", "System.Object"],
    "SecurityTokenServiceConfig": [
        "HybridTrust.SecurityTokenServiceConfig",
        "System.Management.Automation.PSCustomObject",
        "System.Object",
    ],
    "AuthenticationProvider": [
        "HybridTrust.AuthenticationProvider",
        "System.Management.Automation.PSCustomObject",
        "System.Object",
    ],
}

X509_CERTIFICATE2 = [
    "System.Security.Cryptography.X509Certificates.X509Certificate2",
    "System.Security.Cryptography.X509Certificates.X509Certificate",
    "System.Object",
]


def x509_certificate(der: bytes) -> PSObject:
    """An X509Certificate2 property value (SigningCertificate): RawData plus what PowerShell shows."""
    certificate = x509.load_der_x509_certificate(der)
    return ps_object(
        X509_CERTIFICATE2,
        [
            ("RawData", der),
            ("Thumbprint", thumbprint(der)),
            ("Subject", certificate.subject.rfc4514_string()),
            ("Issuer", certificate.issuer.rfc4514_string()),
            ("NotBefore", PSDateTime(certificate.not_valid_before_utc)),
            ("NotAfter", PSDateTime(certificate.not_valid_after_utc)),
            ("SerialNumber", f"{certificate.serial_number:X}"),
        ],
        to_string=certificate_to_string(der),
    )


def _custom_object(type_names: list[str], values: Iterable[tuple[str, Any]]) -> PSObject:
    # A [pscustomobject] carries its values as note properties (MS), no ToString.
    obj = PSCustomObject()
    obj.PSObject.type_names = list(type_names)
    obj.PSObject.extended_properties = [PSNoteProperty(name, value) for name, value in values]
    return obj


def sharepoint_object(noun: str, data: Mapping[str, Any], *, noted: bool = True) -> PSObject:
    """A SharePoint object (or projection) as the farm's PowerShell returns it.

    `noted`: with what the collector's projections add (a proxy's InDefaultProxyGroup), as
    Get-HybridTrustServiceApplicationProxy and an evidence bundle give it; False: as the plain
    cmdlet returns it."""
    if noun == "TrustedSecurityTokenIssuer":
        signing = data.get("SigningCertificate")
        return ps_object(
            SHAREPOINT_TYPES[noun],
            [
                ("NameId", data.get("NameId", "")),
                ("RegisteredIssuerName", data["RegisteredIssuerName"]),
                ("IsSelfIssuer", bool(data.get("IsSelfIssuer", False))),
                ("MetadataEndPoint", _uri_kind(data.get("MetadataEndPoint"), _NO_DIRECTORY)),
                ("SigningCertificate", x509_certificate(base64.b64decode(signing)) if signing else None),
                ("Description", data.get("Description", "")),
                ("Name", data["Name"]),
                ("TypeName", "Microsoft.SharePoint.Administration.Claims.SPTrustedSecurityTokenIssuer"),
                ("DisplayName", data["Name"]),
                ("Id", PSGuid(data["Id"])),
                ("Status", SPObjectStatus.Online),
            ],
            to_string=data["Name"],
        )
    if noun == "ServiceApplicationProxy":
        props = [
            ("MetadataEndpointUri", _uri_kind(data.get("MetadataEndpointUri"), _NO_DIRECTORY)),
            ("TypeName", data.get("TypeName", "Azure Access Control Service Application Proxy")),
            ("DisplayName", data["Name"]),
            ("Name", data["Name"]),
            ("Id", PSGuid(data["Id"])),
            ("Status", SPObjectStatus.Online),
        ]
        obj = ps_object(SHAREPOINT_TYPES[noun], props, to_string=data["Name"])
        # The collector notes proxy-group membership on each proxy with Add-Member (the
        # proxy itself does not know its groups; Get-SPServiceApplicationProxyGroup does).
        if noted and "InDefaultProxyGroup" in data:
            obj.PSObject.extended_properties.append(
                PSNoteProperty("InDefaultProxyGroup", bool(data["InDefaultProxyGroup"]))
            )
        return obj
    if noun == "AppPrincipal":
        principal = ps_object(
            SHAREPOINT_TYPES[noun],
            [
                ("NameIdentifier", data["NameIdentifier"]),
                ("DisplayName", data.get("DisplayName", "")),
                ("EncodedIdentityClaim", data.get("EncodedIdentityClaim", "")),
                ("RedirectUri", _uri_kind(data.get("RedirectUri"), _NO_DIRECTORY)),
                ("AppDomains", ps_list(["System.String[]", "System.Array", "System.Object"], [])),
            ],
            to_string=data.get("EncodedIdentityClaim", data["NameIdentifier"]),
        )
        # Get-SPAppPrincipal -Site answers for one site; the collector notes which with Add-Member.
        if data.get("Site"):
            principal.PSObject.extended_properties.append(PSNoteProperty("Site", data["Site"]))
        return principal
    if noun == "SecurityTokenServiceConfig":
        signing = data.get("SigningCertificate")
        return _custom_object(
            SHAREPOINT_TYPES[noun],
            [
                ("Name", data.get("Name", "SecurityTokenServiceManager")),
                ("AllowOAuthOverHttp", bool(data["AllowOAuthOverHttp"])),
                ("SigningCertificateRawData", base64.b64decode(signing) if signing else None),
                ("SigningCertificateThumbprint", thumbprint(base64.b64decode(signing)) if signing else None),
                ("WebApplicationUrl", data.get("WebApplicationUrl")),
            ],
        )
    if noun == "AuthenticationProvider":
        return _custom_object(
            SHAREPOINT_TYPES[noun],
            [
                ("WebApplicationUrl", data["WebApplicationUrl"]),
                ("Zone", data.get("Zone", "Default")),
                ("DisplayName", data.get("DisplayName", "Windows Authentication")),
                ("ClaimProviderName", data.get("ClaimProviderName", "AD")),
                ("UseWindowsIntegratedAuthentication", bool(data["UseWindowsIntegratedAuthentication"])),
                ("DisableKerberos", bool(data["DisableKerberos"])),
                ("UseBasicAuthentication", bool(data.get("UseBasicAuthentication", False))),
                ("AllowAnonymous", bool(data.get("AllowAnonymous", False))),
            ],
        )
    raise KeyError(f"no SharePoint object type for {noun!r}")


_NO_DIRECTORY = Directory("", "", "", "00000000-0000-0000-0000-000000000000", "")


def sharepoint_objects(state: LabState, noun: str) -> list[Any]:
    """Objects of one SharePoint noun; the realm is a plain string like the cmdlet returns."""
    with state.lock:
        farm = state.sharepoint
        if noun == "AuthenticationRealm":
            return [farm.get("AuthenticationRealm", "")]
        if noun == "SecurityTokenServiceConfig":
            config = farm.get("SecurityTokenServiceConfig")
            return [] if config is None else [sharepoint_object(noun, config)]
        return [sharepoint_object(noun, data) for data in farm.get(noun, [])]


# -- Export-Clixml ------------------------------------------------------------------------------------------------


class _NoCipher(PSCryptoProvider):
    """Export-Clixml of configuration objects never meets a SecureString."""

    def decrypt(self, value: bytes) -> bytes:
        raise NotImplementedError("no SecureString in lab evidence")

    def encrypt(self, value: bytes) -> bytes:
        raise NotImplementedError("no SecureString in lab evidence")

    def register_key(self, key: bytes) -> None:
        raise NotImplementedError("no SecureString in lab evidence")


class _ExportSerializer(_Serializer):
    """psrpcore's serializer with PowerShell's rule for enums: every occurrence is its own object."""

    def _get_ref_id(self, value: Any) -> tuple[int, bool]:
        if isinstance(value, enum.Enum):
            ref_id = self._obj_ref_id
            self._obj_ref_id += 1
            return ref_id, False
        return super()._get_ref_id(value)


# PowerShell writes an object's children in this order; psrpcore puts an enum's
# value before its type names and ToString after the properties.
_CHILD_ORDER = {"TN": 0, "TNRef": 0, "ToString": 1}
_EMPTY_STRING = re.compile(r"<S((?: N=\"[^\"]*\")?) />")


def _powershell_layout(element: ElementTree.Element, depth: int) -> None:
    if element.tag == "Obj":
        children = sorted(element, key=lambda child: _CHILD_ORDER.get(child.tag, 2))
        for child in list(element):
            element.remove(child)
        element.extend(children)
    # Attribute order: N before RefId, as Export-Clixml writes it.
    if "N" in element.attrib and "RefId" in element.attrib:
        attrib = {"N": element.attrib["N"], "RefId": element.attrib["RefId"]}
        element.attrib.clear()
        element.attrib.update(attrib)
    if len(element):
        indent = "\n" + "  " * (depth + 1)
        element.text = indent
        for child in element:
            _powershell_layout(child, depth + 1)
            child.tail = indent
        element[-1].tail = "\n" + "  " * depth


def export_clixml(objects: list[Any]) -> str:
    """The text of ``$objects | Export-Clixml`` (without the BOM; `write_clixml` adds it)."""
    root = ElementTree.Element("Objs", {"Version": "1.1.0.1", "xmlns": PS_NAMESPACE})
    serializer = _ExportSerializer(_NoCipher())
    for value in objects:
        root.append(serializer.serialize(value))
    _powershell_layout(root, 0)
    if not len(root):
        # An empty export still has its closing tag (psrpcore cannot read <Objs ... />).
        root.text = "\n"
    text = ElementTree.tostring(root, encoding="unicode", short_empty_elements=True)
    # ElementTree shortens every empty element; PowerShell does so for <Nil />
    # and <LST /> but writes an empty string as <S N="x"></S>.
    return _EMPTY_STRING.sub(r"<S\1></S>", text)


def write_clixml(path: Any, objects: list[Any]) -> None:
    """Write an Export-Clixml file: UTF-8 with a byte-order mark, as Windows PowerShell does."""
    from pathlib import Path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(UTF8_BOM + export_clixml(objects), encoding="utf-8", newline="\n")


def read_clixml(text: str) -> list[Any]:
    """Read Export-Clixml text back with psrpcore (tests and the lab's own round trips)."""
    return deserialize_clixml(text.lstrip(UTF8_BOM), _NoCipher())
