"""Baselines: this run compared with an earlier results document of the same organization.

Results are matched by (requirement, subject), the pair reports and waivers name,
so a baseline survives changes of test names or order. The comparison is what a
change manager needs from a run after a change window:

- new failures: failed now, and not failing in the baseline (passed, error,
  skipped, or absent: a subject or requirement the baseline did not judge cannot
  prove the failure is old, so it counts as new; compare runs of the same
  selection);
- fixed: failing in the baseline, passed (or remediated) now;
- still failing: failing in both.

"Failing" in a baseline includes waived results (a waived result is a failure
somebody accepted): when the waiver lapses the failure is not new. Errors are in
none of the lists: they fail every gate on their own (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridtrust.limits import BASELINE_BYTES, NESTING_ERRORS, TooLarge, read_bounded
from hybridtrust.results import FORMAT, severity_rank

Key = tuple[str, str]


class BaselineError(ValueError):
    """A baseline that cannot be compared with this run (a usage error, exit status 4)."""


def load_results_document(path: Path, profile: str) -> dict[str, Any]:
    """A results document of `profile`, checked enough to be compared; else a `BaselineError`."""
    try:
        text = read_bounded(path, BASELINE_BYTES).decode("utf-8-sig")  # limits.py: never more into memory
    except FileNotFoundError:
        raise BaselineError(f"--baseline {path}: no such results file") from None
    except TooLarge as error:
        raise BaselineError(f"--baseline {path}: refused: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BaselineError(f"--baseline {path}: cannot be read: {error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise BaselineError(
            f"--baseline {path}: not valid JSON ({error.msg} at line {error.lineno}): expected a results document"
        ) from None
    except NESTING_ERRORS:
        # json is recursive: `[[[[...` would otherwise end the run as an internal error (limits.py).
        raise BaselineError(
            f"--baseline {path}: not valid JSON (nested too deeply): expected a results document"
        ) from None
    if not isinstance(document, dict):
        raise BaselineError(f"--baseline {path}: expected a results document (a JSON object with key 'format')")
    if document.get("format") != FORMAT:
        raise BaselineError(f"--baseline {path}: key 'format' is {document.get('format')!r}, expected {FORMAT!r}")
    if document.get("profile") != profile:
        raise BaselineError(
            f"--baseline {path}: key 'profile' is {document.get('profile')!r}, expected {profile!r} "
            "(a baseline is an earlier run of the same profile)"
        )
    results = document.get("results")
    if not isinstance(results, list) or not all(
        isinstance(item, dict) and all(isinstance(item.get(key), str) for key in ("requirement", "subject", "outcome"))
        for item in results
    ):
        raise BaselineError(
            f"--baseline {path}: key 'results' is not a list of results with requirement, subject and outcome"
        )
    return document


def _failing_then(result: dict[str, Any]) -> bool:
    return result["outcome"] in ("failed", "waived")


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """What `compare` reads of an earlier document: its start and its failing results, by requirement and subject.

    An earlier run is held from the start of a run to its end. Whole, the previous run of an
    organization of 1,000 servers (16,000 results) is some 35 MB of Python objects; its failures
    are a few hundred bytes, and a result that was not failing counts exactly as one that is absent.
    """
    return {
        "started": document.get("started"),
        "results": [
            {"requirement": r["requirement"], "subject": r["subject"], "outcome": r["outcome"]}
            for r in document.get("results", [])
            if _failing_then(r)
        ],
    }


def _entry(result: dict[str, Any]) -> dict[str, str]:
    return {"requirement": result["requirement"], "subject": result["subject"], "severity": result.get("severity", "")}


@dataclass
class Comparison:
    """This run against an earlier one (a baseline, or the previous run of the history)."""

    file: str
    started: str | None
    new_failures: list[dict[str, str]]
    fixed: list[dict[str, str]]
    still_failing: list[dict[str, str]]

    def document(self) -> dict[str, Any]:
        """The results document's additive ``baseline`` object."""
        return {
            "file": self.file,
            "started": self.started,
            "new_failures": self.new_failures,
            "fixed": self.fixed,
            "still_failing": self.still_failing,
        }

    def gate_failures(self, fail_on: str) -> list[dict[str, str]]:
        """New failures at or above --fail-on: what --fail-on-new fails on (with every error)."""
        threshold = severity_rank(fail_on)
        return [item for item in self.new_failures if item["severity"] and severity_rank(item["severity"]) >= threshold]


def compare(current: Iterable[dict[str, Any]], earlier: dict[str, Any], file: str) -> Comparison:
    """Compare results (as documents: requirement, subject, outcome, severity) with an earlier document."""
    before: dict[Key, dict[str, Any]] = {(r["requirement"], r["subject"]): r for r in earlier.get("results", [])}
    new, fixed, still = [], [], []
    for result in current:
        key = (result["requirement"], result["subject"])
        then = before.get(key)
        was_failing = then is not None and _failing_then(then)
        if result["outcome"] == "failed":
            (still if was_failing else new).append(_entry(result))
        elif result["outcome"] in ("passed", "fixed") and was_failing:
            fixed.append(_entry(result))
    started = earlier.get("started")
    return Comparison(file, started if isinstance(started, str) else None, new, fixed, still)
