"""Waivers (CONTRACTS.md "Waivers"): known failures that an owner has accepted until a date.

A waiver file is TOML, a list of ``[[waiver]]`` tables::

    [[waiver]]
    requirement = "OWA-VDIR-AUTH"          # a catalog id (required)
    subject = "EX03/*"                     # glob over the subjects reports name (default "*": every subject)
    justification = "EX03 is decommissioned on 2027-01-31"   # required, not empty
    expires = 2027-02-01                   # required, a TOML date (unquoted); applies up to and including it
    owner = "messaging-team@contoso.com"   # who answers for it (optional)
    profile = "contoso"                    # only for this profile (optional; default: every profile of the run)

Rules, and why:

- Only a *failure* is ever waived. An error ("could not be evaluated") is not a
  known failure but missing data, and a gate never opens on missing data (fail
  closed), so a waiver that matches an error leaves it an error.
- A waiver applies up to and including its ``expires`` date (UTC) and not after:
  then the failure counts again, the result's ``waiver`` field says
  ``{"expired": true, ...}`` and the report carries a note, so an expired
  acceptance is noticed instead of silently extended.
- Anything the suite cannot read exactly as meant is a usage error naming the
  file, the waiver's index, the key and what was expected: a typo in a waiver
  must never waive more (or less) than its author believes.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridtrust import catalog
from hybridtrust.limits import NESTING_ERRORS, WAIVER_BYTES, TooLarge, read_bounded
from hybridtrust.results import ProfileResults, Result

REQUIRED = ("requirement", "justification", "expires")
OPTIONAL = ("subject", "owner", "profile")
KEYS = (*REQUIRED, *OPTIONAL)
_DATE_HINT = "a TOML date such as 2027-02-01 (unquoted)"


class WaiverError(ValueError):
    """A waiver file the suite cannot apply exactly as written (a usage error, exit status 4)."""


@dataclass(frozen=True)
class Waiver:
    file: str
    index: int
    """1-based position of the ``[[waiver]]`` table in its file, as error messages and notes name it."""
    requirement: str
    subject: str
    justification: str
    expires: dt.date
    owner: str | None = None
    profile: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file} [[waiver]][{self.index}]"

    def expired(self, today: dt.date) -> bool:
        return today > self.expires

    def matches(self, profile: str, requirement: str, subject: str) -> bool:
        if self.profile is not None and self.profile != profile:
            return False
        # Server and host names are case-insensitive in Exchange, so is the subject glob.
        return requirement == self.requirement and fnmatch.fnmatchcase(subject.casefold(), self.subject.casefold())

    def record(self) -> dict[str, Any]:
        """What the results document keeps about the waiver (the ``waiver`` field of a result)."""
        return {
            "requirement": self.requirement,
            "subject": self.subject,
            "justification": self.justification,
            "expires": self.expires.isoformat(),
            "owner": self.owner,
            "file": self.file,
            "index": self.index,
        }


_MISSING = object()


def _fail(where: str, key: str, value: Any, expected: str) -> WaiverError:
    if value is _MISSING:
        return WaiverError(f"{where} key '{key}' is missing: expected {expected}")
    shown = value.isoformat() if isinstance(value, dt.date) else value
    return WaiverError(f"{where} key '{key}' is {shown!r}: expected {expected}")


def _text(where: str, table: dict[str, Any], key: str, expected: str, *, required: bool) -> str | None:
    value = table.get(key, _MISSING)
    if value is _MISSING:
        if required:
            raise _fail(where, key, value, expected)
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, key, value, expected)
    return value.strip()


def _waiver(file: str, index: int, table: Any) -> Waiver:
    where = f"{file}: [[waiver]][{index}]"
    if not isinstance(table, dict):
        raise WaiverError(f"{where} is not a table: expected [[waiver]] with keys {', '.join(KEYS)}")
    for key in table:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise WaiverError(f"{where} unknown key '{key}'{hint}: expected only {', '.join(KEYS)}")
    requirement = _text(where, table, "requirement", "a requirement id such as OWA-VDIR-AUTH", required=True)
    assert requirement is not None
    if requirement.upper() not in catalog.BY_ID:
        near = difflib.get_close_matches(requirement.upper(), list(catalog.BY_ID), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(near)}?)" if near else " (see REQUIREMENTS.md for the ids)"
        raise _fail(where, "requirement", requirement, "a requirement id of the catalog" + hint)
    justification = _text(
        where, table, "justification", "a non-empty text saying why the failure is accepted", required=True
    )
    expires = table.get("expires", _MISSING)
    # tomllib gives datetime (a subclass of date) for a date-time: a waiver ends on a day, not at an hour.
    if expires is _MISSING or not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
        raise _fail(where, "expires", expires, _DATE_HINT)
    subject = _text(where, table, "subject", 'a subject glob such as "EX03/*"', required=False) or "*"
    owner = _text(where, table, "owner", "a non-empty text (a person or team)", required=False)
    profile = _text(where, table, "profile", "the name of a profile", required=False)
    return Waiver(file, index, requirement.upper(), subject, justification or "", expires, owner, profile)


_WAIVER_HEADER = re.compile(r"^\s*\[\[\s*waiver\s*\]\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=\s*(.*?)\s*$")


def _locate_syntax_error(text: str, error: tomllib.TOMLDecodeError) -> str | None:
    """ "[[waiver]][2] key 'expires' is '2027-13-01': expected ..." for a TOML error inside a waiver."""
    found = re.search(r"at line (\d+)", str(error))
    if not found:
        return None
    line_number = int(found.group(1))
    lines = text.splitlines()
    index = sum(1 for line in lines[:line_number] if _WAIVER_HEADER.match(line))
    key = _KEY_LINE.match(lines[line_number - 1]) if 0 < line_number <= len(lines) else None
    if not index or key is None:
        return None
    expected = _DATE_HINT if key.group(1) == "expires" else "a TOML value"
    return f"[[waiver]][{index}] key '{key.group(1)}' is {key.group(2)!r}: expected {expected}"


def load_waivers(path: Path) -> list[Waiver]:
    """Read and check a waiver file; any problem is a `WaiverError` naming file, index, key and expectation."""
    file = str(path)
    try:
        # Bounded: a multi-gigabyte file (or /dev/zero) is refused before it fills the memory (limits.py).
        text = read_bounded(path, WAIVER_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        raise WaiverError(f"{file}: no such waiver file") from None
    except TooLarge as error:
        raise WaiverError(f"{file}: refused: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WaiverError(f"{file}: cannot be read: {error}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        located = _locate_syntax_error(text, error)
        if located:
            raise WaiverError(f"{file}: {located} (not valid TOML: {error})") from None
        raise WaiverError(f"{file}: not valid TOML: {error}") from None
    except NESTING_ERRORS:
        # tomllib is recursive: `a = [[[[...` would otherwise end the run as an internal error.
        raise WaiverError(f"{file}: not valid TOML: arrays or tables nested too deeply") from None
    for key in document:
        if key != "waiver":
            raise WaiverError(
                f"{file}: unknown key '{key}' at the top level: expected only [[waiver]] tables "
                "(a misspelt table would silently waive nothing)"
            )
    tables = document.get("waiver", [])
    if not isinstance(tables, list):
        raise WaiverError(
            f"{file}: key 'waiver' is a single table: expected [[waiver]] (double brackets), one per waiver"
        )
    return [_waiver(file, index, table) for index, table in enumerate(tables, start=1)]


@dataclass
class Waivers:
    """The waivers of a run, judged as of one UTC day, and what they did."""

    waivers: list[Waiver]
    today: dt.date

    def apply(self, result: Result) -> None:
        """Turn a failure covered by a waiver into ``waived``; remember an expired waiver's match."""
        if result.outcome != "failed":
            # Errors are never waived (fail closed); passes and skips need no waiver.
            return
        matching = [w for w in self.waivers if w.matches(result.profile, result.requirement, result.subject)]
        current = [w for w in matching if not w.expired(self.today)]
        if current:
            waiver = current[0]
            result.waiver = {**waiver.record(), "would_have_been": result.outcome}
            owner = f", owner {waiver.owner}" if waiver.owner else ""
            result.message = (
                f"waived until {waiver.expires.isoformat()}{owner} ({waiver.justification}); "
                f"would have been {result.outcome}: {result.message}"
            )
            result.outcome = "waived"
            return
        if matching:
            waiver = max(matching, key=lambda w: w.expires)
            result.waiver = {"expired": True, **waiver.record()}

    def notes(self, results: ProfileResults) -> list[str]:
        """What the report says about this profile's expired waivers (from the results themselves)."""
        counts: dict[tuple[str, int], tuple[dict[str, Any], int]] = {}
        for result in results.results:
            record = result.waiver
            if record and record.get("expired"):
                key = (str(record["file"]), int(record["index"]))
                counts[key] = (record, counts.get(key, (record, 0))[1] + 1)
        notes = []
        for (file, index), (record, count) in sorted(counts.items()):
            owner = f", owner {record['owner']}" if record.get("owner") else ""
            notes.append(
                f"waiver {file} [[waiver]][{index}] ({record['requirement']} {record['subject']}{owner}) "
                f"expired on {record['expires']}: {count} failure(s) it covered count again"
            )
        return notes
