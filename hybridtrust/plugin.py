"""The pytest plugin: options, markers, parametrization over subjects, outcomes, exit status.

Registered by the repository's conftest.py. Without ``--profile`` it only keeps
the compliance tests out of the collection and says how to pick a profile, so
the project's own tests run with it loaded and untouched.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hybridtrust import catalog, gate, symptoms
from hybridtrust.audit import Audit
from hybridtrust.catalog import SCENARIOS, SEVERITIES, Requirement
from hybridtrust.facts import NotCollected, Organization
from hybridtrust.profile import ProfileError, load_profile
from hybridtrust.results import ProfileResults, Result, write_json
from hybridtrust.sources.evidence import EvidenceError, damaged_files, read_manifest
from hybridtrust.testing import Finding, NotApplicable, Subject, take_finding

REPOSITORY = Path(__file__).resolve().parent.parent
COMPLIANCE_TESTS = REPOSITORY / "tests_hybrid"
SUITE_KEY = pytest.StashKey["Suite"]()
FIXTURE_NAMES = {"org", "profile", "cloud", "now", "request", "hybrid_subject"}
# --remediate, --dry-run, --allow-risky and --rollback: their own plugin module (hybridtrust.remediation);
# the results document's timings (collection, tests, reports): hybridtrust.timings.
# Runs of thousands of tests write their HTML and JUnit reports from the results: hybridtrust.large_run.
pytest_plugins = (
    "hybridtrust.remediation.plugin",
    "hybridtrust.timings",
    "hybridtrust.collect_once",
    "hybridtrust.large_run",
)


# -- options --------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hybridtrust", "hybrid OAuth trust audit")
    group.addoption(
        "--profile",
        action="append",
        default=[],
        metavar="NAME",
        help="audit the organization of profiles/NAME.toml (or a path to a .toml file); repeatable",
    )
    group.addoption(
        "--evidence",
        action="append",
        default=[],
        metavar="DIR",
        help="judge this evidence bundle instead of connecting (one per --profile, in order)",
    )
    group.addoption(
        "--save-evidence",
        metavar="DIR",
        help="after live collection, write what was collected as an evidence bundle into DIR "
        "(with several profiles DIR/<profile>, or {profile} in DIR)",
    )
    group.addoption(
        "--requirement",
        action="append",
        default=[],
        metavar="ID",
        help="run only these requirement ids (repeatable, glob allowed: HMA-*)",
    )
    group.addoption(
        "--fail-on",
        default="low",
        choices=SEVERITIES,
        help="lowest severity whose failures make the run fail (default: low, any failure fails)",
    )
    group.addoption(
        "--results-json",
        metavar="PATH",
        help="where to write the results document (default reports/<profile>-<UTC timestamp>.json)",
    )
    group.addoption(
        "--reports-dir",
        metavar="DIR",
        default=str(REPOSITORY / "reports"),
        help="folder for the default HTML, JUnit and results files (default: reports/)",
    )
    group.addoption(
        "--symptom",
        action="append",
        default=[],
        metavar="TEXT",
        help='run the requirements behind what users see: paste the error ("AADSTS500011: The resource '
        'principal named ..."); repeatable',
    )
    group.addoption(
        "--connectivity",
        action="store_true",
        help="also run the live probes that exercise the trust end to end (EXO-OAUTH-CONNECTIVITY)",
    )
    gate.add_options(group)  # --waivers, --baseline, --fail-on-new


# -- the run --------------------------------------------------------------------------
@dataclass
class Suite:
    """The audits of this run and their outcomes."""

    audits: list[Audit]
    started: dt.datetime
    stamp: str
    fail_on: str
    connectivity: bool
    results: dict[str, ProfileResults]
    results_paths: dict[str, Path]
    latest_copies: list[tuple[Path, Path]]
    other_failures: int = 0
    symptom_requirements: set[str] | None = None
    """With --symptom: the requirement ids behind the symptoms that matched."""
    symptom_lines: list[str] = field(default_factory=list)
    """Failed tests without a requirement (a user's own checks): they fail the run too."""

    def audit(self, name: str) -> Audit:
        return next(audit for audit in self.audits if audit.name == name)


def _suite(config: pytest.Config) -> Suite | None:
    return config.stash.get(SUITE_KEY, None)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for scenario in SCENARIOS:
        config.addinivalue_line("markers", f"{scenario.replace('-', '_')}: requirements of the {scenario} scenario")
    for severity in SEVERITIES:
        config.addinivalue_line("markers", f"{severity}: requirements of {severity} severity")
    config.addinivalue_line("markers", "requirement(id): the catalog row a test judges")

    names: list[str] = config.getoption("profile") or []
    evidence: list[str] = config.getoption("evidence") or []
    if not names:
        if evidence:
            raise pytest.UsageError("--evidence needs --profile: the profile says which tenants the bundle holds")
        return
    profiles = []
    for name in names:
        try:
            profiles.append(load_profile(name))
        except ProfileError as error:
            raise pytest.UsageError(str(error)) from None
    if len({profile.name for profile in profiles}) != len(profiles):
        raise pytest.UsageError("the same profile is named twice in --profile")
    if evidence and len(evidence) != len(profiles):
        raise pytest.UsageError(
            f"{len(evidence)} --evidence for {len(profiles)} --profile: give one bundle per profile, in order"
        )
    _check_requirement_patterns(config.getoption("requirement"))
    symptom_requirements, symptom_lines = _resolve_symptoms(config.getoption("symptom"))
    if config.args_source == pytest.Config.ArgsSource.INVOCATION_DIR:
        # pytest chose its root from a path on the command line (an --evidence folder outside
        # the repository) and so missed pytest.ini's testpaths: audit with the compliance tests,
        # not with whatever lies in the current folder.
        config.args[:] = [str(COMPLIANCE_TESTS)]
    if config.getoption("tbstyle", "auto") == "auto":
        # A requirement's failure is its message (what, where, found, expected, fix); a traceback
        # into the check's code helps nobody at 3 a.m., and rendering thousands costs seconds.
        config.option.tbstyle = "line"

    audits = []
    for index, profile in enumerate(profiles):
        bundle = Path(evidence[index]) if evidence else None
        if bundle is None and profile.evidence is not None:
            bundle = profile.resolve(profile.evidence.path)
        if bundle is not None:
            try:
                read_manifest(bundle) if bundle.is_dir() else None
            except EvidenceError as error:
                raise pytest.UsageError(str(error)) from None
            if not bundle.is_dir():
                raise pytest.UsageError(f"--evidence {bundle}: no such evidence bundle folder")
        save = config.getoption("save_evidence")
        target = Path(save.replace("{profile}", profile.name)) if save else None
        if target is not None and len(profiles) > 1 and "{profile}" not in save:
            target = target / profile.name
        audits.append(
            Audit(
                profile=profile,
                evidence=bundle,
                save_evidence=target,
                connectivity=bool(config.getoption("connectivity")),
            )
        )

    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    label = "+".join(audit.name for audit in audits)
    reports = Path(config.getoption("reports_dir"))
    latest: list[tuple[Path, Path]] = []
    if not _is_xdist_worker(config) and not config.option.collectonly:
        # Every run leaves an HTML report for people and JUnit for pipelines unless told otherwise.
        if getattr(config.option, "htmlpath", None) is None and hasattr(config.option, "htmlpath"):
            config.option.htmlpath = str(reports / f"{label}-{stamp}.html")
            config.option.self_contained_html = True
            latest.append((Path(config.option.htmlpath), reports / f"{label}-latest.html"))
        if getattr(config.option, "xmlpath", None) is None:
            config.option.xmlpath = str(reports / f"{label}-{stamp}.xml")
            latest.append((Path(config.option.xmlpath), reports / f"{label}-latest.xml"))

    results_paths = {}
    explicit = config.getoption("results_json")
    for audit in audits:
        if explicit:
            path = Path(explicit.replace("{profile}", audit.name))
            if len(audits) > 1 and "{profile}" not in explicit:
                path = path.with_name(f"{path.stem}-{audit.name}{path.suffix}")
        else:
            path = reports / f"{audit.name}-{stamp}.json"
            latest.append((path, reports / f"{audit.name}-latest.json"))
        results_paths[audit.name] = path

    suite = Suite(
        audits=audits,
        started=started,
        stamp=stamp,
        fail_on=config.getoption("fail_on"),
        connectivity=config.getoption("connectivity"),
        results={audit.name: ProfileResults(audit.name, audit.mode, started) for audit in audits},
        results_paths=results_paths,
        latest_copies=latest,
        symptom_requirements=symptom_requirements,
        symptom_lines=symptom_lines,
    )
    config.stash[SUITE_KEY] = suite
    gate.configure(config, suite)  # waiver and baseline files: usage errors before anything runs
    if config.pluginmanager.hasplugin("html"):
        from hybridtrust.report_html import HtmlReport

        config.pluginmanager.register(HtmlReport(suite), "hybridtrust-html")


def _check_requirement_patterns(patterns: list[str]) -> None:
    ids = [requirement.id for requirement in catalog.REQUIREMENTS]
    for pattern in patterns:
        if not fnmatch.filter(ids, pattern.upper()):
            near = difflib.get_close_matches(pattern.upper(), ids, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else "; see REQUIREMENTS.md for the ids"
            raise pytest.UsageError(f"--requirement {pattern}: no requirement has that id{hint}")


def _resolve_symptoms(texts: list[str]) -> tuple[set[str] | None, list[str]]:
    """The requirement ids behind every symptom the pasted texts name, and a line per match."""
    if not texts:
        return None, []
    selected: set[str] = set()
    lines: list[str] = []
    for text in texts:
        found = symptoms.matching(text)
        if not found:
            near = "; ".join(f"{s.key}: {s.sees}" for s in symptoms.nearest(text))
            raise pytest.UsageError(f"--symptom {text!r} matches no known symptom; the nearest are: {near}")
        for symptom in found:
            selected.update(symptom.requirements)
            behind = ", ".join(symptom.requirements) or "no configuration requirement"
            lines.append(f"hybridtrust: symptom {symptom.key} ({symptom.where}) -> {behind}")
            if symptom.note:
                lines.append(f"hybridtrust:   {symptom.note}")
    if not selected:
        raise pytest.UsageError(" ".join(line.removeprefix("hybridtrust: ") for line in lines))
    return selected, lines


def pytest_collection(session: pytest.Session) -> None:
    suite = _suite(session.config)
    if suite is not None and not _is_xdist_worker(session.config):
        # Several live organizations: collected side by side while pytest imports the tests (after
        # pytest_sessionstart, where --rollback runs first). Returns None: pytest collects as usual.
        from hybridtrust.audit import collect_concurrently

        collect_concurrently(suite.audits)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if _suite(config) is None and COMPLIANCE_TESTS in (collection_path, *collection_path.parents):
        return True
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    suite = _suite(config)
    if suite is None:
        return []
    lines = []
    for audit in suite.audits:
        where = audit.evidence if audit.evidence else "live"
        lines.append(f"hybridtrust: {audit.name} ({audit.profile.organization.name}), {audit.mode}: {where}")
    return lines


# -- parametrization over subjects ---------------------------------------------------------
@dataclass(frozen=True)
class SubjectParam:
    """The `hybrid_subject` parameter of one generated test (it replaces the fixture of that name)."""

    profile: str
    requirement: Requirement
    subject: Subject | None
    organization: Organization | None
    error: NotCollected | None = None

    def __repr__(self) -> str:  # keeps pytest's own messages short
        return f"<{self.profile} {self.requirement.id} {self.subject.label if self.subject else '-'}>"


def _subject_argname(metafunc: pytest.Metafunc) -> str | None:
    names = [name for name in metafunc.definition._fixtureinfo.argnames if name not in FIXTURE_NAMES]
    if len(names) > 1:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: a requirement test takes one subject argument, found {names}"
        )
    return names[0] if names else None


def _params_for(audit: Audit, requirement: Requirement, over: Any, suite: Suite) -> Iterator[Any]:
    selected = audit.profile.scenarios
    marks = [getattr(pytest.mark, marker) for marker in requirement.markers]
    marks.append(pytest.mark.requirement(requirement.id))

    def skip(subject_id: str, reason: str) -> Any:
        param = SubjectParam(audit.name, requirement, Subject(subject_id, subject_id, None), None)
        return pytest.param(
            param, None, id=f"{audit.name}-{subject_id}", marks=[*marks, pytest.mark.skip(reason=reason)]
        )

    if not set(requirement.scenarios) & selected:
        wanted = " or ".join(requirement.scenarios)
        yield skip("not-selected", f"scenario {wanted} is not selected in profile {audit.name}")
        return
    if requirement.live_only and not suite.connectivity:
        yield skip("not-probed", "opt-in live probe: run with --connectivity against a live organization")
        return
    if requirement.live_only and audit.mode == "evidence":
        yield skip("not-probed", "live probe: an evidence bundle cannot be probed")
        return
    try:
        organization = audit.organization()
        subjects = list(over(organization))
    except NotCollected as error:
        param = SubjectParam(audit.name, requirement, None, None, error)
        yield pytest.param(param, None, id=f"{audit.name}-not-collected", marks=marks)
        return
    except NotApplicable as reason:
        yield skip("not-applicable", str(reason))
        return
    for subject in subjects:
        param = SubjectParam(audit.name, requirement, subject, organization)
        yield pytest.param(param, subject.value, id=f"{audit.name}-{subject.id}", marks=marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    requirement: Requirement | None = getattr(metafunc.function, "hybrid_requirement", None)
    suite = _suite(metafunc.config)
    if requirement is None or suite is None:
        return
    over = metafunc.function.hybrid_subjects  # type: ignore[attr-defined]
    argname = _subject_argname(metafunc) or "_hybrid_unused"
    params = [param for audit in suite.audits for param in _params_for(audit, requirement, over, suite)]
    # `hybrid_subject` is parametrized directly, which replaces the autouse fixture of that name for
    # these tests: an indirect parameter needs a fixture taking `request`, and pytest builds a fixture
    # definition for `request` (inspecting a signature) in every test, a tenth of a 16,000-test run.
    # What that fixture did, refusing a subject whose evidence was not collected, is done in
    # pytest_runtest_setup (`_refuse_unevaluable`).
    if argname == "_hybrid_unused":
        params = [pytest.param(param.values[0], id=param.id, marks=param.marks) for param in params]
        metafunc.parametrize("hybrid_subject", params)
    else:
        metafunc.parametrize(["hybrid_subject", argname], params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    patterns = [pattern.upper() for pattern in config.getoption("requirement")]
    suite = _suite(config)
    if suite is None or (not patterns and suite.symptom_requirements is None):
        return
    keep, drop = [], []
    for item in items:
        requirement = _requirement_of(item)
        wanted = requirement is not None
        if wanted and patterns:
            wanted = any(fnmatch.fnmatch(requirement.id, pattern) for pattern in patterns)
        if wanted and suite.symptom_requirements is not None:
            wanted = requirement.id in suite.symptom_requirements
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _requirement_of(item: pytest.Item) -> Requirement | None:
    return getattr(getattr(item, "function", None), "hybrid_requirement", None)


def _param_of(item: pytest.Item) -> SubjectParam | None:
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("hybrid_subject") if callspec else None
    return param if isinstance(param, SubjectParam) else None


# -- outcomes ---------------------------------------------------------------------------------
def _message_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    error = excinfo.value
    if isinstance(error, NotCollected):
        return f"could not be evaluated: {error}"
    if isinstance(error, AssertionError):
        text = str(error).split("\nassert ")[0]
        return text.strip() or "assertion failed"
    return f"could not be evaluated: {type(error).__name__}: {error}"


def _result(item: pytest.Item, report: pytest.TestReport, call: pytest.CallInfo[None]) -> Result | None:
    param = _param_of(item)
    if param is None:
        return None
    requirement = param.requirement
    subject = param.subject.label if param.subject else "-"
    finding: Finding | None = None
    if report.skipped:
        outcome, message = "skipped", _skip_reason(report)
    elif report.passed:
        outcome, message = "passed", ""
    elif call.excinfo is not None and call.when == "call" and call.excinfo.errisinstance(AssertionError):
        outcome, message = "failed", _message_of(call.excinfo)
        finding = take_finding()
    elif call.excinfo is not None:
        outcome, message = "error", _message_of(call.excinfo)
    else:
        outcome, message = "error", "could not be evaluated"
    return Result(
        profile=param.profile,
        requirement=requirement.id,
        title=requirement.title,
        severity=(finding.severity if finding and finding.severity else requirement.severity),
        scenarios=list(requirement.scenarios),
        subject=subject,
        outcome=outcome,  # type: ignore[arg-type]
        message=str(finding) if finding else message,
        nodeid=_stable_nodeid(item),
        source=requirement.source_title,
        found=finding.found if finding else None,
        expected=finding.expected if finding else None,
        fix=(finding.fix if finding and finding.fix else requirement.fix) if outcome == "failed" else None,
        symptoms=[symptom.describe() for symptom in symptoms.of_requirement(requirement.id)]
        if outcome == "failed"
        else [],
    )


def _stable_nodeid(item: pytest.Item) -> str:
    """The node id relative to the repository, whatever root pytest chose (baselines compare them)."""
    path = _repository_path(item.path)
    if path is None:
        return item.nodeid
    return "::".join([path, *item.nodeid.split("::")[1:]])


@functools.lru_cache(maxsize=256)
def _repository_path(path: Path) -> str | None:
    # Resolving a path asks the file system: once per test module, not once per test.
    try:
        return path.resolve().relative_to(REPOSITORY).as_posix()
    except ValueError:
        return None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    take_finding()  # nothing from an earlier test may leak into this one's report
    param = _param_of(item)
    if param is not None:
        _refuse_unevaluable(param)


def _refuse_unevaluable(param: SubjectParam) -> None:
    """A subject whose evidence was not collected errs (never a pass); one not collected by design is skipped."""
    error = param.error
    if error is None:
        if param.organization is None or param.subject is None:
            return  # a parameter marked skip (scenario not selected, not applicable): the mark says why
        tenant = next((t for t in param.organization.tenants if t.id == param.subject.tenant_id), None)
        missing = param.organization.missing(param.requirement.needs, tenant=tenant, server=param.subject.server)
        error = NotCollected(*missing) if missing else None
    if error is not None:
        if error.by_design:
            pytest.skip(str(error))
        raise error


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report: pytest.TestReport = yield
    suite = _suite(item.config)
    if suite is None or report.when == "teardown":
        return report
    if report.when == "setup" and report.passed:
        return report
    result = _result(item, report, call)
    if result is None and report.failed:
        suite.other_failures += 1
    if result is not None:
        gate.judge(item.config, result, report)  # a waiver may turn a failure into "waived"
        suite.results[result.profile].results.append(result)
        report.hybrid_result = result  # type: ignore[attr-defined]
        report.user_properties.append(("requirement", result.requirement))
        _name_the_requirement(report, result)
    return report


def _name_the_requirement(report: pytest.TestReport, result: Result) -> None:
    """Put the requirement, its severity and the subject into the failure line pipelines show.

    JUnit's failure message and the terminal's one-line failure both come from the crash
    location's message; an administrator reading them should see *which* requirement failed
    where without opening the HTML report.
    """
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and result.outcome in ("failed", "error"):
        crash.message = f"{result.requirement} [{result.severity}] {result.subject}: {result.message}"


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    result: Result | None = getattr(report, "hybrid_result", None)
    if result is not None and result.outcome == "error" and report.when == "call":
        # Data that could not be evaluated is an error, not a failed requirement.
        return "error", "E", "ERROR"
    return None


# -- the end of the run -----------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    suite = _suite(session.config)
    if suite is None or _is_xdist_worker(session.config) or session.config.option.collectonly:
        return
    from hybridtrust.remediation.plugin import remediate_session

    remediate_session(session, suite)  # --remediate: fixed and re-verified failures become "fixed" first
    status = int(exitstatus)
    if status in (0, 1):
        failing = gate.exit_failures(session.config, suite)  # --fail-on, or --fail-on-new against --baseline
        status = 1 if failing or suite.other_failures else 0
        session.exitstatus = status
    finished = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for audit in suite.audits:
        results = suite.results[audit.name]
        organization = audit._organization
        if organization is not None:
            results.origin = organization.collection.origin
            results.collected_at = organization.collection.collected_at
            results.notes = list(organization.collection.notes)
        gate.complete(session.config, audit.name, results)  # order, xdist workers' facts, waiver notes, baseline
        write_json(suite.results_paths[audit.name], results.document(finished, status))
    gate.finished(session.config, finished, status)  # history, trend, per-organization reports


def pytest_unconfigure(config: pytest.Config) -> None:
    suite = _suite(config)
    if suite is None or _is_xdist_worker(config) or config.option.collectonly:
        return
    for written, latest in suite.latest_copies:
        if written.is_file():
            shutil.copyfile(written, latest)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    suite = _suite(config)
    if suite is None:
        if not config.getoption("profile") and _collecting_compliance_tests(config):
            terminalreporter.write_line(
                "hybridtrust: no --profile given, so the compliance tests were not collected. "
                "Try: pytest --profile lab (the embedded lab), pytest --profile demo (an evidence bundle), "
                "or pytest --profile profiles/<name>.toml",
                yellow=True,
            )
        return
    for line in suite.symptom_lines:
        terminalreporter.write_line(line)
    for audit in suite.audits:
        if audit._organization is not None:
            for reason in damaged_files(audit._organization.collection):
                terminalreporter.write_line(f"hybridtrust: {audit.name}: {reason}", red=True)
        results = suite.results[audit.name]
        summary = ", ".join(f"{count} {outcome}" for outcome, count in results.summary().items() if count)
        terminalreporter.write_line(f"hybridtrust: {audit.name}: {summary or 'no requirement ran'}")
        terminalreporter.write_line(f"hybridtrust: {audit.name}: results {suite.results_paths[audit.name]}")
    html = getattr(config.option, "htmlpath", None)
    if html:
        terminalreporter.write_line(f"hybridtrust: HTML report {html}")


def _collecting_compliance_tests(config: pytest.Config) -> bool:
    args = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return not args or any(arg in (COMPLIANCE_TESTS, REPOSITORY) or COMPLIANCE_TESTS in arg.parents for arg in args)
