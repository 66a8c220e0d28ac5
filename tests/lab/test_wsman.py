"""Envelopes are parsed by ElementTree's C parser only where no DTD can hide (hybridtrust.lab.wsman)."""

from __future__ import annotations

import pytest
from defusedxml import ElementTree as SafeET

from hybridtrust.lab.wsman import WSManFault, _parse_xml, parse_request

ENVELOPE = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
    'xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>'
    "<wsa:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive</wsa:Action>"
    "<wsa:MessageID>uuid:1</wsa:MessageID>{inner}"
    '<wsman:SelectorSet><wsman:Selector Name="ShellId">S1</wsman:Selector></wsman:SelectorSet>'
    "</s:Header><s:Body><x/></s:Body></s:Envelope>"
)
BOMB = '<!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'


def test_a_plain_envelope_reads_as_defusedxml_reads_it() -> None:
    data = ('<?xml version="1.0" encoding="utf-8"?>' + ENVELOPE.format(inner="")).encode()
    request = parse_request(data)
    assert (request.action, request.message_id, request.selectors) == ("Receive", "uuid:1", {"ShellId": "S1"})
    ours, safe = _parse_xml(data), SafeET.fromstring(data)
    assert [(e.tag, e.attrib, e.text) for e in ours.iter()] == [(e.tag, e.attrib, e.text) for e in safe.iter()]


@pytest.mark.parametrize(
    "data",
    [
        (BOMB + ENVELOPE.format(inner="<wsa:To>&b;</wsa:To>")).encode(),
        ('<?xml version="1.0" encoding="utf-16"?>' + BOMB + ENVELOPE.format(inner="<wsa:To>&b;</wsa:To>")).encode(
            "utf-16"
        ),
        ('<?xml version="1.0" encoding="latin-1"?>' + ENVELOPE.format(inner="")).encode("latin-1"),
    ],
    ids=["utf-8 entities", "utf-16 entities", "declared latin-1"],
)
def test_envelopes_that_may_declare_entities_go_to_defusedxml(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[bytes] = []
    real = SafeET.fromstring
    monkeypatch.setattr(SafeET, "fromstring", lambda text: used.append(text) or real(text))
    if b"ENTITY" in data or b"E\x00N\x00T\x00I\x00T\x00Y" in data:
        with pytest.raises(WSManFault) as raised:
            parse_request(data)
        assert "because the XML is invalid" in raised.value.message
    else:
        parse_request(data)
    assert used == [data]


def test_malformed_envelopes_fail_with_the_same_words() -> None:
    for data in (b"", b"<s:Envelope", b"<a></b>", b"not xml"):
        with pytest.raises(WSManFault) as ours:
            parse_request(data)
        with pytest.raises(SafeET.ParseError) as safe:
            SafeET.fromstring(data)
        assert ours.value.message.endswith(f"because the XML is invalid: {safe.value} ")
