"""The offline source: an evidence bundle (CONTRACTS.md, format ``hybridtrust-evidence/1``).

Every file of a bundle is optional. A file that is absent, or present but
damaged, becomes a `Missing` with a reason naming it, so exactly the requirements
that need it turn into errors and every other requirement is judged normally.
Only a bundle that cannot be a bundle at all (no such folder, a manifest of
another format) is a usage error.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from hybridtrust.clixml import MAX_EVIDENCE_FILE_BYTES, ClixmlError, read_clixml_file
from hybridtrust.facts import FIRST_PARTY_APP_IDS, Collection, Missing, TenantDocuments
from hybridtrust.limits import MANIFEST_BYTES, NESTING_ERRORS, TooLarge, read_bounded
from hybridtrust.powershell import PSRecord

FORMAT = "hybridtrust-evidence/1"

EXCHANGE_CMDLETS = (
    "Get-AuthServer",
    "Get-PartnerApplication",
    "Get-AuthConfig",
    "Get-ExchangeServer",
    "Get-OrganizationConfig",
    "Get-IntraOrganizationConnector",
    "Get-AvailabilityAddressSpace",
    "Get-SettingOverride",
    "Get-ClientAccessService",
    "Get-MapiVirtualDirectory",
    "Get-WebServicesVirtualDirectory",
    "Get-OabVirtualDirectory",
    "Get-AutodiscoverVirtualDirectory",
    "Get-ActiveSyncVirtualDirectory",
    "Get-OwaVirtualDirectory",
    "Get-EcpVirtualDirectory",
    "Get-AcceptedDomain",
    "Get-User",
    "Get-MailUser",
    "Get-ManagementRoleAssignment",
)
EXCHANGE_ONLINE_CMDLETS = ("Get-IntraOrganizationConnector",)
SHAREPOINT_DOCUMENTS = (
    "Get-SPAuthenticationRealm",
    "Get-SPTrustedSecurityTokenIssuer",
    "Get-SPServiceApplicationProxy",
    "Get-SPAppPrincipal",
    "Get-HybridTrustSecurityTokenServiceConfig",
    "Get-HybridTrustAuthenticationProvider",
)
CERTIFICATES_FOLDER = "Get-ExchangeCertificate"


class EvidenceError(ValueError):
    """A folder that is not a usable evidence bundle (a usage error, exit status 4)."""


def _clixml_document(folder: Path, area: str, cmdlet: str) -> list[PSRecord] | Missing:
    """`<area>/Get-X.xml`, or `GetX.xml` as real exports are often named."""
    key = f"{area}:{cmdlet}"
    for name in (f"{cmdlet}.xml", f"{cmdlet.replace('-', '')}.xml"):
        path = folder / name
        if path.is_file():
            try:
                return read_clixml_file(path, where=f"{area}/{name}")
            except ClixmlError as error:
                return Missing(key, str(error))
            except OSError as error:
                return Missing(key, f"{area}/{name}: cannot be read: {error.strerror}")
    return Missing(key, f"not collected: {area}/{cmdlet}.xml")


def _certificates(folder: Path) -> dict[str, list[PSRecord] | Missing]:
    found: dict[str, list[PSRecord] | Missing] = {}
    for name in (CERTIFICATES_FOLDER, CERTIFICATES_FOLDER.replace("-", "")):
        directory = folder / name
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.xml")):
            where = f"exchange/{name}/{path.name}"
            try:
                found[path.stem] = read_clixml_file(path, where=where)
            except ClixmlError as error:
                found[path.stem] = Missing(f"exchange:Get-ExchangeCertificate/{path.stem}", str(error))
    return found


def _json_document(path: Path, where: str, key: str) -> dict[str, Any] | Missing:
    if not path.is_file():
        return Missing(key, f"not collected: {where}")
    if path.stat().st_size > MAX_EVIDENCE_FILE_BYTES:
        return Missing(key, f"{where}: refused: larger than any Graph response ({path.stat().st_size:,} bytes)")
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as error:
        return Missing(key, f"{where}: cannot be read: {error}")
    except json.JSONDecodeError as error:
        return Missing(key, f"{where}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})")
    except NESTING_ERRORS:
        # json is recursive: `[[[[...` would otherwise escape as RecursionError and end the whole run.
        return Missing(key, f"{where}: refused: arrays or objects nested too deeply for a Graph response")
    if not isinstance(document, dict):
        return Missing(key, f"{where}: expected a Graph response object, found {type(document).__name__}")
    return document


def _list_document(path: Path, where: str, key: str) -> dict[str, Any] | Missing:
    document = _json_document(path, where, key)
    if isinstance(document, dict) and not isinstance(document.get("value"), list):
        return Missing(key, f"{where}: expected a Graph list response with a 'value' array")
    return document


def _service_principal(path: Path, where: str, key: str) -> dict[str, Any] | Missing | None:
    document = _json_document(path, where, key)
    if isinstance(document, Missing):
        return document
    error = document.get("error")
    if isinstance(error, dict):
        # The collector saves Graph's 404 body: the tenant has no such service principal.
        if error.get("code") == "Request_ResourceNotFound":
            return None
        return Missing(key, f"{where}: Graph answered {error.get('code')}: {error.get('message')}")
    # A $filter query saved as-is is a list response with zero or one principal.
    if isinstance(document.get("value"), list):
        values = document["value"]
        return values[0] if values else None
    if not document.get("appId"):
        return Missing(key, f"{where}: not a service principal (no appId)")
    return document


def read_tenant(entra: Path, tenant_id: str) -> TenantDocuments:
    folder = entra / tenant_id
    prefix = f"entra/{tenant_id}"
    principals: dict[str, dict[str, Any] | Missing | None] = {}
    for app_id in FIRST_PARTY_APP_IDS:
        principals[app_id] = _service_principal(
            folder / "servicePrincipals" / f"{app_id}.json",
            f"{prefix}/servicePrincipals/{app_id}.json",
            f"entra:servicePrincipals/{app_id}",
        )
    return TenantDocuments(
        organization=_json_document(folder / "organization.json", f"{prefix}/organization.json", "entra:organization"),
        domains=_list_document(folder / "domains.json", f"{prefix}/domains.json", "entra:domains"),
        service_principals=principals,
        applications=_list_document(folder / "applications.json", f"{prefix}/applications.json", "entra:applications"),
    )


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    if not path.is_file():
        return {}
    try:
        # Bounded and depth-safe: the manifest is read before anything else (limits.py says why).
        manifest = json.loads(read_bounded(path, MANIFEST_BYTES).decode("utf-8-sig"))
    except TooLarge as error:
        raise EvidenceError(f"{path}: refused: {error}") from None
    except NESTING_ERRORS:
        raise EvidenceError(f"{path}: not valid JSON: arrays or objects nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvidenceError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise EvidenceError(f"{path}: expected a JSON object with key 'format'")
    if manifest.get("format") != FORMAT:
        raise EvidenceError(f"{path}: key 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _collected_at(manifest: dict[str, Any], bundle: Path) -> dt.datetime | None:
    value = manifest.get("collected_at")
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise EvidenceError(
            f"{bundle / 'manifest.json'}: key 'collected_at' is {value!r}, expected an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def read_evidence_bundle(bundle: Path, tenant_ids: list[str]) -> Collection:
    """Everything in a bundle for an organization with these tenants, as a `Collection`."""
    if not bundle.is_dir():
        raise EvidenceError(f"{bundle}: no such evidence bundle folder")
    manifest = read_manifest(bundle)
    collected_at = _collected_at(manifest, bundle)
    collection = Collection(
        source="evidence",
        origin=str(bundle),
        collected_at=collected_at or dt.datetime.now(dt.UTC),
    )
    if not manifest:
        collection.notes.append(f"{bundle}: no manifest.json; judged as of now")
    elif collected_at:
        collection.notes.append(f"evidence collected {collected_at:%Y-%m-%d %H:%M} UTC; certificates judged as of then")
    exchange = bundle / "exchange"
    collection.exchange = {cmdlet: _clixml_document(exchange, "exchange", cmdlet) for cmdlet in EXCHANGE_CMDLETS}
    collection.certificates = _certificates(exchange)
    collection.exchange_online = {
        cmdlet: _clixml_document(bundle / "exchange-online", "exchange-online", cmdlet)
        for cmdlet in EXCHANGE_ONLINE_CMDLETS
    }
    collection.sharepoint = {
        name: _clixml_document(bundle / "sharepoint", "sharepoint", name) for name in SHAREPOINT_DOCUMENTS
    }
    collection.tenants = {tenant_id: read_tenant(bundle / "entra", tenant_id) for tenant_id in tenant_ids}
    _honour_by_design(collection, manifest)
    return collection


def _honour_by_design(collection: Collection, manifest: dict[str, Any]) -> None:
    """A bundle saved from a live run says what that run never collects by design (Exchange Online):
    judge those absent files as the live run did, skipped with its reason, not as errors."""
    by_design = manifest.get("not_collected_by_design")
    if not isinstance(by_design, dict):
        return
    for store in (collection.exchange, collection.exchange_online, collection.sharepoint):
        for name, value in store.items():
            if isinstance(value, Missing) and value.key in by_design and value.reason.startswith("not collected"):
                store[name] = Missing(value.key, str(by_design[value.key]), by_design=True)


def damaged_files(collection: Collection) -> list[str]:
    """Reasons for files that exist but could not be read (shown once at the top of the run)."""
    reasons: list[str] = []

    def visit(value: object) -> None:
        if isinstance(value, Missing) and not value.reason.startswith("not collected"):
            reasons.append(value.reason)

    for store in (collection.exchange, collection.certificates, collection.exchange_online, collection.sharepoint):
        for value in store.values():
            visit(value)
    for tenant in collection.tenants.values():
        for value in (tenant.organization, tenant.domains, tenant.applications, *tenant.service_principals.values()):
            visit(value)
    return reasons
