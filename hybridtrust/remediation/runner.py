"""Plan, record, apply, re-verify: one organization's remediation (``--remediate``).

The safety rules, in the order they act:

- Only failures: a requirement that errored (its data could not be collected) has no
  value to fix from and is never planned; waived or passed ones are not failures.
- The plan is on disk before the first write, and each change's value re-read just
  before its write is on disk before the write is sent (`RecordFile.save` after every
  step, atomically): a crash mid-run leaves a record ``--rollback`` can use.
- No overwrite of someone else's change: before writing, the object is read again and
  compared with what the plan saw, as updated by this run's own earlier changes (the
  ledger); any other difference abandons that change with a message, and nothing is
  written.
- Merge, never replace: list changes add what is missing to what is there now and take
  out only what the fix itself removes (see `hybridtrust.remediation.graph`).
- Read back: every write is followed by a read, recorded as the value after.
- Risky fixes (catalog risky=True, or a change whose planner marks it risky) are
  planned and recorded, and applied only with ``--allow-risky``.

``before_write`` is a seam for tests: it runs after planning and before the first
write, which is where a concurrent administrator's change would land.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridtrust.facts import NotCollected, Organization
from hybridtrust.profile import Profile
from hybridtrust.remediation.connect import Targets, targets_for
from hybridtrust.remediation.exchange import EndpointError, PowerShellEndpoint, command_text, merged_parameters, unmet
from hybridtrust.remediation.fixes import plan_failure
from hybridtrust.remediation.graph import GraphWriteError, GraphWriter, describe_items, item_key, keys_of, merged
from hybridtrust.remediation.judge import Verdict, rejudge
from hybridtrust.remediation.model import Change, Failure, NoFix, NotPlanned, RecordFile, utc_now

log = logging.getLogger(__name__)


@dataclass
class Options:
    record_path: Path
    dry_run: bool = False
    allow_risky: bool = False
    before_write: Callable[[list[Change]], None] | None = None
    """Test seam: called with the plan after it is recorded and before anything is written."""
    collect: Callable[[Profile], Organization] | None = None
    """How to read the organization again for re-verification (default: a fresh live collection)."""
    connectivity: bool = False
    """--connectivity: the fresh collection probes too, so the probed requirements can be judged again."""


@dataclass
class Remediation:
    record: RecordFile
    plans: list[tuple[Failure, list[Change]]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the terminal shows: every change with its outcome, then the record's path."""
        out = []
        mode = "dry run, nothing changed" if self.record.dry_run else "remediation"
        out.append(f"{self.record.profile}: {mode}: {len(self.record.changes)} change(s) planned")
        for change in self.record.changes:
            out.append(f"  {change.id} [{change.status}] {change.requirement} {change.subject}: {change.summary}")
            if self.record.dry_run:
                out.append(f"      before: {_short(change.before)}")
                out.append(f"      after:  {_short(change.after)}")
            if change.reason:
                out.append(f"      {change.reason}")
            if change.verification:
                out.append(
                    f"      re-verified: {change.verification['outcome']} {change.verification.get('message', '')}".rstrip()
                )
        for item in self.record.not_planned:
            out.append(f"  -- {item.requirement} {item.subject}: not planned: {item.reason}")
        out.append(f"{self.record.profile}: remediation record {self.record.path}")
        return out


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- sessions -----------------------------------------------------------------------------------------------
class Sessions:
    """The connections fixes go through, opened on first use and closed at the end."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.powershell = {
            "exchange": PowerShellEndpoint("exchange", targets.exchange),
            "sharepoint": PowerShellEndpoint("sharepoint", targets.sharepoint),
        }
        self.graph = GraphWriter(targets.graph, targets.graph_credentials) if targets.graph is not None else None

    def endpoint(self, name: str) -> PowerShellEndpoint:
        return self.powershell[name]

    def writer(self) -> GraphWriter:
        if self.graph is None:
            raise GraphWriteError(
                f"Entra ID cannot be changed: {self.targets.graph_unavailable or 'no Graph endpoint'}"
            )
        return self.graph

    def close(self) -> None:
        for endpoint in self.powershell.values():
            endpoint.close()
        if self.graph is not None:
            self.graph.close()


# -- planning -------------------------------------------------------------------------------------------------
def plan(
    failures: list[Failure], targets: Targets | None
) -> tuple[list[tuple[Failure, list[Change]]], list[NotPlanned]]:
    plans: list[tuple[Failure, list[Change]]] = []
    not_planned: list[NotPlanned] = []
    for failure in failures:
        if failure.result.outcome != "failed":
            continue  # errored (no data), waived or passed: never a reason to change anything
        try:
            changes = plan_failure(failure)
        except NoFix as reason:
            not_planned.append(NotPlanned(failure.requirement.id, failure.subject.label, str(reason)))
            continue
        except NotCollected as error:
            not_planned.append(NotPlanned(failure.requirement.id, failure.subject.label, f"facts missing: {error}"))
            continue
        except Exception as error:  # a planner bug must not stop the other fixes, nor pass silently
            log.debug("planning %s failed", failure.label, exc_info=True)
            not_planned.append(
                NotPlanned(
                    failure.requirement.id, failure.subject.label, f"planning failed: {type(error).__name__}: {error}"
                )
            )
            continue
        if targets is not None and targets.graph is not None:
            for change in changes:
                if change.kind == "graph-list":
                    change.target["url"] = f"{targets.graph.graph_base_url}/{change.target['object']}"
        plans.append((failure, changes))
    ordered = sorted(
        ((change.stage, index, change) for index, change in enumerate(c for _, cs in plans for c in cs)),
        key=lambda item: (item[0], item[1]),
    )
    for number, (_, _, change) in enumerate(ordered, start=1):
        change.id = f"C{number:02d}"
    return plans, not_planned


# -- applying -------------------------------------------------------------------------------------------------
class _Ledger:
    """What each object should look like now: the plan's view, updated by this run's own writes."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    @staticmethod
    def key(change: Change) -> str:
        target = change.target
        if change.kind == "graph-list":
            return json.dumps(["graph", target["tenant"], target["object"], target["property"]])
        if change.kind == "script":
            return json.dumps(["script", target["endpoint"], target["probe_script"]])
        return json.dumps(["cmdlet", target["endpoint"], target["probe"]], sort_keys=True)

    def expected(self, change: Change) -> Any:
        key = self.key(change)
        if key in self.values:
            return self.values[key]
        return keys_of(change.target["property"], change.before) if change.kind == "graph-list" else change.before

    def remember(self, change: Change, value: Any) -> None:
        self.values[self.key(change)] = (
            keys_of(change.target["property"], value) if change.kind == "graph-list" else value
        )


def _difference(expected: Any, current: Any) -> str:
    if isinstance(expected, dict) and isinstance(current, dict):
        parts = [
            f"{name} was {expected.get(name)!r}, is now {current.get(name)!r}"
            for name in expected
            if expected.get(name) != current.get(name)
        ]
        return "; ".join(parts) or "its properties differ"
    if expected is None:
        return f"it exists now ({_short(current, 120)})"
    if current is None:
        return "it no longer exists"
    return f"it was {_short(expected, 120)}, is now {_short(current, 120)}"


def _apply_cmdlet(change: Change, sessions: Sessions, ledger: _Ledger, save: Callable[[], None]) -> None:
    target = change.target
    endpoint = sessions.endpoint(target["endpoint"])
    current = endpoint.read(target["probe"])
    expected = ledger.expected(change)
    if current != expected:
        change.status, change.reason = (
            "abandoned",
            (
                f"{command_text(target['probe'])} changed since the plan ({_difference(expected, current)}): "
                "nothing was written; run the audit again"
            ),
        )
        return
    if target["expect"] and not unmet(target["expect"], current):
        change.status, change.reason = "satisfied", "already as wanted (an earlier change of this run did it)"
        return
    # List parameters are existing + missing as the object is NOW (an earlier change of this run may have added).
    command = merged_parameters(target["command"], target.get("merge"), current)
    target["sent"] = command
    change.read_before = current
    change.status, change.applied_at = "applying", utc_now().isoformat()
    save()  # the value before is on disk before the write is sent
    outcome = endpoint.run(command)
    if outcome.error is not None:
        change.status, change.reason = "failed", f"{target['command']['cmdlet']} on {endpoint.uri}: {outcome.error}"
        # The failure's own words are the news; if the object cannot be read now, the next change re-reads it.
        with contextlib.suppress(EndpointError):
            ledger.remember(change, endpoint.read(target["probe"]))
        return
    after = endpoint.read(target["probe"])
    change.read_after, change.status, change.applied = after, "applied", True
    problems = unmet(target["expect"], after)
    if problems:
        change.reason = "read back: " + "; ".join(problems)
    ledger.remember(change, after)


def _apply_script(change: Change, sessions: Sessions, ledger: _Ledger, save: Callable[[], None]) -> None:
    target = change.target
    endpoint = sessions.endpoint(target["endpoint"])
    current = endpoint.read_sts()
    expected = ledger.expected(change)
    if current != expected:
        change.status, change.reason = (
            "abandoned",
            (f"AllowOAuthOverHttp changed since the plan (was {expected}, is {current}): nothing was written"),
        )
        return
    if current == target["expect"]:
        change.status, change.reason = "satisfied", "already as wanted"
        return
    change.read_before = current
    change.status, change.applied_at = "applying", utc_now().isoformat()
    save()
    endpoint.statement(target["script"])
    after = endpoint.read_sts()
    change.read_after, change.status, change.applied = after, "applied", True
    if after != target["expect"]:
        change.reason = f"read back: AllowOAuthOverHttp is {after}, not {target['expect']}"
    ledger.remember(change, after)


def _apply_graph(change: Change, sessions: Sessions, ledger: _Ledger, save: Callable[[], None]) -> None:
    target = change.target
    writer = sessions.writer()
    tenant, path, name = target["tenant"], target["object"], target["property"]
    current = writer.read(tenant, path, name)
    expected = ledger.expected(change)
    now = keys_of(name, current)
    if now != expected:
        added = [item for item in current if item_key(name, item) not in expected]
        gone = [key for key in expected if key not in now]
        change.status, change.reason = (
            "abandoned",
            (
                f"{name} of {path} changed since the plan (added by someone else: {describe_items(name, added)}; "
                f"removed: {gone}): nothing was written, nothing was lost; run the audit again"
            ),
        )
        return
    new = merged(name, current, list(target["add"]), list(target["remove"]))
    if keys_of(name, new) == now:
        change.status, change.reason = "satisfied", "already as wanted (an earlier change of this run did it)"
        return
    if name == "keyCredentials":
        keyless = [item_key(name, item) for item in current if not (isinstance(item, dict) and item.get("key"))]
        if keyless:
            change.status, change.reason = (
                "abandoned",
                (
                    f"Graph returned credential(s) {keyless} of {path} without their key: writing the list would drop "
                    "them, so nothing was written"
                ),
            )
            return
    change.read_before = current
    change.status, change.applied_at = "applying", utc_now().isoformat()
    save()  # the whole list as it was (keys included) is on disk before the PATCH
    writer.patch(tenant, path, name, new)
    after = writer.read(tenant, path, name)
    change.read_after, change.status, change.applied = after, "applied", True
    kept = set(keys_of(name, after))
    removed = {key.lower() for key in target["remove"]}
    lost = [key for key in now if key not in kept and key.lower() not in removed]
    absent = [item_key(name, item) for item in target["add"] if item_key(name, item) not in kept]
    still = [key for key in kept if key.lower() in removed]
    problems = []
    if lost:
        problems.append(f"LOST {lost} (restore them from read_before)")
    if absent:
        problems.append(f"not added: {absent}")
    if still:
        problems.append(f"not removed: {still}")
    if problems:
        change.reason = "read back: " + "; ".join(problems)
    ledger.remember(change, after)


APPLY = {"cmdlet": _apply_cmdlet, "script": _apply_script, "graph-list": _apply_graph}


def _apply(change: Change, sessions: Sessions, ledger: _Ledger, save: Callable[[], None]) -> None:
    try:
        APPLY[change.kind](change, sessions, ledger, save)
    except (EndpointError, GraphWriteError) as error:
        if change.status == "applying":
            change.status, change.reason = "failed", f"{error} (the write may have been sent: see read_before)"
        else:
            change.status, change.reason = "failed", str(error)
    except Exception as error:  # one change's surprise must not stop the record from being written
        log.debug("applying %s failed", change.id, exc_info=True)
        change.status, change.reason = "failed", f"{type(error).__name__}: {error}"


# -- the run --------------------------------------------------------------------------------------------------
def _fresh_organization(profile: Profile, connectivity: bool) -> Organization:
    from hybridtrust.audit import Audit

    return Audit(profile=profile, connectivity=connectivity).organization()


def remediate(profile: Profile, failures: list[Failure], options: Options) -> Remediation:
    """Plan and record the fixes of one organization's failures; apply and re-verify them unless a dry run."""
    targets = targets_for(profile)  # where fixes would go (a dry run only shows the URLs; nothing is opened)
    plans, not_planned = plan(failures, targets)
    record = RecordFile(
        path=options.record_path,
        profile=profile.name,
        organization=profile.organization.name,
        dry_run=options.dry_run,
        allow_risky=options.allow_risky,
        not_planned=not_planned,
    )
    record.changes = sorted((c for _, changes in plans for c in changes), key=lambda c: c.id)
    run = Remediation(record, plans)
    record.save()
    if options.dry_run:
        for change in record.changes:
            change.status = "dry-run"
            change.reason = "dry run: nothing was changed" + (
                f"; risky ({change.risk}): also needs --allow-risky" if change.risky else ""
            )
        _conclude(run, None)
        attach_not_planned(failures, run)
        return run
    if options.before_write is not None:
        options.before_write(record.changes)
    sessions = Sessions(targets)
    ledger = _Ledger()
    record.state = "applying"
    try:
        sequence = 0
        for change in record.changes:
            if change.risky and not options.allow_risky:
                change.status, change.reason = "risky", f"not applied: risky ({change.risk}); --allow-risky applies it"
                record.save()
                continue
            sequence += 1
            change.sequence = sequence
            _apply(change, sessions, ledger, record.save)
            record.save()
    finally:
        sessions.close()
        if record.state == "applying":
            record.state = "applied"
        record.save()
    fresh: Organization | str | None = None
    if any(change.applied for change in record.changes):
        record.state = "verifying"
        record.save()
        try:
            if options.collect is not None:
                fresh = options.collect(profile)
            else:
                fresh = _fresh_organization(profile, options.connectivity)
        except Exception as error:  # the changes stand; re-verification is what failed
            log.debug("re-collection failed", exc_info=True)
            fresh = f"the organization could not be read again: {type(error).__name__}: {error}"
    _conclude(run, fresh, failures)
    attach_not_planned(failures, run)
    return run


def _conclude(run: Remediation, fresh: Organization | str | None, failures: list[Failure] | None = None) -> None:
    """Each failure's outcome after remediation, into its result and the record.

    A failure without a change of its own is judged again too when the organization was read
    again: one fix often satisfies another requirement (a realm set right is the realm ACS's
    metadata must name), and an administrator should not need a second run to learn it.
    """
    record = run.record
    reasons = {(item.requirement, item.subject): item.reason for item in record.not_planned}
    planned = {(failure.requirement.id, failure.subject.label) for failure, _ in run.plans}
    side_effects = _fixed_as_side_effect(failures or [], planned, fresh, record)
    for failure, changes in run.plans:
        ids = [change.id for change in changes]
        effective = [c for c in changes if c.status in ("applied", "satisfied")]
        remediation: dict[str, Any] = {
            "changes": ids,
            "applied": any(c.applied for c in changes),
            "record": str(record.path),
        }
        outcome = failure.result.outcome
        if not effective or isinstance(fresh, str) or fresh is None:
            remediation["verification"] = None
            remediation["reason"] = "; ".join(f"{c.id}: {c.reason or c.status}" for c in changes)
            if isinstance(fresh, str) and effective:
                remediation["verification"] = {"outcome": "error", "message": fresh}
        else:
            verdict: Verdict = rejudge(failure.function, failure.requirement, failure.subject, fresh)
            remediation["verification"] = verdict.document()
            for change in changes:
                change.verification = verdict.document()
            complete = len(effective) == len(changes)
            if verdict.outcome == "passed" and complete:
                outcome = "fixed"
            else:
                after = verdict.message or verdict.outcome
                if verdict.outcome == "passed":
                    after = "passes now, but not every change was applied: " + "; ".join(
                        f"{c.id} {c.status}" for c in changes if c not in effective
                    )
                failure.result.message = f"{failure.result.message} | after remediation: {after}"
        failure.result.outcome = outcome  # type: ignore[assignment]
        failure.result.remediation = remediation
        record.results.append(
            {
                "requirement": failure.requirement.id,
                "subject": failure.subject.label,
                "outcome": outcome,
                "changes": ids,
                "verification": remediation.get("verification"),
            }
        )
    for failure_key, reason in reasons.items():
        if failure_key not in planned and failure_key not in side_effects:
            record.results.append(
                {
                    "requirement": failure_key[0],
                    "subject": failure_key[1],
                    "outcome": "failed",
                    "changes": [],
                    "reason": reason,
                }
            )
    record.state = "complete" if not record.dry_run else "dry-run"
    record.finished = utc_now()
    record.save()


def _fixed_as_side_effect(
    failures: list[Failure], planned: set[tuple[str, str]], fresh: Organization | str | None, record: RecordFile
) -> set[tuple[str, str]]:
    """Failures with no change of their own that pass on the re-read organization: marked fixed, recorded."""
    if not isinstance(fresh, Organization):
        return set()
    applied = [change.id for change in record.changes if change.applied]
    fixed: set[tuple[str, str]] = set()
    for failure in failures:
        key = (failure.requirement.id, failure.subject.label)
        if key in planned or failure.result.outcome != "failed":
            continue  # as in `plan`: an error (no data) or a waived result is never turned into anything
        verdict = rejudge(failure.function, failure.requirement, failure.subject, fresh)
        if verdict.outcome != "passed":
            continue  # still failing (or not judged): it stays failed, with why it has no fix
        remediation = {
            "changes": [],
            "applied": False,
            "record": str(record.path),
            "verification": verdict.document(),
            "reason": "no change of its own; passes on the organization read again"
            + (f" after {', '.join(applied)}" if applied else ""),
        }
        failure.result.outcome = "fixed"  # type: ignore[assignment]
        failure.result.remediation = remediation
        record.results.append(
            {
                "requirement": key[0],
                "subject": key[1],
                "outcome": "fixed",
                "changes": [],
                "verification": verdict.document(),
                "reason": remediation["reason"],
            }
        )
        fixed.add(key)
    return fixed


def attach_not_planned(failures: list[Failure], run: Remediation) -> None:
    """Failures without a plan say so in their result (remediation: no automatic fix, and why)."""
    reasons = {(item.requirement, item.subject): item.reason for item in run.record.not_planned}
    for failure in failures:
        reason = reasons.get((failure.requirement.id, failure.subject.label))
        if reason is not None and failure.result.remediation is None:
            failure.result.remediation = {
                "changes": [],
                "applied": False,
                "reason": reason,
                "record": str(run.record.path),
            }
