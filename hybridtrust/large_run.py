"""Runs of thousands of tests: reports written from the results, and the garbage collector kept off the facts.

Loaded by ``hybridtrust.plugin`` (its ``pytest_plugins``). An organization of 1,000
servers and 5 tenants is 16,000 tests. Measured there (``bench/benchmark.py``),
pytest-html and pytest's JUnit writer together cost a third of the test phase and 100 MB:
both keep a report object per test and process every test as it ends, and pytest-html
renders its whole table into a JSON blob and a script at the end. The results document
already holds everything those reports show, so from `LARGE_RUN_TESTS` tests on, the suite
writes both files itself, from the results (`hybridtrust.report_files`, the writers of the
per-organization reports), at the very paths and names pytest-html and JUnit would have
used: the contract (a self-contained HTML page for people, JUnit for pipelines, the
``-latest`` copies) is unchanged, the page has no script at all, and smaller runs keep
pytest-html's page as before. A ``--remediate`` run of any size is written the same way: its
fixed failures become ``fixed`` only at the end of the run, after pytest-html and JUnit
recorded them as failed.

The same runs freeze the garbage collector's view of what collection built (`gc.freeze`):
the facts and the test items live until the end of the run, and every full collection
would otherwise walk those millions of objects again, during the tests and a few times
more as pytest ends.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import types
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _pytest import fixtures

from hybridtrust.report_files import PAGE_STYLE, _result_row, _write_text, profile_junit
from hybridtrust.report_html import STYLE, organization_summary

if TYPE_CHECKING:
    from hybridtrust.plugin import Suite

LARGE_RUN_TESTS = int(os.environ.get("HYBRIDTRUST_LARGE_RUN_TESTS") or 2000)
"""From this many tests on, the HTML and JUnit reports are written from the results (the variable lets
the project's own tests try it on a small organization)."""

_TAKEN_KEY = pytest.StashKey[dict[str, Path | None]]()


def _suite(config: pytest.Config) -> Suite | None:
    from hybridtrust.plugin import SUITE_KEY

    return config.stash.get(SUITE_KEY, None)


def _take_over(config: pytest.Config, tests: int) -> None:
    """Unregister pytest-html's and JUnit's report objects before the first test: this run writes both.

    Also for every ``--remediate`` run (not a dry run), whatever its size: its fixed failures become
    ``fixed`` at the end of the run, after pytest-html and JUnit recorded each test as failed when it
    ended; written from the results, both reports show the outcome the results document and the exit
    status give.
    """
    if _TAKEN_KEY in config.stash or _suite(config) is None:
        return
    if tests < LARGE_RUN_TESTS and not _remediating(config):
        return
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    taken: dict[str, Path | None] = {"html": None, "junit": None}
    try:
        from pytest_html.basereport import BaseReport
    except ImportError:
        BaseReport = None
    for plugin in list(config.pluginmanager.get_plugins()):
        if BaseReport is not None and isinstance(plugin, BaseReport):
            config.pluginmanager.unregister(plugin)
            taken["html"] = Path(config.option.htmlpath)
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None:
        config.pluginmanager.unregister(xml)
        del config.stash[xml_key]
        taken["junit"] = Path(xml.logfile)
    config.stash[_TAKEN_KEY] = taken


# -- pytest's per-test fixture bookkeeping ---------------------------------------------------------
# Every test with a direct parameter (each requirement test has two) makes pytest build a fixture
# definition for `request` around a lambda without parameters, and building one asks inspect.signature
# for that lambda's parameters: an eighth of the test phase of a 16,000-test run. A plain function
# without parameters has no argument names whatever inspect says, so that answer is given at once;
# every other function is asked as before. In place only while an audit runs (pytest_configure to
# pytest_unconfigure).
def _argnames_without_inspecting(original: Any) -> Any:
    def getfuncargnames(function: Any, *, name: str = "", cls: type | None = None) -> tuple[str, ...]:
        code = getattr(function, "__code__", None)
        if (
            isinstance(function, types.FunctionType)
            and code is not None
            and code.co_argcount == 0
            and code.co_kwonlyargcount == 0
            and not hasattr(function, "__wrapped__")
            and not hasattr(function, "__signature__")
        ):
            return ()
        return original(function, name=name, cls=cls)

    getfuncargnames.original = original  # type: ignore[attr-defined]
    return getfuncargnames


def pytest_configure(config: pytest.Config) -> None:
    if _suite(config) is not None and not hasattr(fixtures.getfuncargnames, "original"):
        fixtures.getfuncargnames = _argnames_without_inspecting(fixtures.getfuncargnames)


def pytest_unconfigure(config: pytest.Config) -> None:
    original = getattr(fixtures.getfuncargnames, "original", None)
    if original is not None:
        fixtures.getfuncargnames = original


def _remediating(config: pytest.Config) -> bool:
    return bool(config.getoption("remediate", False)) and not config.getoption("dry_run", False)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    _take_over(session.config, len(session.items))
    if len(session.items) >= LARGE_RUN_TESTS:
        gc.collect()
        gc.freeze()  # what collection built lives to the end of the run: no full collection walks it again


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    _take_over(node.config, len(ids))  # the controller, before any worker runs a test


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the plugin wrote the results documents (its sessionfinish runs first): the two reports."""
    config = session.config
    taken = config.stash.get(_TAKEN_KEY, None)
    suite = _suite(config)
    if taken is None or suite is None:
        return
    finished = dt.datetime.now(dt.UTC).replace(microsecond=0)
    status = int(session.exitstatus)
    if taken["html"] is not None:
        _write_text(taken["html"], run_html(config, suite, finished=finished, exit_status=status))
    if taken["junit"] is not None:
        _write_text(taken["junit"], run_junit(config, suite, finished=finished))


def _durations(config: pytest.Config) -> dict[str, float]:
    from hybridtrust import gate

    keeper = gate.of(config)
    if keeper is None:
        return {}
    return {
        result_nodeid: keeper.durations.get(report_nodeid, 0.0)
        for result_nodeid, report_nodeid in keeper.result_nodeids.items()
    }


def run_html(config: pytest.Config, suite: Suite, *, finished: dt.datetime, exit_status: int) -> str:
    """The run's self-contained page (no script, no network): each organization's summary, then every result."""
    from hybridtrust import gate

    names = ", ".join(audit.profile.organization.name for audit in suite.audits)
    title = f"hybridtrust: hybrid OAuth trust of {names}"
    sections = []
    for audit in suite.audits:
        results = suite.results[audit.name]
        rows = "".join(_result_row(result) for result in results.results)
        sections.append(
            f"{organization_summary(results, audit.profile.organization.name)}{gate.extras_for(config, audit.name)}"
            f"<h2>Every result of {escape(audit.name)} ({len(results.results)})</h2>"
            '<table class="ht-results"><tr><th>requirement</th><th>severity</th><th>subject</th><th>outcome</th>'
            f"<th>message</th><th>test</th></tr>{rows}</table>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>{PAGE_STYLE}{STYLE}</head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="ht-meta">Run started {suite.started:%Y-%m-%d %H:%M:%S} UTC, finished {finished:%H:%M:%S} UTC; '
        f"exit status {exit_status}. {sum(len(r.results) for r in suite.results.values())} tests: this page is "
        f"written from the results (runs of {LARGE_RUN_TESTS} tests or more, and --remediate runs).</p>"
        f"{''.join(sections)}</body></html>\n"
    )


def run_junit(config: pytest.Config, suite: Suite, *, finished: dt.datetime) -> str:
    """JUnit XML of the run: one testsuite per organization, as the per-organization files write it."""
    durations = _durations(config)
    documents = [profile_junit(suite.results[audit.name], durations, finished=finished) for audit in suite.audits]
    if len(documents) == 1:
        return documents[0]
    # Each document is one <testsuites> holding one <testsuite>: the suites side by side in one wrapper,
    # as text (parsing megabytes back to move an element costs more than writing them).
    suites = [text[text.index("<testsuite ") : text.rindex("</testsuites>")].rstrip() for text in documents]
    body = "\n  ".join(suites)
    return f'<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="hybridtrust">\n  {body}\n</testsuites>\n'
