"""Helpers of the remediation tests: a lab to change, a profile that reaches it, and judging without pytest."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridtrust.audit import Audit
from hybridtrust.facts import NotCollected
from hybridtrust.profile import Profile, load_profile
from hybridtrust.remediation.judge import rejudge
from hybridtrust.remediation.model import Failure
from hybridtrust.results import Result
from hybridtrust.testing import NotApplicable
from tests.support import REPOSITORY

LAB_PROFILE = REPOSITORY / "profiles" / "lab.toml"


def external_profile(path: Path, connection: Path) -> Path:
    """profiles/lab.toml, pointed at a running lab through its connection file (the JSON line of ``serve``)."""
    text = LAB_PROFILE.read_text(encoding="utf-8")
    assert 'mode = "embedded"' in text
    text = text.replace('mode = "embedded"', f'mode = "external"\nconnection = "{connection.as_posix()}"', 1)
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class ServedLab:
    process: subprocess.Popen[str]
    state: Path
    connection: Path
    description: dict[str, Any]


@contextmanager
def served_lab(directory: Path, timeout: float = 60) -> Iterator[ServedLab]:
    """``python -m hybridtrust.lab serve --state FILE`` in a subprocess, stopped (SIGTERM, by its pid) at the end."""
    state = directory / "lab-state.json"
    connection = directory / "lab-connection.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "hybridtrust.lab", "serve", "--state", str(state)],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the lab did not start: {process.stderr.read() if process.stderr else ''}")
        assert time.monotonic() < deadline
        connection.write_text(line, encoding="utf-8")
        yield ServedLab(process, state, connection, json.loads(line))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def requirement_functions() -> list[Any]:
    """Every requirement test function of tests_hybrid/, imported outside pytest."""
    functions = []
    for path in sorted((REPOSITORY / "tests_hybrid").glob("test_*.py")):
        name = f"_hybridtrust_requirements_{path.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        functions += [value for value in vars(module).values() if hasattr(value, "hybrid_requirement")]
    return functions


def judged_failures(profile: Profile) -> list[Failure]:
    """The audit of a profile as the plugin runs it, without pytest: its failures, ready for remediation."""
    audit = Audit(profile=profile)
    organization = audit.organization()
    failures = []
    for function in requirement_functions():
        requirement = function.hybrid_requirement
        if not set(requirement.scenarios) & profile.scenarios or requirement.live_only:
            continue
        try:
            subjects = list(function.hybrid_subjects(organization))
        except (NotCollected, NotApplicable):
            continue
        for subject in subjects:
            verdict = rejudge(function, requirement, subject, organization)
            if verdict.outcome != "failed":
                continue
            result = Result(
                profile=profile.name,
                requirement=requirement.id,
                title=requirement.title,
                severity=requirement.severity,
                scenarios=list(requirement.scenarios),
                subject=subject.label,
                outcome="failed",
                message=verdict.message,
                nodeid=f"{function.__name__}[{subject.id}]",
            )
            failures.append(Failure(profile.name, requirement, subject, organization, result, function))
    return failures


def load(path: Path) -> Profile:
    return load_profile(str(path))


def differences(before: Any, after: Any, path: str = "", ignore: frozenset[str] = frozenset()) -> list[str]:
    """Where two JSON documents differ, field by field (keys in `ignore` are skipped at any depth)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key in ignore:
                continue
            if key not in before:
                found.append(f"{path}/{key}: added")
            elif key not in after:
                found.append(f"{path}/{key}: removed")
            else:
                found += differences(before[key], after[key], f"{path}/{key}", ignore)
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d
            for index, pair in enumerate(zip(before, after, strict=True))
            for d in differences(*pair, f"{path}[{index}]", ignore)
        ]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]
