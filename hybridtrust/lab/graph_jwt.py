"""The few JSON Web Token operations the lab's Entra token endpoint needs.

The lab signs access tokens (RS256, like Entra ID) and verifies client assertions
(RS256 from MSAL with a SHA-1 ``x5t``; PS256 with ``x5t#S256`` from MSAL with a
SHA-256 thumbprint and from azure-identity's async credentials). Doing this with
`cryptography` directly keeps the verification rules visible: which algorithms,
which padding, and that a segment with base64 padding (azure-identity's async
client writes ``=``) is still read, as Entra ID reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SUPPORTED_ASSERTION_ALGORITHMS = ("RS256", "PS256")


class JwtError(ValueError):
    """A token that cannot be read (not three segments, not base64url, not JSON)."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    # Tolerate present or absent padding: RFC 7515 forbids it, azure-identity's
    # async AadClient still sends it, and Entra ID accepts both.
    stripped = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as error:
        raise JwtError("a JWT segment is not base64url") from error


@dataclass(frozen=True)
class DecodedJwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def decode(token: str) -> DecodedJwt:
    """Split and parse a compact JWS without verifying it."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise JwtError("a JWT has three dot-separated segments")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JwtError("a JWT header or payload is not JSON") from error
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("a JWT header and payload are JSON objects")
    return DecodedJwt(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2]))


def verify_signature(token: DecodedJwt, public_key: Any) -> bool:
    """True when the signature verifies under the header's RS256/PS256 with `public_key`."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    algorithm = token.header.get("alg")
    if algorithm == "RS256":
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    elif algorithm == "PS256":
        # RFC 7518 3.5: MGF1 with SHA-256 and a salt as long as the hash; that is
        # what MSAL (via PyJWT) and azure-identity's AadClientCertificate produce.
        scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    else:
        return False
    try:
        public_key.verify(token.signature, token.signing_input, scheme, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def sign_rs256(header: dict[str, Any], claims: dict[str, Any], private_key: rsa.RSAPrivateKey) -> str:
    header = {"typ": "JWT", "alg": "RS256", **header}
    signing_input = (
        b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url_encode(signature)}"


def rsa_public_jwk(public_key: rsa.RSAPublicKey, kid: str, certificate_der: bytes | None = None) -> dict[str, Any]:
    """The key as Entra ID's jwks_uri lists it (kty, use, kid, x5t, n, e, x5c)."""
    numbers = public_key.public_numbers()

    def as_b64url(value: int) -> str:
        return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    jwk: dict[str, Any] = {"kty": "RSA", "use": "sig", "kid": kid, "x5t": kid, "n": as_b64url(numbers.n)}
    jwk["e"] = as_b64url(numbers.e)
    if certificate_der is not None:
        jwk["x5c"] = [base64.b64encode(certificate_der).decode("ascii")]
    return jwk
