"""Secrets kept: no password, client secret, access token or private key of the lab in anything a run leaves.

Three runs of the real suite against three labs, queued together (conftest.py), each with DEBUG logging shown on
the terminal (``-o log_cli=true --log-level=DEBUG``, captured): an audit that also saves
its evidence bundle (``--save-evidence``), an audit whose Exchange password and Graph
client secret are wrong (the refusals reach the report, the wrong values do not), and a
``--remediate`` run that changes the lab with the write identities. Every byte each run
left (HTML, JUnit, results documents, history, the remediation record, the saved bundle,
stdout and stderr) is searched for every secret as is, in base64 (alone, inside a longer
base64 text and as a Basic Authorization header), URL- and form-encoded and JSON-escaped.
Access tokens are the ones the lab's token endpoint issued during the runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import Lab, start_lab
from tests.reliability.support import (
    Batch,
    LabTarget,
    Launcher,
    Measured,
    SuiteProcess,
    encoded_forms,
    find_secrets,
    record_run,
)

PROFILE = "secretive"
DEBUG_LOG = ("-o", "log_cli=true", "--log-level=DEBUG")
WRONG_PASSWORD = "Wr0ng-Passw0rd~for-the-lab"
WRONG_SECRET = "Wr0ng~ClientSecret.0f-the-lab"


@dataclass
class SecretRun:
    target: LabTarget
    run: Measured
    folder: Path
    tokens: list[str] = field(default_factory=list)
    extra_secrets: dict[str, str] = field(default_factory=dict)

    def secrets(self) -> dict[str, str | bytes]:
        found = self.target.secrets()
        for number, token in enumerate(self.tokens, start=1):
            found[f"access token {number}"] = token
            found[f"signature of access token {number}"] = token.rsplit(".", 1)[-1]
        return {**found, **self.extra_secrets}

    def usernames(self) -> dict[str, str]:
        return {
            "exchange password": self.target.description["exchange"]["username"],
            "sharepoint password": self.target.description["sharepoint"]["username"],
            "wrong Exchange password": self.target.description["exchange"]["username"],
        }

    def artifacts(self) -> dict[str, bytes]:
        return {
            str(path.relative_to(self.folder)): path.read_bytes()
            for path in sorted(self.folder.rglob("*"))
            if path.is_file()
        }


def _record_tokens(lab: Lab, tokens: list[str]) -> None:
    """Keep every access token the lab's token endpoint issues (its _token calls self.mint_access_token)."""
    mint = lab.graph.mint_access_token

    def recording(*args: Any, **kwargs: Any) -> str:
        token = mint(*args, **kwargs)
        tokens.append(token)
        return str(token)

    lab.graph.mint_access_token = recording


def launch(root: Path, launcher: Launcher) -> Batch:
    """The three runs, each against its own lab, queued with the other modules' (see conftest.py)."""
    state = flawed_contoso(dt.datetime.now(dt.UTC))
    places: dict[str, tuple[LabTarget, Path, list[str], dict[str, str]]] = {}

    def finish(measured: dict[str, Measured]) -> dict[str, SecretRun]:
        return {
            name: SecretRun(target, measured[name], folder, tokens, extra)
            for name, (target, folder, tokens, extra) in places.items()
        }

    batch = Batch(finish)
    for name in ("audit", "refused", "remediate"):
        lab = start_lab(state.copy())
        batch.labs.append(lab)
        tokens: list[str] = []
        _record_tokens(lab, tokens)
        # The profile (which names no secret) and the run's artifacts live apart: only the latter are searched.
        target = LabTarget(lab, root / name / "profile")
        profile = target.live_profile(PROFILE)
        folder = root / name / "run"
        env = target.env()
        args = [f"--profile={profile}", *DEBUG_LOG]
        extra: dict[str, str] = {}
        if name == "audit":
            args.append(f"--save-evidence={folder / 'evidence'}")
        elif name == "refused":
            env.update(HT_EXCHANGE_PASSWORD=WRONG_PASSWORD, HT_GRAPH_SECRET=WRONG_SECRET)
            extra = {"wrong Exchange password": WRONG_PASSWORD, "wrong client secret": WRONG_SECRET}
        else:
            args.append("--remediate")
        batch.runs[name] = launcher.submit(SuiteProcess(folder, *args, env=env))
        places[name] = (target, folder, tokens, extra)
    return batch


@pytest.fixture(scope="module")
def secret_runs(launched: Callable[[str], Any]) -> dict[str, SecretRun]:
    return launched(__name__)  # type: ignore[no-any-return]


def test_the_secret_search_finds_what_it_looks_for() -> None:
    """The search itself: every form it claims to find, in a longer text, is found; public parts are not."""
    secret, user = "s3cr3t~Value_0f-40", "CONTOSO\\svc"
    header = b"Authorization: Basic " + base64.b64encode(f"{user}:{secret}".encode())
    shifted = base64.b64encode(b"xy" + secret.encode() + b"z")
    for text in (header, shifted, b"password=" + encoded_forms(secret)["URL-encoded"]):
        assert find_secrets({"sample": text}, {"secret": secret}, {"secret": user}), text
    assert find_secrets({"sample": b"nothing here"}, {"secret": secret}, {}) == []

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    numbers = key.private_numbers()
    private = {name: value.to_bytes((value.bit_length() + 7) // 8, "big") for name, value in (("d", numbers.d),)}
    assert find_secrets({"key.pem": pem}, private, {})  # wrapped at 64 columns
    assert find_secrets({"record.json": json.dumps({"key": pem.decode()}).encode()}, private, {})  # JSON-escaped
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert find_secrets({"public.pem": public}, private, {}) == []  # a certificate's public key is no leak


@pytest.mark.parametrize("name", ["audit", "refused", "remediate"])
def test_no_secret_in_anything_a_run_leaves(
    name: str, secret_runs: dict[str, SecretRun], tmp_path_factory: pytest.TempPathFactory
) -> None:
    entry = secret_runs[name]
    run = entry.run
    artifacts = entry.artifacts()
    record_run(
        tmp_path_factory.getbasetemp(),
        "secrets",
        name,
        run,
        f"{len(artifacts)} files, {sum(map(len, artifacts.values())):,} bytes searched for "
        f"{len(entry.secrets())} secrets in {len(encoded_forms('x' * 40, 'u'))} forms: none found",
    )
    assert run.status == 1, run.output[-3000:]
    assert "DEBUG" in run.output  # the debug log was really on the terminal
    if name != "refused":
        assert entry.tokens, "the lab issued no access token: nothing to look for"
    assert find_secrets(artifacts, entry.secrets(), entry.usernames()) == []


def test_a_saved_evidence_bundle_is_complete_and_clean(secret_runs: dict[str, SecretRun]) -> None:
    entry = secret_runs["audit"]
    saved = entry.folder / "evidence"
    files = sorted(path.relative_to(saved).as_posix() for path in saved.rglob("*") if path.is_file())
    assert "manifest.json" in files and "exchange/Get-AuthServer.xml" in files, files
    assert any(path.startswith("entra/") for path in files) and any(path.startswith("sharepoint/") for path in files)


def test_refused_credentials_reach_the_report_without_the_credentials(secret_runs: dict[str, SecretRun]) -> None:
    entry = secret_runs["refused"]
    errors = entry.run.results_of(PROFILE, "error")
    messages = {result["message"] for result in errors}
    exchange = entry.target.description["exchange"]
    assert any(
        f"could not open Exchange remote PowerShell at {exchange['uri']}" in message
        and "refused the credentials of CONTOSO\\svc-hybridtrust (basic) (HTTP 401)" in message
        for message in messages
    ), sorted(messages)[:3]
    second = entry.target.tenant_ids[1]
    client = entry.target.client(second)["client_id"]
    assert any(f"could not sign in to Entra ID as {client} (secret)" in message for message in messages), sorted(
        messages
    )[:3]
    html = next(entry.run.reports.glob(f"{PROFILE}-2*.html")).read_text(encoding="utf-8")
    assert "(HTTP 401)" in html and "could not sign in to Entra ID" in html


def test_a_remediating_run_fixed_something(secret_runs: dict[str, SecretRun]) -> None:
    run = secret_runs["remediate"].run
    assert run.document(PROFILE)["summary"]["fixed"] > 0, run.document(PROFILE)["summary"]
    assert sorted(run.reports.glob(f"{PROFILE}-*-remediation.json")), [path.name for path in run.files()]
