"""Reading CLIXML safely: Export-Clixml files and single PSRP output objects.

Evidence files come from other people's machines and are untrusted: a file with a
DTD or an entity is refused outright (no "billion laughs", no external entity is
ever expanded or fetched), an oversized file is refused before it is read, and a
truncated or malformed file is an error that names the file and the position.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn
from xml.etree import ElementTree
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from psrpcore.types import deserialize_clixml

from hybridtrust.fast_clixml import Unsupported, read_objects
from hybridtrust.powershell import PSRecord, records

MAX_EVIDENCE_FILE_BYTES = 256 * 1024 * 1024
"""Export-Clixml of a 1,000-server organization's largest cmdlet is well under this."""

_OBJS_NAMESPACE = re.compile(r"^(\s*<Objs\b[^>]*?)\s+xmlns=\"[^\"]*\"", re.DOTALL)


class ClixmlError(ValueError):
    """A CLIXML document that cannot be read; the message says which and why."""


def _check_safe(text: str, where: str) -> Element:
    """The parsed document, or ClixmlError; it is parsed once and read from that tree.

    Entities can only be declared in a DTD, and a DOCTYPE can only be written as such (XML is
    case-sensitive): a document without either cannot expand or fetch anything, and is parsed
    by ElementTree's C parser. defusedxml's parser (pure Python callbacks, several times slower
    on the 66 MB an organization of 1,000 servers exports) parses the rest, and refuses them.
    """
    if "<!DOCTYPE" not in text and "<!ENTITY" not in text:
        try:
            return ElementTree.fromstring(text)
        except ElementTree.ParseError as error:
            _not_clixml(error, where)
    try:
        return SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as error:
        raise ClixmlError(
            f"{where}: refused: the file declares a DTD or entities ({type(error).__name__}); "
            "Export-Clixml never writes one, so the file was altered"
        ) from None
    except SafeET.ParseError as error:
        _not_clixml(error, where)


def _not_clixml(error: ElementTree.ParseError, where: str) -> NoReturn:
    line, column = getattr(error, "position", (0, 0))
    reason = str(error).split(":")[0]
    raise ClixmlError(
        f"{where}: not valid CLIXML ({reason} at line {line}, column {column}); "
        "the file is truncated or damaged: export it again with Export-Clixml"
    ) from None


def parse_clixml(text: str, where: str) -> list[PSRecord]:
    """Every top-level object of an Export-Clixml document, as records."""
    text = text.lstrip("\ufeff")
    if text.startswith("#< CLIXML"):
        text = text[len("#< CLIXML") :].lstrip("\r\n")
    root = _check_safe(text, where)
    if not text.lstrip().startswith("<Objs"):
        raise ClixmlError(f"{where}: not an Export-Clixml file (the root element is not <Objs>)")
    # The common shapes straight from the parsed tree (hybridtrust.fast_clixml: the same records, an
    # order of magnitude sooner, which is most of a 1,000-server audit); psrpcore reads the rest.
    try:
        return read_objects(_without_namespace(root))
    except Unsupported:
        pass
    try:
        values: list[Any] = deserialize_clixml(text, None)  # type: ignore[arg-type]
    except Exception as error:  # psrpcore raises plain exceptions on unexpected shapes
        raise ClixmlError(f"{where}: CLIXML cannot be deserialized: {error}") from error
    return records(values)


def _without_namespace(root: Element) -> Element:
    # Export-Clixml declares xmlns on <Objs>, which ElementTree applies to every tag; psrpcore strips
    # it from the text before parsing, this strips it from the parsed tags.
    if root.tag.startswith("{"):
        for element in root.iter():
            if element.tag.startswith("{"):
                element.tag = element.tag.partition("}")[2]
    return root


def read_clixml_file(path: Path, where: str | None = None) -> list[PSRecord]:
    """An Export-Clixml file (UTF-8, byte-order mark allowed) as records."""
    where = where or str(path)
    size = path.stat().st_size
    if size > MAX_EVIDENCE_FILE_BYTES:
        raise ClixmlError(
            f"{where}: refused: {size:,} bytes is more than the {MAX_EVIDENCE_FILE_BYTES:,} an Exchange "
            "export can reach; check that this is the right file"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Windows PowerShell 5.1's Export-Clixml writes UTF-16 LE with a BOM when asked for -Encoding Unicode.
        if raw.startswith(b"\xff\xfe"):
            text = raw.decode("utf-16")
        else:
            raise ClixmlError(f"{where}: not UTF-8 or UTF-16 text; export it again with Export-Clixml") from None
    return parse_clixml(text, where)


def parse_psrp_object(xml: str, where: str) -> PSRecord:
    """One PSRP output object (the ``<Obj>`` of a PIPELINE_OUTPUT message) as a record."""
    parsed = parse_clixml(f'<Objs Version="1.1.0.1">{xml}</Objs>', where)
    if len(parsed) != 1:
        raise ClixmlError(f"{where}: expected one object, found {len(parsed)}")
    return parsed[0]
