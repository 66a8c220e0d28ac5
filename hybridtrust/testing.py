"""What a requirement test is written with: `requirement`, `failure` and `not_applicable`.

A requirement test is a plain pytest function with plain asserts::

    @requirement("HMA-VDIR-OAUTH", over=subjects.virtual_directories(*HMA_VIRTUAL_DIRECTORIES))
    def test_oauth_is_enabled_on_the_virtual_directory(vdir: VirtualDirectory) -> None:
        assert vdir.has_method("OAuth"), failure(f"OAuth is not enabled on {vdir}", found=..., expected=...)

`@requirement` binds the test to its catalog row (scenarios, severity, markers,
the evidence it needs) and names what it is parametrized over: the plugin asks
``over(organization)`` for the subjects of every profile in the run. The message
of a failing assert may be a `failure(...)`: it reads as plain text in pytest's
output and also carries the value found, the value expected and the fix with the
organization's real values, which the reports show.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from hybridtrust import catalog
from hybridtrust.catalog import Requirement, Severity

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Subject:
    """What one parametrized test judges: a tenant, a server, a virtual directory, a URL..."""

    id: str
    """Part of the node id: ``EX01-MAPI``."""
    label: str
    """As reports and waivers name it: ``EX01/MAPI``."""
    value: Any
    tenant_id: str | None = None
    server: str | None = None


class NotApplicable(Exception):
    """The requirement does not apply to this organization; the reason is reported as a skip."""


SubjectSource = Callable[[Any], Iterable[Subject]]


def requirement(requirement_id: str, *, over: SubjectSource) -> Callable[[F], F]:
    """Bind a test to its catalog row and to the subjects it is judged over."""
    entry: Requirement = catalog.get(requirement_id)

    def bind(function: F) -> F:
        function.hybrid_requirement = entry  # type: ignore[attr-defined]
        function.hybrid_subjects = over  # type: ignore[attr-defined]
        return function

    return bind


class Finding(str):
    """A failure message that is also structured: what was found, expected, and how to fix it."""

    found: Any
    expected: Any
    fix: str | None
    severity: Severity | None

    def __new__(
        cls,
        message: str,
        *,
        found: Any = None,
        expected: Any = None,
        fix: str | None = None,
        severity: Severity | None = None,
    ) -> Finding:
        finding = super().__new__(cls, message)
        finding.found = found
        finding.expected = expected
        finding.fix = fix
        finding.severity = severity
        return finding


# The finding of the failing assert in the current test. pytest evaluates an
# assert's message only when the assert fails, so the last one created is the
# failure's.
_current_finding: contextvars.ContextVar[Finding | None] = contextvars.ContextVar("hybrid_finding", default=None)


def failure(
    message: str,
    *,
    found: Any = None,
    expected: Any = None,
    fix: str | None = None,
    severity: Severity | None = None,
) -> Finding:
    """The message of a failing assert, with its details for the report."""
    finding = Finding(message, found=found, expected=expected, fix=fix, severity=severity)
    _current_finding.set(finding)
    return finding


def take_finding() -> Finding | None:
    """The finding recorded by the test that just ran (and forget it)."""
    finding = _current_finding.get()
    _current_finding.set(None)
    return finding


def listing(values: Iterable[Any]) -> str:
    """Values as an administrator reads them in a message: ``[Ntlm, Negotiate]``."""
    return "[" + ", ".join(str(value) for value in values) + "]"
