"""A live collection of the lab, saved as an evidence bundle and read back, gives the same facts."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridtrust.clixml import parse_clixml
from hybridtrust.facts import FIRST_PARTY_APP_IDS, Collection, Missing, Organization, Tenant
from hybridtrust.lab.bundle import write_evidence_bundle
from hybridtrust.lab.contoso import CONTOSO_TENANT, flawed_contoso
from hybridtrust.lab.server import Lab, start_lab
from hybridtrust.powershell import PSRecord
from hybridtrust.profile import ExchangeOnlineSection, LabSection, Profile, load_profile
from hybridtrust.sources.evidence import read_evidence_bundle, read_manifest
from hybridtrust.sources.exchange import CERTIFICATES, PROJECTIONS
from hybridtrust.sources.live import EXCHANGE_ONLINE_NOT_REACHED, collect_live
from hybridtrust.sources.remoting import original_clixml, output_record
from hybridtrust.sources.save import records_to_clixml, save_evidence_bundle
from tests.support import NOW


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with start_lab(flawed_contoso(NOW)) as running:
        yield running


@dataclass
class RoundTrip:
    profile: Profile
    live: Collection
    saved: Path
    offline: Collection


def organization(profile: Profile, collection: Collection) -> Organization:
    cloud = profile.cloud
    tenants = [Tenant(t.id, t.initial_domain, cloud, collection.tenants.get(t.id)) for t in profile.tenants]
    return Organization(profile, collection, cloud, tenants)


@pytest.fixture(scope="module")
def round_trip(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    folder = tmp_path_factory.mktemp("round-trip")
    # The lab as `python -m hybridtrust.lab serve` describes it: the external lab mode.
    connection = folder / "lab-connection.json"
    connection.write_text(json.dumps(lab.describe()) + "\n", encoding="utf-8")
    # Exchange Online from an administrator's export (the lab bundle writer makes one).
    write_evidence_bundle(lab.state, folder / "lab-bundle", collected_at=NOW)
    profile = load_profile("lab").model_copy(
        update={
            "lab": LabSection(mode="external", connection=connection),
            "exchange_online": ExchangeOnlineSection(evidence=folder / "lab-bundle" / "exchange-online"),
        }
    )
    live = collect_live(profile)
    saved = save_evidence_bundle(live, folder / "saved")
    offline = read_evidence_bundle(saved, [t.id for t in profile.tenants])
    return RoundTrip(profile, live, saved, offline)


def test_the_live_collection_is_complete(round_trip: RoundTrip) -> None:
    live = round_trip.live
    assert live.source == "live"
    missing = [
        value
        for store in (live.exchange, live.certificates, live.exchange_online, live.sharepoint)
        for value in store.values()
        if isinstance(value, Missing)
    ]
    assert missing == []
    for tenant in live.tenants.values():
        assert not isinstance(tenant.organization, Missing) and not isinstance(tenant.applications, Missing)
        assert not [p for p in tenant.service_principals.values() if isinstance(p, Missing)]
    assert any("external lab" in note for note in live.notes)


def test_saved_and_read_back_gives_the_same_facts(round_trip: RoundTrip) -> None:
    live = organization(round_trip.profile, round_trip.live)
    offline = organization(round_trip.profile, round_trip.offline)

    assert round_trip.offline.collected_at == round_trip.live.collected_at
    assert offline.servers == live.servers
    assert offline.virtual_directories() == live.virtual_directories()
    assert offline.auth_servers == live.auth_servers
    assert offline.partner_applications == live.partner_applications
    assert offline.auth_config == live.auth_config
    assert offline.organization_config == live.organization_config
    assert offline.setting_overrides == live.setting_overrides
    assert offline.client_access_services == live.client_access_services
    assert offline.accepted_domains == live.accepted_domains
    assert offline.intra_organization_connectors == live.intra_organization_connectors
    assert offline.cloud_intra_organization_connectors == live.cloud_intra_organization_connectors
    assert offline.users == live.users and offline.mail_users == live.mail_users
    assert offline.role_assignments == live.role_assignments
    assert [s.name for s in live.auth_certificate_servers] == ["EX01", "EX02", "EX03", "EX04"]
    for server in live.auth_certificate_servers:
        assert offline.certificates_of(server.name) == live.certificates_of(server.name)
    assert offline.sharepoint_realm == live.sharepoint_realm
    assert offline.trusted_issuers == live.trusted_issuers
    assert offline.service_application_proxies == live.service_application_proxies
    assert offline.app_principals == live.app_principals
    assert offline.security_token_service == live.security_token_service
    assert offline.authentication_providers == live.authentication_providers
    for live_tenant, offline_tenant in zip(live.tenants, offline.tenants, strict=True):
        assert offline_tenant.domains == live_tenant.domains
        assert offline_tenant.applications == live_tenant.applications
        for app_id in FIRST_PARTY_APP_IDS:
            assert offline_tenant.service_principal_or_none(app_id) == live_tenant.service_principal_or_none(app_id)


def test_an_audit_asks_for_projections_and_gets_the_facts_of_whole_objects(round_trip: RoundTrip, lab: Lab) -> None:
    lab.exchange.reset_counters()
    projected = collect_live(round_trip.profile, keep_clixml=False)  # an audit that saves no evidence
    received = lab.exchange.counters()["received"]

    # Each per-server cmdlet, and each certificate query, is piped to Select-Object with its
    # projection (the lab records a pipeline's commands in order); no other cmdlet is.
    asked: dict[str, set[tuple[str, ...]]] = {}
    for before, entry in itertools.pairwise(received):
        if entry["cmdlet"] == "Select-Object":
            names = entry["parameters"]["Property"]
            asked.setdefault(before["cmdlet"], set()).add(tuple(names) if isinstance(names, list) else (names,))
    assert asked == {cmdlet: {names} for cmdlet, names in PROJECTIONS.items()}
    assert sum(entry["cmdlet"] == CERTIFICATES for entry in received) == 4

    whole = organization(round_trip.profile, round_trip.live)  # kept to be saved: whole objects
    assert all("Server" in record for record in round_trip.live.exchange["Get-OwaVirtualDirectory"])  # type: ignore[union-attr]
    part = organization(round_trip.profile, projected)
    assert not any("Server" in record for record in projected.exchange["Get-OwaVirtualDirectory"])  # type: ignore[union-attr]
    assert part.servers == whole.servers
    assert part.virtual_directories() == whole.virtual_directories()
    assert part.client_access_services == whole.client_access_services
    for server in whole.auth_certificate_servers:
        assert part.certificates_of(server.name) == whole.certificates_of(server.name)


def test_the_bundle_holds_what_the_server_sent_and_no_secret(round_trip: RoundTrip, lab: Lab) -> None:
    saved = round_trip.saved
    manifest = read_manifest(saved)
    assert manifest["collector"] == "hybridtrust live"
    assert manifest["exchange_certificates_collected_from"] == ["EX01", "EX02", "EX03", "EX04"]
    assert manifest["not_collected"] == {}
    # Skype for Business Online is absent in fabrikam: Graph's 404 body, read back as "absent".
    fabrikam = next(t for t in round_trip.profile.tenants if t.id != CONTOSO_TENANT).id
    body = json.loads((saved / "entra" / fabrikam / "servicePrincipals" / f"{FIRST_PARTY_APP_IDS[2]}.json").read_text())
    assert body["error"]["code"] == "Request_ResourceNotFound"
    # Each object's CLIXML is the server's, renumbered into one document.
    server_records = round_trip.live.exchange["Get-ExchangeServer"]
    assert isinstance(server_records, list)
    first = original_clixml(server_records[0])
    assert first is not None and first.split(">", 2)[1] in (saved / "exchange" / "Get-ExchangeServer.xml").read_text(
        encoding="utf-8-sig"
    )
    everything = "\n".join(p.read_text(encoding="utf-8-sig") for p in saved.rglob("*") if p.is_file())
    secrets = [lab.exchange.password, lab.sharepoint.password]
    for tenant in lab.describe()["graph"]["tenants"].values():
        secrets.extend(client["client_secret"] for client in tenant.values() if client.get("client_secret"))
    assert all(secret and secret not in everything for secret in secrets)
    assert "PRIVATE KEY" not in everything


def test_exchange_online_not_reached_is_missing_by_design(lab: Lab) -> None:
    profile = load_profile("lab")
    from hybridtrust.sources.live import exchange_online_documents

    (missing,) = exchange_online_documents(profile).values()
    assert missing == Missing(
        "exchange-online:Get-IntraOrganizationConnector", EXCHANGE_ONLINE_NOT_REACHED, by_design=True
    )


def test_records_without_the_servers_xml_are_serialized_from_their_values() -> None:
    identity = PSRecord(("Microsoft.Exchange.Data.Directory.ADObjectId", "System.Object"), {"Name": "EX01"}, "EX01")
    records = [
        PSRecord(
            ("Microsoft.Exchange.Data.Directory.Management.IntraOrganizationConnector", "System.Object"),
            {
                "Name": "HybridIOC",
                "Enabled": True,
                "TargetAddressDomains": ["contoso.com", "fabrikam.com"],
                "Identity": identity,
                "Count": 3,
                "RawData": b"\x01\x02",
            },
            "HybridIOC",
        ),
        PSRecord(("System.String", "System.Object"), {}, "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"),
        PSRecord(("System.Object",), {"Identity": identity}, None),
    ]
    assert [original_clixml(record) for record in records] == [None, None, None]

    again: list[Any] = parse_clixml(records_to_clixml(records), "test")
    assert again == records


def test_a_string_output_is_written_back_as_the_server_wrote_it() -> None:
    text = "realm_x0041_ with\r\ncontrol\tcharacters <&>"
    record = output_record(text, "Get-SPAuthenticationRealm")
    assert record.text == text
    assert parse_clixml(records_to_clixml([record]), "test") == [record]


def test_a_lab_that_cannot_start_leaves_every_document_missing_with_the_cause(tmp_path: Path) -> None:
    state = tmp_path / "no-such-state.json"
    profile = load_profile("lab").model_copy(update={"lab": LabSection(mode="embedded", state=state)})
    collection = collect_live(profile)

    cause = f"the embedded lab could not start: {state}: cannot read the lab state"
    assert cause in collection.exchange["Get-AuthServer"].reason  # type: ignore[union-attr]
    assert cause in collection.sharepoint["Get-SPAuthenticationRealm"].reason  # type: ignore[union-attr]
    for tenant in collection.tenants.values():
        assert isinstance(tenant.domains, Missing) and cause in tenant.domains.reason
