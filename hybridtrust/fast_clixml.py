"""CLIXML straight to `PSRecord`s: the common shapes read in one pass, without psrpcore's object model.

Why: reading an object through psrpcore (`deserialize_clixml`, then `powershell.records`)
builds a `PSObject` with property descriptors for every value and then walks it again;
it costs milliseconds per Exchange object, which is most of an audit of 1,000 servers
(11,000 virtual directories, certificates and servers). This module produces the *same
records* (the rules of `hybridtrust.powershell`: ``""`` is None, enums are their names,
lists are lists, type names without ``Deserialized.``, ...) directly from the parsed
elements, for the vocabulary Exchange and SharePoint actually send: ``<Obj>`` with
``TN``/``TNRef``, ``ToString``, ``Props``, ``MS``, ``LST``/``IE``/``STK``, ``DCT``, an
extended primitive or enum value, ``<Ref>``, and the primitives ``S``, ``URI``, ``XD``,
``SBK``, ``B``, integers, ``Sg``/``Db``, ``DT``, ``BA``, ``G`` and ``Nil``.

Anything else (a type psrpcore rehydrates into a class of its own, a queue, a char, a
decimal, a version, a duration, a secure string, a progress record, a property name
given twice, a ``Ref`` to an object not seen yet) raises `Unsupported`, and the caller
reads that document with psrpcore as before, so the records are always the ones psrpcore
would give. ``tests/core/test_fast_clixml.py`` compares both readers on the real captures
and on every object the lab serves.

Strings and dates use psrpcore's own decoding functions (``_xHHHH_`` escapes, .NET's
100-nanosecond fractions), so those rules exist once.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import sys
import uuid
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from psrpcore.types._base import TypeRegistry
from psrpcore.types._serializer import _deserialize_datetime, _deserialize_string

from hybridtrust.powershell import PSRecord, type_name


class Unsupported(Exception):
    """A shape this reader leaves to psrpcore."""


# Types psrpcore rehydrates into classes of its own (ErrorRecord, PSCredential, System.String with
# notes, ...): their records follow those classes' rules, so they go to psrpcore. PSCustomObject is
# rehydrated too, but into a plain property bag whose record is exactly the generic one.
_GENERIC_REGISTERED = frozenset({"System.Management.Automation.PSCustomObject"})


@functools.cache
def _registered() -> frozenset[str]:
    return frozenset(TypeRegistry().type_registry) - _GENERIC_REGISTERED


def _text(element: Element) -> str | None:
    """A CLIXML string as `plain` gives it: escapes decoded, ``""`` as None."""
    raw = element.text
    if not raw:
        return None
    # psrpcore re-encodes every string as UTF-16 to undo _xHHHH_ escapes; a string without "_x" has none.
    value = _deserialize_string(raw) if "_x" in raw else raw
    return value or None


@functools.lru_cache(maxsize=4096)
def _datetime(raw: str) -> dt.datetime:
    # The same value `plain` makes of psrpcore's PSDateTime: aware, UTC when .NET said nothing.
    value = _deserialize_datetime(raw)
    return dt.datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
        tzinfo=value.tzinfo or dt.UTC,
    )  # fmt: skip


def _integer(element: Element) -> int:
    return int(element.text)  # type: ignore[arg-type]


def _float(element: Element) -> float:
    return float(element.text)  # type: ignore[arg-type]


def _boolean(element: Element) -> bool:
    return (element.text or "").lower() == "true"


def _bytes(element: Element) -> bytes:
    return base64.b64decode(element.text or "")


def _guid(element: Element) -> str:
    return str(uuid.UUID(element.text))


def _date(element: Element) -> dt.datetime:
    return _datetime(element.text or "")


_PRIMITIVES: dict[str, Callable[[Element], Any]] = {
    "S": _text,
    "URI": _text,
    "XD": _text,
    "SBK": _text,
    "B": _boolean,
    "By": _integer,
    "SB": _integer,
    "U16": _integer,
    "I16": _integer,
    "U32": _integer,
    "I32": _integer,
    "U64": _integer,
    "I64": _integer,
    "Sg": _float,
    "Db": _float,
    "DT": _date,
    "BA": _bytes,
    "G": _guid,
}
_LISTS = frozenset({"LST", "IE", "STK"})
# The value of an extended primitive or an enum (`<Obj><TN>..System.Enum..</TN><I32>5</I32></Obj>`); psrpcore
# cannot give a boolean or a Nil type names, so those shapes are its to refuse.
_EXTENDED_PRIMITIVES = frozenset(_PRIMITIVES) - {"B"}
_PS_CUSTOM_OBJECT = ("System.Management.Automation.PSCustomObject", "System.Object")


class _Reader:
    """One document (or one PSRP message): RefIds and TN RefIds are scoped to it."""

    def __init__(self) -> None:
        self.type_names: dict[str, tuple[str, ...]] = {}
        self.objects: dict[str, Any] = {}

    # -- top level: what `powershell.records` makes of each value --------------------------------
    def top(self, element: Element) -> PSRecord:
        if element.tag != "Obj":
            raise Unsupported(element.tag)  # a bare primitive: its record carries psrpcore's type names
        names, value, properties, text = self._object(element)
        if properties:
            return PSRecord(names, properties, text)
        if isinstance(value, PSRecord):
            return value
        return PSRecord(names, {}, value)

    # -- values: what `powershell.plain` makes of them ---------------------------------------
    def value(self, element: Element) -> Any:
        tag = element.tag
        primitive = _PRIMITIVES.get(tag)
        if primitive is not None:
            return primitive(element)
        if tag == "Obj":
            return self._object(element)[1]
        if tag == "Nil":
            return None
        if tag == "Ref":
            try:
                found = self.objects[element.attrib["RefId"]]
            except KeyError:
                raise Unsupported("a Ref to an object not seen before") from None
            # The same object in two places: psrpcore gives two equal values; never share a mutable one.
            return found.copy() if isinstance(found, list | dict) else found
        raise Unsupported(tag)

    def _object(self, element: Element) -> tuple[tuple[str, ...], Any, dict[str, Any], str | None]:
        """(type names, plain value, properties, ToString) of an ``<Obj>``."""
        names: tuple[str, ...] | None = None
        to_string: str | None = None
        extended: Element | None = None
        adapted: Element | None = None
        content: Any = _NOTHING
        kind = "object"
        for part in element:
            tag = part.tag
            if tag == "TN":
                names = _type_names(tuple(item.text or "" for item in part))
                self.type_names[part.attrib.get("RefId", "")] = names
            elif tag == "TNRef":
                try:
                    names = self.type_names[part.attrib["RefId"]]
                except KeyError:
                    raise Unsupported("a TNRef to type names not seen before") from None
            elif tag == "ToString":
                # psrpcore keeps an empty ToString as "" (not None), and so does the record.
                raw = part.text or ""
                to_string = _deserialize_string(raw) if "_x" in raw else raw
            elif tag == "Props":
                adapted = part
            elif tag == "MS":
                extended = part
            elif tag in _LISTS:
                content, kind = [self.value(item) for item in part], "list"
            elif tag == "DCT":
                content, kind = self._dictionary(part), "dict"
            elif tag in _EXTENDED_PRIMITIVES:
                content, kind = _PRIMITIVES[tag](part), "primitive"
            else:
                raise Unsupported(f"<{tag}> in an object")
        if not names:
            raise Unsupported("an object without type names")
        if names[0] in _registered():
            raise Unsupported(names[0])
        if names[0] in _GENERIC_REGISTERED and names != _PS_CUSTOM_OBJECT:
            raise Unsupported("a PSCustomObject with type names of its own")  # psrpcore would replace them
        is_enum = "System.Enum" in names
        if is_enum and kind != "primitive":
            raise Unsupported("an enum without a value")
        properties: dict[str, Any] = {}
        # Extended (MS) properties first, adapted (Props) last: on a clash the adapted value wins
        # and the name keeps its first place, as `powershell.record` builds them.
        for group in (extended, adapted):
            if group is None:
                continue
            seen: set[str] = set()
            for item in group:
                raw = item.attrib.get("N")
                if raw is None:
                    raise Unsupported("a property without a name")
                # Interned: 11,000 objects of 80 properties repeat the same names (50 MB as separate strings).
                name = sys.intern(_deserialize_string(raw) if "_x" in raw else raw)
                if name in seen:
                    raise Unsupported("a property named twice")
                seen.add(name)
                properties[name] = self.value(item)
        value: Any
        if is_enum:
            value = to_string if to_string is not None else str(int(content))
        elif kind != "object":
            value = content
        else:
            value = PSRecord(names, properties, to_string)
        ref = element.attrib.get("RefId")
        if ref is not None:
            self.objects[ref] = value
        return names, value, properties, to_string

    def _dictionary(self, element: Element) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for entry in element:
            key = value = _NOTHING
            for part in entry:
                if part.attrib.get("N") == "Key" and key is _NOTHING:
                    key = self.value(part)
                elif part.attrib.get("N") == "Value" and value is _NOTHING:
                    value = self.value(part)
            if key is _NOTHING or value is _NOTHING:
                raise Unsupported("a dictionary entry without Key or Value")
            result[key] = value
        return result


_NOTHING: Any = object()


@functools.lru_cache(maxsize=1024)
def _type_names(raw: tuple[str, ...]) -> tuple[str, ...]:
    # Every object of a type shares one tuple of its names (`Deserialized.` removed).
    return tuple(sys.intern(type_name(name)) for name in raw)


def read_objects(root: Element) -> list[PSRecord]:
    """The records of every child of an ``<Objs>`` element; raises `Unsupported` for psrpcore's shapes."""
    reader = _Reader()
    try:
        return [reader.top(child) for child in root]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        # A value that does not read (an <I32/> without digits, a date that is not one): psrpcore
        # decides, so the error the administrator sees is the one it always was.
        raise Unsupported(f"{type(error).__name__}: {error}") from error
