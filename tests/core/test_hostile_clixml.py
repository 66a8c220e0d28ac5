"""Evidence files are untrusted: refused or reported, never expanded, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridtrust import clixml
from hybridtrust.clixml import ClixmlError, read_clixml_file
from tests.support import REAL_CLIXML

SAMPLE = REAL_CLIXML / "exchange2016" / "GetAuthConfig.xml"


def test_truncated_file_names_file_and_position(tmp_path: Path) -> None:
    damaged = tmp_path / "Get-AuthConfig.xml"
    damaged.write_bytes(SAMPLE.read_bytes()[:1000])
    with pytest.raises(ClixmlError) as error:
        read_clixml_file(damaged, where="exchange/Get-AuthConfig.xml")
    message = str(error.value)
    assert message.startswith("exchange/Get-AuthConfig.xml: not valid CLIXML")
    assert "line" in message and "export it again with Export-Clixml" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "document",
    [
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
        '<Objs Version="1.1.0.1"><S>&lol2;</S></Objs>',
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Objs><S>&xxe;</S></Objs>',
    ],
    ids=["billion-laughs", "external-entity"],
)
def test_entities_are_refused_not_expanded(tmp_path: Path, document: str) -> None:
    path = tmp_path / "Get-AuthServer.xml"
    path.write_text(document, encoding="utf-8")
    with pytest.raises(ClixmlError, match="refused: the file declares a DTD or entities"):
        read_clixml_file(path)


def test_oversized_file_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clixml, "MAX_EVIDENCE_FILE_BYTES", 100)
    with pytest.raises(ClixmlError, match="refused: 29,386 bytes is more than"):
        read_clixml_file(SAMPLE)


def test_not_clixml(tmp_path: Path) -> None:
    path = tmp_path / "Get-AuthServer.xml"
    path.write_text("<html><body>login page</body></html>", encoding="utf-8")
    with pytest.raises(ClixmlError, match="not an Export-Clixml file"):
        read_clixml_file(path)


def test_utf16_export_is_read(tmp_path: Path) -> None:
    path = tmp_path / "Get-AuthConfig.xml"
    path.write_bytes(SAMPLE.read_text(encoding="utf-8-sig").encode("utf-16"))
    assert read_clixml_file(path)[0]["CurrentCertificateThumbprint"] == "92E196F3C8D3D753FCFC5B7690C3173AA1C0ABE3"
