"""Reading a file someone hands the suite (a profile, a waiver file, a baseline, a manifest,
a remediation record, a lab connection file): bounded.

These files are small by nature, and they are read before anything else happens, so a
bad one must end the run as a usage error that names it (exit status 4), not as an
internal error or an exhausted machine:

- never more than a limit is read into memory: read whole, a multi-gigabyte file (a sparse
  one costs no disk), or a device such as /dev/zero, would take the machine's memory before
  any parser could say it is not a profile. `read_bounded` reads at most ``limit + 1`` bytes;
- the parsers are recursive (tomllib, json), so a deeply nested document (``a = [[[[...``)
  raises RecursionError; callers catch it with their parse errors (`NESTING_ERRORS`).

tests/reliability/test_hostile_input.py feeds each reader such files through the real
command line and measures the child's memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PROFILE_BYTES = 1024 * 1024
"""A profile is a few kilobytes."""
WAIVER_BYTES = 16 * 1024 * 1024
"""Thousands of waivers fit in a megabyte."""
MANIFEST_BYTES = 1024 * 1024
"""An evidence manifest is a few hundred bytes."""
BASELINE_BYTES = 256 * 1024 * 1024
"""A results document of a 1,000-server organization is tens of megabytes (clixml.MAX_EVIDENCE_FILE_BYTES's bound)."""
REMEDIATION_RECORD_BYTES = 256 * 1024 * 1024
"""~3 KB a change (the value before, after and both read-backs): 1,000 servers' ~10,000 changes are ~30 MB; a refused rollback costs more than a wide margin."""
LAB_CONNECTION_BYTES = 1024 * 1024
"""A lab connection file is one JSON line of a few kilobytes (`python -m hybridtrust.lab serve`'s endpoints)."""

NESTING_ERRORS: tuple[type[BaseException], ...] = (RecursionError,)
"""What tomllib and json raise for a document nested deeper than the interpreter's recursion limit."""


class TooLarge(ValueError):
    """The file holds more than the limit; the message says how much is allowed."""


def read_bounded(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of `path`, or `TooLarge` (never reads more than ``limit + 1`` bytes).

    Raises what ``open`` raises (FileNotFoundError, IsADirectoryError, PermissionError...).
    """
    with path.open("rb") as handle:
        status = os.fstat(handle.fileno())
        # A regular file says its size: refused before a byte is read (a 256 MB limit is not read first).
        # A device or a pipe says 0, and a file can grow after fstat: the bounded read still decides.
        if stat.S_ISREG(status.st_mode) and status.st_size > limit:
            raise _too_large(limit, status.st_size)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit, status.st_size if stat.S_ISREG(status.st_mode) else None)
    return data


def _too_large(limit: int, size: int | None) -> TooLarge:
    held = f" ({size:,} bytes)" if size is not None and size > limit else ""
    return TooLarge(f"larger than the {limit:,} bytes such a file can need{held}; check that this is the right file")
