"""Per-organization report files when one run audits several organizations.

pytest-html and pytest's JUnit writer produce one file per session, and that
stays the combined report of the run (``<a>+<b>-<stamp>.html`` / ``.xml``). An
MSP hands each customer only its own report, so a run of several profiles also
writes, from the results themselves, ``<profile>-<stamp>.html`` (self-contained,
no script, no network) and ``<profile>-<stamp>.xml`` (JUnit) holding only that
organization's tests. Generating them from the `Result` objects rather than
splitting pytest's files keeps them identical whether the run was serial or
spread over pytest-xdist workers.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import tempfile
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path

from hybridtrust.report_extras import ProfileExtras, extras_html
from hybridtrust.report_html import STYLE, finding_panel, organization_summary
from hybridtrust.results import ProfileResults, Result

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

PAGE_STYLE = """
<style>
body { font-family: Helvetica, Arial, sans-serif; font-size: 14px; margin: 1em 2em; color: #222; }
table.ht-results { border-collapse: collapse; width: 100%; margin-top: .5em; }
table.ht-results th, table.ht-results td { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; text-align: left; }
table.ht-results th { background: #f2f2f2; }
table.ht-results td:first-child { white-space: nowrap; }
table.ht-results td code { font-size: 11px; word-break: break-all; }
.ht-outcome-failed { color: #b00020; font-weight: bold; }
.ht-outcome-error { color: #d35400; font-weight: bold; }
.ht-outcome-passed { color: #2e7d32; }
.ht-outcome-waived { color: #607d8b; font-weight: bold; }
.ht-outcome-skipped { color: #777; }
</style>
"""


def _write_text(path: Path, text: str) -> None:
    """Atomically, like the results document: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _result_row(result: Result) -> str:
    detail = ""
    if result.outcome in ("failed", "error"):
        # Open, as pytest-html shows failing rows: the fix is readable without a click.
        detail = f"<details open><summary>details and fix</summary>{finding_panel(result)}</details>"
    return (
        f"<tr><td>{escape(result.requirement)}</td><td>{escape(result.severity)}</td><td>{escape(result.subject)}</td>"
        f'<td class="ht-outcome-{escape(result.outcome)}">{escape(result.outcome)}</td>'
        f"<td>{escape(result.message)}{detail}</td><td><code>{escape(result.nodeid)}</code></td></tr>"
    )


def profile_html(
    results: ProfileResults,
    organization_name: str,
    extras: ProfileExtras,
    *,
    finished: dt.datetime,
    exit_status: int,
    siblings: dict[str, str],
) -> str:
    """A self-contained page about one organization of a run of several."""
    others = ", ".join(
        f'<a href="{escape(file)}">{escape(name)}</a>' for name, file in siblings.items() if name != results.profile
    )
    rows = "".join(_result_row(result) for result in results.results)
    title = f"hybridtrust: hybrid OAuth trust of {organization_name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>{PAGE_STYLE}{STYLE}</head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="ht-meta">Run started {results.started:%Y-%m-%d %H:%M:%S} UTC, finished {finished:%H:%M:%S} UTC; '
        f"exit status {exit_status} (of the whole run). "
        + (f"The same run also audited: {others}." if others else "")
        + "</p>"
        f"{organization_summary(results, organization_name)}{extras_html(results, extras)}"
        "<h2>Every result</h2>"
        '<table class="ht-results"><tr><th>requirement</th><th>severity</th><th>subject</th><th>outcome</th>'
        f"<th>message</th><th>test</th></tr>{rows}</table></body></html>\n"
    )


def _clean(text: str) -> str:
    return _XML_ILLEGAL.sub("?", text)


def _classname_and_name(nodeid: str) -> tuple[str, str]:
    """As pytest's own JUnit writer names a test: dotted module path, then the function with its parameters."""
    path, _, rest = nodeid.partition("::")
    module = re.sub(r"\.py$", "", path).replace("/", ".")
    parts = rest.split("::") if rest else [path]
    return ".".join([module, *parts[:-1]]), parts[-1]


def profile_junit(results: ProfileResults, durations: dict[str, float], *, finished: dt.datetime) -> str:
    """JUnit XML of one organization's tests (same outcome mapping as pytest's: waived is a skip)."""
    counts = {"failed": 0, "error": 0, "skipped": 0}
    cases = []
    for result in results.results:
        classname, name = _classname_and_name(result.nodeid)
        case = ET.Element("testcase", classname=_clean(classname), name=_clean(name))
        case.set("time", f"{durations.get(result.nodeid, 0.0):.3f}")
        properties = ET.SubElement(case, "properties")
        for key, value in (("requirement", result.requirement), ("severity", result.severity),
                           ("subject", result.subject), ("outcome", result.outcome)):  # fmt: skip
            ET.SubElement(properties, "property", name=key, value=_clean(value))
        message = _clean(result.message)
        if result.outcome == "failed":
            counts["failed"] += 1
            body = [result.message]
            if result.found is not None or result.expected is not None:
                body += [f"found: {result.found}", f"expected: {result.expected}"]
            if result.fix:
                body.append(f"documented fix: {result.fix}")
            ET.SubElement(case, "failure", message=message).text = _clean("\n".join(body))
        elif result.outcome == "error":
            counts["error"] += 1
            ET.SubElement(case, "error", message=message).text = message
        elif result.outcome in ("skipped", "waived"):
            counts["skipped"] += 1
            kind = "hybridtrust.waived" if result.outcome == "waived" else "pytest.skip"
            ET.SubElement(case, "skipped", type=kind, message=message).text = message
        cases.append(case)
    suite = ET.Element(
        "testsuite",
        name=f"hybridtrust.{results.profile}",
        tests=str(len(cases)),
        failures=str(counts["failed"]),
        errors=str(counts["error"]),
        skipped=str(counts["skipped"]),
        time=f"{(finished - results.started).total_seconds():.3f}",
        timestamp=results.started.isoformat(),
        hostname=socket.gethostname(),
    )
    suite.extend(cases)
    root = ET.Element("testsuites", name="hybridtrust")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_profile_reports(
    html_path: Path,
    junit_path: Path,
    results: ProfileResults,
    organization_name: str,
    extras: ProfileExtras,
    durations: dict[str, float],
    *,
    finished: dt.datetime,
    exit_status: int,
    siblings: dict[str, str],
) -> None:
    _write_text(
        html_path,
        profile_html(results, organization_name, extras, finished=finished, exit_status=exit_status, siblings=siblings),
    )
    _write_text(junit_path, profile_junit(results, durations, finished=finished))
