"""TLS: verification is on unless a profile turns it off, and a run with it off says so.

Two runs of the real suite against one lab (whose certificates come from its own CA, which
no system trusts), queued together (conftest.py):

- a profile that does not name the lab's CA (no ``ca_file``): every endpoint fails with a
  certificate error naming it (Exchange, SharePoint and the Entra ID sign-in), and the run
  fails closed;
- a profile with ``verify_tls = false`` for Exchange and SharePoint: the audit proceeds, and
  the results document's notes and the HTML report's summary say, per endpoint, that TLS
  verification was off and why.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import start_lab
from tests.reliability.support import Batch, LabTarget, Launcher, Measured, SuiteProcess, record_run

PROFILE = "tls"


def launch(root: Path, launcher: Launcher) -> Batch:
    """Both runs against one lab, queued with the other modules' (see conftest.py)."""
    lab = start_lab(flawed_contoso(dt.datetime.now(dt.UTC)))
    target = LabTarget(lab, root / "profiles")
    batch = Batch(lambda measured: (target, measured), labs=[lab])
    untrusted = LabTarget(lab, root / "untrusted").live_profile(PROFILE, trust_lab_ca=False)
    unverified = LabTarget(lab, root / "unverified").live_profile(
        PROFILE, exchange="verify_tls = false", sharepoint="verify_tls = false"
    )
    for name, profile in (("untrusted", untrusted), ("unverified", unverified)):
        batch.runs[name] = launcher.submit(SuiteProcess(root / name / "run", f"--profile={profile}", env=target.env()))
    return batch


@pytest.fixture(scope="module")
def tls_runs(launched: Callable[[str], Any]) -> tuple[LabTarget, dict[str, Measured]]:
    return launched(__name__)  # type: ignore[no-any-return]


def test_an_endpoint_whose_ca_is_not_named_fails_with_a_certificate_error(
    tls_runs: tuple[LabTarget, dict[str, Measured]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    target, runs = tls_runs
    run = runs["untrusted"]
    errors = run.results_of(PROFILE, "error")
    assert run.status == 1, run.output[-3000:]
    assert errors and not run.results_of(PROFILE, "passed"), run.document(PROFILE)["summary"]
    d = target.description
    certificate = r"certificate verify failed"
    for endpoint in (d["exchange"]["uri"], d["sharepoint"]["uri"]):
        naming = [r["message"] for r in errors if endpoint in r["message"]]
        assert naming, f"no error names {endpoint}"
        assert all(re.search(rf"{re.escape(endpoint)}.*TLS handshake failed: {certificate}", m) for m in naming)
        assert all("name the CA that issued the server's certificate in ca_file" in m for m in naming)
    # Entra ID: the sign-in (the token endpoint is the first TLS connection) fails the same way.
    entra = [r["message"] for r in errors if "could not sign in to Entra ID" in r["message"]]
    assert entra and all(d["graph"]["authority"] in m and re.search(certificate, m, re.I) for m in entra), entra[:2]
    assert all("name the CA that issued the server's certificate in [entra] ca_file" in m for m in entra)
    said = min((r["message"] for r in errors if d["exchange"]["uri"] in r["message"]), key=len)
    record_run(tmp_path_factory.getbasetemp(), "tls", "no ca_file for the lab's CA", run, said)


def test_verification_turned_off_is_said_in_the_summary(
    tls_runs: tuple[LabTarget, dict[str, Measured]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    target, runs = tls_runs
    run = runs["unverified"]
    assert run.status == 1, run.output[-3000:]  # the lab organization's own defects
    assert run.results_of(PROFILE, "error") == []  # everything was read, without verification
    expected = [
        f"TLS verification is OFF for {target.description[name]['uri']}: the profile says verify_tls = false"
        for name in ("exchange", "sharepoint")
    ]
    notes = run.document(PROFILE)["notes"]
    assert all(note in notes for note in expected), notes
    html = unescape(next(run.reports.glob(f"{PROFILE}-2*.html")).read_text(encoding="utf-8"))
    for note in expected:
        assert f'<p class="ht-note">{note}</p>' in html, note  # in the organization's summary, at the top
    record_run(tmp_path_factory.getbasetemp(), "tls", "verify_tls = false", run, expected[0])
