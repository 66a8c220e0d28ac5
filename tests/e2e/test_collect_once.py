"""With pytest-xdist, each organization is collected once (by the controller), not once per worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import start_lab
from tests.support import NOW, REPOSITORY, SuiteRun


def test_two_workers_ask_exchange_and_graph_once(tmp_path: Path, run_suite: Callable[..., SuiteRun]) -> None:
    with start_lab(flawed_contoso(NOW)) as lab:
        connection = tmp_path / "lab.json"
        connection.write_text(json.dumps(lab.describe()))
        text = (REPOSITORY / "profiles" / "lab.toml").read_text()
        profile = tmp_path / "external.toml"
        profile.write_text(
            text.replace('mode = "embedded"', f'mode = "external"\nconnection = "{connection.as_posix()}"')
        )
        lab.reset_counters()

        run = run_suite("--profile", str(profile), "-n", "2")

        assert run.status == 1, run.output[-3000:]
        counters = lab.counters()
    exchange = counters["exchange"]["commands"]
    assert exchange.get("Get-AuthServer") == 1 and exchange.get("Get-ExchangeServer") == 1, exchange
    graph = counters["graph"]
    organization_reads = sum(
        n for endpoint, n in graph["by_endpoint"].items() if endpoint.startswith("GET /v1.0/organization")
    )
    assert organization_reads == 2, graph["by_endpoint"]  # one per tenant, not one per tenant per worker
    assert run.failing("external"), "the lab's defects are judged by the workers"
