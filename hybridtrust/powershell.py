"""PowerShell objects, from the wire or from Export-Clixml, as plain Python records.

Exchange objects reach us two ways: Export-Clixml files in an evidence bundle, and
PSRP output from a live runspace. Both are the same CLIXML serialization, so both
are read by one deserializer (psrpcore's) and then normalised here into
`PSRecord`s of plain values. pypsrp's own deserializer is not used for the values:
it returns Exchange's multi-valued enum properties (``InternalAuthenticationMethods``)
as unparsed XML text, so the live source hands us each object's CLIXML instead.

The normalisation rules every fact parser may rely on:
- ``""`` and ``None`` are the same: both become ``None``.
- Enums become their names (``"OAuth"``), flag enums their ``ToString``
  (``"Mailbox, ClientAccess"``); multi-valued properties become lists.
- Type names lose the ``Deserialized.`` prefix Windows PowerShell adds on receipt.
- Dates become timezone-aware `datetime`s; byte arrays `bytes`; GUIDs `str`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from psrpcore.types import PSObject

_DESERIALIZED = "Deserialized."


def type_name(name: str) -> str:
    # A file exported from objects that were themselves received over remoting carries the prefix
    # already, and psrpcore adds its own on reading: strip every one.
    while name.startswith(_DESERIALIZED):
        name = name[len(_DESERIALIZED) :]
    return name


@dataclass(frozen=True)
class PSRecord(Mapping[str, Any]):
    """One PowerShell object: its type names, its properties and its ToString."""

    type_names: tuple[str, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    text: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self.properties[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.properties)

    def __len__(self) -> int:
        return len(self.properties)

    def __str__(self) -> str:
        return self.text or ""

    def is_a(self, name: str) -> bool:
        return any(candidate == name or candidate.endswith("." + name) for candidate in self.type_names)

    def text_of(self, name: str) -> str | None:
        """A property as text: nested objects (an Identity, a version) give their ToString."""
        value = self.properties.get(name)
        if value is None:
            return None
        if isinstance(value, PSRecord):
            return value.text
        return str(value)

    def list_of(self, name: str) -> list[Any]:
        """A multi-valued property as a list (absent and empty are both [])."""
        value = self.properties.get(name)
        if value is None:
            return []
        if isinstance(value, list):
            return [item for item in value if item is not None]
        return [value]


def _type_names(value: PSObject) -> tuple[str, ...]:
    return tuple(type_name(name) for name in value.PSTypeNames)


def _is_enum(value: Any) -> bool:
    try:
        names = value.PSTypeNames
    except AttributeError:
        return False
    return any(type_name(name) in ("System.Enum",) for name in names)


def plain(value: Any) -> Any:
    """Normalise a psrpcore value into plain Python (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if _is_enum(value):
        text = value.PSObject.to_string
        return text if text is not None else str(int(value))
    if isinstance(value, str):
        return str(value) or None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dt.datetime):
        moment = dt.datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tzinfo=value.tzinfo or dt.UTC,
        )
        return moment
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, PSObject):
        return record(value)
    return value


def record(value: PSObject) -> PSRecord:
    """A deserialized object as a `PSRecord`; a primitive becomes a record with no properties."""
    info = value.PSObject
    properties: dict[str, Any] = {}
    # Extended (MS) properties first, adapted (Props) last: on a name clash the
    # adapted property is the object's own value.
    for prop in (*info.extended_properties, *info.adapted_properties):
        try:
            properties[prop.name] = plain(prop.get_value(value))
        except Exception as error:  # a property getter of psrpcore failing is a parse error of ours
            raise ValueError(f"property {prop.name!r} of {info.to_string!r} cannot be read: {error}") from error
    text = info.to_string
    if text is None and not properties and isinstance(value, str | int | float):
        text = str(value)
    return PSRecord(_type_names(value), properties, str(text) if text is not None else None)


def records(values: list[Any]) -> list[PSRecord]:
    """Top-level output objects of a cmdlet as records (strings become text-only records)."""
    result: list[PSRecord] = []
    for value in values:
        if isinstance(value, PSObject) and (value.PSObject.adapted_properties or value.PSObject.extended_properties):
            result.append(record(value))
        else:
            normal = plain(value)
            result.append(
                normal
                if isinstance(normal, PSRecord)
                else PSRecord(_type_names(value) if isinstance(value, PSObject) else (), {}, normal)
            )
    return result
