"""The live source's projections (``| Select-Object -Property``) give the facts whole objects give.

The per-server objects are asked for as `hybridtrust.sources.exchange.PROJECTIONS`; these tests
project the real Export-Clixml captures the way Select-Object does and parse both. A property a
parser reads but a projection leaves out makes the two differ, whatever the parser does with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from hybridtrust.clixml import read_clixml_file
from hybridtrust.facts import (
    VIRTUAL_DIRECTORY_CMDLETS,
    ClientAccessService,
    Collection,
    ExchangeServer,
    Organization,
    VirtualDirectory,
    VirtualDirectoryKind,
)
from hybridtrust.powershell import PSRecord
from hybridtrust.profile import load_profile
from hybridtrust.sources.exchange import CERTIFICATES, PROJECTIONS
from tests.support import NOW, REAL_CLIXML


def selected(record: PSRecord, names: Iterable[str]) -> PSRecord:
    """What ``Select-Object -Property <names>`` makes of an object, as the client receives it:
    a PSCustomObject of type Selected.<type>, the names matched case-insensitively and spelled
    as the object spells them, $null for a name it lacks, no ToString."""
    spelled = {name.lower(): name for name in record.properties}
    properties = {
        spelled.get(name.lower(), name): record.properties.get(spelled.get(name.lower(), name)) for name in names
    }
    type_names = ("Selected." + record.type_names[0], "System.Management.Automation.PSCustomObject", "System.Object")
    return PSRecord(type_names, properties, None)


def capture(path: str) -> list[PSRecord]:
    return read_clixml_file(REAL_CLIXML / path)


SERVERS = ["exchange2016/GetExchangeServer.xml", "auth-certificate-monitor/GetExchangeServer.xml"]
VIRTUAL_DIRECTORIES: list[tuple[VirtualDirectoryKind, str]] = [
    ("OWA", "exchange2016/GetOwaVirtualDirectory.xml"),
    ("EWS", "exchange2016/GetWebServicesVirtualDirectory.xml"),
]
CERTIFICATE_CAPTURES = [
    "exchange2016/GetExchangeCertificate.xml",
    "auth-certificate-monitor/GetExchangeCertificate.xml",
    "auth-certificate-monitor/GetExchangeCertificateBroken.xml",
]


@pytest.mark.parametrize("path", SERVERS)
def test_a_projected_exchange_server_is_the_same_server(path: str) -> None:
    for record in capture(path):
        projected = selected(record, PROJECTIONS["Get-ExchangeServer"])
        assert ExchangeServer.from_record(projected) == ExchangeServer.from_record(record)


@pytest.mark.parametrize(("kind", "path"), VIRTUAL_DIRECTORIES)
def test_a_projected_virtual_directory_is_the_same_virtual_directory(kind: VirtualDirectoryKind, path: str) -> None:
    for record in capture(path):
        projected = selected(record, PROJECTIONS[VIRTUAL_DIRECTORY_CMDLETS[kind]])
        assert "Server" not in projected  # taken from the Identity: SERVER\name
        assert VirtualDirectory.from_record(kind, projected) == VirtualDirectory.from_record(kind, record)


def test_a_projected_client_access_service_keeps_its_autodiscover_uri() -> None:
    # No capture of Get-ClientAccessService: its two properties, spelled as Exchange spells them.
    whole = PSRecord(
        ("Microsoft.Exchange.Data.Directory.Management.ClientAccessServer",),
        {"Name": "EX01", "AutoDiscoverServiceInternalUri": "https://autodiscover.contoso.com/a.xml", "Fqdn": "ex01"},
        "EX01",
    )
    projected = selected(whole, PROJECTIONS["Get-ClientAccessService"])
    assert ClientAccessService.from_record(projected) == ClientAccessService.from_record(whole)
    assert ClientAccessService.from_record(projected).autodiscover_internal_uri is not None


@pytest.mark.parametrize("path", CERTIFICATE_CAPTURES)
def test_projected_certificates_are_the_same_certificates(path: str) -> None:
    whole = capture(path)
    projected = [selected(record, PROJECTIONS[CERTIFICATES]) for record in whole]
    assert sum(len(str(record.properties)) for record in projected) < sum(len(str(r.properties)) for r in whole)

    def read(records: list[PSRecord]) -> tuple[str, ...]:
        collection = Collection(source="evidence", origin="test", collected_at=NOW, certificates={"EX01": records})
        profile = load_profile("example")
        organization = Organization(profile, collection, profile.cloud, [])
        return tuple(certificate.thumbprint for certificate in organization.certificates_of("EX01").certificates)

    assert read(projected) == read(whole) and read(whole)


def test_every_projected_name_is_a_property_of_the_real_objects() -> None:
    # A misspelt name would come back $null from Select-Object without a word: check the spelling
    # against the objects Exchange really sends. Virtual directories: against OWA's and EWS's
    # together (IISAuthenticationMethods and some flags belong to some kinds only).
    def names(paths: Iterable[str]) -> set[str]:
        return {name for path in paths for record in capture(path) for name in record.properties}

    # MAPI's IISAuthenticationMethods (no capture of Get-MapiVirtualDirectory; Microsoft's docs of
    # Get-/Set-MapiVirtualDirectory spell it so).
    virtual_directories = names(path for _, path in VIRTUAL_DIRECTORIES) | {"IISAuthenticationMethods"}
    found = {
        "Get-ExchangeServer": names(SERVERS),
        CERTIFICATES: names(CERTIFICATE_CAPTURES),
        **{cmdlet: virtual_directories for cmdlet in VIRTUAL_DIRECTORY_CMDLETS.values()},
    }
    for cmdlet, spelled in found.items():
        missing = set(PROJECTIONS[cmdlet]) - spelled
        assert not missing, f"{cmdlet}: {sorted(missing)} are not properties of the real objects"


def test_the_captures_used_here_exist() -> None:
    paths = [*SERVERS, *(path for _, path in VIRTUAL_DIRECTORIES), *CERTIFICATE_CAPTURES]
    assert all(Path(REAL_CLIXML / path).is_file() for path in paths)
