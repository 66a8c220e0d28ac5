"""Run history: every run's results document, kept per organization, for `--baseline last` and trends.

``<reports-dir>/history/<profile>/<UTC stamp>.json`` holds exactly the results
document of the run. Only runs that finished (exit status 0 or 1) are kept: an
interrupted run judged part of the organization, and as ``--baseline last`` it
would make every failure look new. Nothing here ever deletes a file: pruning old
history is the scheduler's business (README's recipes show how).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridtrust.catalog import SEVERITIES
from hybridtrust.results import FORMAT, severity_rank, write_json

TREND_RUNS = 20
"""How many runs the trend chart shows: enough for a month of working-day audits, small enough to read."""

_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


def folder(reports: Path, profile: str) -> Path:
    return reports / "history" / profile


def _order(path: Path) -> tuple[str, int] | None:
    found = _NAME.match(path.stem)
    return (found.group(1), int(found.group(2) or 1)) if found else None


def run_files(reports: Path, profile: str) -> list[Path]:
    """This profile's history files, oldest first (files of other names are not ours and are ignored)."""
    directory = folder(reports, profile)
    if not directory.is_dir():
        return []
    named = [(order, path) for path in directory.glob("*.json") if (order := _order(path)) is not None]
    return [path for _, path in sorted(named)]


def read_run(path: Path, profile: str) -> dict[str, Any] | None:
    """A history document, or None when it is damaged or not one of this profile's (never fatal)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("profile") != profile:
        return None
    if not isinstance(document.get("results"), list):
        return None
    return document


def newest(reports: Path, profile: str) -> Path | None:
    """The newest readable run of this profile (what ``--baseline last`` means)."""
    run = newest_run(reports, profile)
    return run[0] if run is not None else None


def newest_run(reports: Path, profile: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable run of this profile and its document, read once."""
    for path in reversed(run_files(reports, profile)):
        document = read_run(path, profile)
        if document is not None:
            return path, document
    return None


def keep(reports: Path, profile: str, stamp: str, document: dict[str, Any]) -> Path:
    """Write this run's document into the history; a second run in the same second gets ``-2``."""
    directory = folder(reports, profile)
    path = directory / f"{stamp}.json"
    number = 1
    while path.exists():
        number += 1
        path = directory / f"{stamp}-{number}.json"
    write_json(path, document)
    # The trend needs a handful of numbers per run, not the run's ten thousand results: keep them
    # beside the document so a scheduled audit of a large estate does not re-read 20 full documents.
    write_json(_point_path(path), asdict(run_point(document)))
    return path


def _point_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.trend.json")  # not a run file: its stem does not match _NAME


def _read_point(path: Path) -> RunPoint | None:
    try:
        data = json.loads(_point_path(path).read_text(encoding="utf-8"))
        return RunPoint(
            str(data["started"]),
            {str(k): int(v) for k, v in data["passed"].items()},
            {str(k): int(v) for k, v in data["failed"].items()},
            {str(k): int(v) for k, v in data["errored"].items()},
            int(data["waived"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def trend(reports: Path, profile: str, *, exclude: Path | None = None, limit: int = TREND_RUNS) -> list[RunPoint]:
    """The trend points of the last `limit` kept runs (but `exclude`), oldest first.

    Each point comes from its small side file; a run kept before side files existed (or whose
    side file is damaged) is read whole once.
    """
    points: list[RunPoint] = []
    for path in reversed(run_files(reports, profile)):
        if path == exclude:
            continue
        point = _read_point(path)
        if point is None and (document := read_run(path, profile)) is not None:
            point = run_point(document)
        if point is not None:
            points.append(point)
            if len(points) == limit:
                break
    return list(reversed(points))


def recent(reports: Path, profile: str, limit: int = TREND_RUNS) -> list[tuple[Path, dict[str, Any]]]:
    """The last `limit` readable runs, oldest first."""
    runs: list[tuple[Path, dict[str, Any]]] = []
    for path in reversed(run_files(reports, profile)):
        document = read_run(path, profile)
        if document is not None:
            runs.append((path, document))
            if len(runs) == limit:
                break
    return list(reversed(runs))


# -- the trend: requirement verdicts per run -----------------------------------------------------------
@dataclass
class RunPoint:
    """One run of the trend: requirements (not subjects) passed, failed, errored, by severity."""

    started: str
    passed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    errored: dict[str, int] = field(default_factory=dict)
    waived: int = 0

    def total(self, kind: str) -> int:
        counts: dict[str, int] = getattr(self, kind)
        return sum(counts.values())


def requirement_verdicts(results: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """requirement -> (verdict, severity). A requirement fails if any subject fails; it is errored if any
    subject could not be evaluated and none failed (a failure is the firmer news); it passes if every judged
    subject passed. The severity is the highest among the subjects that decided the verdict."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[str(result.get("requirement"))].append(result)
    verdicts: dict[str, tuple[str, str]] = {}
    for requirement, items in grouped.items():
        outcomes = {str(item.get("outcome")) for item in items}
        for verdict, deciding in (
            ("failed", {"failed"}),
            ("errored", {"error"}),
            ("passed", {"passed", "fixed"}),
            ("waived", {"waived"}),
        ):
            if outcomes & deciding:
                severities = [str(item.get("severity")) for item in items if item.get("outcome") in deciding]
                known = [severity for severity in severities if severity in SEVERITIES]
                severity = max(known, key=severity_rank) if known else "low"
                verdicts[requirement] = (verdict, severity)
                break
    return verdicts


def run_point(document: dict[str, Any]) -> RunPoint:
    point = RunPoint(str(document.get("started", "")))
    for verdict, severity in requirement_verdicts(document.get("results", [])).values():
        if verdict == "waived":
            point.waived += 1
        else:
            counts: dict[str, int] = getattr(point, verdict)
            counts[severity] = counts.get(severity, 0) + 1
    return point
