"""Service principal names, reply URLs and certificate identifiers, as Entra ID spells them."""

from __future__ import annotations

import base64
import hashlib

import pytest

from hybridtrust.certificates import decode_key_identifier
from hybridtrust.facts import KeyCredential
from hybridtrust.matching import (
    authority_spn_covers,
    https_root_spn_names,
    normalise_url,
    url_is_listed,
    wildcard_covers,
)

EXO = "00000002-0000-0ff1-ce00-000000000000"


@pytest.mark.parametrize(
    ("pattern", "host", "covered"),
    [
        ("*.contoso.com", "mail.contoso.com", True),
        ("*.contoso.com", "MAIL.Contoso.COM", True),
        ("*.contoso.com", "contoso.com", False),
        ("*.contoso.com", "a.b.contoso.com", False),
        ("*.contoso.com", "mail.contoso.com.evil.net", False),
        ("mail.contoso.com", "mail.contoso.com", True),
    ],
)
def test_a_wildcard_covers_exactly_one_label(pattern: str, host: str, covered: bool) -> None:
    assert wildcard_covers(pattern, host) is covered


@pytest.mark.parametrize(
    ("spn", "covered"),
    [
        (f"{EXO}/mail.contoso.com", True),
        (f"{EXO}/*.contoso.com", True),
        (f"{EXO}/mail.contoso.com:443", True),
        (f"{EXO}/mail.contoso.com:8443", False),
        ("https://mail.contoso.com/", True),
        ("https://mail.contoso.com:443", True),
        ("http://mail.contoso.com/", False),
        ("00000003-0000-0ff1-ce00-000000000000/mail.contoso.com", False),
        (f"{EXO}/*.com", False),
    ],
)
def test_exchange_authority_forms(spn: str, covered: bool) -> None:
    assert authority_spn_covers(spn, EXO, "mail.contoso.com") is covered


def test_https_root_form_tolerates_slash_port_and_case() -> None:
    for spn in ("https://mail.contoso.com/", "https://mail.contoso.com", "HTTPS://Mail.Contoso.com:443/"):
        assert https_root_spn_names(spn, "mail.contoso.com")
    assert not https_root_spn_names("https://mail.contoso.com/owa", "mail.contoso.com")


def test_reply_urls() -> None:
    listed = ["https://mail.contoso.com/owa/", "https://mail.contoso.com/ECP"]
    assert url_is_listed("https://mail.contoso.com/owa", listed)
    assert url_is_listed("https://mail.contoso.com:443/ecp", listed)
    assert not url_is_listed("https://mail.contoso.com/owa/oauthsignin.aspx", listed)
    assert normalise_url("not a url") is None


THUMB = "92E196F3C8D3D753FCFC5B7690C3173AA1C0ABE3"


@pytest.mark.parametrize(
    "identifier",
    [
        THUMB,
        THUMB.lower(),
        base64.b64encode(bytes.fromhex(THUMB)).decode(),
        base64.b64encode(THUMB.encode()).decode(),
    ],
    ids=["hex", "hex-lower", "base64-raw-sha1", "base64-of-hex"],
)
def test_custom_key_identifier_in_all_three_encodings(identifier: str) -> None:
    assert decode_key_identifier(identifier) == THUMB


def test_undecodable_identifiers_name_nothing() -> None:
    assert decode_key_identifier(None) is None
    assert decode_key_identifier("bm90IGEgdGh1bWJwcmludA==") is None
    assert decode_key_identifier("%%%") is None


def test_key_wins_over_custom_key_identifier() -> None:
    der = b"certificate bytes"
    credential = KeyCredential.from_json(
        {
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "customKeyIdentifier": THUMB,
            "key": base64.b64encode(der).decode(),
        }
    )
    assert credential.thumbprint == hashlib.sha1(der).hexdigest().upper()
    assert credential.is_verify_certificate()
