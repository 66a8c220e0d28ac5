"""``python -m hybridtrust.lab serve [--state FILE] [--latency-ms N] [--counters FILE] [--cache-output]``: the lab as a process.

Starts every lab endpoint on 127.0.0.1 and prints exactly one JSON line on stdout once
they all accept connections::

    {"exchange": {"uri": ..., "username": ..., "password": ..., "ca_file": ..., "http_uri": ...},
     "sharepoint": {...}, "graph": {...}}

then serves until SIGTERM or SIGINT, stops every endpoint and exits 0. The passwords
printed are the lab organization's own throw-away values; logs never carry them.

With ``--state FILE`` the organization is read from FILE (created from the default lab
organization when it does not exist yet) and every change a cmdlet or a Graph PATCH makes
is written back to it, so remediation can be tried across runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from hybridtrust.lab.state import LabState, LabStateError


def _load_state(path: Path | None) -> LabState:
    if path is not None and path.exists():
        return LabState.load(path)
    from hybridtrust.lab.contoso import flawed_contoso  # imported late: it builds certificates

    state = flawed_contoso(datetime.now(UTC))
    if path is not None:
        state.path = path
        state.save()
    return state


def serve(
    state_file: Path | None, latency_ms: int, counters_file: Path | None = None, cache_output: bool = False
) -> int:
    from hybridtrust.lab.server import start_lab

    try:
        state = _load_state(state_file)
    except LabStateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    if cache_output:
        from hybridtrust.lab import output_cache

        output_cache.warm(state)  # before the JSON line: the lab is ready when it says so
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with start_lab(state, latency_ms=latency_ms) as lab:
        sys.stdout.write(json.dumps(lab.describe()) + "\n")
        sys.stdout.flush()
        # A timed wait keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
        if counters_file is not None:
            # What the lab served, for a benchmark that ran the suite against this process: a
            # separate process cannot call lab.counters(), so they are left in a file at exit.
            counters_file.write_text(json.dumps(lab.counters(), indent=1) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridtrust.lab", description="The hybridtrust lab servers.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the lab organization on 127.0.0.1 until SIGTERM/SIGINT")
    serve_parser.add_argument(
        "--state", type=Path, help="lab state file (read, created if missing, and kept up to date)"
    )
    serve_parser.add_argument("--latency-ms", type=int, default=0, help="added to every request of every endpoint")
    serve_parser.add_argument(
        "--counters", type=Path, help="at exit, write what every endpoint served (lab.counters()) to this JSON file"
    )
    serve_parser.add_argument(
        "--cache-output",
        action="store_true",
        help="build and serialize every Exchange object once, at start (benchmarks of large organizations)",
    )
    serve_parser.add_argument("--log-level", default="WARNING", help="logging level for stderr (default WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.latency_ms < 0:
        parser.error("--latency-ms must not be negative")
    return serve(args.state, args.latency_ms, args.counters, args.cache_output)


if __name__ == "__main__":
    sys.exit(main())
