"""``--save-evidence``: a live `Collection` written as an evidence bundle (CONTRACTS.md, ``hybridtrust-evidence/1``).

Reading the bundle back with `hybridtrust.sources.evidence.read_evidence_bundle`
gives the same facts as the live run, so its verdicts can be reproduced offline:

- Exchange, Exchange Online and SharePoint documents are CLIXML files in
  Export-Clixml's layout, built from the very ``<Obj>`` elements the server sent
  (`hybridtrust.sources.remoting.original_clixml`). Every PSRP message numbers its
  objects and type-name lists from 0, and a file is one numbering, so each object's
  ``RefId``s are moved past those of the objects before it. A record that did not
  come from a pipeline (an Exchange Online export read from a folder) is serialized
  again with psrpcore from its values.
- Graph documents are written as Graph returned them (Graph's 404 body for a service
  principal the tenant does not have).
- ``manifest.json`` says when and by what the bundle was collected, and which
  documents were not collected and why; a document that was not collected has no
  file, so the offline run reports it exactly as the live one did: as an error.

Nothing secret is written: the collection holds no credential (the sources keep
them in their connection settings), Graph documents carry public keys only, and
Exchange certificates their public DER.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from psrpcore.types import PSCryptoProvider, PSCustomObject, PSNoteProperty, serialize

from hybridtrust.facts import Collection, Missing, TenantDocuments
from hybridtrust.powershell import PSRecord
from hybridtrust.sources.evidence import CERTIFICATES_FOLDER, FORMAT
from hybridtrust.sources.remoting import original_clixml

COLLECTOR = "hybridtrust live"
CLIXML_NAMESPACE = "http://schemas.microsoft.com/powershell/2004/04"
UTF8_BOM = "\ufeff"

# Elements that define (Obj, TN) or refer to (Ref, TNRef) a RefId; <Obj> ids and <TN> ids are two numberings.
_REF_ID = re.compile(r"<(Obj|TN|Ref|TNRef)\b([^>]*?)\bRefId=\"(\d+)\"")


class _NoSecrets(PSCryptoProvider):
    """Configuration objects carry no SecureString; meeting one is a bug, never a write."""

    def decrypt(self, value: bytes) -> bytes:
        raise ValueError("a SecureString has no place in an evidence bundle")

    def encrypt(self, value: bytes) -> bytes:
        raise ValueError("a SecureString has no place in an evidence bundle")

    def register_key(self, key: bytes) -> None:
        raise ValueError("a SecureString has no place in an evidence bundle")


# -- CLIXML ----------------------------------------------------------------------------------------------
def _renumber(xml: str, objects: int, type_names: int) -> tuple[str, int, int]:
    """One object's XML with its RefIds moved past `objects`/`type_names`; the new high-water marks."""
    top = {"Obj": objects, "TN": type_names}

    def move(match: re.Match[str]) -> str:
        tag, attributes, number = match.groups()
        kind = "Obj" if tag in ("Obj", "Ref") else "TN"
        value = int(number) + (objects if kind == "Obj" else type_names)
        if tag in ("Obj", "TN"):
            top[kind] = max(top[kind], value + 1)
        return f'<{tag}{attributes}RefId="{value}"'

    return _REF_ID.sub(move, xml), top["Obj"], top["TN"]


def _plain_to_ps(value: Any) -> Any:
    if isinstance(value, PSRecord):
        return _record_to_ps(value)
    if isinstance(value, list):
        return [_plain_to_ps(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain_to_ps(item) for key, item in value.items()}
    return value


def _record_to_ps(record: PSRecord) -> Any:
    if not record.properties and record.text is not None and record.type_names[:1] in ((), ("System.String",)):
        return record.text  # a string output (the realm) stays a <S>
    obj = PSCustomObject()
    obj.PSObject.type_names = list(record.type_names)
    obj.PSObject.to_string = record.text
    obj.PSObject.extended_properties = [
        PSNoteProperty(name, _plain_to_ps(value)) for name, value in record.properties.items()
    ]
    return obj


def _object_xml(record: PSRecord) -> str:
    original = original_clixml(record)
    if original is not None:
        return original
    # Not from a live pipeline: serialize its values again (psrpcore, like the reader).
    element = serialize(_record_to_ps(record), _NoSecrets())
    return ElementTree.tostring(element, encoding="unicode")


def records_to_clixml(records: Iterable[PSRecord]) -> str:
    """An Export-Clixml document of these records (without the byte-order mark)."""
    lines = [f'<Objs Version="1.1.0.1" xmlns="{CLIXML_NAMESPACE}">']
    objects = type_names = 0
    for record in records:
        xml, objects, type_names = _renumber(_object_xml(record), objects, type_names)
        lines.append("  " + xml.strip())
    # An empty document keeps its closing tag: "none exist" must not read as a damaged file.
    lines.append("</Objs>")
    return "\n".join(lines)


# -- files ----------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    """Write atomically: a bundle interrupted mid-write never holds half a file that reads as whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_clixml(path: Path, records: list[PSRecord]) -> None:
    # Windows PowerShell's Export-Clixml -Encoding UTF8 writes a byte-order mark; the reader accepts both.
    _write_text(path, UTF8_BOM + records_to_clixml(records))


def _write_json(path: Path, document: Any) -> None:
    _write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _safe_name(name: str) -> str:
    """A server or tenant name as a file name (no separators: it comes from the server's answer)."""
    cleaned = re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", name).strip(". ")
    return cleaned or "_"


def _not_found_body(app_id: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "Request_ResourceNotFound",
            "message": f"Resource '{app_id}' does not exist or one of its queried reference-property objects "
            "are not present.",
        }
    }


def _tenant_files(tenant_id: str, documents: TenantDocuments) -> dict[str, dict[str, Any]]:
    """The files of one tenant from its facts documents (when the Graph source left no files of its own)."""
    prefix = f"entra/{tenant_id}"
    files: dict[str, dict[str, Any]] = {}
    for name, document in (
        ("organization", documents.organization),
        ("domains", documents.domains),
        ("applications", documents.applications),
    ):
        if isinstance(document, dict):
            files[f"{prefix}/{name}.json"] = document
    for app_id, principal in documents.service_principals.items():
        if isinstance(principal, dict):
            files[f"{prefix}/servicePrincipals/{app_id}.json"] = principal
        elif principal is None:
            files[f"{prefix}/servicePrincipals/{app_id}.json"] = _not_found_body(app_id)
    return files


def _missing_reasons(collection: Collection, *, by_design: bool) -> dict[str, str]:
    """Keys and reasons of what was not collected: by design (the administrator supplies it) or not."""
    reasons: dict[str, str] = {}

    def visit(value: object) -> None:
        if isinstance(value, Missing) and value.by_design == by_design:
            reasons.setdefault(value.key, value.reason)

    for store in (collection.exchange, collection.certificates, collection.exchange_online, collection.sharepoint):
        for value in store.values():
            visit(value)
    for tenant_id, tenant in collection.tenants.items():
        for value in (tenant.organization, tenant.domains, tenant.applications, *tenant.service_principals.values()):
            if isinstance(value, Missing) and value.by_design == by_design:
                reasons.setdefault(f"{value.key} ({tenant_id})", value.reason)
    return reasons


def save_evidence_bundle(collection: Collection, directory: Path) -> Path:
    """Write `collection` as a ``hybridtrust-evidence/1`` bundle into `directory`; returns the folder."""
    from hybridtrust.sources.live import graph_files

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    areas: Mapping[str, Mapping[str, list[PSRecord] | Missing]] = {
        "exchange": collection.exchange,
        "exchange-online": collection.exchange_online,
        "sharepoint": collection.sharepoint,
    }
    for area, documents in areas.items():
        for name, records in documents.items():
            if isinstance(records, list):
                _write_clixml(directory / area / f"{_safe_name(name)}.xml", records)
    certificates_from: list[str] = []
    for server, records in collection.certificates.items():
        if isinstance(records, list):
            _write_clixml(directory / "exchange" / CERTIFICATES_FOLDER / f"{_safe_name(server)}.xml", records)
            certificates_from.append(server)

    files = graph_files(collection)
    if files is None:
        files = {}
        for tenant_id, documents in collection.tenants.items():
            files.update(_tenant_files(tenant_id, documents))
    for relative, document in files.items():
        parts = [_safe_name(part) for part in relative.split("/")]
        _write_json(directory.joinpath(*parts), document)

    collected_at = collection.collected_at.astimezone(dt.UTC)
    manifest = {
        "format": FORMAT,
        "collected_at": collected_at.isoformat().replace("+00:00", "Z"),
        "collector": COLLECTOR,
        "origin": collection.origin,
        "tenants": sorted(collection.tenants),
        "exchange_certificates_collected_from": certificates_from,
        "virtual_directories": "ADPropertiesOnly",
        "notes": list(collection.notes),
        "not_collected": _missing_reasons(collection, by_design=False),
        # Documents the live source never collects (Exchange Online): a reader that honours this
        # key judges them as the live run did (skipped with the reason), not as errors.
        "not_collected_by_design": _missing_reasons(collection, by_design=True),
    }
    _write_json(directory / "manifest.json", manifest)
    return directory


__all__ = ["COLLECTOR", "records_to_clixml", "save_evidence_bundle"]
