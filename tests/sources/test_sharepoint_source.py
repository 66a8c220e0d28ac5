"""The live SharePoint source against the lab's SharePoint endpoint, and the collector script it shares."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridtrust.facts import (
    AppPrincipal,
    AuthenticationProvider,
    Missing,
    SecurityTokenServiceConfig,
    ServiceApplicationProxy,
    TrustedIssuer,
)
from hybridtrust.lab import cmdlets
from hybridtrust.lab.contoso import CONTOSO_TENANT, SHAREPOINT_ONLINE, SHAREPOINT_WEB_APPLICATION, flawed_contoso
from hybridtrust.lab.server import Lab, start_lab
from hybridtrust.lab.state import LabState
from hybridtrust.sources.evidence import SHAREPOINT_DOCUMENTS
from hybridtrust.sources.remoting import RemotingSettings
from hybridtrust.sources.sharepoint import (
    SharePointDocuments,
    collect_sharepoint,
    collector_script,
    projection_functions,
)
from tests.support import NOW

SCRIPT = Path(__file__).resolve().parents[2] / "hybridtrust" / "collector" / "HybridTrust-Collect.ps1"


class Recorder:
    """The lab's cmdlet engine, recording every command and failing the ones a test names."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any], bool]] = []
        self.failing: dict[str, cmdlets.CmdletError] = {}

    def __call__(self, state: LabState, endpoint: Any, commands: list[Any]) -> Iterator[Any]:
        invocations = [cmdlets.Invocation(c.name, dict(c.parameters), c.is_script) for c in commands]
        self.commands.extend((i.name, i.parameters, i.is_script) for i in invocations)
        for invocation in invocations:
            if invocation.name in self.failing:
                raise self.failing[invocation.name]
        yield from cmdlets.invoke(state, endpoint, invocations)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def lab(recorder: Recorder) -> Iterator[Lab]:
    with start_lab(flawed_contoso(NOW), invoke=recorder, services=()) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(lab: Lab, recorder: Recorder) -> Iterator[None]:
    recorder.commands.clear()
    recorder.failing.clear()
    lab.reset_counters()
    yield
    lab.sharepoint.faults.clear()


def settings_for(lab: Lab, **changes: Any) -> RemotingSettings:
    endpoint = lab.sharepoint
    settings = RemotingSettings(
        uri=endpoint.uri,
        configuration_name="Microsoft.PowerShell",
        auth="basic",
        username=endpoint.username,
        password=endpoint.password,
        ca_file=Path(endpoint.ca_file),
        connect_timeout=5,
        operation_timeout=20,
    )
    return dataclasses.replace(settings, **changes)


def name_identifier(lab: Lab) -> str:
    """What live.py derives from Graph: <object id of the 00000003 service principal>@<tenant id>."""
    principals = lab.state.tenants[CONTOSO_TENANT]["servicePrincipals"]
    principal = next(sp for sp in principals if sp["appId"] == SHAREPOINT_ONLINE)
    return f"{principal['id']}@{CONTOSO_TENANT}"


def collect(lab: Lab, app_principal: str | Missing | None = "derive", **changes: Any) -> SharePointDocuments:
    return collect_sharepoint(
        settings_for(lab, **changes),
        web_application=SHAREPOINT_WEB_APPLICATION,
        app_principal=name_identifier(lab) if app_principal == "derive" else app_principal,
    )


# -- the happy path --------------------------------------------------------------------------------------
def test_every_document_of_the_farm(lab: Lab, recorder: Recorder) -> None:
    documents = collect(lab)

    assert set(documents.sharepoint) == set(SHAREPOINT_DOCUMENTS)
    assert not [v for v in documents.sharepoint.values() if isinstance(v, Missing)]
    realm = documents.sharepoint["Get-SPAuthenticationRealm"]
    assert isinstance(realm, list) and len(realm) == 1
    assert realm[0].text == lab.state.sharepoint["AuthenticationRealm"]
    issuers = [TrustedIssuer.from_record(r) for r in documents.sharepoint["Get-SPTrustedSecurityTokenIssuer"]]  # type: ignore[union-attr]
    assert issuers[0].registered_issuer_name == f"00000001-0000-0000-c000-000000000000@{CONTOSO_TENANT}"
    principals = [AppPrincipal.from_record(r) for r in documents.sharepoint["Get-SPAppPrincipal"]]  # type: ignore[union-attr]
    assert [p.name_identifier for p in principals] == [name_identifier(lab).lower()]


def test_the_projections_carry_the_names_the_facts_read(lab: Lab) -> None:
    documents = collect(lab)

    (config_record,) = documents.sharepoint["Get-HybridTrustSecurityTokenServiceConfig"]  # type: ignore[misc]
    assert {
        "AllowOAuthOverHttp",
        "SigningCertificateRawData",
        "SigningCertificateThumbprint",
        "WebApplicationUrl",
    } <= set(config_record)
    assert config_record.is_a("HybridTrust.SecurityTokenServiceConfig")
    config = SecurityTokenServiceConfig.from_record(config_record)
    assert config.allow_oauth_over_http is True  # a defect of the flawed Contoso
    assert config.signing_certificate is not None
    assert config.signing_certificate.thumbprint == config_record["SigningCertificateThumbprint"]
    (provider_record,) = documents.sharepoint["Get-HybridTrustAuthenticationProvider"]  # type: ignore[misc]
    assert {"WebApplicationUrl", "Zone", "UseWindowsIntegratedAuthentication", "DisableKerberos"} <= set(
        provider_record
    )
    provider = AuthenticationProvider.from_record(provider_record)
    assert (provider.web_application, provider.zone, provider.use_windows_integrated, provider.disable_kerberos) == (
        SHAREPOINT_WEB_APPLICATION,
        "Default",
        True,
        True,
    )


PROXY_PROJECTION = "Get-HybridTrustServiceApplicationProxy"


def test_each_proxy_says_whether_it_is_in_the_default_proxy_group(lab: Lab) -> None:
    documents = collect(lab)
    proxies = documents.sharepoint["Get-SPServiceApplicationProxy"]
    assert isinstance(proxies, list) and proxies
    assert [ServiceApplicationProxy.from_record(p).in_default_proxy_group for p in proxies] == [True]


def test_one_runspace_the_snap_in_the_functions_then_plain_commands(lab: Lab, recorder: Recorder) -> None:
    collect(lab)

    scripts = [name for name, _, is_script in recorder.commands if is_script]
    assert scripts == [projection_functions()]  # the collector's own text, nothing else
    names = [name for name, _, is_script in recorder.commands if not is_script]
    assert names[0] == "Add-PSSnapin"
    # Every document is its cmdlet, except the proxies: the collector's projection notes their group.
    cmdlets = {**{name: name for name in SHAREPOINT_DOCUMENTS}, "Get-SPServiceApplicationProxy": PROXY_PROJECTION}
    assert sorted(names[1:]) == sorted(cmdlets.values())
    sent = {name: parameters for name, parameters, is_script in recorder.commands if not is_script}
    assert sent["Add-PSSnapin"] == {"Name": "Microsoft.SharePoint.PowerShell"}
    assert sent["Get-SPAppPrincipal"] == {"Site": SHAREPOINT_WEB_APPLICATION, "NameIdentifier": name_identifier(lab)}
    assert sent["Get-HybridTrustAuthenticationProvider"] == {"WebApplication": SHAREPOINT_WEB_APPLICATION}
    counters = lab.sharepoint.counters()
    assert counters["wsman"]["Create"] == 1 and counters["pipelines"] == 1 + len(SHAREPOINT_DOCUMENTS)
    assert lab.exchange.counters()["pipelines"] == 0


def test_the_hybrid_site_is_where_the_app_principal_is_looked_up(lab: Lab, recorder: Recorder) -> None:
    site = f"{SHAREPOINT_WEB_APPLICATION}/sites/hybrid"
    documents = collect_sharepoint(
        settings_for(lab), web_application=SHAREPOINT_WEB_APPLICATION, hybrid_site=site, app_principal="x@y"
    )
    sent = {name: parameters for name, parameters, _ in recorder.commands}
    assert sent["Get-SPAppPrincipal"]["Site"] == site
    assert documents.sharepoint["Get-SPAppPrincipal"] == []


# -- what is not known, and failures ------------------------------------------------------------------------
def test_an_unknown_name_identifier_leaves_the_app_principal_missing(lab: Lab, recorder: Recorder) -> None:
    why = Missing("sharepoint:Get-SPAppPrincipal", "not collected: Graph could not read the principal")
    documents = collect(lab, app_principal=why)

    assert documents.sharepoint["Get-SPAppPrincipal"] == why
    assert "Get-SPAppPrincipal" not in [name for name, _, _ in recorder.commands]
    assert isinstance(documents.sharepoint["Get-SPAuthenticationRealm"], list)
    # A tenant without a SharePoint Online principal can have no app principal: an empty document.
    assert collect(lab, app_principal=None).sharepoint["Get-SPAppPrincipal"] == []


def test_a_failing_projection_is_missing_with_the_servers_words(lab: Lab, recorder: Recorder) -> None:
    recorder.failing["Get-HybridTrustAuthenticationProvider"] = cmdlets.CmdletError(
        f"Cannot find an SPWebApplication object that contains the following Name, Id, or Url: "
        f"{SHAREPOINT_WEB_APPLICATION}.",
        error_id="Microsoft.SharePoint.PowerShell.SPCmdletPipeBindException,Get-HybridTrustAuthenticationProvider",
        category="InvalidData",
        exception_type="Microsoft.SharePoint.PowerShell.SPCmdletPipeBindException",
        terminating=True,
    )
    documents = collect(lab)

    missing = documents.sharepoint["Get-HybridTrustAuthenticationProvider"]
    assert isinstance(missing, Missing)
    assert missing.reason == (
        f"Get-HybridTrustAuthenticationProvider on {lab.sharepoint.uri}: Cannot find an SPWebApplication object "
        f"that contains the following Name, Id, or Url: {SHAREPOINT_WEB_APPLICATION}."
    )
    assert [k for k, v in documents.sharepoint.items() if isinstance(v, Missing)] == [
        "Get-HybridTrustAuthenticationProvider"
    ]


def test_no_snap_in_makes_every_document_missing(lab: Lab, recorder: Recorder) -> None:
    recorder.failing["Add-PSSnapin"] = cmdlets.CmdletError(
        "The Windows PowerShell snap-in 'Microsoft.SharePoint.PowerShell' is not installed on this computer.",
        error_id="AddPSSnapInRead,Microsoft.PowerShell.Commands.AddPSSnapinCommand",
        category="InvalidArgument",
        exception_type="System.Management.Automation.PSArgumentException",
        terminating=True,
    )
    documents = collect(lab)

    for name, value in documents.sharepoint.items():
        assert isinstance(value, Missing)
        assert value.reason == (
            f"{name}: Add-PSSnapin Microsoft.SharePoint.PowerShell on {lab.sharepoint.uri}: The Windows PowerShell "
            "snap-in 'Microsoft.SharePoint.PowerShell' is not installed on this computer."
        )


def test_a_refused_connection_makes_every_document_missing(lab: Lab) -> None:
    lab.sharepoint.faults.http_status(401)
    documents = collect(lab)

    for name, value in documents.sharepoint.items():
        assert isinstance(value, Missing) and value.key == f"sharepoint:{name}"
        assert f"could not open SharePoint remote PowerShell at {lab.sharepoint.uri}" in value.reason
        assert "refused the credentials" in value.reason
        assert lab.sharepoint.password not in value.reason


# -- the collector script ------------------------------------------------------------------------------------
def test_the_projection_region_holds_function_definitions_only() -> None:
    body = projection_functions()
    assert len(re.findall(r"^function ", body, re.MULTILINE)) == 3
    # Outside the function bodies: comments and blank lines only (the live source sends it as it is).
    depth, outside = 0, []
    for line in body.splitlines():
        if depth == 0 and line.strip() and not line.lstrip().startswith("#") and not line.startswith("function "):
            outside.append(line)
        depth += line.count("{") - line.count("}")
    assert depth == 0 and outside == []
    for name in (
        "Get-HybridTrustSecurityTokenServiceConfig",
        "Get-HybridTrustAuthenticationProvider",
        "Get-HybridTrustServiceApplicationProxy",
    ):
        assert f"function {name} {{" in body
    for property_name in (
        "AllowOAuthOverHttp",
        "SigningCertificateRawData",
        "SigningCertificateThumbprint",
        "WebApplicationUrl",
        "Zone",
        "UseWindowsIntegratedAuthentication",
        "DisableKerberos",
    ):
        assert re.search(rf"^\s+{property_name}\s+=", body, re.MULTILINE), property_name


def test_the_collector_is_a_readable_script_with_help_and_parameters() -> None:
    text = collector_script()
    assert text == SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("<#\n.SYNOPSIS")
    for keyword in (
        ".DESCRIPTION",
        ".PARAMETER OutputPath",
        ".PARAMETER Exchange",
        ".PARAMETER SharePoint",
        ".EXAMPLE",
    ):
        assert keyword in text
    for parameter in ("[string] $OutputPath", "[switch] $Exchange", "[switch] $SharePoint", "[string] $WebApplication"):
        assert parameter in text
    # Full cmdlet names only: no aliases (%, ?, foreach, where, select, gci, ...).
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for alias in (
        r"\|\s*%",
        r"\|\s*\?",
        r"\|\s*(foreach|where|select|sort|ft|fl)(?![\w-])",
        r"\b(gci|gc|ls|dir|cat|echo)\s",
    ):
        assert not re.search(alias, code, re.IGNORECASE), alias
    # The bundle layout of CONTRACTS.md.
    for name in ("'Get-ExchangeCertificate'", "-ADPropertiesOnly", "manifest.json", "hybridtrust-evidence/1"):
        assert name in text
