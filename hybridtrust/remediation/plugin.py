"""The pytest side of remediation: ``--remediate``, ``--dry-run``, ``--allow-risky``, ``--rollback FILE``.

Loaded by ``hybridtrust.plugin`` (its ``pytest_plugins``). The compliance tests run as
always; then `remediate_session`, which ``hybridtrust.plugin``'s sessionfinish calls
before it writes the results documents, plans and applies the fixes of the failures of
this run and re-judges them, so the documents and the exit status show ``fixed``.
``--rollback`` runs when the session starts, before the audit collects anything, so the
audit that follows judges the organization as the rollback left it.

Without ``--remediate`` or ``--rollback`` nothing here does anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hybridtrust.remediation.model import Failure, RecordError, read_record

if TYPE_CHECKING:
    from hybridtrust.plugin import Suite

log = logging.getLogger(__name__)


@dataclass
class _State:
    remediate: bool
    dry_run: bool
    allow_risky: bool
    rollback: Path | None = None
    record: dict[str, Any] | None = None
    lines: list[tuple[str, bool]] = field(default_factory=list)
    """(line, is a problem) for the terminal summary."""


STATE_KEY = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hybridtrust")
    group.addoption(
        "--remediate",
        action="store_true",
        help="apply the documented fixes for the requirements that fail in this run (honours -k, -m, "
        "--requirement), then re-verify each; without it nothing is ever written",
    )
    group.addoption(
        "--dry-run",
        action="store_true",
        help="with --remediate: print and record the plan (every command and Graph request, before and after), "
        "change nothing",
    )
    group.addoption(
        "--allow-risky",
        action="store_true",
        help="with --remediate: also apply the fixes the catalog marks risky (otherwise planned, not applied)",
    )
    group.addoption(
        "--rollback",
        metavar="FILE",
        help="undo the changes recorded in a remediation record, newest first, verifying each (uses --profile)",
    )


def _suite(config: pytest.Config) -> Suite | None:
    from hybridtrust.plugin import SUITE_KEY

    return config.stash.get(SUITE_KEY, None)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    remediate = bool(config.getoption("remediate"))
    dry_run = bool(config.getoption("dry_run"))
    allow_risky = bool(config.getoption("allow_risky"))
    rollback = config.getoption("rollback")
    if (dry_run or allow_risky) and not remediate:
        raise pytest.UsageError("--dry-run and --allow-risky only go with --remediate")
    if not remediate and not rollback:
        return
    if remediate and rollback:
        raise pytest.UsageError("--remediate and --rollback cannot be combined: run the rollback on its own")
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller refused this below
    if config.getoption("numprocesses", None) or config.getoption("dist", "no") != "no":
        raise pytest.UsageError("--remediate and --rollback run in one process: drop -n/--dist")
    suite = _suite(config)
    option = "--remediate" if remediate else "--rollback"
    if suite is None:
        raise pytest.UsageError(f"{option} needs --profile: it says which organization to change")
    for audit in suite.audits:
        if audit.mode == "evidence":
            raise pytest.UsageError(
                f"{option}: profile {audit.name} is judged from an evidence bundle, which cannot be changed; "
                "run it live (without --evidence / [evidence])"
            )
    state = _State(remediate, dry_run, allow_risky)
    if rollback:
        state.rollback = Path(rollback)
        try:
            state.record = read_record(state.rollback)
        except RecordError as error:
            raise pytest.UsageError(str(error)) from None
        names = [audit.name for audit in suite.audits]
        if state.record["profile"] not in names:
            raise pytest.UsageError(
                f"--rollback {rollback}: the record is of profile {state.record['profile']!r}, but --profile names "
                f"{', '.join(names)}"
            )
    config.stash[STATE_KEY] = state


def _reports_dir(config: pytest.Config) -> Path:
    return Path(config.getoption("reports_dir"))


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    suite = _suite(session.config)
    if state is None or state.record is None or suite is None or session.config.option.collectonly:
        return
    from hybridtrust.remediation.rollback import rollback

    audit = suite.audit(state.record["profile"])
    output = _reports_dir(session.config) / f"{audit.name}-{suite.stamp}-rollback.json"
    assert state.rollback is not None
    try:
        record = rollback(audit.profile, state.record, state.rollback, output)
    except Exception as error:  # fail closed: a rollback that could not run fails the run
        log.debug("rollback failed", exc_info=True)
        state.lines.append((f"hybridtrust: {audit.name}: rollback failed: {type(error).__name__}: {error}", True))
        suite.other_failures += 1
        return
    problems = record.problems
    for line in record.lines():
        state.lines.append((f"hybridtrust: {line}", any(f" {undo.id} [" in line for undo in problems)))
    # A rollback that could not restore everything fails the run (the exit status of pytest).
    suite.other_failures += len(problems)


def remediate_session(session: pytest.Session, suite: Suite) -> None:
    """--remediate: plan, apply and re-verify the fixes of this run's failures; results become ``fixed``.

    Called by hybridtrust.plugin's sessionfinish before it judges the exit status and
    writes the results documents.
    """
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or not state.remediate or session.config.option.collectonly:
        return
    from hybridtrust.plugin import _param_of, _stable_nodeid
    from hybridtrust.remediation.runner import Options, remediate

    items = {_stable_nodeid(item): item for item in session.items}
    for audit in suite.audits:
        failures: list[Failure] = []
        for result in suite.results[audit.name].results:
            item = items.get(result.nodeid)
            param = _param_of(item) if item is not None else None
            if result.outcome != "failed" or param is None or param.subject is None or param.organization is None:
                continue  # only failures of this run: an error (no data) is never remediated
            failures.append(
                Failure(
                    profile=audit.name,
                    requirement=param.requirement,
                    subject=param.subject,
                    organization=param.organization,
                    result=result,
                    function=getattr(item, "function", None),
                )
            )
        path = _reports_dir(session.config) / f"{audit.name}-{suite.stamp}-remediation.json"
        options = Options(
            path,
            dry_run=state.dry_run,
            allow_risky=state.allow_risky,
            connectivity=bool(getattr(audit, "connectivity", False)),
        )
        try:
            run = remediate(audit.profile, failures, options)
        except Exception as error:  # fail closed: say so, and fail the run
            log.debug("remediation failed", exc_info=True)
            state.lines.append(
                (f"hybridtrust: {audit.name}: remediation failed: {type(error).__name__}: {error}", True)
            )
            suite.other_failures += 1
            continue
        for line in run.lines():
            problem = any(f"[{status}]" in line for status in ("failed", "abandoned"))
            state.lines.append((f"hybridtrust: {line}", problem))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    for line, problem in state.lines:
        terminalreporter.write_line(line, red=problem)
