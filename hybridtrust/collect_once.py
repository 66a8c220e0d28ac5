"""With pytest-xdist, each organization is collected once, by the controller, not by every worker.

xdist's workers each collect the tests, and collecting a requirement test asks for
the organization's facts. Left alone, ``-n 4`` would connect four times to every
Exchange server and tenant (four times the PSRP and Graph load, and four embedded
labs with four sets of certificates). Instead the controller collects each live or
lab organization before the workers start and hands each worker the collection it
gathered; the workers judge exactly the same documents. An evidence bundle is
cheap to read and identical everywhere, so workers keep reading it themselves.

The hand-over is a pickle in a private temporary folder the controller creates
and removes: it is written and read only by this run's own processes.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

_FOLDER_KEY = pytest.StashKey[Path]()
_WORKER_INPUT = "hybridtrust_collections"


def _suite(config: pytest.Config) -> Any:
    from hybridtrust.plugin import SUITE_KEY

    return config.stash.get(SUITE_KEY, None)


def _distributed(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    suite = _suite(config)
    if suite is None or config.option.collectonly:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        _adopt(suite, workerinput.get(_WORKER_INPUT) or {})
        return
    if not _distributed(config):
        return
    folder = Path(tempfile.mkdtemp(prefix="hybridtrust-collections-"))
    config.stash[_FOLDER_KEY] = folder
    from hybridtrust.audit import collect_concurrently

    collect_concurrently(suite.audits)  # several live organizations side by side; the loop waits for each
    for audit in suite.audits:
        if audit.mode == "evidence":
            continue
        organization = audit.organization()  # the one collection of this run
        path = folder / f"{audit.name}.pickle"
        with path.open("wb") as handle:
            pickle.dump(organization.collection, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _adopt(suite: Any, paths: dict[str, str]) -> None:
    for audit in suite.audits:
        path = paths.get(audit.name)
        if path is None:
            continue
        with Path(path).open("rb") as handle:
            collection = pickle.load(handle)  # written by this run's controller, in its own folder
        audit._organization = audit._build(collection)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    folder = node.config.stash.get(_FOLDER_KEY, None)
    if folder is not None:
        node.workerinput[_WORKER_INPUT] = {path.stem: str(path) for path in folder.glob("*.pickle")}


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_FOLDER_KEY, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
