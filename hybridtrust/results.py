"""Outcomes and the results document (CONTRACTS.md, format ``hybridtrust-results/1``).

The results document is what scheduled jobs, change-window gates and other tools
read, so it only ever grows: new fields are added, none is renamed or removed.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from hybridtrust import __version__
from hybridtrust.catalog import SEVERITIES, Severity

FORMAT = "hybridtrust-results/1"
Outcome = Literal["passed", "failed", "error", "skipped", "waived", "fixed"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "error", "skipped", "waived", "fixed")


@dataclass
class Result:
    profile: str
    requirement: str
    title: str
    severity: Severity
    scenarios: list[str]
    subject: str
    outcome: Outcome
    message: str
    nodeid: str
    source: str = ""
    found: Any = None
    expected: Any = None
    fix: str | None = None
    waiver: dict[str, Any] | None = None
    remediation: dict[str, Any] | None = None
    symptoms: list[str] = field(default_factory=list)
    """What users see when this requirement fails (additive field)."""

    def document(self) -> dict[str, Any]:
        # What dataclasses.asdict gave, field by field: its generic deep copy cost more than writing the
        # document of a 16,000-test run. Found and expected are made JSON-able, the rest is plain data.
        data = {name: getattr(self, name) for name in _DOCUMENT_FIELDS}
        data["scenarios"] = list(self.scenarios)
        data["symptoms"] = list(self.symptoms)
        data["waiver"] = copy.deepcopy(self.waiver)
        data["remediation"] = copy.deepcopy(self.remediation)
        data["found"] = _jsonable(self.found)
        data["expected"] = _jsonable(self.expected)
        return data


_DOCUMENT_FIELDS = tuple(item.name for item in fields(Result) if item.name != "profile")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(item) for item in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def severity_rank(severity: str) -> int:
    """critical = 3 ... low = 0."""
    return len(SEVERITIES) - 1 - SEVERITIES.index(severity)  # type: ignore[arg-type]


@dataclass
class ProfileResults:
    """The outcomes of one organization in one run."""

    profile: str
    source: str
    started: dt.datetime
    origin: str = ""
    collected_at: dt.datetime | None = None
    notes: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    """With --baseline: new failures, fixed and still failing against it (hybridtrust.baseline)."""
    timings: dict[str, float | None] | None = None
    """Where the run's time went, in seconds (hybridtrust.timings): collection_s, sources_s, tests_s, reports_s."""

    def summary(self) -> dict[str, int]:
        counts = Counter(result.outcome for result in self.results)
        return {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}

    def gate_failures(self, fail_on: Severity) -> list[Result]:
        """What makes the run fail: errors always (fail closed), failures at or above --fail-on."""
        threshold = severity_rank(fail_on)
        return [
            result
            for result in self.results
            if result.outcome == "error" or (result.outcome == "failed" and severity_rank(result.severity) >= threshold)
        ]

    def document(self, finished: dt.datetime, exit_status: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "profile": self.profile,
            "started": self.started.isoformat(),
            "finished": finished.isoformat(),
            "source": self.source,
            "exit_status": exit_status,
            "summary": self.summary(),
            "results": [result.document() for result in self.results],
            # Additive fields (the contract allows new ones, never renamed ones):
            "hybridtrust_version": __version__,
            "origin": self.origin,
            "collected_at": self.collected_at.isoformat() if self.collected_at else None,
            "notes": self.notes,
            "baseline": self.baseline,
            # Written after the results, so hybridtrust.timings can fill reports_s in place once the last report is out.
            "timings": self.timings,
        }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write atomically: a scheduled job reading the file never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is for its readers
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)
