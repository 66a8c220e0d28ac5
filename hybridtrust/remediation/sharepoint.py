"""SharePoint's one change that no cmdlet makes: the STS ``AllowOAuthOverHttp`` toggle (S4).

This is the only place remediation sends text as a script, and only to SharePoint's
full-language endpoint: Exchange's endpoint is NoLanguage and every Exchange change is
one cmdlet with literal parameters (`hybridtrust.remediation.exchange`). The text is
built here from a boolean, never from a profile value or a server's answer.
"""

from __future__ import annotations

from typing import Any

from pypsrp.powershell import PowerShell, RunspacePool

from hybridtrust.sources.remoting import REMOTING_ERRORS, RemotingSettings, describe_transport_error, error_text, scrub

STS_PROBE = "(Get-SPSecurityTokenServiceConfig).AllowOAuthOverHttp"


class StatementError(Exception):
    """The statement could not run; the message carries the endpoint and the server's words."""


def sts_toggle_script(allow: bool) -> str:
    """S4's statement, built from a boolean."""
    value = "$true" if allow else "$false"
    return f"$c = Get-SPSecurityTokenServiceConfig; $c.AllowOAuthOverHttp = {value}; $c.Update()"


def send_statement(pool: RunspacePool, settings: RemotingSettings, text: str) -> list[Any]:
    """Run one of the statements above on SharePoint's endpoint; its output objects."""
    shell = PowerShell(pool).add_script(text)
    try:
        output = shell.invoke()
    except REMOTING_ERRORS as error:
        raise StatementError(f"{text} on {settings.uri}: {describe_transport_error(error, settings)}") from None
    errors = list(shell.streams.error)
    if errors:
        raise StatementError(f"{text} on {settings.uri}: {scrub(error_text(errors[0]), settings.secrets)}")
    return list(output or [])
