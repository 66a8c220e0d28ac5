"""Write a lab organization as an evidence bundle (format ``hybridtrust-evidence/1``).

The bundle is what an administrator's collector would hand over (CONTRACTS.md):

```
manifest.json
exchange/Get-<Noun>.xml                     one Export-Clixml file per cmdlet, all servers together;
                                            virtual directories as -ADPropertiesOnly returns them
exchange/Get-ExchangeCertificate/<server>.xml   per Exchange 2013+ Mailbox server (by Get-ExchangeServer Name)
exchange-online/Get-IntraOrganizationConnector.xml
sharepoint/Get-SPAuthenticationRealm.xml, Get-SPTrustedSecurityTokenIssuer.xml,
          Get-SPServiceApplicationProxy.xml, Get-SPAppPrincipal.xml,
          Get-HybridTrustSecurityTokenServiceConfig.xml, Get-HybridTrustAuthenticationProvider.xml
entra/<tenant id>/organization.json         GET /organization (a list response)
entra/<tenant id>/domains.json              GET /domains (a list response)
entra/<tenant id>/servicePrincipals/<appId>.json
                                            GET /servicePrincipals(appId='<appId>')?$select=...
entra/<tenant id>/applications.json         GET /applications?$filter=startswith(displayName,'ExchangeServerApp-')
```

A service principal the tenant does not have (Skype for Business Online in a
tenant created after its retirement) still gets its file: the body of Graph's
404 answer, ``{"error": {"code": "Request_ResourceNotFound", ...}}``. That is what
a collector receives, and it keeps "absent in the tenant" (a skip) apart from
"not collected" (a missing file, an error).

Secrets never enter a bundle: Entra client secrets and client certificates,
the credentials of the lab, and private keys stay in the lab state. Servers in
`servers_unreachable` get no certificate file, as a collector that could not
reach them would leave it out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from hybridtrust.lab.exchange_objects import (
    Directory,
    exchange_object,
    sharepoint_objects,
    write_clixml,
)
from hybridtrust.lab.state import EXCHANGE_NOUNS, LabState

EVIDENCE_FORMAT = "hybridtrust-evidence/1"
GRAPH = "https://graph.microsoft.com/v1.0"
COLLECTOR = "hybridtrust lab"

# The well-known service principals the catalog reads, in every tenant.
SERVICE_PRINCIPAL_APP_IDS = (
    "00000002-0000-0ff1-ce00-000000000000",
    "00000003-0000-0ff1-ce00-000000000000",
    "00000004-0000-0ff1-ce00-000000000000",
)
SERVICE_PRINCIPAL_SELECT = (
    "id",
    "appId",
    "displayName",
    "appOwnerOrganizationId",
    "servicePrincipalNames",
    "replyUrls",
    "keyCredentials",
    "accountEnabled",
)
APPLICATION_SELECT = ("id", "appId", "displayName", "keyCredentials", "createdDateTime")

SHAREPOINT_FILES = {
    "Get-SPAuthenticationRealm": "AuthenticationRealm",
    "Get-SPTrustedSecurityTokenIssuer": "TrustedSecurityTokenIssuer",
    "Get-SPServiceApplicationProxy": "ServiceApplicationProxy",
    "Get-SPAppPrincipal": "AppPrincipal",
    "Get-HybridTrustSecurityTokenServiceConfig": "SecurityTokenServiceConfig",
    "Get-HybridTrustAuthenticationProvider": "AuthenticationProvider",
}

# Exchange builds from which a server holds the auth certificate: 2013 and later, Mailbox or
# Client Access, not Edge -- the same rule the suite's facts apply (ExchangeServer.holds_auth_certificate).
_MODERN_MAJOR = 15


def _is_modern_mailbox_server(server: dict[str, Any]) -> bool:
    version = str(server.get("AdminDisplayVersion", ""))
    try:
        major = int(version.split()[1].split(".")[0])
    except (IndexError, ValueError):
        return False
    serves_clients = bool(server.get("IsMailboxServer", True)) or bool(server.get("IsClientAccessServer"))
    return major >= _MODERN_MAJOR and serves_clients and not server.get("IsEdgeServer")


def _write_json(path: Path, body: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _select(entity: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {name: entity.get(name) for name in fields}


def _not_found_body(app_id: str, collected_at: datetime) -> dict[str, Any]:
    stamp = collected_at.strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "error": {
            "code": "Request_ResourceNotFound",
            "message": f"Resource '{app_id}' does not exist or one of its queried reference-property objects "
            "are not present.",
            "innerError": {
                "date": stamp,
                "request-id": "00000000-0000-0000-0000-000000000000",
                "client-request-id": "00000000-0000-0000-0000-000000000000",
            },
        }
    }


def write_evidence_bundle(
    state: LabState,
    directory: Path,
    collected_at: datetime,
    servers_unreachable: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Write the lab organization as a ``hybridtrust-evidence/1`` bundle into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with state.lock:
        ad = Directory.of(state)
        ems_host = _management_shell_host(state)

        exchange_dir = directory / "exchange"
        for noun in EXCHANGE_NOUNS:
            if noun == "ExchangeCertificate":
                continue
            objects = [
                exchange_object(noun, data, ad, ad_properties_only=True, computer_name=ems_host)
                for data in state.objects(noun)
            ]
            write_clixml(exchange_dir / f"Get-{noun}.xml", objects)

        servers_written: list[str] = []
        for server in state.objects("ExchangeServer"):
            name = server["Name"]
            if not _is_modern_mailbox_server(server) or name in servers_unreachable:
                continue
            certificates = [
                exchange_object("ExchangeCertificate", data, ad, computer_name=ems_host)
                for data in state.objects("ExchangeCertificate")
                if data.get("Server") == name
            ]
            write_clixml(exchange_dir / "Get-ExchangeCertificate" / f"{name}.xml", certificates)
            servers_written.append(name)

        online = state.exchange_online
        write_clixml(
            directory / "exchange-online" / "Get-IntraOrganizationConnector.xml",
            [
                exchange_object("IntraOrganizationConnector", data, ad, computer_name="outlook.office365.com")
                for data in online.get("IntraOrganizationConnector", [])
            ],
        )

        if state.sharepoint:
            for file_name, noun in SHAREPOINT_FILES.items():
                write_clixml(directory / "sharepoint" / f"{file_name}.xml", sharepoint_objects(state, noun))

        for tenant_id, tenant in state.tenants.items():
            _write_tenant(directory / "entra" / tenant_id, tenant, collected_at)

        manifest = {
            "format": EVIDENCE_FORMAT,
            "collected_at": collected_at.isoformat(),
            "collector": COLLECTOR,
            "organization": state.document.get("organization", {}).get("Name"),
            "tenants": list(state.tenants),
            "exchange_certificates_collected_from": servers_written,
            "servers_unreachable": sorted(servers_unreachable),
            "virtual_directories": "ADPropertiesOnly",
        }
        _write_json(directory / "manifest.json", manifest)


def _management_shell_host(state: LabState) -> str:
    # Export-Clixml in the Exchange Management Shell: objects carry the EMS server as PSComputerName.
    for server in state.objects("ExchangeServer"):
        if _is_modern_mailbox_server(server):
            return str(server.get("Fqdn", server["Name"])).lower()
    return "localhost"


def _write_tenant(folder: Path, tenant: dict[str, Any], collected_at: datetime) -> None:
    _write_json(
        folder / "organization.json",
        {"@odata.context": f"{GRAPH}/$metadata#organization", "value": [tenant["organization"]]},
    )
    _write_json(
        folder / "domains.json",
        {"@odata.context": f"{GRAPH}/$metadata#domains", "value": tenant.get("domains", [])},
    )
    by_app_id = {sp["appId"]: sp for sp in tenant.get("servicePrincipals", [])}
    select = ",".join(SERVICE_PRINCIPAL_SELECT)
    for app_id in SERVICE_PRINCIPAL_APP_IDS:
        path = folder / "servicePrincipals" / f"{app_id}.json"
        sp = by_app_id.get(app_id)
        if sp is None:
            _write_json(path, _not_found_body(app_id, collected_at))
            continue
        body = {"@odata.context": f"{GRAPH}/$metadata#servicePrincipals({select})/$entity"}
        body.update(_select(sp, SERVICE_PRINCIPAL_SELECT))
        _write_json(path, body)
    applications = [
        _select(app, APPLICATION_SELECT)
        for app in tenant.get("applications", [])
        if str(app.get("displayName", "")).startswith("ExchangeServerApp-")
    ]
    _write_json(
        folder / "applications.json",
        {
            "@odata.context": f"{GRAPH}/$metadata#applications({','.join(APPLICATION_SELECT)})",
            "value": applications,
        },
    )
