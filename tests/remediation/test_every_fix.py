"""Every documented fix against the lab, through the real clients: it fixes, re-verifies, and rolls back.

The compliant Contoso is drifted once for (nearly) every catalog row that names a fix
(the flawed Contoso of the shipped lab covers the others), remediated with
--allow-risky, judged again, then rolled back; the state must come back field by field
but for what the record itself says cannot be undone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridtrust import catalog
from hybridtrust.facts import EXCHANGE_ONLINE_APP_ID, SHAREPOINT_ONLINE_APP_ID, SKYPE_ONLINE_APP_ID
from hybridtrust.lab.contoso import CONTOSO_TENANT, FABRIKAM_TENANT, compliant_organization
from hybridtrust.lab.server import start_lab
from hybridtrust.lab.state import LabState
from hybridtrust.remediation.fixes import PLANNERS
from hybridtrust.remediation.model import read_record
from hybridtrust.remediation.rollback import rollback
from hybridtrust.remediation.runner import Options, remediate
from tests.remediation.support import differences, external_profile, judged_failures, load
from tests.support import NOW

# Covered by the flawed Contoso (test_remediate_served_lab), or reachable only with --connectivity.
ELSEWHERE = {
    "EXO-APPACCOUNT",
    "EXO-AUTHCERT-PUBLISHED",
    "SFB-APPACCOUNT",
    "EXO-AVAILABILITY-LEGACY",
    "EXO-WSSECURITY",
    "HMA-SPN-URLS",
    "OWA-REPLY-URLS",
    "HYB-SHARED-SP-CLEAN",
    "SPS-OAUTH-HTTP",
    "EXO-AUTHMETADATA-FRESH",
    "SPS-ACS-METADATA",
}


def _one(state: LabState, noun: str, **match: Any) -> dict[str, Any]:
    return next(o for o in state.objects(noun) if all(o.get(k) == v for k, v in match.items()))


def _principal(state: LabState, tenant: str, app_id: str) -> dict[str, Any]:
    return next(sp for sp in state.tenants[tenant]["servicePrincipals"] if sp["appId"] == app_id)


def drifted() -> LabState:
    state = compliant_organization(NOW)
    contoso_sts = _one(state, "AuthServer", Realm=CONTOSO_TENANT, Type="AzureAD")
    contoso_sts["Enabled"] = False  # EXO-AUTHSERVER, HMA-EVOSTS
    contoso_sts["IsDefaultAuthorizationEndpoint"] = False  # HMA-DEFAULT-ENDPOINT
    _one(state, "AuthServer", Realm=FABRIKAM_TENANT, Type="AzureAD")["DomainName"] = []  # HMA-DOMAINNAME
    _one(state, "AuthServer", Type="MicrosoftACS")["Enabled"] = False  # SFB-AUTHSERVER
    _one(state, "PartnerApplication", Name="Exchange Online")["Enabled"] = False  # EXO-PARTNERAPP
    _one(state, "PartnerApplication", Name="SfBOnline")["Enabled"] = False  # SFB-PARTNERAPP
    state.exchange["ManagementRoleAssignment"] = [  # SFB-ROLES
        a
        for a in state.objects("ManagementRoleAssignment")
        if a["Name"] != "ArchiveApplication-SfBOnline-ApplicationAccount"
    ]
    state.exchange["SettingOverride"] = [  # OWA-DOWNLOAD-DOMAINS
        o for o in state.objects("SettingOverride") if o["SectionName"] != "OAuthIdentityCacheFixForDownloadDomains"
    ]
    disabling = dict(_one(state, "SettingOverride", SectionName="ExchangeOnpremAsThirdPartyAppId"))
    disabling.update(  # HYB-AUDIENCE-VALIDATION (risky)
        Name="Disable audience validation",
        Identity="Disable audience validation",
        ComponentName="OAuth",
        SectionName="AppIdBasedAudienceValidation",
        Parameters=["Enabled=false"],
        Reason="troubleshooting",
    )
    state.objects("SettingOverride").append(disabling)
    state.objects("OrganizationConfig")[0]["OAuth2ClientProfileEnabled"] = False  # HMA-CLIENT-PROFILE (risky)
    ews = _one(state, "WebServicesVirtualDirectory", Server="EX01")  # HMA-VDIR-OAUTH, the switch
    for key in ("InternalAuthenticationMethods", "ExternalAuthenticationMethods"):
        ews[key] = [m for m in ews[key] if m != "OAuth"]
    activesync = _one(state, "ActiveSyncVirtualDirectory", Server="EX01")  # HMA-VDIR-OAUTH, ActiveSync's lists
    activesync["ExternalAuthenticationMethods"] = [
        m for m in activesync["ExternalAuthenticationMethods"] if m != "OAuth"
    ]
    ecp = _one(state, "EcpVirtualDirectory", Server="EX02")  # OWA-VDIR-AUTH (risky), S3's order
    ecp["InternalAuthenticationMethods"] = ecp["ExternalAuthenticationMethods"] = ["Basic", "Fba"]
    state.exchange["IntraOrganizationConnector"] = [  # EXO-IOC-ONPREM: New-IntraOrganizationConnector
        c for c in state.objects("IntraOrganizationConnector") if FABRIKAM_TENANT not in c["Name"]
    ]
    _principal(state, CONTOSO_TENANT, SKYPE_ONLINE_APP_ID)["keyCredentials"] = []  # SFB-AUTHCERT-PUBLISHED
    names = _principal(state, CONTOSO_TENANT, EXCHANGE_ONLINE_APP_ID)["servicePrincipalNames"]
    names.remove(f"{EXCHANGE_ONLINE_APP_ID}/*.contoso.com")  # SFB-SPN
    names = _principal(state, FABRIKAM_TENANT, EXCHANGE_ONLINE_APP_ID)["servicePrincipalNames"]
    names.remove(f"{EXCHANGE_ONLINE_APP_ID}/*.fabrikam.com")  # EXO-SPN-AUTHORITIES (autodiscover.fabrikam.com)
    sharepoint = _principal(state, CONTOSO_TENANT, SHAREPOINT_ONLINE_APP_ID)
    sharepoint["keyCredentials"] = []  # SPS-STS-CERT-PUBLISHED
    sharepoint["servicePrincipalNames"].remove(f"{SHAREPOINT_ONLINE_APP_ID}/*.contoso.com")  # SPS-SPN
    farm = state.sharepoint
    farm["AppPrincipal"] = []  # SPS-APP-PRINCIPAL
    farm["ServiceApplicationProxy"] = []  # SPS-ACS-PROXY
    farm["TrustedSecurityTokenIssuer"] = []  # SPS-TRUSTED-ISSUER
    farm["AuthenticationRealm"] = "1c7cd391-f478-433f-b1de-d9ce37de152a"  # SPS-REALM (risky)
    return state


def test_every_fix_applies_reverifies_and_rolls_back(tmp_path: Path) -> None:
    state = drifted()
    before = json.loads(json.dumps(state.document))
    with start_lab(state) as lab:
        connection = tmp_path / "lab-connection.json"
        connection.write_text(json.dumps(lab.describe()) + "\n", encoding="utf-8")
        path = external_profile(tmp_path / "drifted.toml", connection)
        path.write_text(
            path.read_text(encoding="utf-8").replace('cloud = "global"', 'cloud = "global"\nresource_forest = true'),
            encoding="utf-8",
        )  # OWA-RESOURCE-FOREST
        profile = load(path)
        failures = judged_failures(profile)
        failing = {f.requirement.id for f in failures}
        with_fix = {r.id for r in catalog.REQUIREMENTS if r.id in PLANNERS}
        assert with_fix - failing == ELSEWHERE, "a fix is exercised nowhere"
        record_path = tmp_path / "drifted-remediation.json"
        run = remediate(profile, failures, Options(record_path, allow_risky=True))

        problems = [
            f"{c.id} {c.requirement} {c.subject}: {c.status} {c.reason}"
            for c in run.record.changes
            if c.status not in ("applied", "satisfied")
        ]
        assert problems == []
        not_fixed = {
            (f.requirement.id, f.subject.label, f.result.message) for f in failures if f.result.outcome != "fixed"
        }
        assert not_fixed == set()
        assert run.record.not_planned == []
        # S3's order for OWA/ECP: the other methods off, then OAuth on.
        ecp = [c for c in run.record.changes if c.requirement == "OWA-VDIR-AUTH"]
        assert [c.target["command"]["parameters"][1][0] for c in ecp] == ["BasicAuthentication", "OAuthAuthentication"]
        assert ecp[0].sequence is not None and ecp[1].sequence is not None and ecp[0].sequence < ecp[1].sequence
        satisfied = [c.requirement for c in run.record.changes if c.status == "satisfied"]
        assert satisfied == ["HMA-EVOSTS"]  # EXO-AUTHSERVER's change enabled the same AuthServer first

        undone = rollback(profile, read_record(record_path), record_path, tmp_path / "drifted-rollback.json")
        statuses = {(u.requirement, u.status) for u in undone.undos}
        assert {status for _, status in statuses} <= {"restored", "not-undoable"}, undone.undos
        assert {requirement for requirement, status in statuses if status == "not-undoable"} == {"SPS-APP-PRINCIPAL"}
        remaining = differences(before, lab.state.document, ignore=frozenset({"WhenChanged"}))
        removed_and_recreated = [
            d for d in remaining if d.startswith("/exchange/SettingOverride[") and ("/Guid" in d or "/WhenCreated" in d)
        ]
        assert sorted(set(remaining) - set(removed_and_recreated)) == [
            "/sharepoint/AppPrincipal: [] -> " + repr(lab.state.sharepoint["AppPrincipal"])
        ]
