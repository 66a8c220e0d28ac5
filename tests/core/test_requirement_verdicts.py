"""Every requirement, passing and failing, judged from evidence bundles.

The compliant Contoso passes every requirement that applies. Each mutation
below changes one value of that world (or of its bundle, or of the profile), and
the suite must then fail exactly the requirements that depend on that value:
no fewer (the check works) and no more (the checks are independent). All
mutations are judged in one run with one profile each, which also exercises
several organizations in one run.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import catalog
from hybridtrust.lab.state import LabState
from tests.support import SuiteRun, run_suite, write_bundle, write_profile

CONTOSO = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
FABRIKAM = "3c9e7b21-6d4f-4a8e-b5c1-92f0d7e4a6b8"
EXO = "00000002-0000-0ff1-ce00-000000000000"
SPO = "00000003-0000-0ff1-ce00-000000000000"
SFB = "00000004-0000-0ff1-ce00-000000000000"
AUTH_CERT_NOT_AFTER = dt.datetime(2030, 11, 19, 12, 0, tzinfo=dt.UTC)

Document = dict[str, Any]


def exchange(doc: Document, noun: str) -> list[dict[str, Any]]:
    return doc["exchange"].setdefault(noun, [])


def one(objects: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [o for o in objects if all(o.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"expected one object matching {match}, found {len(found)}"
    return found[0]


def principal(doc: Document, tenant: str, app_id: str) -> dict[str, Any]:
    return one(doc["tenants"][tenant]["servicePrincipals"], appId=app_id)


def evosts(doc: Document, tenant: str) -> dict[str, Any]:
    return one(exchange(doc, "AuthServer"), Type="AzureAD", Realm=tenant)


def without(values: list[str], *removed: str) -> list[str]:
    assert all(value in values for value in removed), f"{removed} not all in {values}"
    return [value for value in values if value not in removed]


def add_legacy_server(doc: Document) -> None:
    server = dict(one(exchange(doc, "ExchangeServer"), Name="EX04"))
    server.update(
        Name="EX2010", Fqdn="ex2010.contoso.local", Identity="EX2010", AdminDisplayVersion="Version 14.3 (Build 513.0)",
        IsClientAccessServer=False, IsE15OrLater=False, ServerRole="Mailbox, HubTransport",
    )  # fmt: skip
    exchange(doc, "ExchangeServer").append(server)


def add_address_space(doc: Document) -> None:
    exchange(doc, "AvailabilityAddressSpace").append(
        {
            "Name": "contoso.mail.onmicrosoft.com", "Identity": "contoso.mail.onmicrosoft.com",
            "ForestName": "contoso.mail.onmicrosoft.com", "AccessMethod": "InternalProxy", "UseServiceAccount": True,
            "ProxyUrl": "https://mail.contoso.com/EWS/Exchange.asmx", "UserName": None,
        }
    )  # fmt: skip


def add_override(doc: Document, name: str, component: str, section: str, enabled: str) -> None:
    exchange(doc, "SettingOverride").append(
        {"Name": name, "Identity": name, "ComponentName": component, "SectionName": section,
         "Parameters": [f"Enabled={enabled}"], "Reason": "test", "Server": []}
    )  # fmt: skip


@dataclass
class Mutation:
    name: str
    flips: set[str]
    """Requirement ids that must go from passed to failed (or error) -- and no others."""
    change: Callable[[Document], None] | None = None
    bundle: Callable[[Path], None] | None = None
    base: tuple[Callable[[Document], None], ...] = ()
    """Changes that make the requirement apply at all; the baseline of this mutation includes them."""
    collected_at: dt.datetime | None = None
    resource_forest: bool = False
    passes: set[str] = field(default_factory=set)
    """Requirements that this mutation's *baseline* must pass (their passing case)."""


def _needing(key: str) -> set[str]:
    return {r.id for r in catalog.REQUIREMENTS if key in r.needs and not r.live_only}


MUTATIONS = [
    Mutation("evosts-disabled", {"EXO-AUTHSERVER", "HMA-EVOSTS"},
             lambda d: evosts(d, CONTOSO).update(Enabled=False)),
    Mutation("evosts-metadata", {"EXO-AUTHSERVER-METADATA"},
             lambda d: evosts(d, FABRIKAM).update(AuthMetadataUrl="https://adfs.fabrikam.com/FederationMetadata/2007-06/FederationMetadata.xml")),
    Mutation("partner-disabled", {"EXO-PARTNERAPP"},
             lambda d: one(exchange(d, "PartnerApplication"), ApplicationIdentifier=EXO).update(Enabled=False)),
    Mutation("partner-metadata", {"EXO-PARTNERAPP"},
             lambda d: one(exchange(d, "PartnerApplication"), ApplicationIdentifier=EXO).update(AuthMetadataUrl="https://accounts.accesscontrol.windows.net/metadata/json/1")),
    Mutation("app-account-role", {"EXO-APPACCOUNT"},
             lambda d: exchange(d, "ManagementRoleAssignment").remove(one(exchange(d, "ManagementRoleAssignment"), Role="Mailbox Search"))),
    Mutation("authcert-missing-on-ex03", {"EXO-AUTHCERT", "HMA-AUTHCERT"},
             lambda d: exchange(d, "ExchangeCertificate").remove(
                 one(exchange(d, "ExchangeCertificate"), Identity="EX03\\" + exchange(d, "AuthConfig")[0]["CurrentCertificateThumbprint"]))),
    Mutation("authcert-45-days", {"EXO-AUTHCERT-RENEWAL"}, collected_at=AUTH_CERT_NOT_AFTER - dt.timedelta(days=45)),
    Mutation("authcert-18-days", {"EXO-AUTHCERT", "HMA-AUTHCERT", "EXO-AUTHCERT-RENEWAL"},
             collected_at=AUTH_CERT_NOT_AFTER - dt.timedelta(days=18)),
    Mutation("authcert-unpublished", {"EXO-AUTHCERT-PUBLISHED"},
             lambda d: one(d["tenants"][CONTOSO]["applications"], displayName=d["tenants"][CONTOSO]["applications"][0]["displayName"]).update(keyCredentials=[])),
    Mutation("spn-wildcard-fabrikam", {"EXO-SPN-AUTHORITIES"},
             lambda d: principal(d, CONTOSO, EXO).update(servicePrincipalNames=without(principal(d, CONTOSO, EXO)["servicePrincipalNames"], f"{EXO}/*.fabrikam.com"))),
    Mutation("ioc-onprem-disabled", {"EXO-IOC-ONPREM"},
             lambda d: one(exchange(d, "IntraOrganizationConnector"), TargetAddressDomains=["contoso.mail.onmicrosoft.com"]).update(Enabled=False)),
    Mutation("ioc-cloud-endpoint", {"EXO-IOC-CLOUD"},
             lambda d: d["exchange_online"]["IntraOrganizationConnector"][0].update(DiscoveryEndpoint="https://autodiscover.contoso.net/autodiscover/autodiscover.svc")),
    Mutation("availability-missing", {"EXO-AVAILABILITY-LEGACY"},
             lambda d: exchange(d, "AvailabilityAddressSpace").clear(),
             base=(add_legacy_server, add_address_space), passes={"EXO-AVAILABILITY-LEGACY"}),
    Mutation("availability-wrong-proxy", {"EXO-AVAILABILITY-LEGACY"},
             lambda d: exchange(d, "AvailabilityAddressSpace")[0].update(ProxyUrl="https://legacy.contoso.com/EWS/Exchange.asmx"),
             base=(add_legacy_server, add_address_space), passes={"EXO-AVAILABILITY-LEGACY"}),
    Mutation("hybrid-server-not-mailbox", {"EXO-HYBRID-SERVERS"},
             lambda d: one(exchange(d, "ExchangeServer"), Name="EX04").update(IsMailboxServer=False, ServerRole="ClientAccess")),
    Mutation("wssecurity-off", {"EXO-WSSECURITY"},
             lambda d: one(exchange(d, "WebServicesVirtualDirectory"), Server="EX03").update(
                 InternalAuthenticationMethods=["Ntlm", "WindowsIntegrated", "OAuth"], WSSecurityAuthentication=False)),
    Mutation("dedicated-app-gone", {"HYB-DEDICATED-APP", "EXO-AUTHCERT-PUBLISHED"},
             lambda d: d["tenants"][FABRIKAM].update(applications=[])),
    Mutation("shared-sp-keeps-cert", {"HYB-SHARED-SP-CLEAN"},
             lambda d: principal(d, CONTOSO, EXO).update(keyCredentials=list(principal(d, CONTOSO, SFB)["keyCredentials"]))),
    Mutation("audience-validation-off", {"HYB-AUDIENCE-VALIDATION"},
             lambda d: add_override(d, "DisableAudience", "OAuth", "AppIdBasedAudienceValidation", "false")),
    Mutation("acs-disabled", {"SFB-AUTHSERVER"},
             lambda d: one(exchange(d, "AuthServer"), Type="MicrosoftACS").update(Enabled=False)),
    Mutation("sfb-account-visible", {"SFB-APPACCOUNT"},
             lambda d: exchange(d, "MailUser")[0].update(HiddenFromAddressListsEnabled=False)),
    Mutation("sfb-role", {"SFB-ROLES"},
             lambda d: exchange(d, "ManagementRoleAssignment").remove(
                 one(exchange(d, "ManagementRoleAssignment"), Role="ArchiveApplication", RoleAssigneeName="SfBOnline-ApplicationAccount"))),
    Mutation("sfb-partner-disabled", {"SFB-PARTNERAPP"},
             lambda d: one(exchange(d, "PartnerApplication"), ApplicationIdentifier=SFB).update(Enabled=False)),
    Mutation("sfb-cert-unpublished", {"SFB-AUTHCERT-PUBLISHED"},
             lambda d: principal(d, CONTOSO, SFB).update(keyCredentials=[])),
    Mutation("sfb-spn", {"SFB-SPN"},
             lambda d: principal(d, CONTOSO, EXO).update(servicePrincipalNames=without(principal(d, CONTOSO, EXO)["servicePrincipalNames"], f"{EXO}/*.contoso.com"))),
    Mutation("hma-spn-url", {"HMA-SPN-URLS"},
             lambda d: principal(d, FABRIKAM, EXO).update(servicePrincipalNames=without(principal(d, FABRIKAM, EXO)["servicePrincipalNames"], "https://mail.contoso.com/"))),
    Mutation("vdir-oauth-oab", {"HMA-VDIR-OAUTH"},
             lambda d: one(exchange(d, "OabVirtualDirectory"), Server="EX03").update(ExternalAuthenticationMethods=["WindowsIntegrated"])),
    Mutation("two-default-endpoints", {"HMA-DEFAULT-ENDPOINT"},
             lambda d: evosts(d, FABRIKAM).update(IsDefaultAuthorizationEndpoint=True)),
    Mutation("domainname-empty", {"HMA-DOMAINNAME"}, lambda d: evosts(d, FABRIKAM).update(DomainName=[])),
    Mutation("client-profile-off", {"HMA-CLIENT-PROFILE"},
             lambda d: exchange(d, "OrganizationConfig")[0].update(OAuth2ClientProfileEnabled=False)),
    Mutation("owa-build-cu13", {"OWA-BUILD"},
             lambda d: one(exchange(d, "ExchangeServer"), Name="EX03").update(AdminDisplayVersion="Version 15.2 (Build 1258.12)")),
    Mutation("reply-url-owa", {"OWA-REPLY-URLS"},
             lambda d: principal(d, FABRIKAM, EXO).update(replyUrls=without(principal(d, FABRIKAM, EXO)["replyUrls"], "https://mail.contoso.com/owa"))),
    Mutation("ecp-basic", {"OWA-VDIR-AUTH"},
             lambda d: one(exchange(d, "EcpVirtualDirectory"), Server="EX02").update(InternalAuthenticationMethods=["Basic", "OAuth"])),
    Mutation("download-domains-override", {"OWA-DOWNLOAD-DOMAINS"},
             lambda d: exchange(d, "SettingOverride").remove(one(exchange(d, "SettingOverride"), SectionName="OAuthIdentityCacheFixForDownloadDomains"))),
    Mutation("resource-forest-override", {"OWA-RESOURCE-FOREST"},
             lambda d: exchange(d, "SettingOverride").remove(one(exchange(d, "SettingOverride"), SectionName="OwaHMAFixForAfRfScenarios")),
             base=(lambda d: add_override(d, "OWA HMA AFRF Support", "OAuth", "OwaHMAFixForAfRfScenarios", "true"),),
             resource_forest=True, passes={"OWA-RESOURCE-FOREST"}),
    Mutation("webapp-kerberos", {"SPS-WEBAPP-NTLM"},
             lambda d: d["sharepoint"]["AuthenticationProvider"][0].update(DisableKerberos=False)),
    Mutation("oauth-over-http", {"SPS-OAUTH-HTTP"},
             lambda d: d["sharepoint"]["SecurityTokenServiceConfig"].update(AllowOAuthOverHttp=True)),
    Mutation("sts-unpublished", {"SPS-STS-CERT-PUBLISHED"},
             lambda d: principal(d, CONTOSO, SPO).update(keyCredentials=[])),
    Mutation("sps-spn-missing", {"SPS-SPN"},
             lambda d: principal(d, CONTOSO, SPO).update(servicePrincipalNames=without(principal(d, CONTOSO, SPO)["servicePrincipalNames"], f"{SPO}/*.contoso.com"))),
    Mutation("sps-spn-second", {"SPS-SPN"},
             lambda d: principal(d, CONTOSO, SPO)["servicePrincipalNames"].append(f"{SPO}/intranet.contoso.com")),
    Mutation("app-principal", {"SPS-APP-PRINCIPAL"},
             lambda d: d["sharepoint"]["AppPrincipal"][0].update(NameIdentifier=f"00000000-0000-0000-0000-000000000001@{CONTOSO}")),
    Mutation("realm", {"SPS-REALM"}, lambda d: d["sharepoint"].update(AuthenticationRealm=FABRIKAM)),
    Mutation("acs-proxy", {"SPS-ACS-PROXY"},
             lambda d: d["sharepoint"]["ServiceApplicationProxy"][0].update(MetadataEndpointUri=f"https://accounts.accesscontrol.windows.net/{FABRIKAM}/metadata/json/1")),
    Mutation("acs-proxy-outside-default-group", {"SPS-ACS-PROXY"},
             lambda d: d["sharepoint"]["ServiceApplicationProxy"][0].update(InDefaultProxyGroup=False)),
    # An export of plain Get-SPServiceApplicationProxy does not say which group a proxy is in: an error, not a pass.
    Mutation("acs-proxy-membership-not-noted", {"SPS-ACS-PROXY"},
             lambda d: d["sharepoint"]["ServiceApplicationProxy"][0].pop("InDefaultProxyGroup")),
    Mutation("trusted-issuer-self", {"SPS-TRUSTED-ISSUER"},
             lambda d: d["sharepoint"]["TrustedSecurityTokenIssuer"][0].update(IsSelfIssuer=True)),
    # A file that was not collected turns exactly the requirements that need it into errors.
    Mutation("no-auth-server-file", _needing("exchange:Get-AuthServer"),
             bundle=lambda b: (b / "exchange" / "Get-AuthServer.xml").unlink()),
    Mutation("truncated-vdir-file", _needing("exchange:Get-OabVirtualDirectory"),
             bundle=lambda b: (b / "exchange" / "Get-OabVirtualDirectory.xml").write_bytes(
                 (b / "exchange" / "Get-OabVirtualDirectory.xml").read_bytes()[:700])),
]  # fmt: skip

NOT_JUDGED_FROM_EVIDENCE = {r.id for r in catalog.REQUIREMENTS if r.live_only}


def _profile_name(mutation: Mutation, baseline: bool) -> str:
    return f"{'base' if baseline else 'mut'}-{mutation.name}"


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory, compliant_state: LabState) -> SuiteRun:
    """One suite run judging the compliant baseline, each mutation, and each mutation's baseline."""
    root = tmp_path_factory.mktemp("verdicts")
    arguments = []
    for name, (bundle, resource_forest) in write_mutation_bundles(root / "bundles", compliant_state, MUTATIONS).items():
        profile = write_profile(root / f"{name}.toml", bundle, resource_forest=resource_forest)
        arguments += ["--profile", str(profile)]
    # The HTML report of 5,000 tests is not what this test is about; pytest-html would double its time.
    run = run_suite(root, *arguments, "-p", "no:html", timeout=600)
    assert run.results, f"the suite wrote no results:\n{run.output[-4000:]}"
    return run


def test_the_compliant_organization_passes_every_requirement_that_applies(verdicts: SuiteRun) -> None:
    run = verdicts
    failing = run.failing("compliant")
    assert not failing, f"the compliant organization fails {sorted(failing)}:\n{run.output[-3000:]}"
    judged = {r["requirement"] for r in run.results["compliant"]["results"]}
    assert judged == {r.id for r in catalog.REQUIREMENTS}
    passed = run.by_requirement("compliant", "passed")
    skipped_only = judged - passed
    assert skipped_only == NOT_JUDGED_FROM_EVIDENCE | {"EXO-AVAILABILITY-LEGACY", "OWA-RESOURCE-FOREST"}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_one_changed_value_flips_exactly_its_requirements(verdicts: SuiteRun, mutation: Mutation) -> None:
    run = verdicts
    base = _profile_name(mutation, baseline=True) if mutation.base or mutation.resource_forest else "compliant"
    before = run.failing(base)
    after = run.failing(_profile_name(mutation, baseline=False))
    assert after - before == mutation.flips, (
        f"{mutation.name}: newly failing {sorted(after - before)}, expected {sorted(mutation.flips)}"
    )
    assert before - after == set(), f"{mutation.name}: fixed by the mutation?! {sorted(before - after)}"
    assert mutation.passes <= run.by_requirement(base, "passed")


def test_every_requirement_has_a_passing_and_a_failing_case(verdicts: SuiteRun) -> None:
    failing_cases = set().union(*(m.flips for m in MUTATIONS))
    passing_cases = verdicts.by_requirement("compliant", "passed") | set().union(*(m.passes for m in MUTATIONS))
    judged = {r.id for r in catalog.REQUIREMENTS} - NOT_JUDGED_FROM_EVIDENCE
    assert judged - failing_cases == set(), f"no failing case for {sorted(judged - failing_cases)}"
    assert judged - passing_cases == set(), f"no passing case for {sorted(judged - passing_cases)}"


def test_a_missing_file_is_an_error_never_a_pass(verdicts: SuiteRun) -> None:
    results = verdicts.results["mut-no-auth-server-file"]["results"]
    errors = {r["requirement"]: r["message"] for r in results if r["outcome"] == "error"}
    assert set(errors) == _needing("exchange:Get-AuthServer")
    assert all("exchange/Get-AuthServer.xml" in message for message in errors.values())
    assert verdicts.results["mut-no-auth-server-file"]["exit_status"] == 1


def test_a_proxy_whose_group_was_not_noted_is_an_error_naming_the_collector(verdicts: SuiteRun) -> None:
    results = verdicts.results["mut-acs-proxy-membership-not-noted"]["results"]
    [result] = [r for r in results if r["requirement"] == "SPS-ACS-PROXY"]
    assert result["outcome"] == "error"
    assert "Get-HybridTrustServiceApplicationProxy" in result["message"]


def test_a_truncated_file_names_the_file_and_the_position(verdicts: SuiteRun) -> None:
    results = verdicts.results["mut-truncated-vdir-file"]["results"]
    messages = {r["message"] for r in results if r["outcome"] == "error"}
    assert messages and all("exchange/Get-OabVirtualDirectory.xml: not valid CLIXML" in m for m in messages)
    assert all("line" in m and "export it again" in m for m in messages)


def test_severity_follows_how_close_the_certificate_is(verdicts: SuiteRun) -> None:
    results = verdicts.results["mut-authcert-18-days"]["results"]
    severities = {r["severity"] for r in results if r["requirement"] == "EXO-AUTHCERT" and r["outcome"] == "failed"}
    assert severities == {"high"}


def write_mutation_bundles(root: Path, state: LabState, mutations: list[Mutation]) -> dict[str, tuple[Path, bool]]:
    """Bundles (and whether the profile declares a resource forest) by profile name."""
    bundles: dict[str, tuple[Path, bool]] = {}

    def build(name: str, changes: list[Callable[[Document], None]], mutation: Mutation | None) -> None:
        world = state.copy()
        for change in changes:
            change(world.document)
        directory = root / name
        if directory.exists():
            shutil.rmtree(directory)
        collected_at = mutation.collected_at if mutation and mutation.collected_at else None
        write_bundle(world, directory, collected_at)
        if mutation and mutation.bundle:
            mutation.bundle(directory)
        bundles[name] = (directory, bool(mutation and mutation.resource_forest))

    build("compliant", [], None)
    for mutation in mutations:
        if mutation.base or mutation.resource_forest:
            build(
                _profile_name(mutation, True),
                list(mutation.base),
                Mutation("base", set(), resource_forest=mutation.resource_forest),
            )
        changes = [*mutation.base, *([mutation.change] if mutation.change else [])]
        build(_profile_name(mutation, False), changes, mutation)
    return bundles
