"""The live source's order of work: what runs while Exchange is being collected, against the embedded lab."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from hybridtrust.facts import Missing
from hybridtrust.lab.contoso import compliant_organization
from hybridtrust.lab.server import start_lab
from hybridtrust.powershell import PSRecord
from hybridtrust.profile import load_profile
from hybridtrust.sources import graph, live
from tests.support import NOW


def test_graph_credentials_are_built_before_get_authserver_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building them is CPU; built while Exchange opens its pools, it does not slow the per-server queries."""
    profile = load_profile("lab")
    built: list[str] = []
    all_built = threading.Event()
    real_build = graph.build_credential

    def build_credential(spec: Any, tenant_id: str, endpoints: Any) -> Any:
        built.append(tenant_id)
        if len(built) == len(profile.tenants):
            all_built.set()
        return real_build(spec, tenant_id, endpoints)

    # Get-AuthServer's answer is passed on only once every credential is built (or after 10 s): had the
    # credentials waited for that answer, as they did before, they would not be built in time.
    held: list[bool] = []
    real_collect_exchange = live.collect_exchange

    def collect_exchange(
        settings: Any, *, early: Callable[[str, list[PSRecord] | None], None] | None = None, keep_clixml: bool = True
    ) -> Any:
        def hold_auth_server(cmdlet: str, records: list[PSRecord] | None) -> None:
            if cmdlet == "Get-AuthServer":
                held.append(all_built.wait(10))
            if early is not None:
                early(cmdlet, records)

        return real_collect_exchange(settings, early=hold_auth_server, keep_clixml=keep_clixml)

    monkeypatch.setattr(graph, "build_credential", build_credential)
    monkeypatch.setattr(live, "collect_exchange", collect_exchange)
    with start_lab(compliant_organization(NOW)) as lab:
        collection = live.collect_with(profile, live.lab_connections(profile, lab.describe(), origin="test"))

    assert held == [True]
    assert sorted(built) == sorted(tenant.id for tenant in profile.tenants)  # each once, none built again
    for tenant in profile.tenants:
        documents = collection.tenants[tenant.id]
        assert not isinstance(documents.organization, Missing), documents.organization
        assert not isinstance(documents.applications, Missing), documents.applications
