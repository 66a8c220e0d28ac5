"""Several organizations in one run: reports kept apart, and pytest-xdist writes what a serial run writes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridtrust.lab.state import LabState
from tests import support

WAIVER = """\
[[waiver]]
requirement = "SFB-APPACCOUNT"
profile = "alpha"
justification = "account is removed with the SfB decommissioning"
expires = 2099-01-01
"""


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    # When it ran and how long each phase took (timings) are the run's own, not the organization's.
    return {key: value for key, value in document.items() if key not in ("started", "finished", "timings")}


def test_two_organizations_serial_and_over_two_workers(
    tmp_path: Path, compliant_state: LabState, write_bundle: Callable[..., Path],
    write_profile: Callable[..., Path],
) -> None:  # fmt: skip
    alpha_world, beta_world = compliant_state.copy(), compliant_state.copy()
    alpha_world.document["exchange"]["MailUser"][0]["HiddenFromAddressListsEnabled"] = False  # SFB-APPACCOUNT
    [oab] = [v for v in beta_world.document["exchange"]["OabVirtualDirectory"] if v["Server"] == "EX03"]
    oab["ExternalAuthenticationMethods"] = ["WindowsIntegrated"]  # HMA-VDIR-OAUTH
    alpha = write_profile("alpha", write_bundle(alpha_world, "alpha"))
    beta = write_profile("beta", write_bundle(beta_world, "beta"))
    waivers = tmp_path / "waivers.toml"
    waivers.write_text(WAIVER)
    args = ("--profile", str(alpha), "--profile", str(beta), f"--waivers={waivers}")

    serial = support.run_suite(tmp_path / "serial", *args)
    spread = support.run_suite(tmp_path / "xdist", *args, "-n", "2")

    assert serial.status == spread.status == 1, spread.output[-3000:]
    assert "bringing up nodes" in spread.output  # really spread over processes
    for name in ("alpha", "beta"):
        assert _comparable(spread.results[name]) == _comparable(serial.results[name])
    assert serial.results["alpha"]["summary"]["waived"] == 1 and serial.results["alpha"]["summary"]["failed"] == 0
    assert serial.outcomes("beta")[("HMA-VDIR-OAUTH", "EX03/OAB")] == "failed"
    assert serial.results["beta"]["origin"].endswith("beta") and serial.results["beta"]["notes"]

    for run in (serial, spread):
        names = {path.name for path in run.reports.iterdir()}
        # The combined pytest-html and JUnit files of the run, and each organization's own.
        assert {"alpha+beta-latest.html", "alpha+beta-latest.xml", "alpha-latest.html", "alpha-latest.xml",
                "beta-latest.html", "beta-latest.xml"} <= names  # fmt: skip
        for name, other in (("alpha", "beta"), ("beta", "alpha")):
            junit = ET.parse(run.reports / f"{name}-latest.xml").getroot()
            cases = list(junit.iter("testcase"))
            assert len(cases) == len(run.results[name]["results"])
            assert all(f"[{name}-" in case.get("name", "") for case in cases)
            html = (run.reports / f"{name}-latest.html").read_text()
            assert f"[{other}-" not in html and f"[{name}-" in html
            assert '<svg class="ht-trend"' in html and "<script" not in html
        beta_junit = ET.parse(run.reports / "beta-latest.xml").getroot()
        [failure] = [case for case in beta_junit.iter("testcase") if case.find("failure") is not None]
        assert "EX03-OAB" in failure.get("name", "") and "documented fix" in (failure.findtext("failure") or "")
        [suite] = beta_junit.iter("testsuite")
        assert suite.get("failures") == "1" and suite.get("errors") == "0"
        alpha_junit = ET.parse(run.reports / "alpha-latest.xml").getroot()
        assert [
            s.get("message", "")[:15] for s in alpha_junit.iter("skipped") if s.get("type") == "hybridtrust.waived"
        ] == ["waived until 20"]
