"""Troubleshooting from the symptom: --symptom selects the rows behind it; failures name their symptoms."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridtrust import catalog, symptoms
from tests.support import REPOSITORY, SuiteRun

SPEC = REPOSITORY.parent / "shared" / "SPEC" / "SYMPTOMS.md"


def test_every_symptom_points_at_catalog_rows() -> None:
    ids = {r.id for r in catalog.REQUIREMENTS}
    for symptom in symptoms.SYMPTOMS:
        assert set(symptom.requirements) <= ids, symptom.key
        assert symptom.requirements or symptom.note, f"{symptom.key} selects nothing and explains nothing"


def test_every_row_of_the_spec_table_is_in_the_data() -> None:
    spec_rows = [
        line for line in SPEC.read_text().splitlines() if line.startswith("| ") and "requirements |" not in line
    ]
    for row in spec_rows[1:]:
        requirements = {part.strip() for part in row.split("|")[3].split(",") if "-" in part and part.strip().isupper()}
        assert any(requirements == set(s.requirements) for s in symptoms.SYMPTOMS), row


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("AADSTS500011: The resource principal named https://mail.contoso.com was not found in the tenant",
         {"AADSTS500011"}),
        ("aadsts50011", {"AADSTS50011"}),
        ("Error: AADSTS50012: The key was not found.", {"AADSTS70002/AADSTS50012"}),
        ("x-ms-diagnostics: 2000000;reason=\"invalid_signature\"", {"2000000-invalid_signature"}),
        ("Event 1003: Could not find a valid certificate", {"owa-redirect-loop"}),
    ],
)  # fmt: skip
def test_pasted_errors_match_by_code_or_phrase(pasted: str, expected: set[str]) -> None:
    assert {s.key for s in symptoms.matching(pasted)} == expected


def test_a_code_never_matches_inside_a_longer_code() -> None:
    assert "AADSTS50011" not in {s.key for s in symptoms.matching("AADSTS500011")}


def test_symptom_runs_exactly_the_spn_requirements_of_the_demo(run_suite: Callable[..., SuiteRun]) -> None:
    run = run_suite(
        "--profile", "demo",
        "--symptom", "AADSTS500011: The resource principal named https://mail.contoso.com was not found",
    )  # fmt: skip
    assert run.status == 1, run.output[-2000:]
    assert "symptom AADSTS500011" in run.output
    results = run.results["demo"]["results"]
    assert {r["requirement"] for r in results} == {"HMA-SPN-URLS", "EXO-SPN-AUTHORITIES"}
    failed = [r for r in results if r["outcome"] == "failed"]
    assert [(r["requirement"], r["subject"]) for r in failed] == [("HMA-SPN-URLS", "fabrikam/autodiscover.contoso.com")]
    assert any("AADSTS500011" in line for line in failed[0]["symptoms"])


def test_a_symptom_that_matches_nothing_lists_the_nearest(run_suite: Callable[..., SuiteRun]) -> None:
    run = run_suite("--profile", "demo", "--symptom", "AADSTS50001 resource is disabled")
    assert run.status == 4
    error = next(line for line in run.output.splitlines() if line.startswith("ERROR:"))
    assert "matches no known symptom; the nearest are:" in error and "AADSTS500011" in error


def test_every_failure_of_the_demo_with_a_symptom_shows_it(tmp_path: Path, run_suite: Callable[..., SuiteRun]) -> None:
    run = run_suite("--profile", "demo")
    html = next(run.reports.glob("demo-*.html")).read_text()
    document = json.loads(next(run.reports.glob("demo.json")).read_text())
    failures = [r for r in document["results"] if r["outcome"] == "failed"]
    linked = [r for r in failures if symptoms.of_requirement(r["requirement"])]
    assert linked, "the demo should have failures with symptoms"
    for result in linked:
        assert result["symptoms"], result["requirement"]
    assert "What users see" in html and "AADSTS500011" in html
