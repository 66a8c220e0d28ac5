"""``--rollback FILE``: undo the applied changes of a remediation record, newest first, verifying each.

- Exchange/SharePoint: the inverse cmdlet with the values before (``Change.undo``), then
  the object is read again and compared with the value recorded before the fix. An
  object that changed since the fix (someone else's later change) is not touched: the
  undo would overwrite that change.
- Graph: the list is read again; exactly what the fix added is taken out, and what it
  removed (kept whole, with its key, in the record) is put back where it was; written;
  read back. Anything else in the list, including what others added since, stays.

A change without an undo (its note says why, e.g. Set-MapiVirtualDirectory cannot
take a method out of one list alone) is reported, not guessed at. The rollback writes
its own record, ``reports/<profile>-<UTC timestamp>-rollback.json``, before and after
each undo.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridtrust.profile import Profile
from hybridtrust.remediation.connect import targets_for
from hybridtrust.remediation.exchange import EndpointError, command_text, undo_for, unmet
from hybridtrust.remediation.graph import GraphWriteError, item_key, keys_of, restored
from hybridtrust.remediation.model import (
    ROLLBACK_FORMAT,
    UNDOABLE,
    Change,
    utc_now,
    write_json_atomically,
)
from hybridtrust.remediation.runner import Sessions

log = logging.getLogger(__name__)


@dataclass
class Undo:
    id: str
    requirement: str
    subject: str
    kind: str
    target: str
    """What is sent to undo it (cmdlet line or Graph request)."""
    status: str = "pending"
    """restored, already (nothing to undo), partial, not-undoable, abandoned, failed."""
    before: Any = None
    """The value read immediately before the undo (recorded before it is sent)."""
    after: Any = None
    reason: str | None = None


@dataclass
class RollbackRecord:
    path: Path
    profile: str
    source: str
    started: str = field(default_factory=lambda: utc_now().isoformat())
    finished: str | None = None
    undos: list[Undo] = field(default_factory=list)

    @property
    def problems(self) -> list[Undo]:
        return [undo for undo in self.undos if undo.status not in ("restored", "already")]

    def save(self) -> None:
        write_json_atomically(
            self.path,
            {
                "format": ROLLBACK_FORMAT,
                "profile": self.profile,
                "record": self.source,
                "started": self.started,
                "finished": self.finished,
                "changes": [asdict(undo) for undo in self.undos],
            },
        )

    def lines(self) -> list[str]:
        out = [f"{self.profile}: rollback of {self.source}: {len(self.undos)} change(s), newest first"]
        for undo in self.undos:
            out.append(f"  {undo.id} [{undo.status}] {undo.requirement} {undo.subject}: {undo.target}")
            if undo.reason:
                out.append(f"      {undo.reason}")
        out.append(f"{self.profile}: rollback record {self.path}")
        return out


def _differences(recorded: Any, now: Any) -> list[str]:
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [
            f"{name} is {now.get(name)!r}, was {value!r}" for name, value in recorded.items() if now.get(name) != value
        ]
    return [] if recorded == now else [f"the value is {now!r}, was {recorded!r}"]


def _undo_cmdlet(change: Change, undo: Undo, sessions: Sessions, save: Any) -> None:
    if change.undo is None:
        undo.status, undo.reason = "not-undoable", change.undo_note or "no undo is known for this change"
        return
    target = change.target
    endpoint = sessions.endpoint(target["endpoint"])
    recorded = change.read_before if change.read_before is not None else change.before
    command, expect, notes = undo_for(change.undo, recorded)
    undo.target = command_text(command)
    current = endpoint.read(target["probe"])
    undo.before = current
    save()
    if change.status == "applied" and change.read_after is not None and current != change.read_after:
        undo.status, undo.reason = (
            "abandoned",
            (
                f"the object changed since the fix ({'; '.join(_differences(change.read_after, current))}): "
                "undoing would overwrite that change; nothing was sent"
            ),
        )
        return
    if expect and not unmet(expect, current):
        undo.status, undo.reason = "already", "already as before the fix"
        undo.after = current
        return
    outcome = endpoint.run(command)
    if outcome.error is not None:
        undo.status, undo.reason = "failed", f"{command['cmdlet']} on {endpoint.uri}: {outcome.error}"
        return
    after = endpoint.read(target["probe"])
    undo.after = after
    problems = unmet(expect, after) + notes
    if change.read_before is not None and after is not None:
        problems += _differences(change.read_before, after)
    if problems:
        undo.status, undo.reason = "partial", "; ".join(dict.fromkeys(problems))
        if change.undo_note:
            undo.reason += f" ({change.undo_note})"
    else:
        undo.status = "restored"


def _undo_script(change: Change, undo: Undo, sessions: Sessions, save: Any) -> None:
    if change.undo is None:
        undo.status, undo.reason = "not-undoable", change.undo_note or "no undo is known"
        return
    endpoint = sessions.endpoint(change.target["endpoint"])
    current = endpoint.read_sts()
    undo.before = current
    save()
    wanted = change.undo["expect"]
    if current == wanted:
        undo.status, undo.reason, undo.after = "already", "already as before the fix", current
        return
    if change.read_after is not None and current != change.read_after:
        undo.status, undo.reason = (
            "abandoned",
            f"AllowOAuthOverHttp changed since the fix (now {current}): nothing was sent",
        )
        return
    endpoint.statement(change.undo["script"])
    undo.after = endpoint.read_sts()
    undo.status = "restored" if undo.after == wanted else "partial"
    if undo.status == "partial":
        undo.reason = f"AllowOAuthOverHttp is {undo.after}, was {wanted}"


def _undo_graph(change: Change, undo: Undo, sessions: Sessions, save: Any) -> None:
    target = change.target
    name = target["property"]
    writer = sessions.writer()
    before_fix = list(change.read_before or change.before or [])
    before_keys = set(keys_of(name, before_fix))
    if change.read_after is not None:
        after_keys = keys_of(name, change.read_after)
        added = [key for key in after_keys if key not in before_keys]
        removed = [item for item in before_fix if item_key(name, item) not in set(after_keys)]
    else:  # the record ends mid-change: undo what the fix meant to do, which is all it can have done
        added = [item_key(name, item) for item in target["add"] if item_key(name, item) not in before_keys]
        wanted_gone = {key.lower() for key in target["remove"]}
        removed = [item for item in before_fix if item_key(name, item).lower() in wanted_gone]
    current = writer.read(target["tenant"], target["object"], name)
    undo.before = current
    save()
    new = restored(name, current, added, removed, before_fix)
    if keys_of(name, new) == keys_of(name, current):
        undo.status, undo.reason, undo.after = "already", "already as before the fix", current
        return
    if name == "keyCredentials":
        keyless = [item_key(name, item) for item in new if not (isinstance(item, dict) and item.get("key"))]
        if keyless:
            undo.status, undo.reason = (
                "abandoned",
                f"credential(s) {keyless} came back without their key: nothing was sent",
            )
            return
    writer.patch(target["tenant"], target["object"], name, new)
    after = writer.read(target["tenant"], target["object"], name)
    undo.after = after
    now = set(keys_of(name, after))
    problems = []
    if any(key in now for key in added):
        problems.append(f"still present: {[key for key in added if key in now]}")
    back = [item_key(name, item) for item in removed]
    if any(key not in now for key in back):
        problems.append(f"not restored: {[key for key in back if key not in now]}")
    lost = [
        item_key(name, item)
        for item in current
        if item_key(name, item) not in now and item_key(name, item) not in added
    ]
    if lost:
        problems.append(f"LOST {lost}")
    undo.status = "partial" if problems else "restored"
    undo.reason = "; ".join(problems) or None


UNDO = {"cmdlet": _undo_cmdlet, "script": _undo_script, "graph-list": _undo_graph}


def _target_text(change: Change) -> str:
    if change.kind == "graph-list":
        return f"PATCH {change.target.get('url') or '/' + change.target['object']} {change.target['property']} (take out what {change.id} added, put back what it removed)"
    if change.undo is None:
        return f"(no undo) {change.summary}"
    if change.kind == "script":
        return str(change.undo["script"])
    recorded = change.read_before if change.read_before is not None else change.before
    return command_text(undo_for(change.undo, recorded)[0])


def rollback(profile: Profile, document: dict[str, Any], source: Path, output: Path) -> RollbackRecord:
    """Undo every applied change of the record `document`, newest first; never raises for what servers do."""
    changes = [Change.from_document(item) for item in document["changes"]]
    # A write that failed after it was sent ("failed" with a value before on record) may have landed: undo it too.
    # Every undo first compares the object with what the fix wanted, so one that did not land is "already".
    wanted = [c for c in changes if c.status in UNDOABLE or (c.status == "failed" and c.read_before is not None)]
    todo = sorted(wanted, key=lambda c: c.sequence or 0, reverse=True)
    record = RollbackRecord(output, profile.name, str(source))
    record.undos = [Undo(c.id, c.requirement, c.subject, c.kind, _target_text(c)) for c in todo]
    record.save()
    sessions = Sessions(targets_for(profile))
    try:
        for change, undo in zip(todo, record.undos, strict=True):
            try:
                UNDO[change.kind](change, undo, sessions, record.save)
            except (EndpointError, GraphWriteError) as error:
                undo.status, undo.reason = "failed", str(error)
            except Exception as error:  # one undo's surprise must not stop the others
                log.debug("undoing %s failed", change.id, exc_info=True)
                undo.status, undo.reason = "failed", f"{type(error).__name__}: {error}"
            record.save()
    finally:
        sessions.close()
        record.finished = utc_now().isoformat()
        record.save()
    return record
