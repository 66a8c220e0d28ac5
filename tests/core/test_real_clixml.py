"""The real Export-Clixml captures of ../shared/real-clixml, read unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridtrust.certificates import Certificate
from hybridtrust.clixml import read_clixml_file
from hybridtrust.facts import AuthConfig, ExchangeServer, VirtualDirectory
from tests.support import REAL_CLIXML

CAPTURES = sorted(REAL_CLIXML.rglob("*.xml"))


def test_the_captures_are_there() -> None:
    assert len(CAPTURES) == 12, f"expected the 12 captures of shared/real-clixml, found {len(CAPTURES)}"


@pytest.mark.parametrize("path", CAPTURES, ids=[f"{p.parent.name}/{p.name}" for p in CAPTURES])
def test_every_capture_parses_unchanged(path: Path) -> None:
    records = read_clixml_file(path)
    assert records, f"{path} gave no objects"
    assert all(record.type_names for record in records)
    assert not any(name.startswith("Deserialized.") for record in records for name in record.type_names)


def test_exchange_2016_auth_certificate_matches_auth_config() -> None:
    config = AuthConfig.from_record(read_clixml_file(REAL_CLIXML / "exchange2016" / "GetAuthConfig.xml")[0])
    certificates = [
        Certificate.from_der(record["RawData"])
        for record in read_clixml_file(REAL_CLIXML / "exchange2016" / "GetExchangeCertificate.xml")
    ]
    auth = [c for c in certificates if c.subject == "CN=Microsoft Exchange Server Auth Certificate"]
    assert [c.thumbprint for c in auth] == [config.current_thumbprint] == ["92E196F3C8D3D753FCFC5B7690C3173AA1C0ABE3"]
    assert auth[0].not_after.year == 2023


def test_staged_next_certificate_of_the_monitor_capture() -> None:
    staged = AuthConfig.from_record(read_clixml_file(REAL_CLIXML / "auth-certificate-monitor" / "GetAuthConfig.xml")[0])
    assert staged.next_thumbprint == "BC6BF924D6EF046E64F8D1987DC1D7D2F4C0042A"
    assert staged.next_effective_date is not None and staged.next_effective_date.tzinfo is not None
    unstaged = AuthConfig.from_record(
        read_clixml_file(REAL_CLIXML / "auth-certificate-monitor" / "GetAuthConfigNoNextCert.xml")[0]
    )
    assert unstaged.next_thumbprint is None and unstaged.next_effective_date is None
    thumbprints = {
        Certificate.from_der(r["RawData"]).thumbprint
        for r in read_clixml_file(REAL_CLIXML / "auth-certificate-monitor" / "GetExchangeCertificate.xml")
    }
    assert {staged.current_thumbprint, staged.next_thumbprint} <= thumbprints


def test_certificate_identity_suffix_is_the_thumbprint() -> None:
    for record in read_clixml_file(REAL_CLIXML / "auth-certificate-monitor" / "GetExchangeCertificateBroken.xml"):
        certificate = Certificate.from_der(record["RawData"])
        assert certificate.thumbprint in (record.text or "")


def test_web_services_virtual_directory_methods_are_names() -> None:
    record = read_clixml_file(REAL_CLIXML / "exchange2016" / "GetWebServicesVirtualDirectory.xml")[0]
    vdir = VirtualDirectory.from_record("EWS", record)
    assert vdir.server == "SOLO-E16A"
    assert vdir.internal_authentication == ("Ntlm", "WindowsIntegrated", "WSSecurity", "OAuth")
    assert vdir.external_url is None and vdir.internal_url == "https://solo-e16a.solo.local/EWS/Exchange.asmx"
    assert vdir.has_method("OAuth") and vdir.has_method("WSSecurity")


def test_owa_flags_are_decided_from_the_lists() -> None:
    # -ADPropertiesOnly: BasicAuthentication/FormsAuthentication are False, the lists hold Basic and Fba.
    record = read_clixml_file(REAL_CLIXML / "exchange2016" / "GetOwaVirtualDirectory.xml")[0]
    vdir = VirtualDirectory.from_record("OWA", record)
    assert vdir.flags["BasicAuthentication"] is False and vdir.flags["FormsAuthentication"] is False
    assert vdir.has_method("Basic") and vdir.has_method("Fba")
    assert not vdir.has_method("OAuth")


def test_exchange_servers_version_and_roles() -> None:
    server = ExchangeServer.from_record(read_clixml_file(REAL_CLIXML / "exchange2016" / "GetExchangeServer.xml")[0])
    assert server.version == (15, 1, 2375, 7)
    assert server.is_mailbox and server.is_client_access and server.holds_auth_certificate
    assert server.product == "Exchange 2016 (15.1.2375.7)"
    two = [
        ExchangeServer.from_record(r)
        for r in read_clixml_file(REAL_CLIXML / "auth-certificate-monitor" / "GetExchangeServer.xml")
    ]
    assert len(two) == 2 and all(s.version is not None for s in two)
