"""Shared fixtures of the project's own tests: lab organizations, evidence bundles, suite runs.

The compliance suite is exercised the way an administrator runs it: `python -m
pytest --profile ...` in a subprocess, judged by its exit status and its results
documents. Evidence bundles are written from lab organizations, so a test
changes one value of the simulated world and watches which requirements move.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from hybridtrust.lab.contoso import compliant_organization
from hybridtrust.lab.state import LabState
from tests import support
from tests.support import NOW, SuiteRun


@pytest.fixture(scope="session")
def compliant_state() -> LabState:
    """Contoso configured the documented way (built once: certificates take a moment)."""
    return compliant_organization(NOW)


@pytest.fixture
def write_bundle(tmp_path: Path) -> Callable[..., Path]:
    def write(state: LabState, name: str = "bundle", collected_at: dt.datetime = NOW) -> Path:
        return support.write_bundle(state, tmp_path / name, collected_at)

    return write


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, evidence: Path, *, resource_forest: bool = False) -> Path:
        return support.write_profile(tmp_path / f"{name}.toml", evidence, resource_forest=resource_forest)

    return write


@pytest.fixture
def run_suite(tmp_path: Path) -> Callable[..., SuiteRun]:
    """Run the compliance suite in a subprocess (see tests/support.py)."""

    def run(*args: str, timeout: float = 240) -> SuiteRun:
        return support.run_suite(tmp_path, *args, timeout=timeout)

    return run
