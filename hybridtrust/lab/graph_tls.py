"""The lab Graph endpoint's own PKI: a CA, a 127.0.0.1 server certificate, a token signing key.

Generated at every start so no key material is ever checked in or reused between
runs. The CA certificate is written to a private temporary directory: clients are
pointed at that file (``connection_verify=`` for azure-identity, an
``ssl.SSLContext`` for httpx), never told to switch verification off, so the lab
exercises the same TLS code paths a production run does.

The TLS keys are EC P-256 (instant to generate, which keeps test start-up fast);
the token signing key is RSA 2048 because Entra ID signs with RS256.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hybridtrust lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, cert_sign: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class LabTls:
    """Files and keys of one running lab endpoint; `cleanup()` removes the directory."""

    directory: Path
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    signing_key: rsa.RSAPrivateKey
    signing_certificate_der: bytes
    signing_kid: str = field(init=False)

    def __post_init__(self) -> None:
        # Entra ID's kid/x5t is the base64url SHA-1 of the signing certificate.
        digest = hashlib.sha1(self.signing_certificate_der, usedforsecurity=False).digest()
        self.signing_kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert_file, self.server_key_file)
        # HTTP/1.1 only: the lab's handler speaks HTTP/1.1, and announcing it lets
        # httpx (which offers h2 in msgraph-sdk's default client) settle quickly.
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSLContext that trusts the lab CA (what httpx wants since 0.28)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def create_lab_tls(host: str = "127.0.0.1", *, now: dt.datetime | None = None) -> LabTls:
    now = now or dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("hybridtrust lab Graph CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)

    server_key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        san.insert(0, x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        san.insert(0, x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_name = _name("hybridtrust lab token signing")
    signing_cert = (
        x509.CertificateBuilder()
        .subject_name(signing_name)
        .issuer_name(signing_name)
        .public_key(signing_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(signing_key, hashes.SHA256())
    )

    directory = Path(tempfile.mkdtemp(prefix="hybridtrust-graph-lab-"))  # mode 0700
    ca_file = directory / "lab-graph-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return LabTls(
        directory=directory,
        ca_file=ca_file,
        server_cert_file=cert_file,
        server_key_file=key_file,
        signing_key=signing_key,
        signing_certificate_der=signing_cert.public_bytes(serialization.Encoding.DER),
    )
