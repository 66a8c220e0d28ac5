"""Where a run's time goes: the ``timings`` object of the results document (additive).

Loaded by ``hybridtrust.plugin`` (its ``pytest_plugins``). Four numbers, in seconds:

- ``collection_s``: pytest's collection phase of the whole run: importing the
  requirement modules, collecting each organization's facts (the first
  parametrization asks for them) and generating the test items;
- ``sources_s``: the part of it this organization's sources took (live: remote
  PowerShell and Graph; evidence: reading the bundle). With pytest-xdist every worker
  collects, and this is the slowest worker's;
- ``tests_s``: running the tests (with pytest-xdist: the controller's view, which
  includes the workers' own collection);
- ``reports_s``: writing every report of the run (results documents, history,
  per-organization files, pytest-html, JUnit, terminal summary).

The results document is itself one of the reports, written before pytest-html and
JUnit; so it is written with ``"reports_s": null`` and that one value is filled in
afterwards, in place, in the document and its history copy (`fill_reports_seconds`),
without serializing ten thousand results a second time.

The benchmark (``bench/benchmark.py``) reads these to split a run's wall time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hybridtrust.plugin import Suite

_PHASES_KEY = pytest.StashKey[dict[str, float]]()
_WORKER_SOURCES_KEY = pytest.StashKey[dict[str, float]]()
_PLACEHOLDER = '"reports_s": null'


def _suite(config: pytest.Config) -> Suite | None:
    from hybridtrust.plugin import SUITE_KEY

    return config.stash.get(SUITE_KEY, None)


def _phases(config: pytest.Config) -> dict[str, float]:
    return config.stash.setdefault(_PHASES_KEY, {})


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection(session: pytest.Session) -> Iterator[Any]:
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        _phases(session.config)["collection_s"] = time.perf_counter() - started


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[Any]:
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        _phases(session.config)["tests_s"] = time.perf_counter() - started


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: each worker's source collection seconds, the slowest kept."""
    output = getattr(node, "workeroutput", None) or {}
    found = node.config.stash.setdefault(_WORKER_SOURCES_KEY, {})
    for name, seconds in (output.get("hybridtrust_sources_s") or {}).items():
        found[name] = max(found.get(name, 0.0), float(seconds))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[Any]:
    config = session.config
    suite = _suite(config)
    if suite is None:
        return (yield)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the documents
        config.workeroutput["hybridtrust_sources_s"] = {  # type: ignore[attr-defined]
            audit.name: audit.collection_seconds for audit in suite.audits if audit.collection_seconds is not None
        }
        return (yield)
    phases = _phases(config)
    workers = config.stash.get(_WORKER_SOURCES_KEY, {})
    for audit in suite.audits:
        sources = audit.collection_seconds if audit.collection_seconds is not None else workers.get(audit.name)
        suite.results[audit.name].timings = {
            "collection_s": _round(phases.get("collection_s")),
            "sources_s": _round(sources),
            "tests_s": _round(phases.get("tests_s")),
            "reports_s": None,  # filled in below, once every report is written
        }
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        seconds = time.perf_counter() - started
        from hybridtrust import gate

        kept = getattr(gate.of(config), "history_paths", {}) or {}
        for audit in suite.audits:
            suite.results[audit.name].timings["reports_s"] = _round(seconds)  # type: ignore[index]
            for path in (suite.results_paths.get(audit.name), kept.get(audit.name)):
                if path is not None:
                    fill_reports_seconds(Path(path), seconds)


def fill_reports_seconds(path: Path, seconds: float) -> bool:
    """Put `seconds` in place of the ``"reports_s": null`` of a written results document.

    The ``timings`` object is written after the results, so its placeholder is the last
    one in the file; a document without it (an older writer) is left as it is.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    at = text.rfind(_PLACEHOLDER)
    if at < 0 or text.rfind('"timings"', 0, at) < 0:
        return False
    text = f'{text[:at]}"reports_s": {json.dumps(round(seconds, 3))}{text[at + len(_PLACEHOLDER) :]}'
    temporary = path.with_name(f".{path.name}.timings")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return True
