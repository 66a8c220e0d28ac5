"""Hostile input through the real entry points: evidence bundles, profiles and waiver files.

Everything here is an administrator's command line (``pytest --profile=X [--evidence=DIR]
[--waivers=FILE]`` in a subprocess), judged by exit status, output, what was written and
the child's peak memory. All runs are queued with the other modules' (conftest.py) and
checked one by one. Each child runs under an address-space limit (`MEMORY_LIMIT`), so a reader
that loads a multi-gigabyte file into memory fails that run instead of the machine.

- A damaged or hostile *evidence file* makes exactly the requirements that need it errors
  naming the file, and every other requirement is judged as with an intact bundle. No DTD
  or entity is ever expanded (no "lol" multiplies, no /etc/passwd line appears) or fetched
  (a listener on 127.0.0.1 that the files point at is never connected to).
- A bad *profile*, *waiver file* or *manifest* is a usage error (exit 4) whose message names
  the file, the key and what was expected, and nothing at all is written to the reports folder.

The sparse multi-gigabyte files are made with ``truncate``'s system call: they take no disk
and no time, and only a reader that trusts their size reads them.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import catalog
from hybridtrust.lab.contoso import compliant_organization
from tests.reliability.support import Batch, Launcher, Measured, SuiteProcess, record_run
from tests.support import NOW, profile_text, write_bundle

GIB = 1 << 30
MEMORY_LIMIT = 2 * GIB
"""Address space of each child: an evidence run needs a few hundred megabytes of it."""
MAX_RSS_MB = 400
"""Peak resident memory any of these runs may reach (an ordinary evidence run: about 100 MB)."""
BOUND_S = 45.0
"""Any of these runs, under the load of all of them at once (alone: 1 to 2 s)."""
PROFILE = "hostile"
FIRST_TENANT = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
SECOND_TENANT = "3c9e7b21-6d4f-4a8e-b5c1-92f0d7e4a6b8"


class Listener:
    """A TCP listener on 127.0.0.1 that counts connections: where the hostile files point their entities."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.1)
        self.port = int(self.socket.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="xxe-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.socket.close()


# -- hostile evidence files ----------------------------------------------------------------------
OBJS = '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'


def billion_laughs(levels: int = 10) -> str:
    """Ten entities of ten references each: 10^9 "lol"s (3 GB) if anything expanded it."""
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels)]
    return (
        f'<?xml version="1.0"?><!DOCTYPE Objs [{"".join(entities)}]>'
        f'{OBJS}<Obj RefId="0"><MS><S N="Name">&lol{levels - 1};</S></MS></Obj></Objs>'
    )


def sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk (a hole): only its length is real."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)


@dataclass(frozen=True)
class Damage:
    """One evidence file made hostile, the document key it backs, and what its error must say."""

    file: str
    key: str
    says: str
    write: Callable[[Path, int], None]
    """(file path, listener port) -> None."""


def _text(content: str, encoding: str = "utf-8") -> Callable[[Path, int], None]:
    def write(path: Path, port: int) -> None:
        path.write_bytes(content.replace("PORT", str(port)).encode(encoding))

    return write


def _truncate_half(path: Path, port: int) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = [
    Damage(
        "exchange/Get-AuthServer.xml",
        "exchange:Get-AuthServer",
        r"exchange/Get-AuthServer\.xml: not valid CLIXML \(.* at line \d+, column \d+\); the file is truncated",
        _truncate_half,
    ),
    Damage(
        "exchange/Get-AuthConfig.xml",
        "exchange:Get-AuthConfig",
        r"exchange/Get-AuthConfig\.xml: not an Export-Clixml file \(the root element is not <Objs>\)",
        _text("<html><body><form action='/owa/auth.owa'>Sign in</form></body></html>"),
    ),
    Damage(
        "exchange/Get-PartnerApplication.xml",
        "exchange:Get-PartnerApplication",
        r"exchange/Get-PartnerApplication\.xml: refused: the file declares a DTD or entities",
        _text(billion_laughs()),
    ),
    Damage(
        "exchange/Get-OrganizationConfig.xml",
        "exchange:Get-OrganizationConfig",
        r"exchange/Get-OrganizationConfig\.xml: refused: the file declares a DTD or entities",
        _text(
            '<?xml version="1.0"?><!DOCTYPE Objs [<!ENTITY xxe SYSTEM "http://127.0.0.1:PORT/entity">]>'
            f'{OBJS}<Obj RefId="0"><MS><S N="Name">&xxe;</S></MS></Obj></Objs>'
        ),
    ),
    Damage(
        "exchange/Get-SettingOverride.xml",
        "exchange:Get-SettingOverride",
        r"exchange/Get-SettingOverride\.xml: refused: the file declares a DTD or entities",
        _text(f'<?xml version="1.0"?><!DOCTYPE Objs SYSTEM "http://127.0.0.1:PORT/external.dtd">{OBJS}</Objs>'),
    ),
    Damage(
        "exchange/Get-IntraOrganizationConnector.xml",
        "exchange:Get-IntraOrganizationConnector",
        r"exchange/Get-IntraOrganizationConnector\.xml: refused: the file declares a DTD or entities",
        _text(
            '<?xml version="1.0"?><!DOCTYPE Objs [<!ENTITY % remote SYSTEM "http://127.0.0.1:PORT/param.dtd">'
            f"%remote;]>{OBJS}</Objs>"
        ),
    ),
    Damage(
        "exchange/Get-ExchangeCertificate/EX02.xml",
        "exchange:Get-ExchangeCertificate",
        r"exchange/Get-ExchangeCertificate/EX02\.xml: refused: the file declares a DTD or entities",
        _text(
            '<?xml version="1.0"?><!DOCTYPE Objs [<!ENTITY passwd SYSTEM "file:///etc/passwd">]>'
            f'{OBJS}<Obj RefId="0"><MS><S N="Subject">&passwd;</S></MS></Obj></Objs>'
        ),
    ),
    Damage(
        "exchange/Get-ClientAccessService.xml",
        "exchange:Get-ClientAccessService",
        r"exchange/Get-ClientAccessService\.xml: refused: 4,294,967,296 bytes is more than",
        lambda path, port: sparse(path, 4 * GIB),
    ),
    Damage(
        "exchange/Get-MailUser.xml",
        "exchange:Get-MailUser",
        r"exchange/Get-MailUser\.xml: not UTF-8 or UTF-16 text",
        lambda path, port: path.write_bytes(bytes(range(256)) * 64),
    ),
    Damage(
        "sharepoint/Get-SPAuthenticationRealm.xml",
        "sharepoint:Get-SPAuthenticationRealm",
        r"sharepoint/Get-SPAuthenticationRealm\.xml: refused: the file declares a DTD or entities",
        _text(billion_laughs(), "utf-16"),  # Windows PowerShell's UTF-16: the other decoder path
    ),
    Damage(
        f"entra/{FIRST_TENANT}/domains.json",
        "entra:domains",
        rf"entra/{FIRST_TENANT}/domains\.json: refused: larger than any Graph response \(4,294,967,296 bytes\)",
        lambda path, port: sparse(path, 4 * GIB),
    ),
    Damage(
        f"entra/{SECOND_TENANT}/applications.json",
        "entra:applications",
        rf"entra/{SECOND_TENANT}/applications\.json: refused: arrays or objects nested too deeply",
        _text("[" * 200_000),
    ),
]


# -- usage errors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    """A file the suite must refuse before anything runs (exit 4), and what the message must say."""

    id: str
    says: str
    """A regular expression over the run's output; FILE stands for the hostile file's path."""
    profile: str | Callable[[Path], None] | None = None
    """Profile text (a str) or a writer; None: the shipped demo profile."""
    waivers: str | Callable[[Path], None] | None = None
    manifest: str | Callable[[Path], None] | None = None


def _profile_with(old: str, new: str) -> str:
    text = profile_text(Path("unused"))
    assert old in text, old
    return text.replace(old, new, 1).replace('[evidence]\npath = "unused"\n', "")


SPN_PROFILE = profile_text(Path("unused")).replace('[evidence]\npath = "unused"\n', "")
WAIVER = """\
[[waiver]]
requirement = "OWA-VDIR-AUTH"
justification = "EX03 is decommissioned on 2027-01-31"
expires = {expires}
"""

USAGE = [
    Usage(
        "profile-list-given-a-string",
        r"FILE: \[organization\] key 'smtp_domains' is 'contoso\.com': expected a valid list",
        profile=_profile_with('smtp_domains = ["contoso.com", "fabrikam.com"]', 'smtp_domains = "contoso.com"'),
    ),
    Usage(
        "profile-boolean-given-a-list",
        r"FILE: \[organization\] key 'resource_forest' is \[true\]: expected a boolean \(true/false, unquoted\)",
        profile=_profile_with("resource_forest = false", "resource_forest = [true]"),
    ),
    Usage(
        "profile-unknown-key",
        r"FILE: unknown key 'verfy_tls' in \[sharepoint\]; known keys there: uri, auth, .*verify_tls",
        profile=_profile_with(
            'public_root_domain = "contoso.com"', 'public_root_domain = "contoso.com"\nverfy_tls = false'
        ),
    ),
    Usage(
        "profile-invalid-guid",
        r"FILE: \[tenants\]\[1\] key 'id' is '8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c3g': expected a tenant id GUID",
        profile=_profile_with(f'id = "{FIRST_TENANT}"', 'id = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c3g"'),
    ),
    Usage(
        "profile-invalid-url",
        r"FILE: \[sharepoint\] key 'web_application' is 'javascript:alert\(1\)': expected an http:// or https:// URL",
        profile=_profile_with(
            'web_application = "https://sharepoint.contoso.com"', 'web_application = "javascript:alert(1)"'
        ),
    ),
    Usage(
        "profile-url-with-a-space",
        r"FILE: \[sharepoint\] key 'uri' is 'https://sp01\.contoso\.com:5986/ws man': expected an http:// or https:// URL",
        profile=_profile_with(
            'uri = "https://sp01.contoso.com:5986/wsman"', 'uri = "https://sp01.contoso.com:5986/ws man"'
        ),
    ),
    Usage(
        "profile-not-toml",
        r"FILE: (not valid TOML|cannot be read)",
        profile=lambda path: path.write_bytes(b"\x00\xff\xfe[organization\n" + os.urandom(512)),
    ),
    Usage(
        "profile-nested-too-deeply",
        r"FILE: not valid TOML: arrays or tables nested too deeply",
        profile="a = " + "[" * 100_000 + "\n",
    ),
    Usage(
        "profile-multi-gigabyte",
        r"FILE: refused: larger than the 1,048,576 bytes such a file can need",
        profile=lambda path: sparse(path, 6 * GIB),
    ),
    Usage(
        "waiver-date-in-quotes",
        r"FILE: \[\[waiver\]\]\[1\] key 'expires' is '2027-02-01': expected a TOML date such as 2027-02-01 \(unquoted\)",
        waivers=WAIVER.format(expires='"2027-02-01"'),
    ),
    Usage(
        "waiver-date-with-a-time",
        r"FILE: \[\[waiver\]\]\[1\] key 'expires' is '2027-02-01T00:00:00': expected a TOML date",
        waivers=WAIVER.format(expires="2027-02-01T00:00:00"),
    ),
    Usage(
        "waiver-impossible-date",
        r"FILE: \[\[waiver\]\]\[1\] key 'expires' is '2027-13-01': expected a TOML date",
        waivers=WAIVER.format(expires="2027-13-01"),
    ),
    Usage(
        "waiver-nested-too-deeply",
        r"FILE: not valid TOML: arrays or tables nested too deeply",
        waivers="waiver = " + "[" * 100_000 + "\n",
    ),
    Usage(
        "waiver-multi-gigabyte",
        r"FILE: refused: larger than the 16,777,216 bytes such a file can need",
        waivers=lambda path: sparse(path, 6 * GIB),
    ),
    Usage(
        "manifest-of-another-format",
        r"FILE: key 'format' is 'hybridtrust-evidence/9', expected 'hybridtrust-evidence/1'",
        manifest='{"format": "hybridtrust-evidence/9"}',
    ),
    Usage(
        "manifest-nested-too-deeply",
        r"FILE: not valid JSON: arrays or objects nested too deeply",
        manifest="[" * 200_000,
    ),
    Usage(
        "manifest-multi-gigabyte",
        r"FILE: refused: larger than the 1,048,576 bytes such a file can need",
        manifest=lambda path: sparse(path, 6 * GIB),
    ),
]


def _limit_memory() -> None:
    # In the child, before exec: a reader that loads a whole multi-gigabyte file fails here, not the machine.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class LimitedSuiteProcess(SuiteProcess):
    """A suite run under `MEMORY_LIMIT` of address space."""

    preexec = staticmethod(_limit_memory)


@dataclass
class HostileRuns:
    intact: Measured
    damaged: Measured
    damaged_bundle: Path
    listener_connections: int
    usage: dict[str, tuple[Measured, Path]]


def _write(path: Path, content: str | Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        content(path)


def launch(root: Path, launcher: Launcher) -> Batch:
    """An intact and a damaged bundle, and every usage error, queued together (see conftest.py)."""
    intact = write_bundle(compliant_organization(NOW), root / "intact")
    damaged = root / "damaged"
    shutil.copytree(intact, damaged)
    listener = Listener()
    hostile_files: dict[str, Path] = {}

    def finish(measured: dict[str, Measured]) -> HostileRuns:
        usage = {case.id: (measured[case.id], hostile_files[case.id]) for case in USAGE}
        return HostileRuns(measured["intact"], measured["damaged"], damaged, listener.connections, usage)

    batch = Batch(finish, cleanups=[listener.stop])
    for damage in DAMAGES:
        damage.write(damaged / damage.file, listener.port)
    profile = root / f"{PROFILE}.toml"
    profile.write_text(SPN_PROFILE, encoding="utf-8")
    for name, bundle in (("intact", intact), ("damaged", damaged)):
        process = LimitedSuiteProcess(root / f"run-{name}", f"--profile={profile}", f"--evidence={bundle}")
        batch.runs[name] = launcher.submit(process)
    for case in USAGE:
        folder = root / case.id
        args = []
        if case.profile is not None:
            hostile_file = folder / f"{PROFILE}.toml"
            _write(hostile_file, case.profile)
            args.append(f"--profile={hostile_file}")
        else:
            args.append("--profile=demo")
        if case.waivers is not None:
            hostile_file = folder / "waivers.toml"
            _write(hostile_file, case.waivers)
            args.append(f"--waivers={hostile_file}")
        if case.manifest is not None:
            bundle = folder / "bundle"
            shutil.copytree(intact, bundle)
            hostile_file = bundle / "manifest.json"
            _write(hostile_file, case.manifest)
            args = [f"--profile={profile}", f"--evidence={bundle}"]
        hostile_files[case.id] = hostile_file
        batch.runs[case.id] = launcher.submit(LimitedSuiteProcess(folder / "run", *args))
    return batch


@pytest.fixture(scope="module")
def hostile(launched: Callable[[str], Any]) -> HostileRuns:
    return launched(__name__)  # type: ignore[no-any-return]


# -- the tests ---------------------------------------------------------------------------------------
def test_an_intact_bundle_is_judged_without_errors(hostile: HostileRuns) -> None:
    assert hostile.intact.status == 0, hostile.intact.output[-3000:]
    assert hostile.intact.results_of(PROFILE, "error") == []


def test_hostile_evidence_files_are_errors_of_exactly_their_requirements(
    hostile: HostileRuns, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run, intact = hostile.damaged, hostile.intact
    assert run.status == 1, run.output[-3000:]  # fail closed
    assert run.elapsed_s < BOUND_S and run.max_rss_mb < MAX_RSS_MB, (run.elapsed_s, run.max_rss_mb)
    errors = run.results_of(PROFILE, "error")
    for damage in DAMAGES:
        saying = sorted((r["message"] for r in errors if re.search(damage.says, r["message"])), key=len)
        assert saying, f"no error says {damage.says!r}"
        record_run(tmp_path_factory.getbasetemp(), "hostile evidence", damage.file, run, saying[0])
        # The terminal lists the damaged file once, at the end of the run.
        assert damage.file in run.output, damage.file

    # Each error is about a hostile file, and names it.
    for result in errors:
        assert any(re.search(damage.says, result["message"]) for damage in DAMAGES), result["message"]
    # Requirements that need none of those documents are judged as with the intact bundle.
    damaged_keys = {damage.key for damage in DAMAGES}
    untouched = {r.id for r in catalog.REQUIREMENTS if r.needs and not set(r.needs) & damaged_keys}
    judged = {r["requirement"] for r in run.results_of(PROFILE) if r["outcome"] != "error"}
    assert untouched & {r["requirement"] for r in intact.results_of(PROFILE)} <= judged
    expected = intact.outcomes(PROFILE)
    changed = {
        key: (expected.get(key), outcome)
        for key, outcome in run.outcomes(PROFILE).items()
        if outcome != "error" and expected.get(key) != outcome
    }
    assert changed == {}, changed


def test_no_entity_is_expanded_or_fetched(hostile: HostileRuns) -> None:
    assert hostile.listener_connections == 0  # nothing fetched the external entities, DTD or parameter entity
    everything = hostile.damaged.output + "".join(
        path.read_text(encoding="utf-8", errors="replace") for path in hostile.damaged.files()
    )
    assert "lollollol" not in everything  # no entity expanded
    passwd = Path("/etc/passwd").read_text(encoding="utf-8").splitlines()[0]
    assert passwd not in everything  # no local file read through an entity
    assert hostile.damaged.max_rss_mb < MAX_RSS_MB


@pytest.mark.parametrize("case", USAGE, ids=[case.id for case in USAGE])
def test_a_hostile_file_is_a_usage_error_and_nothing_is_written(
    case: Usage, hostile: HostileRuns, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run, hostile_file = hostile.usage[case.id]
    said = next((line for line in run.output.splitlines() if str(hostile_file) in line), run.output[-300:])
    record_run(tmp_path_factory.getbasetemp(), "usage error", case.id, run, said.replace(str(hostile_file), "FILE"))
    assert run.status == 4, run.output[-3000:]
    pattern = re.escape(str(hostile_file)).join(case.says.split("FILE"))
    assert re.search(pattern, run.output), f"{case.says!r} not in: {run.output[-2000:]}"
    assert "INTERNALERROR" not in run.output and "Traceback" not in run.output
    assert run.files() == [], f"written before the usage error: {run.files()}"
    assert run.elapsed_s < BOUND_S and run.max_rss_mb < MAX_RSS_MB, (run.elapsed_s, run.max_rss_mb)
