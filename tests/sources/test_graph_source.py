"""The live Graph source against the lab Graph endpoint, through the real azure-identity and msgraph-sdk."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from hybridtrust.clouds import cloud
from hybridtrust.facts import EXCHANGE_ONLINE_APP_ID, SKYPE_ONLINE_APP_ID, Missing, Tenant
from hybridtrust.lab.graph_sample import SampleGraphWorld, sample_graph_world
from hybridtrust.lab.graph_server import GraphLabServer
from hybridtrust.sources.graph import (
    CredentialSpec,
    GraphEndpoints,
    TenantRequest,
    collect,
    prepare_sign_in,
    requests_per_tenant,
)


@pytest.fixture(scope="module")
def world() -> SampleGraphWorld:
    return sample_graph_world()


@pytest.fixture
def lab(world: SampleGraphWorld) -> Iterator[GraphLabServer]:
    with GraphLabServer(world.state.copy(), page_size=2) as server:
        yield server


def endpoints_for(lab: GraphLabServer, **overrides: object) -> GraphEndpoints:
    # retry_delay_s=0: a 429/503 without Retry-After is retried at once in tests.
    values: dict[str, object] = {
        "authority": lab.authority,
        "graph_base_url": lab.base_url,
        "ca_file": lab.ca_file,
        "timeout_s": 10,
        "retry_delay_s": 0,
        "sign_in_retries": 0,  # a refused handshake is not worth azure-core's 3 retries in a test
    }
    values.update(overrides)
    return GraphEndpoints(**values)  # type: ignore[arg-type]


def secret_requests(
    world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch, **hybrid_app_ids: tuple[str, ...]
) -> list[TenantRequest]:
    result = []
    for index, tenant_id in enumerate(world.tenant_ids):
        client = world.read_only[tenant_id]
        variable = f"HT_TEST_GRAPH_SECRET_{index}"
        monkeypatch.setenv(variable, client.secret)
        result.append(
            TenantRequest(
                tenant_id,
                CredentialSpec(method="secret", client_id=client.app_id, secret_env=variable),
                hybrid_app_ids.get(f"t{index}", ()),
            )
        )
    return result


def dedicated_app_id(world: SampleGraphWorld, tenant_id: str) -> str:
    applications = world.state.tenants[tenant_id]["applications"]
    return next(app["appId"] for app in applications if app["displayName"].startswith("ExchangeServerApp-"))


def test_collects_every_tenant_as_raw_graph_documents(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = world.tenant_ids
    hr_app = next(
        app["appId"] for app in world.state.tenants[first]["applications"] if app["displayName"].endswith("HR portal")
    )
    results = collect(secret_requests(world, monkeypatch, t0=(hr_app,)), endpoints_for(lab))
    assert set(results) == {first, second}
    for tenant_id, result in results.items():
        assert result.errors == {}
        assert result.organization is not None and result.domains is not None
        assert result.organization["value"][0]["id"] == tenant_id
        assert result.organization["@odata.context"] == f"{lab.base_url}/$metadata#organization"
        # Three domains, page size two: both pages merged into one Graph list document.
        assert [domain["id"] for domain in result.domains["value"]] == [
            domain["id"] for domain in world.state.tenants[tenant_id]["domains"]
        ]
        assert "@odata.nextLink" not in result.domains
        exchange = result.service_principals[EXCHANGE_ONLINE_APP_ID]
        assert exchange is not None
        assert exchange["@odata.context"].endswith(
            "$metadata#servicePrincipals(id,appId,displayName,servicePrincipalNames,replyUrls,keyCredentials)/$entity"
        )
        assert exchange["keyCredentials"][0]["key"] == world.auth_certificate.b64  # single object + $select
        assert result.service_principals[SKYPE_ONLINE_APP_ID] is None  # 404: absent, not an error
        assert result.not_found[SKYPE_ONLINE_APP_ID]["error"]["code"] == "Request_ResourceNotFound"
        assert result.applications is not None
        names = [app["displayName"] for app in result.applications["value"]]
        assert names[0] == f"ExchangeServerApp-{world.organization_guid}"
    assert [app["appId"] for app in results[first].applications["value"]][1:] == [hr_app]  # type: ignore[index]
    assert len(results[second].applications["value"]) == 1  # type: ignore[index]


def test_documents_are_exactly_what_graph_sent(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = world.tenant_ids[0]
    result = collect(secret_requests(world, monkeypatch)[:1], endpoints_for(lab))[tenant_id]
    token = lab.mint_access_token(tenant_id, "x", roles=["Application.Read.All"])
    direct = requests.get(
        f"{lab.base_url}/servicePrincipals(appId='{EXCHANGE_ONLINE_APP_ID}')",
        params={"$select": "id,appId,displayName,servicePrincipalNames,replyUrls,keyCredentials"},
        headers={"Authorization": f"Bearer {token}"},
        verify=str(lab.ca_file),
    )
    assert json.dumps(result.service_principals[EXCHANGE_ONLINE_APP_ID]) == json.dumps(direct.json())


def test_request_count_is_constant_per_tenant(world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id = world.tenant_ids[0]
    app_ids = tuple(app["appId"] for app in world.state.tenants[tenant_id]["applications"])
    with GraphLabServer(world.state.copy(), page_size=100) as lab:
        results = collect(secret_requests(world, monkeypatch, t0=app_ids), endpoints_for(lab))
        for tenant, result in results.items():
            expected = requests_per_tenant(len(app_ids) if tenant == tenant_id else 0)
            assert result.requests == expected == lab.graph_requests(tenant)
        # One token request per tenant, whatever the number of Graph requests.
        assert lab.counters["by_endpoint"]["POST /{tenant}/oauth2/v2.0/token"] == len(world.tenant_ids)


def test_facts_and_evidence_files_read_the_same(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tenant_id = world.tenant_ids[0]
    result = collect(secret_requests(world, monkeypatch)[:1], endpoints_for(lab))[tenant_id]
    tenant = Tenant(tenant_id, "contoso.onmicrosoft.com", cloud("global"), result.to_facts())
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    assert principal.key_credentials[0].key == world.auth_certificate.der
    assert tenant.coexistence_domain == "contoso.mail.onmicrosoft.com"
    assert not tenant.has_service_principal(SKYPE_ONLINE_APP_ID)

    files = result.evidence_files()
    assert set(files) == {
        f"entra/{tenant_id}/organization.json",
        f"entra/{tenant_id}/domains.json",
        f"entra/{tenant_id}/applications.json",
        *(f"entra/{tenant_id}/servicePrincipals/{app_id}.json" for app_id in result.service_principals),
    }
    for relative, document in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document), encoding="utf-8")
    evidence = pytest.importorskip("hybridtrust.sources.evidence")
    offline = evidence.read_tenant(tmp_path / "entra", tenant_id)
    assert offline == result.to_facts()


def test_certificate_credential(lab: GraphLabServer, world: SampleGraphWorld, tmp_path: Path) -> None:
    tenant_id = world.tenant_ids[1]
    client = world.read_only[tenant_id]
    assert client.certificate is not None
    pem = tmp_path / "audit.pem"
    pem.write_bytes(client.certificate.pem)
    spec = CredentialSpec(method="certificate", client_id=client.app_id, certificate_file=pem)
    result = collect([TenantRequest(tenant_id, spec)], endpoints_for(lab))[tenant_id]
    assert result.errors == {}
    assert result.organization is not None


def test_a_caller_supplied_credential_is_used_and_not_closed(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    import asyncio

    from azure.identity.aio import ClientSecretCredential

    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    endpoints = endpoints_for(lab)

    async def scenario() -> bool:
        from hybridtrust.sources.graph import collect_async

        credential = ClientSecretCredential(
            tenant_id, client.app_id, client.secret, authority=lab.authority, connection_verify=str(lab.ca_file)
        )
        # The spec is never used: it names a variable that does not exist.
        spec = CredentialSpec(method="secret", client_id=client.app_id, secret_env="HT_TEST_UNUSED")
        results = await collect_async([TenantRequest(tenant_id, spec)], endpoints, credentials={tenant_id: credential})
        still_usable = bool((await credential.get_token(endpoints.scope)).token)
        await credential.close()
        return not results[tenant_id].errors and still_usable

    assert asyncio.run(scenario())


def test_prepared_sign_ins_are_used_and_closed_even_when_their_tenant_is_not_collected(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = secret_requests(world, monkeypatch)
    endpoints = endpoints_for(lab)
    sign_ins = {request.tenant_id: prepare_sign_in(request, endpoints) for request in (first, second)}
    closed: list[str] = []
    for tenant_id, sign_in in sign_ins.items():
        assert sign_in.credential is not None and sign_in.error is None
        real_close = sign_in.credential.close

        async def close(tenant_id: str = tenant_id, real_close: Any = real_close) -> None:
            closed.append(tenant_id)
            await real_close()

        monkeypatch.setattr(sign_in.credential, "close", close)
    # The request's own spec names a variable that does not exist: the prepared credential is the one used.
    unusable = replace(first, credential=CredentialSpec(method="secret", client_id="x", secret_env="HT_TEST_UNSET"))
    result = collect([unusable], endpoints, sign_ins=sign_ins)[first.tenant_id]
    assert result.errors == {} and result.organization is not None
    assert sorted(closed) == sorted([first.tenant_id, second.tenant_id])


def test_a_prepared_sign_in_is_closed_unused_when_the_caller_gives_that_tenant_a_credential(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from hybridtrust.sources.graph import collect_async

    request = secret_requests(world, monkeypatch)[0]
    endpoints = endpoints_for(lab)
    closed: list[str] = []

    async def scenario() -> bool:
        callers = prepare_sign_in(request, endpoints).credential
        prepared = prepare_sign_in(request, endpoints)
        assert callers is not None and prepared.credential is not None
        real_close = prepared.credential.close

        async def close() -> None:
            closed.append("prepared")
            await real_close()

        monkeypatch.setattr(prepared.credential, "close", close)
        results = await collect_async(
            [request], endpoints, credentials={request.tenant_id: callers}, sign_ins={request.tenant_id: prepared}
        )
        await callers.close()
        return not results[request.tenant_id].errors

    assert asyncio.run(scenario())
    assert closed == ["prepared"]


def test_a_credential_that_cannot_be_prepared_fails_every_item_with_the_reason(
    lab: GraphLabServer, world: SampleGraphWorld
) -> None:
    tenant_id = world.tenant_ids[0]
    request = TenantRequest(
        tenant_id, CredentialSpec(method="secret", client_id="x", secret_env="HT_TEST_DOES_NOT_EXIST")
    )
    sign_in = prepare_sign_in(request, endpoints_for(lab))
    assert sign_in.credential is None
    result = collect([request], endpoints_for(lab), sign_ins={tenant_id: sign_in})[tenant_id]
    assert len(result.errors) == 6
    for error in result.errors.values():
        assert "cannot build the secret credential: " in str(error)
        assert "environment variable HT_TEST_DOES_NOT_EXIST is not set" in str(error)
    assert lab.graph_requests(tenant_id) == 0


def test_wrong_secret_fails_every_item_without_revealing_it(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    wrong = "N0t-the-Secret~but-still-secret-0123456789"
    monkeypatch.setenv("HT_TEST_WRONG_SECRET", wrong)
    spec = CredentialSpec(method="secret", client_id=client.app_id, secret_env="HT_TEST_WRONG_SECRET")
    result = collect([TenantRequest(tenant_id, spec)], endpoints_for(lab))[tenant_id]
    assert result.organization is None and result.applications is None
    assert len(result.errors) == 6
    for error in result.errors.values():
        assert "AADSTS7000215" in str(error)
        assert wrong not in str(error) and wrong not in repr(error.args)
    facts = result.to_facts()
    assert isinstance(facts.organization, Missing)
    assert isinstance(facts.service_principals[EXCHANGE_ONLINE_APP_ID], Missing)
    assert wrong not in json.dumps([str(error) for error in result.errors.values()])
    assert lab.graph_requests(tenant_id) == 0  # no Graph request without a token


def test_missing_environment_variable_is_named(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    spec = CredentialSpec(
        method="secret", client_id=world.read_only[tenant_id].app_id, secret_env="HT_TEST_DOES_NOT_EXIST"
    )
    result = collect([TenantRequest(tenant_id, spec)], endpoints_for(lab))[tenant_id]
    assert "environment variable HT_TEST_DOES_NOT_EXIST is not set" in str(result.errors["organization"])


def test_missing_permissions_are_named_per_item(world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    state = world.state.copy()
    tenant_id = world.tenant_ids[0]
    for client in state.tenants[tenant_id]["clients"]:
        client["permissions"] = ["Application.Read.All"]
    with GraphLabServer(state) as lab:
        result = collect(secret_requests(world, monkeypatch)[:1], endpoints_for(lab))[tenant_id]
    assert set(result.errors) == {"organization", "domains"}
    assert "403 Authorization_RequestDenied" in str(result.errors["organization"])
    assert "Organization.Read.All" in str(result.errors["organization"])
    assert "Domain.Read.All" in str(result.errors["domains"])
    assert result.errors["domains"].status == 403
    assert result.service_principals[EXCHANGE_ONLINE_APP_ID] is not None


def test_throttling_and_transient_errors_are_retried(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = world.tenant_ids[0]
    lab.faults.throttle(2, retry_after=None, endpoint="servicePrincipals", tenant_id=tenant_id)
    lab.faults.fail(1, status=503, endpoint="applications", tenant_id=tenant_id)
    result = collect(secret_requests(world, monkeypatch)[:1], endpoints_for(lab))[tenant_id]
    assert result.errors == {}
    assert lab.faults.pending == 0
    assert lab.graph_requests(tenant_id) == result.requests + 3  # the SDK's retries, not ours


def test_a_persistent_server_error_is_an_error_for_that_item_only(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = world.tenant_ids[0]
    lab.faults.fail(1, status=500, endpoint="domains", tenant_id=tenant_id)
    result = collect(secret_requests(world, monkeypatch)[:1], endpoints_for(lab))[tenant_id]
    assert set(result.errors) == {"domains"}
    error = result.errors["domains"]
    assert error.status == 500 and error.code == "generalException"
    assert error.endpoint == f"GET {lab.base_url}/domains"
    assert "request-id" in str(error)
    assert result.organization is not None


def test_hybrid_app_ids_are_never_pasted_into_a_filter_unchecked(
    lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = world.tenant_ids[0]
    hostile = "x') or startswith(displayName,'"
    dedicated = dedicated_app_id(world, tenant_id)
    result = collect(
        secret_requests(world, monkeypatch, t0=(hostile, dedicated.upper(), dedicated))[:1], endpoints_for(lab)
    )[tenant_id]
    assert result.errors == {}
    assert any("not an appId" in note for note in result.notes)
    assert [app["appId"] for app in result.applications["value"]] == [dedicated]  # type: ignore[index]
    assert result.requests == requests_per_tenant(1) + 1  # + the second page of domains


def test_tls_is_verified(lab: GraphLabServer, world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id = world.tenant_ids[0]
    result = collect(secret_requests(world, monkeypatch)[:1], endpoints_for(lab, ca_file=None))[tenant_id]
    assert len(result.errors) == 6
    assert "could not sign in" in str(result.errors["organization"])
    assert lab.counters["total"] == 0  # the handshake failed: not one request reached the lab


def test_endpoints_come_from_the_cloud_table_or_overrides() -> None:
    china = GraphEndpoints.for_cloud(cloud("china"))
    assert china.authority == "https://login.partner.microsoftonline.cn"
    assert china.scope == "https://microsoftgraph.chinacloudapi.cn/.default"
    assert not china.custom_authority
    lab_like = GraphEndpoints.for_cloud(
        cloud("global"), authority="https://127.0.0.1:8443/", graph_url="https://127.0.0.1:8443/v1.0/"
    )
    assert lab_like.authority == "https://127.0.0.1:8443"
    assert lab_like.scope == "https://127.0.0.1:8443/.default"
    assert lab_like.custom_authority


def test_many_tenants_are_collected_concurrently(world: SampleGraphWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency 100 ms per request: two tenants x 7 requests in well under the sequential 1.4 s."""
    with GraphLabServer(world.state.copy(), latency_ms=100, page_size=100) as lab:
        started = dt.datetime.now()
        results = collect(secret_requests(world, monkeypatch), endpoints_for(lab), max_concurrency=16)
        elapsed = (dt.datetime.now() - started).total_seconds()
    assert all(not result.errors for result in results.values())
    assert elapsed < 1.2


def test_every_credential_method_builds_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Construction only: get_token of these would reach IMDS, the az CLI or a person."""
    import asyncio

    from hybridtrust.sources.graph import CredentialError, build_credential

    endpoints = GraphEndpoints(authority="https://127.0.0.1:9", graph_base_url="https://127.0.0.1:9/v1.0")
    tenant_id = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
    client_id = "3f4c9a43-0f7e-4a56-9a0b-1b2c3d4e5f60"
    built = {}
    for method in ("managed-identity", "azure-cli", "device-code", "default"):
        credential, options, secrets = build_credential(
            CredentialSpec(method=method, client_id=client_id),  # type: ignore[arg-type]
            tenant_id,
            endpoints,
        )
        built[method] = type(credential).__name__
        assert secrets == []
        if method == "default":
            assert options == {"tenant_id": tenant_id}
        asyncio.run(credential.close())
    assert built == {
        "managed-identity": "ManagedIdentityCredential",
        "azure-cli": "AzureCliCredential",
        "device-code": "_ThreadedCredential",  # sync-only in azure-identity: run in a worker thread
        "default": "DefaultAzureCredential",
    }
    monkeypatch.setenv("HT_TEST_CERT_PASSWORD", "pfx-password")
    with pytest.raises(CredentialError, match="does not exist"):
        build_credential(
            CredentialSpec(
                method="certificate",
                client_id=client_id,
                certificate_file=tmp_path / "missing.pem",
                certificate_password_env="HT_TEST_CERT_PASSWORD",
            ),
            tenant_id,
            endpoints,
        )


def test_requests_and_endpoints_from_a_profile(tmp_path: Path) -> None:
    from hybridtrust.profile import load_profile
    from hybridtrust.sources.graph import endpoints_from_profile, tenant_requests_from_profile

    (tmp_path / "lab.toml").write_text(
        """
[organization]
name = "Contoso"
cloud = "gcchigh"
scenarios = ["exchange-oauth"]
smtp_domains = ["contoso.com"]

[[tenants]]
id = "8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35"
initial_domain = "contoso.onmicrosoft.us"
[tenants.credential]
method = "certificate"
client_id = "3f4c9a43-0f7e-4a56-9a0b-1b2c3d4e5f60"
certificate_file = "audit.pem"

[entra]
graph_url = "https://127.0.0.1:8443/v1.0"
ca_file = "lab-ca.pem"
timeout_seconds = 5
""",
        encoding="utf-8",
    )
    profile = load_profile(str(tmp_path / "lab.toml"))
    endpoints = endpoints_from_profile(profile)
    assert endpoints.authority == "https://login.microsoftonline.us"  # from the cloud table
    assert endpoints.graph_base_url == "https://127.0.0.1:8443/v1.0"  # the override
    assert endpoints.ca_file == (tmp_path / "lab-ca.pem").resolve()
    assert endpoints.timeout_s == 5
    (request,) = tenant_requests_from_profile(profile, ["e9f6a5b4-0000-4000-8000-000000000001"])
    assert request.credential.method == "certificate"
    assert request.credential.certificate_file == (tmp_path / "audit.pem").resolve()
    assert request.hybrid_app_ids == ("e9f6a5b4-0000-4000-8000-000000000001",)
