"""Gating a run: waivers, baselines, the run history, per-organization reports, pytest-xdist.

The plugin (plugin.py) calls in at five points: ``add_options``, ``configure``
(everything that can be a usage error is checked here, before anything runs or
is written), ``judge`` (a waiver turns a failure into ``waived``), and at the end
``exit_failures`` / ``complete`` / ``finished``. The hooks that have no place in
plugin.py live on the `Gate` object, registered as its own pytest plugin.

pytest-xdist: workers run the tests and the controller writes every document.
Each test's `Result` travels inside its report (``pytest_report_to_serializable``
/ ``pytest_report_from_serializable``), and what a worker learnt about each
organization's collection (origin, collection time, notes, damaged files) travels
in its ``workeroutput``. The controller sorts results in catalog order before
writing, so a run with ``-n 2`` writes the same documents as a serial one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hybridtrust import catalog, history
from hybridtrust.baseline import BaselineError, Comparison, comparable, compare, load_results_document
from hybridtrust.report_extras import ProfileExtras, extras_html, waiver_panel
from hybridtrust.report_files import write_profile_reports
from hybridtrust.results import ProfileResults, Result, _jsonable
from hybridtrust.waivers import WaiverError, Waivers, load_waivers

if TYPE_CHECKING:
    from hybridtrust.plugin import Suite

GATE_KEY = pytest.StashKey["Gate"]()
_CATALOG_ORDER = {requirement.id: index for index, requirement in enumerate(catalog.REQUIREMENTS)}


def add_options(group: Any) -> None:
    group.addoption(
        "--waivers",
        metavar="FILE",
        help="waiver file (TOML, [[waiver]] tables): waived failures do not fail the run until they expire",
    )
    group.addoption(
        "--baseline",
        action="append",
        default=[],
        metavar="FILE|last",
        help="compare with an earlier results document of the same profile ('last': the newest run in "
        "<reports-dir>/history/<profile>/; '{profile}' in FILE is replaced); one, or one per --profile in order",
    )
    group.addoption(
        "--fail-on-new",
        action="store_true",
        help="with --baseline: the exit status depends only on new failures (at or above --fail-on) and errors",
    )


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config: pytest.Config) -> bool:
    """The pytest-xdist controller: it runs no test, it receives the workers' reports."""
    return config.pluginmanager.has_plugin("dsession")


def _wire(result: Result) -> dict[str, Any]:
    """A Result as plain data execnet can carry: every value as the results document writes it."""
    return {item.name: _jsonable(getattr(result, item.name)) for item in fields(result)}


class Gate:
    """Per run: the waivers, the baselines, the history, and the controller's share of an xdist run."""

    def __init__(self, config: pytest.Config, suite: Suite) -> None:
        self.config = config
        self.suite = suite
        self.reports = Path(config.getoption("reports_dir"))
        self.waivers: Waivers | None = None
        self.fail_on_new: bool = config.getoption("fail_on_new")
        self.baselines: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.previous: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.comparisons: dict[str, Comparison] = {}
        self.extras: dict[str, ProfileExtras] = {}
        self.worker_meta: dict[str, dict[str, Any]] = {}
        self.durations: dict[str, float] = {}
        """Seconds per pytest node id (setup, call and teardown), for the per-organization JUnit files."""
        self.result_nodeids: dict[str, str] = {}
        """A result's stable node id -> pytest's node id of its test."""
        self.history_paths: dict[str, Path] = {}
        self.profile_files: dict[str, tuple[Path, Path]] = {}

    # -- configuration (usage errors) ------------------------------------------------------------------
    def load(self) -> None:
        config = self.config
        waiver_file = config.getoption("waivers")
        if waiver_file:
            try:
                self.waivers = Waivers(load_waivers(Path(waiver_file)), self.suite.started.date())
            except WaiverError as error:
                raise pytest.UsageError(str(error)) from None
        specs: list[str] = config.getoption("baseline") or []
        if self.fail_on_new and not specs:
            raise pytest.UsageError("--fail-on-new needs --baseline FILE or --baseline last: new since which run?")
        if _is_worker(config):
            return  # workers only run tests: the controller compares and writes
        names = [audit.name for audit in self.suite.audits]
        if specs and len(specs) not in (1, len(names)):
            raise pytest.UsageError(
                f"{len(specs)} --baseline for {len(names)} --profile: give one (last, or a FILE with {{profile}}) "
                "or one per profile, in order"
            )
        for index, name in enumerate(names):
            if specs:
                spec = specs[0] if len(specs) == 1 else specs[index]
                path = self._baseline_path(spec, name)
                try:
                    self.baselines[name] = (path, comparable(load_results_document(path, name)))
                except BaselineError as error:
                    raise pytest.UsageError(str(error)) from None
            # The newest run kept so far is "the previous run" (read now: this run is not in the history yet).
            previous = history.newest_run(self.reports, name)
            if previous is not None:
                self.previous[name] = (previous[0], comparable(previous[1]))
        if len(names) > 1 and not config.option.collectonly:
            for name in names:
                html = self.reports / f"{name}-{self.suite.stamp}.html"
                junit = self.reports / f"{name}-{self.suite.stamp}.xml"
                self.profile_files[name] = (html, junit)
                self.suite.latest_copies.append((html, self.reports / f"{name}-latest.html"))
                self.suite.latest_copies.append((junit, self.reports / f"{name}-latest.xml"))

    def _baseline_path(self, spec: str, name: str) -> Path:
        if spec == "last":
            newest = history.newest(self.reports, name)
            if newest is None:
                raise pytest.UsageError(
                    f"--baseline last: no earlier run of profile {name!r} in {history.folder(self.reports, name)}: "
                    "run the suite once before the change (that run is the baseline), or give a results file"
                )
            return newest
        return Path(spec.replace("{profile}", name))

    # -- during the run ----------------------------------------------------------------------------------
    def judge(self, result: Result, report: pytest.TestReport) -> None:
        if self.waivers is None:
            return
        self.waivers.apply(result)
        if result.outcome == "waived":
            # A waived failure reads as a skip to pytest, JUnit consumers and pytest-html (with the waiver
            # as the reason), so no pipeline counts it as a failure; the results document says "waived".
            path, lineno, _ = report.location
            report.outcome = "skipped"
            report.longrepr = (str(path), (lineno or 0) + 1, f"Waived: {result.message}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config) -> Any:
        result: Result | None = getattr(report, "hybrid_result", None)
        if result is not None and result.outcome == "waived" and report.when in ("setup", "call"):
            return "waived", "w", "WAIVED"
        return None

    @pytest.hookimpl(wrapper=True)
    def pytest_report_to_serializable(self, config: pytest.Config, report: Any) -> Iterator[Any]:
        data = yield
        result = getattr(report, "hybrid_result", None)
        if isinstance(data, dict) and isinstance(result, Result):
            data["hybrid_result"] = _wire(result)
        return data

    @pytest.hookimpl(wrapper=True)
    def pytest_report_from_serializable(self, config: pytest.Config, data: dict[str, Any]) -> Iterator[Any]:
        report = yield
        wire = data.get("hybrid_result") if isinstance(data, dict) else None
        if report is not None and isinstance(wire, dict):
            report.hybrid_result = Result(**wire)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + (report.duration or 0.0)
        result: Result | None = getattr(report, "hybrid_result", None)
        if result is not None:
            self.result_nodeids[result.nodeid] = report.nodeid
        if not _is_controller(self.config) or report.when == "teardown":
            return  # a serial run (or a worker) recorded the result in pytest_runtest_makereport
        if result is not None:
            self.suite.results[result.profile].results.append(result)
        elif report.failed:
            self.suite.other_failures += 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        for name, meta in (output.get("hybridtrust") or {}).items():
            self.worker_meta.setdefault(name, meta)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list[str]) -> None:
        result: Result | None = getattr(report, "hybrid_result", None)
        if result is not None and result.outcome == "waived":
            data.insert(0, waiver_panel(result))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not _is_worker(self.config):
            return
        meta = {}
        for audit in self.suite.audits:
            organization = audit._organization
            if organization is None:
                continue
            from hybridtrust.sources.evidence import damaged_files

            collection = organization.collection
            meta[audit.name] = {
                "origin": collection.origin,
                "collected_at": collection.collected_at.isoformat() if collection.collected_at else None,
                "notes": list(collection.notes),
                "damaged": damaged_files(collection),
            }
        self.config.workeroutput["hybridtrust"] = meta  # type: ignore[attr-defined]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if _is_worker(self.config):
            return
        if _is_controller(self.config):
            for name, meta in self.worker_meta.items():
                for reason in meta.get("damaged", []):
                    terminalreporter.write_line(f"hybridtrust: {name}: {reason}", red=True)
        for name, comparison in self.comparisons.items():
            terminalreporter.write_line(
                f"hybridtrust: {name}: against baseline {comparison.file}: {len(comparison.new_failures)} new "
                f"failure(s), {len(comparison.fixed)} fixed, {len(comparison.still_failing)} still failing"
                + (" (--fail-on-new: only new failures and errors fail the run)" if self.fail_on_new else ""),
                red=bool(comparison.new_failures),
            )
        for name, results in self.suite.results.items():
            for note in self.waivers.notes(results) if self.waivers else []:
                terminalreporter.write_line(f"hybridtrust: {name}: {note}", yellow=True)
        for name, (html, _) in self.profile_files.items():
            if html.is_file():
                terminalreporter.write_line(f"hybridtrust: {name}: HTML report {html}")

    # -- the end of the run --------------------------------------------------------------------------------
    def _documents(self, results: ProfileResults) -> list[dict[str, Any]]:
        return [{**result.document(), "profile": result.profile} for result in results.results]

    def compare(self) -> None:
        for name, (path, document) in self.baselines.items():
            self.comparisons[name] = compare(self._documents(self.suite.results[name]), document, str(path))

    def exit_failures(self) -> bool:
        """Whether the gate fails (before user tests without a requirement, which the plugin adds)."""
        self.compare()
        fail_on = self.suite.fail_on
        if self.fail_on_new:
            errors = any(r.outcome == "error" for results in self.suite.results.values() for r in results.results)
            new = any(comparison.gate_failures(fail_on) for comparison in self.comparisons.values())
            return errors or new
        return any(results.gate_failures(fail_on) for results in self.suite.results.values())  # type: ignore[arg-type]

    def complete(self, name: str, results: ProfileResults) -> None:
        """Last touches before the document is written: order, the workers' collection facts, notes, baseline."""
        results.results.sort(key=lambda r: (_CATALOG_ORDER.get(r.requirement, len(_CATALOG_ORDER)), r.nodeid))
        meta = self.worker_meta.get(name)
        if meta is not None and not results.origin:
            results.origin = meta.get("origin") or ""
            collected = meta.get("collected_at")
            results.collected_at = dt.datetime.fromisoformat(collected) if collected else None
            results.notes = list(meta.get("notes") or [])
        if self.waivers is not None:
            results.notes.extend(self.waivers.notes(results))
        comparison = self.comparisons.get(name)
        if comparison is not None:
            results.baseline = comparison.document()

    def finished(self, finished: dt.datetime, status: int) -> None:
        """Keep the history, prepare the report sections, write the per-organization files."""
        names = {audit.name: audit.profile.organization.name for audit in self.suite.audits}
        for name in names:
            results = self.suite.results[name]
            document = results.document(finished, status)
            if status in (0, 1):
                try:
                    self.history_paths[name] = history.keep(self.reports, name, self.suite.stamp, document)
                except OSError as error:
                    results.notes.append(f"the run could not be kept in the history: {error}")
            earlier = history.trend(
                self.reports, name, exclude=self.history_paths.get(name), limit=history.TREND_RUNS - 1
            )
            previous = self.previous.get(name)
            self.extras[name] = ProfileExtras(
                trend=[*earlier, history.run_point(document)],
                previous=compare(self._documents(results), previous[1], str(previous[0])) if previous else None,
                baseline=self.comparisons.get(name),
                history_folder=str(history.folder(self.reports, name)),
            )
        siblings = {name: files[0].name for name, files in self.profile_files.items()}
        for name, (html, junit) in self.profile_files.items():
            durations = {
                result.nodeid: self.durations.get(self.result_nodeids.get(result.nodeid, ""), 0.0)
                for result in self.suite.results[name].results
            }
            write_profile_reports(
                html, junit, self.suite.results[name], names[name], self.extras[name], durations,
                finished=finished, exit_status=status, siblings=siblings,
            )  # fmt: skip

    def extras_html(self, name: str) -> str:
        extras = self.extras.get(name)
        return extras_html(self.suite.results[name], extras) if extras is not None else ""


# -- what plugin.py calls ----------------------------------------------------------------------------------
def configure(config: pytest.Config, suite: Suite) -> None:
    gate = Gate(config, suite)
    gate.load()
    config.stash[GATE_KEY] = gate
    config.pluginmanager.register(gate, "hybridtrust-gate")


def of(config: pytest.Config) -> Gate | None:
    return config.stash.get(GATE_KEY, None)


def judge(config: pytest.Config, result: Result, report: pytest.TestReport) -> None:
    gate = of(config)
    if gate is not None:
        gate.judge(result, report)


def exit_failures(config: pytest.Config, suite: Suite) -> bool:
    gate = of(config)
    if gate is None:
        return any(results.gate_failures(suite.fail_on) for results in suite.results.values())  # type: ignore[arg-type]
    return gate.exit_failures()


def complete(config: pytest.Config, name: str, results: ProfileResults) -> None:
    gate = of(config)
    if gate is not None:
        gate.complete(name, results)


def finished(config: pytest.Config, finished_at: dt.datetime, status: int) -> None:
    gate = of(config)
    if gate is not None:
        gate.finished(finished_at, status)


def extras_for(config: pytest.Config, name: str) -> str:
    """The HTML sections after an organization's summary in the pytest-html report."""
    gate = of(config)
    return gate.extras_html(name) if gate is not None else ""
