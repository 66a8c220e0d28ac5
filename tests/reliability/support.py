"""Helpers of the reliability tests: a lab in this process, profiles that reach it, measured suite runs.

The suite is run the way an administrator runs it (``python -m pytest --profile=X`` in
a subprocess, credentials in environment variables), against lab servers started in
the test's own process, so a test can arm a fault on an endpoint (``lab.exchange.faults``,
``lab.graph.faults``) that the child process then meets. Each run is measured: wall time
from start to exit, and the child's peak resident memory from ``os.wait4`` (its own
``ru_maxrss``, not the maximum over every child this process ever had).

Every run has a hard time limit; a run that exceeds it is killed (by its pid, which this
module started) and the test fails saying so. Measurements are also appended to
``<pytest basetemp>/reliability-measurements.jsonl`` so the README's "Reliability" table
can quote what the tests saw.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hybridtrust.lab.server import Lab
from tests.support import REPOSITORY

HARD_TIMEOUT_S = 120.0
"""No suite run of these tests may take longer than this, whatever it is waiting for."""

MEASUREMENTS = "reliability-measurements.jsonl"


# -- measured suite runs ------------------------------------------------------------------------------
@dataclass
class Measured:
    """One finished suite run: exit status, output, time, memory and what it wrote."""

    status: int
    output: str
    elapsed_s: float
    max_rss_mb: float
    reports: Path
    results: dict[str, dict[str, Any]]

    def document(self, profile: str) -> dict[str, Any]:
        assert profile in self.results, f"no results document for {profile}: {self.output[-3000:]}"
        return self.results[profile]

    def results_of(self, profile: str, outcome: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.document(profile)["results"] if outcome is None or r["outcome"] == outcome]

    def outcomes(self, profile: str) -> dict[tuple[str, str], str]:
        return {(r["requirement"], r["subject"]): r["outcome"] for r in self.results_of(profile)}

    def files(self) -> list[Path]:
        return sorted(path for path in self.reports.rglob("*") if path.is_file())


def suite_command(reports: Path, *args: str) -> list[str]:
    """The command line of tests/support.py's run_suite (options as --option=value, as README advises)."""
    return [
        sys.executable, "-m", "pytest", *args,
        f"--reports-dir={reports}", f"--results-json={reports}/{{profile}}.json",
        "-p", "no:cacheprovider", "-q", "--no-header",
        "-p", "no:hypothesispytest",
    ]  # fmt: skip


class SuiteProcess:
    """One suite run: `start()` it (or hand it to a `Launcher`), `wait()` for what it did.

    Several may run at once, each with its own reports folder. The time limit counts from the
    start; a run that exceeds it is killed (by its pid: this object started it) and `wait()`
    fails saying so.
    """

    preexec: Callable[[], None] | None = None
    """Run in the child before the suite starts (a subclass sets resource limits here)."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = HARD_TIMEOUT_S,
        reports: Path | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.reports = reports if reports is not None else workdir / "reports"
        self.reports.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.command = suite_command(self.reports, *args)
        self.environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.result: Measured | AssertionError | None = None
        self.done = threading.Event()
        self._launcher: Launcher | None = None

    def start(self) -> None:
        self._stdout = (self.workdir / "stdout.txt").open("wb")
        self._stderr = (self.workdir / "stderr.txt").open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=REPOSITORY,
            env=self.environment,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            preexec_fn=self.preexec,
        )

    def poll(self) -> bool:
        """Collect the run if it ended (or kill it past its time limit); True once it is done."""
        if self.done.is_set():
            return True
        assert self.process is not None, "poll() before start()"
        # wait4, not Popen.wait: it returns this child's own resource usage (peak memory).
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if not pid:
            if time.monotonic() - self.started <= self.timeout:
                return False
            self.process.kill()
            os.wait4(self.process.pid, 0)
            self.process.returncode = -9
            self._close()
            self.result = AssertionError(
                f"the suite did not end within {self.timeout:g} s (killed): {self._output()[-3000:]}"
            )
            self.done.set()
            return True
        elapsed = time.monotonic() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self._close()
        results = {}
        for path in self.reports.glob("*.json"):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(document, dict) and document.get("format") == "hybridtrust-results/1":
                results[document["profile"]] = document
        self.result = Measured(
            status=self.process.returncode,
            output=self._output(),
            elapsed_s=elapsed,
            max_rss_mb=usage.ru_maxrss / 1024,  # Linux: kilobytes
            reports=self.reports,
            results=results,
        )
        self.done.set()
        return True

    def wait(self) -> Measured:
        if self._launcher is None:
            if self.process is None:
                self.start()
            while not self.poll():
                time.sleep(0.02)
        elif not self.done.wait(QUEUE_TIMEOUT_S):
            raise AssertionError(f"the launcher did not run {self.workdir} within {QUEUE_TIMEOUT_S:g} s")
        if isinstance(self.result, AssertionError):
            raise self.result
        assert self.result is not None
        return self.result

    def kill(self) -> None:
        """Stop a run that is still going, or never let it start (at the end of the session)."""
        if self.done.is_set():
            return
        if self.process is not None:
            self.process.kill()
            os.wait4(self.process.pid, 0)
            self.process.returncode = -9
            self._close()
        self.result = AssertionError(f"{self.workdir}: stopped unfinished")
        self.done.set()

    def _close(self) -> None:
        self._stdout.close()
        self._stderr.close()

    def _output(self) -> str:
        stdout = (self.workdir / "stdout.txt").read_text(encoding="utf-8", errors="replace")
        stderr = (self.workdir / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        return stdout + stderr


QUEUE_TIMEOUT_S = 600.0
"""How long `wait()` waits for a run a `Launcher` has not even finished after every earlier run."""


class Launcher:
    """Runs the suite runs of every reliability module, at most `limit` at a time, in a thread.

    Most of these runs wait (for a timeout, a Retry-After) or compete for two CPUs: started by
    module, one module after the other, the group took 85 s; queued here from the start of
    the session (tests/reliability/conftest.py), it takes about half of that, and at most
    `limit` runs at once keeps each run's own time (which the tests bound) close to what it
    would be on a busy CI machine.
    """

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._pending: deque[SuiteProcess] = deque()
        self._running: list[SuiteProcess] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reliability-launcher", daemon=True)
        self._thread.start()

    def submit(self, process: SuiteProcess) -> SuiteProcess:
        process._launcher = self
        with self._lock:
            self._pending.append(process)
        return process

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._running = [process for process in self._running if not self._step(process, process.poll)]
                while self._pending and len(self._running) < self.limit:
                    process = self._pending.popleft()
                    if not self._step(process, process.start):
                        self._running.append(process)
            time.sleep(0.02)

    @staticmethod
    def _step(process: SuiteProcess, action: Callable[[], Any]) -> bool:
        """Run one step of a run; a step that raises ends that run with the error (never the launcher)."""
        try:
            return bool(action())
        except Exception as error:
            process.result = AssertionError(f"{process.workdir}: {type(error).__name__}: {error}")
            process.done.set()
            return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for process in [*self._running, *self._pending]:
                process.kill()
            self._pending.clear()
            self._running.clear()


@dataclass
class Batch:
    """Suite runs handed to a `Launcher` and the labs they reach (a module's `launch()` result).

    ``collect()`` waits for every run, then stops the labs, and gives ``finish(measured)``
    (the module's own view of its runs); ``close()`` stops the labs in any case.
    """

    finish: Callable[[dict[str, Measured]], Any]
    labs: list[Lab] = field(default_factory=list)
    runs: dict[str, SuiteProcess] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    """Also run by ``close()`` (a listener to stop)."""

    def collect(self) -> Any:
        try:
            measured = {name: process.wait() for name, process in self.runs.items()}
        finally:
            self.close()
        return self.finish(measured)

    def close(self) -> None:
        for lab in self.labs:
            lab.stop()
        for cleanup in self.cleanups:
            cleanup()


def run_measured(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = HARD_TIMEOUT_S
) -> Measured:
    return SuiteProcess(workdir, *args, env=env, timeout=timeout).wait()


def record_measurement(
    basetemp: Path,
    group: str,
    case: str,
    *,
    status: int | None,
    elapsed_s: float,
    said: str,
    max_rss_mb: float | None = None,
) -> None:
    """One line of what a test saw, for the README's Reliability table (see the module docstring)."""
    line = {
        "group": group,
        "case": case,
        "status": status,
        "elapsed_s": round(elapsed_s, 1),
        "max_rss_mb": None if max_rss_mb is None else round(max_rss_mb),
        "said": said[:400],
    }
    with (basetemp / MEASUREMENTS).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def record_run(basetemp: Path, group: str, case: str, run: Measured, said: str) -> None:
    record_measurement(
        basetemp, group, case, status=run.status, elapsed_s=run.elapsed_s, said=said, max_rss_mb=run.max_rss_mb
    )


# -- profiles that reach a lab ---------------------------------------------------------------------------
SCENARIOS = '["exchange-oauth", "sfb-online", "hma", "hma-owa-ecp", "sharepoint-s2s", "dedicated-hybrid-app"]'


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then closed): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LabTarget:
    """A lab running in this process, and what a profile needs to reach it as a real organization."""

    lab: Lab
    directory: Path
    description: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.description = self.lab.describe()

    @property
    def tenant_ids(self) -> list[str]:
        return list(self.description["graph"]["tenant_ids"])

    def client(self, tenant_id: str, role: str = "read_only") -> dict[str, Any]:
        return dict(self.description["graph"]["tenants"][tenant_id][role])

    def env(self) -> dict[str, str]:
        """The credentials a live profile names, as the environment variables it names them by."""
        exchange, sharepoint = self.description["exchange"], self.description["sharepoint"]
        second = self.tenant_ids[1]
        return {
            "HT_EXCHANGE_USER": exchange["username"],
            "HT_EXCHANGE_PASSWORD": exchange["password"],
            "HT_SHAREPOINT_USER": sharepoint["username"],
            "HT_SHAREPOINT_PASSWORD": sharepoint["password"],
            "HT_GRAPH_SECRET": self.client(second)["client_secret"],
            "HT_GRAPH_WRITE_SECRET": self.client(second, "read_write")["client_secret"],
        }

    def live_profile(
        self,
        name: str,
        *,
        exchange_uri: str | None = None,
        exchange: str = "",
        sharepoint: str = "",
        entra: str = "timeout_seconds = 10",
        organization: str = "",
        trust_lab_ca: bool = True,
        web_application: str = "https://sharepoint.contoso.com",
    ) -> Path:
        """A profile of a real organization (no [lab]) whose endpoints are the lab's.

        The first tenant signs in with the lab's client certificate, the second with a
        client secret from HT_GRAPH_SECRET (so both azure-identity paths are exercised);
        fixes use the second tenant's read-write secret. `exchange`, `sharepoint`,
        `entra` and `organization` are extra TOML lines for those tables.
        """
        d = self.description
        first, second = self.tenant_ids
        read_only = self.client(first)
        writer = self.client(first, "read_write")

        def ca(path: str) -> str:
            return f'ca_file = "{path}"' if trust_lab_ca else ""

        text = f"""\
# A real organization's profile (no [lab] table) pointed at the lab's endpoints on 127.0.0.1.
[organization]
name = "Contoso (lab as a live organization)"
scenarios = {SCENARIOS}
smtp_domains = ["contoso.com", "fabrikam.com"]
{organization}

[[tenants]]
id = "{first}"
initial_domain = "contoso.onmicrosoft.com"
primary = true
credential = {{ method = "certificate", client_id = "{read_only["client_id"]}", certificate_file = "{read_only["certificate_file"]}" }}
remediation_credential = {{ method = "certificate", client_id = "{writer["client_id"]}", certificate_file = "{writer["certificate_file"]}" }}

[[tenants]]
id = "{second}"
initial_domain = "fabrikam.onmicrosoft.com"
credential = {{ method = "secret", client_id = "{self.client(second)["client_id"]}", secret_env = "HT_GRAPH_SECRET" }}
remediation_credential = {{ method = "secret", client_id = "{self.client(second, "read_write")["client_id"]}", secret_env = "HT_GRAPH_WRITE_SECRET" }}

[exchange]
uri = "{exchange_uri or d["exchange"]["uri"]}"
auth = "basic"
username_env = "HT_EXCHANGE_USER"
password_env = "HT_EXCHANGE_PASSWORD"
{ca(d["exchange"]["ca_file"])}
{exchange}

[sharepoint]
uri = "{d["sharepoint"]["uri"]}"
auth = "basic"
username_env = "HT_SHAREPOINT_USER"
password_env = "HT_SHAREPOINT_PASSWORD"
{ca(d["sharepoint"]["ca_file"])}
web_application = "{web_application}"
public_root_domain = "contoso.com"
{sharepoint}

[entra]
authority = "{d["graph"]["authority"]}"
graph_url = "{d["graph"]["base_url"]}"
{ca(d["graph"]["ca_file"])}
{entra}
"""
        path = self.directory / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def external_profile(self, name: str, *, organization: str = "") -> Path:
        """profiles/lab.toml in external mode, reading this lab's JSON line (what ``serve`` prints)."""
        connection = self.directory / f"{name}-connection.json"
        connection.write_text(json.dumps(self.description) + "\n", encoding="utf-8")
        text = (REPOSITORY / "profiles" / "lab.toml").read_text(encoding="utf-8")
        assert 'mode = "embedded"' in text
        text = text.replace('mode = "embedded"', f'mode = "external"\nconnection = "{connection.as_posix()}"', 1)
        if organization:
            text = text.replace("[organization]\n", f"[organization]\n{organization}\n", 1)
        path = self.directory / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def secrets(self) -> dict[str, str | bytes]:
        """Every secret of this lab's organization by a name for messages (read from its state, so also
        after the lab stopped): the endpoint passwords, every client's secret, and the private numbers
        of every client's key (d, p, q: the parts of a private key that its certificate does not show)."""
        found: dict[str, str | bytes] = {}
        with self.lab.state.lock:
            for endpoint, credentials in self.lab.state.credentials.items():
                found[f"{endpoint} password"] = str(credentials["password"])
            for tenant_id, tenant in self.lab.state.tenants.items():
                for client in tenant.get("clients", []):
                    who = f"client {client.get('displayName')} of {tenant_id}"
                    if client.get("secret"):
                        found[f"secret of {who}"] = str(client["secret"])
                    if client.get("certificate_private_key"):
                        key = serialization.load_pem_private_key(client["certificate_private_key"].encode(), None)
                        assert isinstance(key, rsa.RSAPrivateKey)
                        numbers = key.private_numbers()
                        for part, value in (("d", numbers.d), ("p", numbers.p), ("q", numbers.q)):
                            found[f"private key {part} of {who}"] = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return found


def encoded_forms(secret: str | bytes, username: str | None = None) -> dict[str, bytes]:
    """A secret as it could leak: itself, base64 (alone, inside a longer base64 text, in a Basic
    Authorization header), URL- and form-encoded, JSON-escaped; a binary one also in hex."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {"as is": raw, "base64": base64.b64encode(raw)}
    if isinstance(secret, str):
        forms.update(
            {
                "URL-encoded": quote(secret, safe="").encode(),
                "form-encoded": quote_plus(secret).encode(),
                "JSON-escaped": json.dumps(secret)[1:-1].encode(),
            }
        )
    else:
        forms.update({"hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()})
    if username is not None:
        forms["Basic header"] = base64.b64encode(f"{username}:{secret!s}".encode())
        short = username.split("\\")[-1]
        forms["Basic header (short user)"] = base64.b64encode(f"{short}:{secret!s}".encode())
    # Inside a longer base64 text the secret's encoding depends on where it starts (offset mod 3):
    # the middle of each of the three alignments, without the edge quanta it shares with neighbours.
    for shift in range(3):
        forms[f"inside base64 (offset {shift})"] = base64.b64encode(b"\0" * shift + raw)[4:-4]
    return {name: form for name, form in forms.items() if len(form) >= 8}


def _unwrapped(content: bytes) -> bytes:
    # PEM and base64 text is wrapped (64 or 76 columns), in files or JSON-escaped: search it unwrapped too.
    return content.replace(b"\r", b"").replace(b"\n", b"").replace(b"\\n", b"").replace(b"\\r", b"")


def find_secrets(files: dict[str, bytes], secrets: dict[str, str | bytes], usernames: dict[str, str]) -> list[str]:
    """Where any secret, in any form, occurs in any of the artifacts (byte-wise, also with line breaks removed)."""
    leaks = []
    contents = {name: (content, _unwrapped(content)) for name, content in files.items()}
    for secret_name, secret in secrets.items():
        for form_name, needle in encoded_forms(secret, usernames.get(secret_name)).items():
            for file_name, (content, unwrapped) in contents.items():
                for text in (content, unwrapped):
                    at = text.find(needle)
                    if at >= 0:
                        # Where it sits, the secret itself blanked out: enough to find the code that wrote it.
                        context = text[max(0, at - 120) : at + len(needle) + 40].replace(needle, b"<SECRET>")
                        leaks.append(
                            f"{secret_name} ({form_name}) in {file_name}: ...{context.decode(errors='replace')}..."
                        )
                        break
    return leaks
