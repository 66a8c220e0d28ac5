"""Re-verification: a requirement's own test function, called again on freshly collected facts.

The requirement tests are plain functions over facts, so judging one subject again
needs no pytest session: find the same subject (by its node id part) among what the
test's subject source gives for the fresh organization, hand the function the values
its fixtures would (``org``, ``profile``, ``cloud``, ``now``, the subject), and read the
outcome the way the plugin does (a failing assert's `failure(...)` message).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hybridtrust.catalog import Requirement
from hybridtrust.facts import NotCollected, Organization
from hybridtrust.testing import NotApplicable, Subject, take_finding


@dataclass(frozen=True)
class Verdict:
    outcome: str
    """passed, failed, error (could not be judged) or skipped (no longer applies)."""
    message: str = ""

    def document(self) -> dict[str, str]:
        return {"outcome": self.outcome, "message": self.message}


def _assertion_message(error: AssertionError) -> str:
    finding = take_finding()
    if finding is not None:
        return str(finding)
    return str(error).split("\nassert ")[0].strip() or "assertion failed"


def rejudge(
    function: Callable[..., Any] | None, requirement: Requirement, subject: Subject, organization: Organization
) -> Verdict:
    """The requirement's verdict on one subject of a freshly collected organization."""
    if function is None:
        return Verdict("error", "the requirement's test function is not known, so it was not judged again")
    over = getattr(function, "hybrid_subjects", None)
    if over is None:
        return Verdict("error", f"{function.__name__} is not a requirement test")
    try:
        fresh = next((candidate for candidate in over(organization) if candidate.id == subject.id), None)
    except NotCollected as error:
        return Verdict("error", f"could not be evaluated: {error}")
    except NotApplicable as reason:
        return Verdict("skipped", str(reason))
    if fresh is None:
        return Verdict("skipped", f"{subject.label} is no longer a subject of {requirement.id}")
    tenant = next((t for t in organization.tenants if t.id == fresh.tenant_id), None)
    missing = organization.missing(requirement.needs, tenant=tenant, server=fresh.server)
    if missing:
        return Verdict("error", f"could not be evaluated: {NotCollected(*missing)}")
    arguments: dict[str, Any] = {}
    for name in inspect.signature(function).parameters:
        if name == "org":
            arguments[name] = organization
        elif name == "profile":
            arguments[name] = organization.profile
        elif name == "cloud":
            arguments[name] = organization.cloud
        elif name == "now":
            arguments[name] = organization.now
        elif name in ("request", "hybrid_subject"):
            return Verdict("error", f"{function.__name__} needs pytest's {name}: judge it with a plain run")
        else:
            arguments[name] = fresh.value
    take_finding()
    try:
        function(**arguments)
    except AssertionError as error:
        return Verdict("failed", _assertion_message(error))
    except pytest.skip.Exception as reason:
        return Verdict("skipped", str(reason.msg))
    except NotCollected as error:
        return Verdict("error", f"could not be evaluated: {error}")
    except Exception as error:  # fail closed: anything else is "could not check", never a pass
        return Verdict("error", f"could not be evaluated: {type(error).__name__}: {error}")
    finally:
        take_finding()
    return Verdict("passed")
