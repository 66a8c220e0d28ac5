"""The reliability group's runs start together, whichever of its modules pytest selected.

A module that runs the suite defines ``launch(root, launcher) -> Launched``: it starts its
labs, arms its faults and submits its suite runs to the shared `Launcher`, and returns
how to collect them (``collect()``, which waits and stops its labs) and how to clean up
(``close()``). Its module fixture then asks `launched` for its results. The first such
request launches every selected module at once, slowest first (`LAUNCH_ORDER`), so runs
that wait for a timeout overlap with runs that need the CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Protocol

import pytest

from tests.reliability.support import Launcher

LAUNCH_ORDER = ("test_faults", "test_secrets", "test_tls", "test_injection", "test_hostile_input")


class Launched(Protocol):
    def collect(self) -> Any: ...

    def close(self) -> None: ...


@pytest.fixture(scope="session")
def launched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Any]]:
    modules: dict[str, ModuleType] = {}
    for item in request.session.items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "launch"):
            modules.setdefault(module.__name__, module)

    def rank(module: ModuleType) -> int:
        short = module.__name__.rsplit(".", 1)[-1]
        return LAUNCH_ORDER.index(short) if short in LAUNCH_ORDER else len(LAUNCH_ORDER)

    ordered = sorted(modules.values(), key=rank)
    # Three runs per CPU: most runs wait (a timeout, a Retry-After, a lab) part of the time, and more
    # at once would stretch each run's own time, which the tests bound.
    launcher = Launcher(limit=3 * (os.cpu_count() or 2))
    started: dict[str, Launched] = {}
    collected: dict[str, Any] = {}
    try:
        for module in ordered:
            short = module.__name__.rsplit(".", 1)[-1]
            started[module.__name__] = module.launch(tmp_path_factory.mktemp(short.removeprefix("test_")), launcher)

        def results(name: str) -> Any:
            if name not in collected:
                collected[name] = started[name].collect()
            return collected[name]

        yield results
    finally:
        launcher.close()
        for handle in started.values():
            handle.close()
