"""The lab writes evidence bundles in the CONTRACTS.md format, without secrets."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hybridtrust.lab import pki
from hybridtrust.lab.bundle import write_evidence_bundle
from hybridtrust.lab.contoso import (
    CONTOSO_TENANT,
    DEFECTS,
    FABRIKAM_TENANT,
    compliant_organization,
    flawed_contoso,
)
from hybridtrust.lab.exchange_objects import read_clixml
from hybridtrust.lab.state import EXCHANGE_NOUNS

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def compliant_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("compliant")
    write_evidence_bundle(compliant_organization(NOW), directory, NOW)
    return directory


@pytest.fixture(scope="module")
def flawed_state():
    return flawed_contoso(NOW)


@pytest.fixture(scope="module")
def flawed_bundle(tmp_path_factory: pytest.TempPathFactory, flawed_state) -> Path:
    directory = tmp_path_factory.mktemp("flawed")
    write_evidence_bundle(flawed_state, directory, NOW, servers_unreachable={"EX03"})
    return directory


def _read(path: Path) -> list:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), f"{path} has no byte-order mark"
    return read_clixml(raw.decode("utf-8"))


def test_manifest(compliant_bundle: Path) -> None:
    manifest = json.loads((compliant_bundle / "manifest.json").read_text())
    assert manifest["format"] == "hybridtrust-evidence/1"
    assert datetime.fromisoformat(manifest["collected_at"]) == NOW
    assert manifest["collector"]


def test_every_exchange_cmdlet_has_its_file(compliant_bundle: Path) -> None:
    for noun in EXCHANGE_NOUNS:
        if noun == "ExchangeCertificate":
            continue
        objects = _read(compliant_bundle / "exchange" / f"Get-{noun}.xml")
        if noun != "AvailabilityAddressSpace":
            assert objects, noun
    vdirs = _read(compliant_bundle / "exchange" / "Get-OwaVirtualDirectory.xml")
    assert [str(v.Server) for v in vdirs] == ["EX01", "EX02", "EX03", "EX04"]


def test_certificates_per_modern_server(compliant_bundle: Path, flawed_bundle: Path) -> None:
    folder = compliant_bundle / "exchange" / "Get-ExchangeCertificate"
    assert sorted(p.name for p in folder.iterdir()) == ["EX01.xml", "EX02.xml", "EX03.xml", "EX04.xml"]
    (auth_config,) = _read(compliant_bundle / "exchange" / "Get-AuthConfig.xml")
    for path in folder.iterdir():
        thumbprints = {pki.thumbprint(bytes(c.RawData)) for c in _read(path)}
        assert auth_config.CurrentCertificateThumbprint in thumbprints
    flawed_folder = flawed_bundle / "exchange" / "Get-ExchangeCertificate"
    # EX2010 never gets a file; EX03 was unreachable in this run.
    assert sorted(p.name for p in flawed_folder.iterdir()) == ["EX01.xml", "EX02.xml", "EX04.xml"]


def test_entra_files(compliant_bundle: Path) -> None:
    for tenant in (CONTOSO_TENANT, FABRIKAM_TENANT):
        folder = compliant_bundle / "entra" / tenant
        organization = json.loads((folder / "organization.json").read_text())
        assert organization["value"][0]["id"] == tenant
        domains = json.loads((folder / "domains.json").read_text())["value"]
        assert any(d["isInitial"] for d in domains)
        exchange = json.loads((folder / "servicePrincipals" / "00000002-0000-0ff1-ce00-000000000000.json").read_text())
        assert exchange["appId"] == "00000002-0000-0ff1-ce00-000000000000"
        assert "https://mail.contoso.com/" in exchange["servicePrincipalNames"]
        applications = json.loads((folder / "applications.json").read_text())["value"]
        assert applications[0]["displayName"].startswith("ExchangeServerApp-")
        key = applications[0]["keyCredentials"][0]
        assert (key["type"], key["usage"]) == ("AsymmetricX509Cert", "Verify")
        assert (
            pki.thumbprint(base64.b64decode(key["key"])) == base64.b64decode(key["customKeyIdentifier"]).hex().upper()
        )


def test_absent_service_principal_is_a_graph_404_body(compliant_bundle: Path) -> None:
    path = (
        compliant_bundle / "entra" / FABRIKAM_TENANT / "servicePrincipals" / "00000004-0000-0ff1-ce00-000000000000.json"
    )
    assert json.loads(path.read_text())["error"]["code"] == "Request_ResourceNotFound"
    present = (
        compliant_bundle / "entra" / CONTOSO_TENANT / "servicePrincipals" / "00000004-0000-0ff1-ce00-000000000000.json"
    )
    assert "error" not in json.loads(present.read_text())


def test_sharepoint_files(compliant_bundle: Path) -> None:
    folder = compliant_bundle / "sharepoint"
    assert _read(folder / "Get-SPAuthenticationRealm.xml") == [CONTOSO_TENANT]
    (issuer,) = _read(folder / "Get-SPTrustedSecurityTokenIssuer.xml")
    assert issuer.RegisteredIssuerName == f"00000001-0000-0000-c000-000000000000@{CONTOSO_TENANT}"
    assert issuer.IsSelfIssuer is False
    (principal,) = _read(folder / "Get-SPAppPrincipal.xml")
    assert principal.NameIdentifier.endswith(f"@{CONTOSO_TENANT}")
    assert _read(folder / "Get-HybridTrustSecurityTokenServiceConfig.xml")[0].AllowOAuthOverHttp is False
    assert _read(folder / "Get-HybridTrustAuthenticationProvider.xml")[0].DisableKerberos is True


def test_exchange_online_connector(compliant_bundle: Path) -> None:
    (connector,) = _read(compliant_bundle / "exchange-online" / "Get-IntraOrganizationConnector.xml")
    assert str(connector.DiscoveryEndpoint) == "https://autodiscover.contoso.com/autodiscover/autodiscover.svc"
    assert [str(d) for d in connector.TargetAddressDomains] == ["contoso.com", "fabrikam.com"]


def test_no_secret_reaches_the_bundle(flawed_state, flawed_bundle: Path) -> None:
    secrets = [c["secret"] for t in flawed_state.tenants.values() for c in t["clients"]]
    secrets += [c["password"] for c in flawed_state.credentials.values()]
    client_certificates = [c["certificate"] for t in flawed_state.tenants.values() for c in t["clients"]]
    for path in flawed_bundle.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8-sig")
            assert "PRIVATE KEY" not in text, path
            for secret in secrets + client_certificates:
                assert secret not in text, path


def test_flawed_bundle_shows_the_defects(flawed_bundle: Path) -> None:
    assert {d.requirement for d in DEFECTS} >= {"HMA-SPN-URLS", "EXO-AUTHCERT", "SPS-REALM", "EXO-IOC-ONPREM"}
    mapi = {str(v.Server): v for v in _read(flawed_bundle / "exchange" / "Get-MapiVirtualDirectory.xml")}
    assert "OAuth" not in [str(m) for m in mapi["EX02"].ExternalAuthenticationMethods]
    assert _read(flawed_bundle / "exchange" / "Get-AvailabilityAddressSpace.xml") == []
    servers = {s.Name: s for s in _read(flawed_bundle / "exchange" / "Get-ExchangeServer.xml")}
    assert str(servers["EX2010"].AdminDisplayVersion).startswith("Version 14.3")
    assert _read(flawed_bundle / "sharepoint" / "Get-SPAuthenticationRealm.xml") != [CONTOSO_TENANT]
    fabrikam_sp = json.loads(
        (
            flawed_bundle
            / "entra"
            / FABRIKAM_TENANT
            / "servicePrincipals"
            / "00000002-0000-0ff1-ce00-000000000000.json"
        ).read_text()
    )
    assert "https://autodiscover.contoso.com/" not in fabrikam_sp["servicePrincipalNames"]
