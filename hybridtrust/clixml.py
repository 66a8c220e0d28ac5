"""Reading CLIXML safely: Export-Clixml files and single PSRP output objects.

Evidence files come from other people's machines and are untrusted: a file with a
DTD or an entity is refused outright (no "billion laughs", no external entity is
ever expanded or fetched), an oversized file is refused before it is read, and a
truncated or malformed file is an error that names the file and the position.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from psrpcore.types import deserialize_clixml

from hybridtrust.powershell import PSRecord, records

MAX_EVIDENCE_FILE_BYTES = 256 * 1024 * 1024
"""Export-Clixml of a 1,000-server organization's largest cmdlet is well under this."""

_OBJS_NAMESPACE = re.compile(r"^(\s*<Objs\b[^>]*?)\s+xmlns=\"[^\"]*\"", re.DOTALL)


class ClixmlError(ValueError):
    """A CLIXML document that cannot be read; the message says which and why."""


def _check_safe(text: str, where: str) -> None:
    try:
        SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as error:
        raise ClixmlError(
            f"{where}: refused: the file declares a DTD or entities ({type(error).__name__}); "
            "Export-Clixml never writes one, so the file was altered"
        ) from None
    except SafeET.ParseError as error:
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
    _check_safe(text, where)
    if not text.lstrip().startswith("<Objs"):
        raise ClixmlError(f"{where}: not an Export-Clixml file (the root element is not <Objs>)")
    try:
        values: list[Any] = deserialize_clixml(text, None)  # type: ignore[arg-type]
    except Exception as error:  # psrpcore raises plain exceptions on unexpected shapes
        raise ClixmlError(f"{where}: CLIXML cannot be deserialized: {error}") from error
    return records(values)


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
