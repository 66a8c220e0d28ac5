"""The benchmark's machinery on a small organization: what it generates and how it counts (no timing)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bench import benchmark, organizations
from hybridtrust.facts import EXCHANGE_ONLINE_APP_ID
from hybridtrust.profile import load_profile
from hybridtrust.sources.exchange import organization_commands

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def test_a_generated_organization_and_its_profile(tmp_path: Path) -> None:
    state = organizations.organization(10, 3, NOW)
    counts = organizations.counts(state)
    assert counts["servers"] == 10 and counts["tenants"] == 3
    assert counts["virtual_directories"] == 10 * 7  # all seven on every server
    exchange = state.document["exchange"]
    assert all(v["InternalUrl"] and v["ExternalUrl"] for n in organizations._PATHS for v in exchange[n])
    # One auth certificate for the organization, on every server (plus the namespace and Setup's own).
    auth = exchange["AuthConfig"][0]["CurrentCertificateThumbprint"]
    assert sum(c["Identity"].endswith(auth) for c in exchange["ExchangeCertificate"]) == 10
    # Every on-premises host is a name of every tenant's Exchange Online principal, but the seeded one.
    hosts = {organizations.site_hosts(0)[0], organizations.site_hosts(0)[1], "autodiscover.contoso.com"}
    for index, tenant in enumerate(state.document["tenants"].values()):
        principal = next(sp for sp in tenant["servicePrincipals"] if sp["appId"] == EXCHANGE_ONLINE_APP_ID)
        missing = {host for host in hosts if f"https://{host}/" not in principal["servicePrincipalNames"]}
        assert missing == ({organizations.site_hosts(0)[1]} if index == 2 else set())
        assert any(name.startswith(f"{EXCHANGE_ONLINE_APP_ID}/outlook") for name in principal["servicePrincipalNames"])

    connection = tmp_path / "lab.json"
    path = tmp_path / "bench10.toml"
    path.write_text(organizations.profile_text("bench10", state, connection=str(connection), max_concurrency=16))
    profile = load_profile(str(path))
    assert profile.lab is not None and profile.lab.mode == "external" and profile.lab.connection == connection
    assert [t.id for t in profile.tenants] == list(state.document["tenants"])
    assert profile.exchange is not None and profile.exchange.max_concurrency == 16


def test_counters_and_the_latency_bound() -> None:
    counters = {
        "exchange": {"wsman": {"Create": 16, "Command": 25, "Receive": 30, "Signal": 25, "Delete": 16},
                     "commands": {"Get-AuthServer": 1, "Get-ExchangeCertificate": 10, "Select-Object": 10},
                     "pipelines": 25},
        "sharepoint": {"wsman": {"Create": 1, "Command": 8}, "commands": {"Add-PSSnapin": 1}, "pipelines": 7},
        "graph": {"by_endpoint": {"GET /v1.0/domains": 3, "GET /v1.0/organization": 3, "POST /x/oauth2/v2.0/token": 3}},
    }  # fmt: skip
    served = benchmark.served(counters)
    assert served["wsman_requests"] == 112 + 9 and served["exchange_wsman_requests"] == 112
    assert served["psrp_commands"] == 12 and served["certificate_queries"] == 10 and served["psrp_pipelines"] == 32
    assert served["projection_stages"] == 10  # Select-Object rides in its cmdlet's pipeline: no question of its own
    assert served["graph_requests"] == 6 and served["token_requests"] == 3
    # Every Exchange cmdlet once (role assignments once per application account), SharePoint's after
    # its two preparation commands, and one certificate query per server.
    assert benchmark.expected_commands(10) == len(organization_commands()) + 2 + 6 + 10

    bound = benchmark.lower_bound(
        exchange_pipelines=1016, sharepoint_pipelines=7, graph_requests=35, tenants=5,
        latency_s=0.02, psrp_concurrency=16, graph_concurrency=8,
    )  # fmt: skip
    assert bound["exchange_s"] == pytest.approx((2 + 3 * 1016 / 16) * 0.02)
    assert bound["graph_s"] == pytest.approx((1 + 5) * 0.02)
    assert bound["overlapped_s"] == bound["exchange_s"]  # a thousand certificate queries dominate


def test_repeated_runs_report_the_median_run_and_the_spread() -> None:
    def run(sources_s: float) -> benchmark.Measurement:
        measurement = benchmark.Measurement(1000, 5, 20, sources_s=sources_s)
        measurement.sources_over_bound = sources_s / 4.0
        return measurement

    runs = [run(9.0), run(7.0), run(12.0), run(8.0)]
    assert benchmark.median_run(runs).sources_s == 9.0  # of two middle runs, the slower
    assert benchmark.median_run(runs[:3]).sources_s == 9.0
    assert benchmark.spread({1000: runs, 10: [run(1.0)]}) == [
        "1000 servers, 4 runs: sources 7.0, 8.0, 9.0, 12.0 s; x the bound: 1.75, 2.00, 2.25, 3.00; "
        "within 2x in 2 of 4; the table shows the median run"
    ]
