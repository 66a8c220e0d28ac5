"""Certificates and the ways Entra ID and Exchange name them.

Get-ExchangeCertificate exported with Export-Clixml carries only ``RawData``, so
every date, subject and thumbprint is read from the DER here. Entra ID's
keyCredentials name a certificate by ``customKeyIdentifier``, which arrives in
three encodings depending on the tool that uploaded it (REQUIREMENTS.md,
EXO-AUTHCERT-PUBLISHED); `KeyIdentifiers` recognises all three.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import warnings
from dataclasses import dataclass, field

from cryptography import x509

_HEX40 = re.compile(r"^[0-9A-Fa-f]{40}$")


def thumbprint(der: bytes) -> str:
    """The Windows thumbprint: upper-case hex SHA-1 of the DER encoding."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


@dataclass(frozen=True)
class Certificate:
    thumbprint: str
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    der: bytes = field(repr=False)

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        parsed = x509.load_der_x509_certificate(der)
        with warnings.catch_warnings():
            # Real certificates carry malformed attributes (a 7-letter country code in the
            # CSS-Exchange captures); cryptography warns, Windows accepts them, so do we.
            warnings.simplefilter("ignore", UserWarning)
            subject = parsed.subject.rfc4514_string()
            issuer = parsed.issuer.rfc4514_string()
        try:
            san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns_names = tuple(san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            dns_names = ()
        return cls(
            thumbprint=thumbprint(der),
            subject=subject,
            issuer=issuer,
            not_before=parsed.not_valid_before_utc,
            not_after=parsed.not_valid_after_utc,
            dns_names=dns_names,
            der=der,
        )

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def describe(self, now: dt.datetime) -> str:
        days = self.days_left(now)
        state = f"expired {-days:.0f} days ago" if days < 0 else f"{days:.0f} days left"
        return f"{self.thumbprint} ({self.subject}, valid to {self.not_after:%Y-%m-%d}, {state})"


def decode_key_identifier(value: str | None) -> str | None:
    """The thumbprint a customKeyIdentifier names, whichever of the three encodings it uses.

    - 40 hex characters: the thumbprint itself (some scripts upload it as text);
    - base64 of the 20-byte SHA-1 (Graph's own Edm.Binary encoding of the raw hash);
    - base64 of the 40 hex characters (MSOnline and HCW uploaded the text as bytes).
    """
    if not value:
        return None
    text = value.strip()
    if _HEX40.match(text):
        return text.upper()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 20:
        return raw.hex().upper()
    try:
        decoded = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if _HEX40.match(decoded):
        return decoded.upper()
    return None
