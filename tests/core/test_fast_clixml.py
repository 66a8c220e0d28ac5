"""The fast CLIXML reader gives exactly the records psrpcore gives, and reads the lab's objects by itself."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest
from psrpcore.types import deserialize_clixml, serialize

from hybridtrust.clixml import _without_namespace
from hybridtrust.fast_clixml import Unsupported, read_objects
from hybridtrust.lab.bundle import write_evidence_bundle
from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.exchange_objects import Directory, exchange_object
from hybridtrust.lab.state import EXCHANGE_NOUNS
from hybridtrust.powershell import PSRecord, records
from tests.support import NOW, REAL_CLIXML


def by_psrpcore(text: str) -> list[PSRecord]:
    return records(deserialize_clixml(text, None))  # type: ignore[arg-type]


def fast(text: str) -> list[PSRecord]:
    return read_objects(_without_namespace(ElementTree.fromstring(text)))


def deep(value: object) -> object:
    """Records as plain nested data, so a difference shows where it is (and type names and texts count)."""
    if isinstance(value, PSRecord):
        return ("record", value.type_names, {k: deep(v) for k, v in value.properties.items()}, deep(value.text))
    if isinstance(value, list):
        return [deep(item) for item in value]
    if isinstance(value, dict):
        return {deep(k): deep(v) for k, v in value.items()}  # type: ignore[misc]
    return (type(value).__name__, value)


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("bundle")
    write_evidence_bundle(flawed_contoso(NOW), folder, NOW)
    return sorted(folder.rglob("*.xml"))


def test_the_same_records_as_psrpcore_for_every_real_capture_and_lab_file(lab_files: list[Path]) -> None:
    captures = sorted(REAL_CLIXML.rglob("*.xml"))
    assert captures and lab_files
    read_fast = []
    for path in [*captures, *lab_files]:
        text = path.read_text(encoding="utf-8-sig")
        try:
            found = fast(text)
        except Unsupported:
            continue
        read_fast.append(path)
        assert deep(found) == deep(by_psrpcore(text)), path
    # The lab's Exchange files are what a 1,000-server audit reads thousands of: none may need psrpcore.
    exchange = [path for path in lab_files if path.parent.name in ("exchange", "Get-ExchangeCertificate")]
    assert exchange and set(exchange) <= set(read_fast)
    assert len(read_fast) >= len(captures)


def test_pipeline_output_as_the_lab_serializes_it() -> None:
    """Each object as PSRP carries it (psrpcore's serializer, Refs to repeated enums and TNRefs included)."""
    state = flawed_contoso(NOW)
    directory = Directory.of(state)
    for noun in EXCHANGE_NOUNS:
        objects = [exchange_object(noun, data, directory, ad_properties_only=True) for data in state.objects(noun)]
        for value in objects:
            element = serialize(value, None)  # type: ignore[arg-type]
            text = f"<Objs>{ElementTree.tostring(element, encoding='unicode')}</Objs>"
            assert deep(fast(text)) == deep(by_psrpcore(text)), noun


@pytest.mark.parametrize(
    "body",
    [
        "<S>realm_x000A_line</S>",  # a bare primitive: psrpcore's type names
        '<Obj RefId="0"><TN RefId="0"><T>A.B</T><T>System.Object</T></TN><ToString></ToString>'
        '<Props><S N="x_x0020_y">a_x000D_b</S><S N="Empty" /><Nil N="N" /><B N="On">True</B>'
        '<G N="G">8A3F2C1E-5B7D-4E9A-9C2F-1D6E0B4A7C35</G><DT N="D">2024-02-01T10:00:00.1234567+01:00</DT>'
        '<DT N="U">2024-02-01T10:00:00</DT><BA N="Raw">AAEC</BA><Db N="F">1.5</Db><I64 N="Big">-9</I64>'
        '<Obj N="L"><TN RefId="1"><T>System.Object[]</T></TN><LST><S>a</S><Nil /><I32>3</I32></LST></Obj>'
        '<Obj N="E" RefId="1"><TN RefId="2"><T>Some.Enum</T><T>System.Enum</T></TN><ToString>OAuth</ToString>'
        '<I32>5</I32></Obj><Ref N="Again" RefId="1" />'
        '<Obj N="H"><TN RefId="3"><T>System.Collections.Generic.Dictionary</T></TN><DCT><En><S N="Key">k</S>'
        '<I32 N="Value">1</I32></En></DCT></Obj></Props><MS><S N="Note">n</S><S N="x_x0020_y">first</S></MS></Obj>'
        '<Obj RefId="2"><TNRef RefId="0" /><Props><S N="Name">second</S></Props></Obj>',
        '<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T>'
        '</TN><MS><S N="Zone">Default</S><B N="On">false</B></MS></Obj>',
        '<Obj RefId="0"><TN RefId="0"><T>Some.Enum</T><T>System.Enum</T></TN><I32>7</I32></Obj>',
        '<Obj RefId="0"><TN RefId="0"><T>Some.Uri</T></TN><ToString>x</ToString><S>https://a/</S>'
        '<MS><S N="Note">n</S></MS></Obj>',
        '<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.ErrorRecord</T></TN><MS /></Obj>',
        '<Obj RefId="0"><TN RefId="0"><T>X</T></TN><Props><Version N="V">1.2</Version></Props></Obj>',
    ],
)
def test_shapes_read_alike_or_are_left_to_psrpcore(body: str) -> None:
    text = f'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">{body}</Objs>'
    try:
        found = fast(text)
    except Unsupported:
        return  # psrpcore reads it, as before
    assert deep(found) == deep(
        by_psrpcore(text.replace(' xmlns="http://schemas.microsoft.com/powershell/2004/04"', ""))
    )
