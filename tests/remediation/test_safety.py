"""The safety rules, exercised in-process against the lab through the real clients.

- a list (or an Exchange object) changed by someone else between the plan and the write
  is not written: that fix is abandoned with a message and nothing is lost;
- the plan, with every value before, is on disk before the first write;
- keyCredentials keep every key they had: a removal takes out only the on-premises
  certificate, an addition re-sends the others byte for byte;
- rollback takes out exactly what a fix added, and keeps what others added since.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hybridtrust.facts import EXCHANGE_ONLINE_APP_ID, SHAREPOINT_ONLINE_APP_ID
from hybridtrust.lab.cmdlets import Invocation, invoke
from hybridtrust.lab.contoso import CONTOSO_TENANT, FABRIKAM_TENANT, flawed_contoso
from hybridtrust.lab.server import start_lab
from hybridtrust.lab.state import LabState
from hybridtrust.remediation.model import Change, read_record
from hybridtrust.remediation.rollback import rollback
from hybridtrust.remediation.runner import Options, remediate
from tests.remediation.support import external_profile, judged_failures, load
from tests.support import NOW

INTRUDER = "https://intruder.fabrikam.com/"


def _principal(state: LabState, tenant: str, app_id: str) -> dict[str, Any]:
    return next(sp for sp in state.tenants[tenant]["servicePrincipals"] if sp["appId"] == app_id)


def _vdir(state: LabState, noun: str, server: str) -> dict[str, Any]:
    return next(v for v in state.objects(noun) if v["Server"] == server)


def test_concurrent_changes_abandon_only_their_fix_and_keys_are_never_dropped(tmp_path: Path) -> None:
    state = flawed_contoso(NOW)
    # Microsoft's own credential on the shared principal, ahead of the leftover on-premises one.
    shared = _principal(state, CONTOSO_TENANT, EXCHANGE_ONLINE_APP_ID)
    microsoft = copy.deepcopy(_principal(state, CONTOSO_TENANT, SHAREPOINT_ONLINE_APP_ID)["keyCredentials"][0])
    microsoft["keyId"] = "0b5c1f7e-3e39-4d1e-9f3c-6a1d2b3c4d5e"
    shared["keyCredentials"].insert(0, microsoft)
    with start_lab(state) as lab:
        connection = tmp_path / "lab-connection.json"
        connection.write_text(json.dumps(lab.describe()) + "\n", encoding="utf-8")
        profile = load(external_profile(tmp_path / "safety.toml", connection))
        failures = judged_failures(profile)
        fabrikam_names = list(_principal(lab.state, FABRIKAM_TENANT, EXCHANGE_ONLINE_APP_ID)["servicePrincipalNames"])
        record_path = tmp_path / "safety-remediation.json"
        seen: dict[str, Any] = {}

        def meanwhile(changes: list[Change]) -> None:
            # The plan is on disk, with every value before, before anything is written.
            seen["record"] = json.loads(record_path.read_text(encoding="utf-8"))
            # Another administrator, between our plan and our write: a name on fabrikam's principal...
            with lab.state.changing():
                _principal(lab.state, FABRIKAM_TENANT, EXCHANGE_ONLINE_APP_ID)["servicePrincipalNames"].append(INTRUDER)
            # ...and Digest on EX02's Autodiscover directory, through the lab's own cmdlet engine.
            list(
                invoke(
                    lab.state,
                    "exchange",
                    [
                        Invocation(
                            "Set-AutodiscoverVirtualDirectory",
                            {"Identity": "EX02\\Autodiscover (Default Web Site)", "DigestAuthentication": True},
                        )
                    ],
                )
            )

        run = remediate(profile, failures, Options(record_path, before_write=meanwhile))
        by_requirement = {c.requirement: c for c in run.record.changes}

        planned = seen["record"]
        assert planned["state"] == "planned" and planned["changes"]
        assert all(c["status"] == "planned" and c["applied"] is False for c in planned["changes"])
        assert all(c["before"] is not None for c in planned["changes"] if c["kind"] == "graph-list")

        spn = by_requirement["HMA-SPN-URLS"]
        assert spn.status == "abandoned" and not spn.applied, spn
        assert "changed since the plan" in (spn.reason or "") and INTRUDER in (spn.reason or "")
        names = _principal(lab.state, FABRIKAM_TENANT, EXCHANGE_ONLINE_APP_ID)["servicePrincipalNames"]
        assert names == [*fabrikam_names, INTRUDER]  # nothing written, nothing lost

        wssecurity = by_requirement["EXO-WSSECURITY"]
        assert wssecurity.status == "abandoned" and "changed since the plan" in (wssecurity.reason or "")
        autodiscover = _vdir(lab.state, "AutodiscoverVirtualDirectory", "EX02")
        assert "Digest" in autodiscover["InternalAuthenticationMethods"]
        assert "WSSecurity" not in autodiscover["InternalAuthenticationMethods"]

        outcomes = {(f.requirement.id, f.subject.label): f.result.outcome for f in failures}
        assert outcomes[("HMA-SPN-URLS", "fabrikam/autodiscover.contoso.com")] == "failed"
        assert outcomes[("EXO-WSSECURITY", "EX02/Autodiscover")] == "failed"
        assert outcomes[("OWA-REPLY-URLS", "contoso/https://mail.contoso.com/ecp")] == "fixed"
        assert outcomes[("HYB-SHARED-SP-CLEAN", "contoso")] == "fixed"

        # The removal took out the on-premises certificate only; Microsoft's credential kept its key, byte for byte.
        clean = by_requirement["HYB-SHARED-SP-CLEAN"]
        assert clean.status == "applied" and [k["keyId"] for k in clean.read_before] == [
            microsoft["keyId"],
            clean.target["remove"][0],
        ]
        assert all(k.get("key") for k in clean.read_before)  # backed up whole, before the PATCH
        assert _principal(lab.state, CONTOSO_TENANT, EXCHANGE_ONLINE_APP_ID)["keyCredentials"] == [microsoft]
        published = by_requirement["EXO-AUTHCERT-PUBLISHED"]
        assert published.status == "applied" and all(k.get("key") for k in published.read_after)

        # Rollback keeps what someone added after the fix, and restores the credential where it was.
        other = "https://mail.contoso.com/owa/other"
        with lab.state.changing():
            _principal(lab.state, CONTOSO_TENANT, EXCHANGE_ONLINE_APP_ID)["replyUrls"].append(other)
        document = read_record(record_path)
        undone = rollback(profile, document, record_path, tmp_path / "safety-rollback.json")
        statuses = {undo.requirement: undo.status for undo in undone.undos}
        assert statuses["OWA-REPLY-URLS"] == "restored" and statuses["HYB-SHARED-SP-CLEAN"] == "restored"
        assert "HMA-SPN-URLS" not in statuses  # never applied, nothing to undo
        principal = _principal(lab.state, CONTOSO_TENANT, EXCHANGE_ONLINE_APP_ID)
        assert other in principal["replyUrls"] and "https://mail.contoso.com/ecp" not in principal["replyUrls"]
        assert [k["keyId"] for k in principal["keyCredentials"]] == [microsoft["keyId"], clean.target["remove"][0]]
        assert principal["keyCredentials"] == clean.read_before
