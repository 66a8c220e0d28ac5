"""The opt-in live probes (``--connectivity``): the trust exercised end to end.

Configuration can look right and still fail: an AuthServer may hold signing keys the
STS has since rolled over (401 ``invalid_signature``), or a metadata URL may name
another tenant than the realm Exchange and SharePoint hold. These probes fetch each
AuthServer's metadata document and each tenant's ACS metadata (with requests, TLS
verified), and run ``Test-OAuthConnectivity`` through Exchange's remote PowerShell.
They never change anything. A probe that cannot run is a `Missing` naming the URL or
endpoint and the cause, so the requirements that need it err, never pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import defusedxml.ElementTree as SafeET
import requests
from defusedxml import DefusedXmlException

from hybridtrust.facts import ConnectivityResult, MetadataDocument, Missing

_SIGNING_XPATH = ".//{urn:oasis:names:tc:SAML:2.0:metadata}KeyDescriptor"
_CERTIFICATE = "{http://www.w3.org/2000/09/xmldsig#}X509Certificate"
_MAX_METADATA_BYTES = 4 * 1024 * 1024


def _redirected(url: str, base: str | None) -> str:
    """The lab answers for Microsoft's STS hosts: keep the path, swap scheme and host."""
    if not base:
        return url
    parts = urlsplit(url)
    return base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def parse_metadata(url: str, body: bytes) -> MetadataDocument:
    """WS-Federation metadata (evoSTS: entityID names the tenant) or ACS JSON (realm is the tenant)."""
    text = body.decode("utf-8-sig", errors="replace").lstrip()
    if text.startswith("{"):
        document = json.loads(text)
        keys = tuple(
            str(key.get("keyValue", {}).get("value"))
            for key in document.get("keys", [])
            if key.get("usage", "signing") == "signing" and key.get("keyValue", {}).get("value")
        )
        realm = document.get("realm")
        return MetadataDocument(url, str(realm).lower() if realm else None, keys)
    root = SafeET.fromstring(text, forbid_dtd=True)
    entity = root.get("entityID") or ""
    tenant = entity.rstrip("/").rsplit("/", 1)[-1].lower() if "sts.windows.net" in entity or entity else None
    keys = tuple(
        (element.text or "").strip()
        for descriptor in root.iterfind(_SIGNING_XPATH)
        if descriptor.get("use", "signing") == "signing"
        for element in descriptor.iter(_CERTIFICATE)
        if (element.text or "").strip()
    )
    return MetadataDocument(url, tenant or None, keys)


def fetch_metadata(
    url: str, *, base: str | None = None, ca_file: Path | None = None, verify: bool = True, timeout: float = 15
) -> MetadataDocument | Missing:
    target = _redirected(url, base)
    key = f"probe:metadata:{url}"
    try:
        response = requests.get(
            target, timeout=timeout, verify=str(ca_file) if (verify and ca_file) else verify, stream=True
        )
        body = response.raw.read(_MAX_METADATA_BYTES + 1, decode_content=True)
    except requests.RequestException as error:
        return Missing(key, f"not probed: {url}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
    if response.status_code != 200:
        return Missing(key, f"not probed: {url} answered HTTP {response.status_code}: {body[:200]!r}")
    if len(body) > _MAX_METADATA_BYTES:
        return Missing(key, f"not probed: {url} sent more than {_MAX_METADATA_BYTES:,} bytes of metadata")
    try:
        return parse_metadata(url, body)
    except (ValueError, SafeET.ParseError, DefusedXmlException) as error:
        return Missing(key, f"not probed: {url} is not an STS metadata document: {error}")


def fetch_all(
    urls: Iterable[str], *, base: str | None = None, ca_file: Path | None = None, verify: bool = True
) -> dict[str, MetadataDocument | Missing]:
    """Every distinct metadata URL once, a few at a time (they are independent)."""
    distinct = sorted(set(urls))
    with ThreadPoolExecutor(max_workers=8) as pool:
        documents = pool.map(lambda url: fetch_metadata(url, base=base, ca_file=ca_file, verify=verify), distinct)
        return dict(zip(distinct, documents, strict=True))


def connectivity_result(records: list[object]) -> ConnectivityResult:
    """Test-OAuthConnectivity's ValidationResultNode(s) as one result: an Error anywhere is an Error."""
    from hybridtrust.powershell import PSRecord

    nodes = [record for record in records if isinstance(record, PSRecord)]
    errors = [node for node in nodes if str(node.get("ResultType") or "").lower() != "success"]
    chosen = errors or nodes
    result_type = str(chosen[0].get("ResultType") or "Unknown") if chosen else "Unknown"
    detail = " ".join(str(node.get("Detail") or "") for node in chosen).strip()
    return ConnectivityResult(result_type, detail or "Test-OAuthConnectivity returned no result")
