"""--connectivity against the lab: metadata documents fetched live, Test-OAuthConnectivity run live."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hybridtrust.lab.state import LabState
from tests.support import REPOSITORY, SuiteRun

CONTOSO = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
PROBES = ("--requirement", "EXO-AUTHMETADATA-FRESH", "--requirement", "EXO-OAUTH-CONNECTIVITY",
          "--requirement", "SPS-ACS-METADATA")  # fmt: skip


def _outcomes(run: SuiteRun, profile: str) -> dict[tuple[str, str], str]:
    return {key: outcome for key, outcome in run.outcomes(profile).items()}


def test_the_flawed_lab_probed_live(run_suite: Callable[..., SuiteRun]) -> None:
    run = run_suite("--profile", "lab", "--connectivity", *PROBES)
    assert run.status == 1, run.output[-3000:]
    assert _outcomes(run, "lab") == {
        ("EXO-AUTHMETADATA-FRESH", "contoso"): "passed",
        ("EXO-AUTHMETADATA-FRESH", "fabrikam"): "passed",
        ("EXO-OAUTH-CONNECTIVITY", "contoso"): "passed",
        # fabrikam's dedicated application lacks the auth certificate (a seeded defect):
        ("EXO-OAUTH-CONNECTIVITY", "fabrikam"): "failed",
        # the farm's realm is its own GUID, not the tenant ACS names (a seeded defect):
        ("SPS-ACS-METADATA", "farm"): "failed",
    }
    failed = {r["requirement"]: r["message"] for r in run.results["lab"]["results"] if r["outcome"] == "failed"}
    assert "AADSTS50012" in failed["EXO-OAUTH-CONNECTIVITY"]


def test_stale_signing_keys_are_found_and_a_compliant_farm_passes(
    tmp_path: Path, compliant_state: LabState, run_suite: Callable[..., SuiteRun]
) -> None:
    world = compliant_state.copy()
    # The tenant's STS rolled its signing key; the AuthServers still hold the old one.
    sharepoint_sts = world.document["sharepoint"]["SecurityTokenServiceConfig"]["SigningCertificate"]
    world.document["tenants"][CONTOSO]["stsSigningCertificates"] = [sharepoint_sts]
    state = tmp_path / "state.json"
    world.save(state)
    profile = tmp_path / "rolled.toml"
    text = (REPOSITORY / "profiles" / "lab.toml").read_text()
    profile.write_text(text.replace('mode = "embedded"', f'mode = "embedded"\nstate = "{state.as_posix()}"'))

    run = run_suite("--profile", str(profile), "--connectivity", *PROBES)
    outcomes = _outcomes(run, "rolled")
    assert outcomes[("EXO-AUTHMETADATA-FRESH", "contoso")] == "failed", run.output[-3000:]
    assert outcomes[("EXO-AUTHMETADATA-FRESH", "fabrikam")] == "passed"
    assert outcomes[("SPS-ACS-METADATA", "farm")] == "passed"
    assert outcomes[("EXO-OAUTH-CONNECTIVITY", "contoso")] == "passed"
    message = next(r for r in run.results["rolled"]["results"] if r["outcome"] == "failed")["fix"]
    assert "-RefreshAuthMetadata" in message


def test_without_connectivity_the_probes_skip_with_the_reason(run_suite: Callable[..., SuiteRun]) -> None:
    run = run_suite("--profile", "lab", *PROBES)
    results = run.results["lab"]["results"]
    assert {r["outcome"] for r in results} == {"skipped"}
    assert all("--connectivity" in r["message"] for r in results)
