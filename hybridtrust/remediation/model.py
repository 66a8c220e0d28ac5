"""What a remediation run plans, does and remembers: `Change`, `Failure`, the record files.

A `Change` is data, not code: what is sent (an Exchange or SharePoint cmdlet with its
parameters, a SharePoint statement, or a Graph list PATCH), how the object is read
before and after (the probe), the value before, the value wanted, and how to undo it.
Being plain JSON, the same object is the plan a dry run prints, the entry of the
remediation record, and what ``--rollback`` reads back a week later.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybridtrust.limits import NESTING_ERRORS, REMEDIATION_RECORD_BYTES, TooLarge, read_bounded

if TYPE_CHECKING:
    from hybridtrust.catalog import Requirement
    from hybridtrust.facts import Organization
    from hybridtrust.results import Result
    from hybridtrust.testing import Subject

RECORD_FORMAT = "hybridtrust-remediation/1"
ROLLBACK_FORMAT = "hybridtrust-rollback/1"

ChangeKind = Literal["cmdlet", "script", "graph-list"]
Status = Literal[
    "planned",  # not tried yet
    "dry-run",  # --dry-run: printed and recorded, not applied
    "risky",  # the catalog marks it risky and --allow-risky was not given
    "applying",  # the value before is recorded; the write is under way (a crash leaves this)
    "applied",  # written and read back
    "satisfied",  # nothing to write: an earlier change of this run already made it so
    "abandoned",  # the object changed since the plan (or could not be read safely): nothing written
    "failed",  # the server refused the write: its words are in `reason`
]
UNDOABLE: frozenset[str] = frozenset({"applying", "applied"})


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Change:
    """One documented fix for one requirement and subject."""

    requirement: str
    subject: str
    kind: ChangeKind
    summary: str
    """One line for an administrator: what is sent, in PowerShell or HTTP words."""
    target: dict[str, Any]
    """What is sent and how it is read; see `hybridtrust.remediation.exchange` / `.graph`."""
    before: Any
    """The value the plan saw (from this run's facts), in the shape the probe reads."""
    after: Any
    """The value the change makes (what the read-back must show)."""
    risky: bool = False
    risk: str | None = None
    stage: int = 0
    """Order between changes: lower first (S3's order for OWA/ECP), then plan order."""
    undo: dict[str, Any] | None = None
    """How --rollback restores `before`; None with `undo_note` when it cannot."""
    undo_note: str | None = None
    id: str = ""
    status: Status = "planned"
    applied: bool = False
    reason: str | None = None
    """Why it was not applied (risky, dry run, abandoned, the server's error)."""
    read_before: Any = None
    """The value re-read immediately before the write (recorded before the write is sent)."""
    read_after: Any = None
    """The value read back after the write."""
    sequence: int | None = None
    """Position in the order of application (rollback goes newest first)."""
    applied_at: str | None = None
    verification: dict[str, Any] | None = None
    """The requirement re-judged on fresh facts: {"outcome": ..., "message": ...}."""

    def document(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> Change:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


@dataclass
class Failure:
    """A requirement that failed in this run, for one subject: what remediation works from."""

    profile: str
    requirement: Requirement
    subject: Subject
    organization: Organization
    result: Result
    function: Callable[..., Any] | None = None
    """The requirement's test function: called again with fresh facts to re-verify."""

    @property
    def label(self) -> str:
        return f"{self.requirement.id} {self.subject.label}"


class NoFix(Exception):
    """The failure has no automatic fix in this organization; the message says why and what to do."""


@dataclass
class NotPlanned:
    requirement: str
    subject: str
    reason: str


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Replace the file in one step: a reader (or a crash) never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a record is for its readers, like the results document
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class RecordFile:
    """The remediation record of one organization, rewritten after every step (CONTRACTS.md)."""

    path: Path
    profile: str
    organization: str
    dry_run: bool
    allow_risky: bool
    started: dt.datetime = field(default_factory=utc_now)
    state: str = "planned"
    changes: list[Change] = field(default_factory=list)
    not_planned: list[NotPlanned] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    finished: dt.datetime | None = None
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "profile": self.profile,
            "organization": self.organization,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "state": self.state,
            "dry_run": self.dry_run,
            "allow_risky": self.allow_risky,
            "changes": [change.document() for change in self.changes],
            "not_planned": [asdict(item) for item in self.not_planned],
            "results": self.results,
            "notes": self.notes,
        }

    def save(self) -> None:
        write_json_atomically(self.path, self.document())


class RecordError(ValueError):
    """A remediation record that cannot be rolled back; the message names the file and the key."""


def read_record(path: Path) -> dict[str, Any]:
    try:
        # Bounded and depth-safe: the record is read before the rollback starts (limits.py says why).
        document = json.loads(read_bounded(path, REMEDIATION_RECORD_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise RecordError(f"--rollback {path}: no such remediation record") from None
    except TooLarge as error:
        raise RecordError(f"--rollback {path}: refused: {error}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"--rollback {path}: cannot be read as JSON: {error}") from None
    except NESTING_ERRORS:
        raise RecordError(f"--rollback {path}: not valid JSON: arrays or objects nested too deeply") from None
    if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise RecordError(f"--rollback {path}: key 'format' is {found!r}, expected {RECORD_FORMAT!r}")
    if not isinstance(document.get("changes"), list) or not isinstance(document.get("profile"), str):
        raise RecordError(f"--rollback {path}: expected a 'profile' text and a 'changes' list")
    for index, change in enumerate(document["changes"]):
        if not isinstance(change, dict) or change.get("kind") not in ("cmdlet", "script", "graph-list"):
            raise RecordError(f"--rollback {path}: changes[{index}] is not a change this version can undo")
    return document
