"""The evidence collector (hybridtrust/collector/HybridTrust-Collect.ps1), checked without PowerShell.

No Windows PowerShell runs in CI, so the script is parsed with a real PowerShell
grammar (tree-sitter-powershell): it must parse without an error or a missing
token, and it must write every file the evidence reader looks for, under the
exact name the reader looks for (a misspelt file name would not fail anything:
the reader would only report it "not collected" at every customer).
"""

from __future__ import annotations

import pytest

from hybridtrust.sources import evidence
from tests.collector.powershell_paths import Script, comment_help, syntax_problems
from tests.support import REPOSITORY

COLLECTOR = REPOSITORY / "hybridtrust" / "collector" / "HybridTrust-Collect.ps1"


@pytest.fixture(scope="module")
def script() -> Script:
    assert COLLECTOR.is_file(), f"{COLLECTOR} is missing: the README tells administrators to run it"
    return Script.parse(COLLECTOR.read_bytes())


def test_the_collector_parses_with_the_powershell_grammar(script: Script) -> None:
    assert syntax_problems(script.tree) == []


def test_the_grammar_does_reject_broken_powershell() -> None:
    # Proof that "no problem" above means something: the same check on a broken script finds the breaks.
    broken = Script.parse(b"function Get-X {\n  if ($a -eq 1 {\n    Export-Clixml -Path 'x.xml'\n}\n")
    assert syntax_problems(broken.tree)


def test_the_collector_writes_every_file_the_evidence_reader_reads(script: Script) -> None:
    written = {path.removeprefix("{outputpath}/") for path in script.written_paths()}
    expected = (
        {f"exchange/{cmdlet}.xml" for cmdlet in evidence.EXCHANGE_CMDLETS}
        | {f"sharepoint/{name}.xml" for name in evidence.SHAREPOINT_DOCUMENTS}
        | {"manifest.json"}
    )
    certificates = {path for path in written if path.startswith(f"exchange/{evidence.CERTIFICATES_FOLDER}/")}
    assert sorted(expected - written) == [], "the reader reads these, the collector never writes them"
    # One file per server, named by the server (a run-time value): exchange/Get-ExchangeCertificate/<server>.xml.
    assert certificates == {f"exchange/{evidence.CERTIFICATES_FOLDER}/{{servername}}.xml"}
    assert sorted(written - expected - certificates) == [], "written under a name the reader does not read"


def test_the_manifest_says_the_bundle_format(script: Script) -> None:
    assert evidence.FORMAT in script.string_constants()


def test_what_the_collector_leaves_to_others_is_documented() -> None:
    # Entra ID documents come from Graph (a live run with --save-evidence), not from an on-premises shell.
    help_text = " ".join(comment_help(COLLECTOR.read_text(encoding="utf-8-sig")).split())
    assert "entra/<tenant id>/...) are not written here" in help_text
