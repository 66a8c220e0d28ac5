"""Certificates of the lab organization, made with `cryptography`.

The lab needs the same kinds of certificates a real hybrid organization has:

- the Exchange OAuth certificate ("CN=Microsoft Exchange Server Auth Certificate",
  self-signed, the same certificate on every Exchange server, published as a
  keyCredential in Entra ID);
- the certificate IIS serves for the Exchange namespaces (a SAN certificate from
  a CA) and the self-signed one Setup creates per server;
- the SharePoint Security Token Service signing certificate;
- client certificates of the Entra applications the suite signs in with.

Everything is returned as DER plus the thumbprint, because that is how Exchange
(`RawData`) and Graph (`keyCredentials.key`) carry certificates. Validity dates
are parameters so tests can build a world "45 days before expiry" relative to a
fixed `now`. Keys are RSA 2048 like the ones Exchange and SharePoint create;
generating them is the slow part, so a small pool is reused within a process
(the lab needs distinct certificates, not distinct keys).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AUTH_CERTIFICATE_SUBJECT = "CN=Microsoft Exchange Server Auth Certificate"
STS_SIGNING_SUBJECT = "CN=SharePoint Security Token Service"

_KEY_POOL_SIZE = 4
_key_pool: list[rsa.RSAPrivateKey] = []
_key_cycle = itertools.count()


def thumbprint(der: bytes) -> str:
    """The certificate thumbprint as Windows shows it: upper-case hex SHA-1 of the DER."""
    return hashlib.sha1(der).hexdigest().upper()


@dataclass(frozen=True)
class LabCertificate:
    """A generated certificate: DER for Exchange/Graph, the key only for lab clients."""

    der: bytes
    private_key_pem: bytes

    @property
    def thumbprint(self) -> str:
        return thumbprint(self.der)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _private_key() -> rsa.RSAPrivateKey:
    if len(_key_pool) < _KEY_POOL_SIZE:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _key_pool.append(key)
        return key
    return _key_pool[next(_key_cycle) % _KEY_POOL_SIZE]


def _name(subject: str) -> x509.Name:
    """``"CN=x"`` or ``"CN=x, O=y"`` as an x509 Name (the lab only uses CN and O)."""
    attributes = []
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    for part in subject.split(","):
        key, _, value = part.strip().partition("=")
        attributes.append(x509.NameAttribute(oids[key.upper()], value))
    return x509.Name(attributes)


def _serial(subject: str, not_before: datetime) -> int:
    # Windows serials are 16 random bytes; derive them so a rebuilt world reads alike.
    digest = hashlib.sha256(f"{subject}|{not_before.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:16], "big") >> 1


def _build(
    subject: str,
    not_before: datetime,
    not_after: datetime,
    *,
    dns_names: list[str] | None = None,
    server_auth: bool = True,
    client_auth: bool = False,
    is_ca: bool = False,
    issuer: LabCertificate | None = None,
) -> LabCertificate:
    key = _private_key()
    issuer_key = (
        serialization.load_pem_private_key(issuer.private_key_pem, password=None) if issuer is not None else key
    )
    issuer_name = issuer.certificate.subject if issuer is not None else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(_serial(subject, not_before))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        usages = []
        if server_auth:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if dns_names:
        entries: list[x509.GeneralName] = []
        for name in dns_names:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                entries.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return LabCertificate(certificate.public_bytes(serialization.Encoding.DER), pem)


def auth_certificate(not_before: datetime, not_after: datetime) -> LabCertificate:
    """The Exchange OAuth certificate as Setup / New-ExchangeCertificate makes it (self-signed)."""
    return _build(AUTH_CERTIFICATE_SUBJECT, not_before, not_after, server_auth=True)


def self_signed_server_certificate(server_name: str, fqdn: str, not_before: datetime) -> LabCertificate:
    """The per-server certificate Exchange Setup creates ("CN=EX01", 5 years)."""
    return _build(
        f"CN={server_name}",
        not_before,
        not_before + timedelta(days=5 * 365),
        dns_names=[server_name, fqdn],
    )


def certificate_authority(common_name: str, not_before: datetime, not_after: datetime) -> LabCertificate:
    """A root CA for the namespace certificate (and for the lab's own https endpoints)."""
    return _build(f"CN={common_name}", not_before, not_after, is_ca=True)


def server_certificate(
    common_name: str,
    dns_names: list[str],
    not_before: datetime,
    not_after: datetime,
    issuer: LabCertificate | None = None,
) -> LabCertificate:
    """A SAN certificate for the published namespaces (mail., autodiscover., ...)."""
    return _build(f"CN={common_name}", not_before, not_after, dns_names=dns_names, issuer=issuer)


def sts_signing_certificate(not_before: datetime, not_after: datetime) -> LabCertificate:
    """The SharePoint STS signing certificate (LocalLoginProvider.SigningCertificate)."""
    return _build(STS_SIGNING_SUBJECT, not_before, not_after, server_auth=False)


def client_certificate(display_name: str, not_before: datetime, not_after: datetime) -> LabCertificate:
    """The certificate an Entra application signs its client assertions with."""
    return _build(f"CN={display_name}", not_before, not_after, server_auth=False, client_auth=True)
