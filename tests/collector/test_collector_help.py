"""The collector's help tells an administrator how to supply what the script does not write.

exchange-online/ (Exchange Online's connectors, EXO-IOC-CLOUD) comes from a separate export
in an Exchange Online PowerShell session. The commands the help shows are parsed with the
PowerShell grammar and their Export-Clixml paths evaluated, so a misspelt file name in the
help (which the reader would silently report "not collected") fails here.
"""

from __future__ import annotations

import re

import pytest

from hybridtrust.sources import evidence
from tests.collector.powershell_paths import Script, comment_help, syntax_problems
from tests.support import REPOSITORY

COLLECTOR = REPOSITORY / "hybridtrust" / "collector" / "HybridTrust-Collect.ps1"


@pytest.fixture(scope="module")
def help_text() -> str:
    return comment_help(COLLECTOR.read_text(encoding="utf-8-sig"))


def exchange_online_commands(help_text: str) -> str:
    """The indented command block of the paragraph about exchange-online/."""
    paragraph = help_text.index("exchange-online/")
    found = re.search(r"\n((?: {8}.*\n)+)", help_text[paragraph:])
    assert found, "no indented command block after the exchange-online/ paragraph"
    return "\n".join(line[8:] for line in found.group(1).splitlines())


def test_the_help_says_exchange_online_is_not_written_by_the_script(help_text: str) -> None:
    words = " ".join(help_text.split())
    assert "Exchange Online's connectors (exchange-online/, which EXO-IOC-CLOUD judges) are not written here" in words
    assert "[exchange_online] evidence" in words


def test_the_exchange_online_commands_are_valid_powershell(help_text: str) -> None:
    commands = Script.parse(exchange_online_commands(help_text).encode())
    assert syntax_problems(commands.tree) == []


def test_the_exchange_online_commands_connect_then_export_every_file_the_reader_reads(help_text: str) -> None:
    commands = Script.parse(exchange_online_commands(help_text).encode())
    order = [Script.command_name(command) for command in commands.commands()]
    assert order[0] == "connect-exchangeonline"
    exported = {cmdlet.lower() for cmdlet in evidence.EXCHANGE_ONLINE_CMDLETS}
    assert exported <= set(order), "a cmdlet the reader needs is not run"
    written = [path.replace("\\", "/").rsplit("/", 1) for path in commands.written_paths()]
    assert sorted(name for _, name in written) == sorted(f"{cmdlet}.xml" for cmdlet in evidence.EXCHANGE_ONLINE_CMDLETS)
    for folder, name in written:
        assert folder.endswith("/exchange-online"), f"{folder}/{name} is not in the bundle's exchange-online/ folder"
