"""The lab's Exchange objects read like the real Export-Clixml captures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest

from hybridtrust.lab import pki
from hybridtrust.lab.contoso import compliant_organization
from hybridtrust.lab.exchange_objects import (
    Directory,
    admin_display_version,
    exchange_object,
    exchange_objects,
    export_clixml,
    read_clixml,
    sharepoint_objects,
    write_clixml,
)

CAPTURES = Path("/work/shared/real-clixml")
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NS = "{http://schemas.microsoft.com/powershell/2004/04}"


@pytest.fixture(scope="module")
def state():
    return compliant_organization(NOW)


def _first_object(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text.lstrip("\ufeff"))[0]


def _property(obj: ElementTree.Element, name: str) -> ElementTree.Element:
    for group in ("Props", "MS"):
        container = obj.find(f"{NS}{group}")
        if container is None:
            continue
        for child in container:
            if child.get("N") == name:
                return child
    raise AssertionError(f"no property {name}")


def _type_table(root: ElementTree.Element) -> dict[str, list[str]]:
    return {tn.get("RefId"): [t.text for t in tn] for tn in root.iter(f"{NS}TN")}


def _types(element: ElementTree.Element, tn_map: dict[str, list[str]]) -> list[str]:
    tn = element.find(f"{NS}TN")
    if tn is None:
        tn = element.find(f"{NS}TNRef")
    return tn_map[tn.get("RefId")]


def test_web_services_vdir_matches_the_capture_shape(state):
    real_text = (CAPTURES / "exchange2016" / "GetWebServicesVirtualDirectory.xml").read_text("utf-8-sig")
    lab_text = export_clixml(exchange_objects(state, "WebServicesVirtualDirectory"))
    real, lab = _first_object(real_text), _first_object(lab_text)
    real_tn, lab_tn = _type_table(real), _type_table(lab)
    assert _types(lab, lab_tn) == _types(real, real_tn)
    for name in ("InternalAuthenticationMethods", "ExternalAuthenticationMethods", "Identity", "Server"):
        assert _types(_property(lab, name), lab_tn) == _types(_property(real, name), real_tn), name
    real_methods = _property(real, "InternalAuthenticationMethods").find(f"{NS}LST")
    lab_methods = _property(lab, "InternalAuthenticationMethods").find(f"{NS}LST")
    # Each method is an enum object: TN, ToString, I32, in that order.
    assert [c.tag for c in lab_methods[0]] == [c.tag for c in real_methods[0]]
    assert _property(lab, "InternalUrl").tag == f"{NS}URI"
    assert _property(lab, "AdminDisplayVersion").find(f"{NS}ToString").text == "Version 15.2 (Build 1544.11)"
    assert _property(lab, "Id").tag == f"{NS}Ref"


def test_enums_are_never_shared_between_lists(state):
    # PowerShell boxes each enum value anew: no <Ref> inside the method lists.
    text = export_clixml(exchange_objects(state, "WebServicesVirtualDirectory"))
    for methods in ElementTree.fromstring(text).iter(f"{NS}LST"):
        assert all(child.tag != f"{NS}Ref" for child in methods)


def test_round_trip_through_psrpcore(state):
    text = export_clixml(exchange_objects(state, "MapiVirtualDirectory", ad_properties_only=True))
    objects = read_clixml(text)
    assert len(objects) == 4
    first = objects[0]
    assert (
        first.PSTypeNames[0]
        == "Deserialized.Microsoft.Exchange.Data.Directory.SystemConfiguration.ADMapiVirtualDirectory"
    )
    assert [str(m) for m in first.ExternalAuthenticationMethods] == ["Ntlm", "OAuth", "Negotiate"]
    assert str(first.Identity) == "EX01\\mapi (Default Web Site)"
    assert str(first.InternalUrl) == "https://mail.contoso.com/mapi"
    # -ADPropertiesOnly: IIS-derived values are not read.
    assert first.OAuthAuthentication is False
    assert list(first.IISAuthenticationMethods) == []


def test_without_ad_properties_only_iis_flags_follow_the_methods(state):
    objects = read_clixml(export_clixml(exchange_objects(state, "MapiVirtualDirectory", ad_properties_only=False)))
    assert objects[0].OAuthAuthentication is True
    assert [str(m) for m in objects[0].IISAuthenticationMethods] == ["Ntlm", "OAuth", "Negotiate"]


def test_exchange_server_version_and_role(state):
    servers = read_clixml(export_clixml(exchange_objects(state, "ExchangeServer")))
    ex01 = servers[0]
    assert str(ex01.AdminDisplayVersion) == "Version 15.2 (Build 1544.11)"
    assert (ex01.AdminDisplayVersion.Build, ex01.AdminDisplayVersion.Revision) == (1544, 11)
    assert str(ex01.ServerRole) == "Mailbox"
    assert ex01.PSComputerName if hasattr(ex01, "PSComputerName") else True


def test_flags_enum_tostring():
    directory = Directory(
        "Contoso", "contoso.local", "dc01.contoso.local", "59ce2f71-eaa2-4ddf-a4fa-f25069d0b324", "2020-01-01T00:00:00Z"
    )
    obj = exchange_object(
        "ExchangeServer",
        {
            "Name": "EX2013",
            "AdminDisplayVersion": admin_display_version("15.0.1497.2"),
            "ServerRole": "Mailbox, ClientAccess",
            "Identity": "EX2013",
        },
        directory,
    )
    text = export_clixml([obj])
    role = _property(_first_object(text), "ServerRole")
    assert role.find(f"{NS}ToString").text == "Mailbox, ClientAccess"
    assert role.find(f"{NS}I32").text == "6"


def test_certificate_objects_carry_rawdata_like_the_capture(state):
    real = _first_object((CAPTURES / "auth-certificate-monitor" / "GetExchangeCertificate.xml").read_text("utf-8-sig"))
    certificates = [c for c in state.objects("ExchangeCertificate") if c["Server"] == "EX01"]
    directory = Directory.of(state)
    lab = _first_object(
        export_clixml(
            [exchange_object("ExchangeCertificate", certificates[0], directory, computer_name="ex01.contoso.local")]
        )
    )
    assert [t.text for t in lab.find(f"{NS}TN")] == [t.text for t in real.find(f"{NS}TN")]
    assert [p.get("N") for p in lab.find(f"{NS}Props")] == ["RawData"]
    assert [p.get("N") for p in lab.find(f"{NS}MS")] == ["PSComputerName", "RunspaceId", "PSShowComputerName"]
    to_string = lab.find(f"{NS}ToString").text
    assert to_string.startswith("[Subject]_x000D__x000A_  CN=Microsoft Exchange Server Auth Certificate_x000D__x000A_")
    thumb = pki.thumbprint(__import__("base64").b64decode(certificates[0]["RawData"]))
    assert to_string.endswith(f"[Thumbprint]_x000D__x000A_  {thumb}_x000D__x000A_")
    (back,) = read_clixml(export_clixml([exchange_object("ExchangeCertificate", certificates[0], directory)]))
    assert pki.thumbprint(bytes(back.RawData)) == thumb


def test_empty_strings_and_nil_are_written_like_powershell(state):
    text = export_clixml(exchange_objects(state, "AuthConfig"))
    assert '<S N="PreviousCertificateThumbprint"></S>' in text
    assert '<Nil N="NextCertificateEffectiveDate" />' in text
    assert text.startswith(
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">\n  <Obj RefId="0">\n    <TN RefId="0">'
    )
    assert '<Obj N="ExchangeVersion" RefId="1">' in text


def test_written_file_has_bom_and_reads_back(tmp_path, state):
    path = tmp_path / "Get-AuthServer.xml"
    write_clixml(path, exchange_objects(state, "AuthServer"))
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf<Objs")
    servers = read_clixml(raw.decode("utf-8"))
    assert {str(s.Type) for s in servers} == {"AzureAD", "MicrosoftACS"}
    assert [str(d) for d in servers[0].DomainName] == ["contoso.onmicrosoft.com"]


def test_empty_export_is_readable():
    assert read_clixml(export_clixml([])) == []


def test_real_captures_are_readable_by_the_same_reader():
    for path in sorted(CAPTURES.rglob("*.xml")):
        assert read_clixml(path.read_text("utf-8-sig")), path


def test_sharepoint_objects(state):
    realm = read_clixml(export_clixml(sharepoint_objects(state, "AuthenticationRealm")))
    assert realm == ["8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"]
    (proxy,) = read_clixml(export_clixml(sharepoint_objects(state, "ServiceApplicationProxy")))
    assert (
        proxy.PSTypeNames[0]
        == "Deserialized.Microsoft.SharePoint.Administration.SPAzureAccessControlServiceApplicationProxy"
    )
    assert str(proxy.MetadataEndpointUri).endswith("/metadata/json/1")
    (config,) = read_clixml(export_clixml(sharepoint_objects(state, "SecurityTokenServiceConfig")))
    assert config.AllowOAuthOverHttp is False
    assert config.WebApplicationUrl == "https://sharepoint.contoso.com"
    assert pki.thumbprint(bytes(config.SigningCertificateRawData)) == config.SigningCertificateThumbprint
    (provider,) = read_clixml(export_clixml(sharepoint_objects(state, "AuthenticationProvider")))
    assert (provider.UseWindowsIntegratedAuthentication, provider.DisableKerberos) == (True, True)
