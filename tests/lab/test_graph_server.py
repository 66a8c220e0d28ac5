"""The lab Graph + Entra token endpoint, exercised through the real clients.

azure-identity (sync: MSAL with discovery and an RS256/x5t assertion; async: its
own AadClient with a PS256/x5t#S256 assertion) and msgraph-sdk are used exactly
as the live source uses them; `requests` only where a test needs a hand-made
request (an expired or missing bearer token). Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.identity.aio import CertificateCredential as AsyncCertificateCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.key_credential import KeyCredential
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.service_principals.service_principals_request_builder import ServicePrincipalsRequestBuilder
from msgraph.graph_request_adapter import options as graph_adapter_options
from msgraph_core import GraphClientFactory

from hybridtrust.lab import graph_jwt
from hybridtrust.lab.graph_sample import (
    EXCHANGE_ONLINE,
    SKYPE_ONLINE,
    SampleGraphWorld,
    make_certificate,
    sample_graph_world,
)
from hybridtrust.lab.graph_server import GraphLabServer

T = TypeVar("T")


def run(coroutine_function: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coroutine_function())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world() -> SampleGraphWorld:
    return sample_graph_world()


@pytest.fixture
def lab(world: SampleGraphWorld) -> Iterator[GraphLabServer]:
    # A fresh copy per test: PATCH tests must not leak into others.
    state = world.state.copy()
    with GraphLabServer(state, page_size=2) as server:
        yield server


def secret_credential(lab: GraphLabServer, tenant_id: str, client_id: str, secret: str) -> ClientSecretCredential:
    return ClientSecretCredential(
        tenant_id,
        client_id,
        secret,
        authority=lab.authority,
        disable_instance_discovery=True,  # MSAL would otherwise ask login.microsoftonline.com about our host
        connection_verify=str(lab.ca_file),  # azure-core's transport trusts the lab CA; verification stays on
    )


def graph_client(lab: GraphLabServer, credential: Any) -> tuple[GraphServiceClient, httpx.AsyncClient]:
    """msgraph-sdk against the lab: our own httpx client (trusting the lab CA) + Graph's middleware."""
    http = httpx.AsyncClient(verify=lab.ssl_context(), base_url=lab.base_url, timeout=10)
    http = GraphClientFactory.create_with_default_middleware(client=http, options=graph_adapter_options)
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[lab.graph_scope], allowed_hosts=["127.0.0.1"])
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = lab.base_url
    return GraphServiceClient(request_adapter=adapter), http


def async_reader(lab: GraphLabServer, world: SampleGraphWorld, tenant_id: str) -> AsyncClientSecretCredential:
    client = world.read_only[tenant_id]
    return AsyncClientSecretCredential(
        tenant_id, client.app_id, client.secret, authority=lab.authority, connection_verify=str(lab.ca_file)
    )


def async_writer(lab: GraphLabServer, world: SampleGraphWorld, tenant_id: str) -> AsyncClientSecretCredential:
    client = world.read_write[tenant_id]
    return AsyncClientSecretCredential(
        tenant_id, client.app_id, client.secret, authority=lab.authority, connection_verify=str(lab.ca_file)
    )


# -- lifecycle ------------------------------------------------------------------------


def test_listens_on_loopback_with_its_own_ca_and_cleans_up(world: SampleGraphWorld) -> None:
    server = GraphLabServer(world.state.copy())
    with server:
        assert server.authority.startswith("https://127.0.0.1:")
        assert server.base_url == f"{server.authority}/v1.0"
        ca_file = server.ca_file
        assert ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
        port = server.port
        # Verification against the lab CA succeeds; against the system store it fails.
        assert requests.get(f"{server.authority}/common/discovery/instance", verify=str(ca_file)).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.authority}/common/discovery/instance", timeout=5)
    assert not ca_file.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_refuses_a_non_loopback_address(world: SampleGraphWorld) -> None:
    with pytest.raises(ValueError, match="loopback"):
        GraphLabServer(world.state, host="0.0.0.0")


# -- the token endpoint ------------------------------------------------------------------


def test_client_secret_credential_discovers_and_gets_a_graph_token(
    lab: GraphLabServer, world: SampleGraphWorld
) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    token = secret_credential(lab, tenant_id, client.app_id, client.secret).get_token(lab.graph_scope)
    claims = graph_jwt.decode(token.token).claims
    assert claims["tid"] == tenant_id
    assert claims["appid"] == client.app_id
    assert claims["appidacr"] == "1"
    assert sorted(claims["roles"]) == sorted(client.permissions)
    assert token.expires_on > time.time() + 3000
    counts = lab.counters["by_endpoint"]
    # What MSAL asks with authority=<lab> and disable_instance_discovery=True:
    assert counts == {"GET /{tenant}/v2.0/.well-known/openid-configuration": 1, "POST /{tenant}/oauth2/v2.0/token": 1}


def test_well_known_graph_scope_is_accepted_too(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[1]
    client = world.read_only[tenant_id]
    token = secret_credential(lab, tenant_id, client.app_id, client.secret).get_token(
        "https://graph.microsoft.com/.default"
    )
    assert graph_jwt.decode(token.token).claims["aud"] == "https://graph.microsoft.com"


def test_certificate_credential_sync_rs256_and_async_ps256(
    lab: GraphLabServer, world: SampleGraphWorld, tmp_path: Path
) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    assert client.certificate is not None
    pem = tmp_path / "audit.pem"
    pem.write_bytes(client.certificate.pem)
    sync = CertificateCredential(
        tenant_id,
        client.app_id,
        certificate_path=str(pem),
        authority=lab.authority,
        disable_instance_discovery=True,
        connection_verify=str(lab.ca_file),
    )
    assert graph_jwt.decode(sync.get_token(lab.graph_scope).token).claims["appidacr"] == "2"

    async def via_async() -> str:
        async with AsyncCertificateCredential(
            tenant_id,
            client.app_id,
            certificate_path=str(pem),
            authority=lab.authority,
            connection_verify=str(lab.ca_file),
        ) as credential:
            return (await credential.get_token(lab.graph_scope)).token

    assert graph_jwt.decode(run(via_async)).claims["appid"] == client.app_id


def test_an_unregistered_certificate_is_refused_with_700027(
    lab: GraphLabServer, world: SampleGraphWorld, tmp_path: Path
) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    stranger = make_certificate("someone else", *_validity())
    pem = tmp_path / "stranger.pem"
    pem.write_bytes(stranger.pem)
    credential = CertificateCredential(
        tenant_id,
        client.app_id,
        certificate_path=str(pem),
        authority=lab.authority,
        disable_instance_discovery=True,
        connection_verify=str(lab.ca_file),
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        credential.get_token(lab.graph_scope)


def test_an_assertion_with_a_forged_signature_is_refused(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    """The registered certificate's thumbprint in x5t, signed with another key: 700027 signature failure."""
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    assert client.certificate is not None
    import hashlib

    from cryptography.hazmat.primitives import serialization

    forger = make_certificate("forger", *_validity())
    key = serialization.load_pem_private_key(forger.pem, password=None)
    x5t = graph_jwt.b64url_encode(hashlib.sha1(client.certificate.der).digest())
    now = int(time.time())
    assertion = graph_jwt.sign_rs256(
        {"x5t": x5t},
        {
            "aud": lab.token_endpoint(tenant_id),
            "iss": client.app_id,
            "sub": client.app_id,
            "exp": now + 600,
            "nbf": now,
            "jti": "x",
        },
        key,  # type: ignore[arg-type]
    )
    response = requests.post(
        lab.token_endpoint(tenant_id),
        data={
            "grant_type": "client_credentials",
            "client_id": client.app_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": lab.graph_scope,
        },
        verify=str(lab.ca_file),
    )
    body = response.json()
    assert response.status_code == 401
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [700027]
    assert "did not match" in body["error_description"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"aud": "https://login.microsoftonline.com/common/oauth2/v2.0/token"}, 50013),
        ({"exp": 1_000_000_000}, 700024),
        ({"iss": "00000000-0000-0000-0000-000000000001"}, 700021),
    ],
)
def test_assertion_claims_are_checked(
    lab: GraphLabServer, world: SampleGraphWorld, change: dict[str, Any], code: int
) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    assert client.certificate is not None
    key = serialization.load_pem_private_key(client.certificate.pem, password=None)
    now = int(time.time())
    claims = {
        "aud": lab.token_endpoint(tenant_id),
        "iss": client.app_id,
        "sub": client.app_id,
        "exp": now + 600,
        "nbf": now,
        "jti": "j",
    }
    claims.update(change)
    x5t = graph_jwt.b64url_encode(hashlib.sha1(client.certificate.der).digest())
    response = requests.post(
        lab.token_endpoint(tenant_id),
        data={
            "grant_type": "client_credentials",
            "client_id": client.app_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": graph_jwt.sign_rs256({"x5t": x5t}, claims, key),  # type: ignore[arg-type]
            "scope": lab.graph_scope,
        },
        verify=str(lab.ca_file),
    )
    assert response.status_code == 401
    assert response.json()["error_codes"] == [code]


def test_token_endpoint_faults_are_entra_shaped_and_retried(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    lab.faults.fail(1, status=503, retry_after=0, target="token", endpoint="oauth2")
    token = secret_credential(lab, tenant_id, client.app_id, client.secret).get_token(lab.graph_scope)
    assert token.token
    assert lab.counters["by_endpoint"]["POST /{tenant}/oauth2/v2.0/token"] == 2  # azure-core retried the 503
    lab.faults.throttle(1, retry_after=3, target="token")
    response = requests.post(
        lab.token_endpoint(tenant_id),
        data={"grant_type": "client_credentials", "client_id": client.app_id, "client_secret": "x"},
        verify=str(lab.ca_file),
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.json()["error_codes"] == [90033]


def test_wrong_secret_is_7000215_and_never_echoes_the_secret(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    wrong = "Wr0ng-S3cret-value-that-must-not-leak"
    with pytest.raises(ClientAuthenticationError) as raised:
        secret_credential(lab, tenant_id, client.app_id, wrong).get_token(lab.graph_scope)
    assert "AADSTS7000215" in str(raised.value)
    assert wrong not in str(raised.value)
    assert client.secret not in str(raised.value)

    async def via_async() -> None:
        async with AsyncClientSecretCredential(
            tenant_id, client.app_id, wrong, authority=lab.authority, connection_verify=str(lab.ca_file)
        ) as credential:
            await credential.get_token(lab.graph_scope)

    with pytest.raises(ClientAuthenticationError) as raised_async:
        run(via_async)
    assert "AADSTS7000215" in str(raised_async.value)
    assert wrong not in str(raised_async.value)


def test_unknown_application_and_unknown_tenant(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    stranger = "6e075301-aa25-482d-afe5-28165e29b32b"
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        secret_credential(lab, tenant_id, stranger, "x").get_token(lab.graph_scope)
    # MSAL stops at discovery for an unknown tenant (as it does against Entra ID);
    # the raw endpoint answers Entra's AADSTS90002 body.
    unknown = "527ce73e-fe53-426c-af28-cfb4b1413cbd"
    with pytest.raises(ClientAuthenticationError):
        secret_credential(lab, unknown, stranger, "x").get_token(lab.graph_scope)
    response = requests.post(
        lab.token_endpoint(unknown),
        data={
            "grant_type": "client_credentials",
            "client_id": stranger,
            "client_secret": "x",
            "scope": lab.graph_scope,
        },
        verify=str(lab.ca_file),
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]
    assert set(response.json()) >= {"error", "error_description", "error_codes", "trace_id", "correlation_id"}


def test_scope_must_be_a_known_resource_default(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    credential = secret_credential(lab, tenant_id, client.app_id, client.secret)
    with pytest.raises(ClientAuthenticationError, match="AADSTS500011"):
        credential.get_token("https://api.contoso.com/.default")
    with pytest.raises(ClientAuthenticationError, match="AADSTS1002012"):
        credential.get_token("https://graph.microsoft.com/Application.Read.All")


def test_a_domain_name_resolves_to_its_tenant(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    client = world.read_only[tenant_id]
    token = secret_credential(lab, "contoso.onmicrosoft.com", client.app_id, client.secret).get_token(lab.graph_scope)
    assert graph_jwt.decode(token.token).claims["tid"] == tenant_id


# -- Graph through msgraph-sdk ------------------------------------------------------------


def test_organization_and_service_principal_with_keys(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]

    async def scenario() -> None:
        async with async_reader(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                organization = await client.organization.get()
                assert organization is not None and organization.value
                assert organization.value[0].id == tenant_id
                assert organization.value[0].display_name == "Contoso"

                builder = client.service_principals_with_app_id(EXCHANGE_ONLINE)
                plain = await builder.get()
                assert plain is not None and plain.key_credentials
                assert plain.key_credentials[0].key is None  # not selected: Graph returns null

                query = builder.ServicePrincipalsWithAppIdRequestBuilderGetQueryParameters(
                    select=["id", "appId", "displayName", "servicePrincipalNames", "replyUrls", "keyCredentials"]
                )
                selected = await builder.get(RequestConfiguration(query_parameters=query))
                assert selected is not None and selected.key_credentials
                assert selected.key_credentials[0].key == world.auth_certificate.der
                assert "https://mail.contoso.com/" in (selected.service_principal_names or [])

                with pytest.raises(ODataError) as missing:
                    await client.service_principals_with_app_id(SKYPE_ONLINE).get()
                assert missing.value.response_status_code == 404
                assert missing.value.error is not None
                assert missing.value.error.code == "Request_ResourceNotFound"
            finally:
                await http.aclose()

    run(scenario)


def test_list_pages_through_absolute_next_links(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    expected = len(world.state.tenants[tenant_id]["servicePrincipals"])

    async def scenario() -> list[str]:
        async with async_reader(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                query = ServicePrincipalsRequestBuilder.ServicePrincipalsRequestBuilderGetQueryParameters(
                    select=["id", "appId", "keyCredentials"]
                )
                page = await client.service_principals.get(RequestConfiguration(query_parameters=query))
                seen: list[str] = []
                pages = 0
                while page is not None:
                    pages += 1
                    for principal in page.value or []:
                        assert principal.key_credentials is not None
                        assert all(key.key is None for key in principal.key_credentials)  # list: never keys
                        seen.append(principal.app_id or "")
                    if not page.odata_next_link:
                        break
                    assert page.odata_next_link.startswith(lab.base_url + "/servicePrincipals?")
                    assert "%24select" in page.odata_next_link or "$select" in page.odata_next_link
                    page = await client.service_principals.with_url(page.odata_next_link).get()
                assert pages == (expected + 1) // 2
                return seen
            finally:
                await http.aclose()

    seen = run(scenario)
    assert len(seen) == expected == len(set(seen))


def test_filters_graph_supports_and_refuses_what_it_does_not(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    token = lab.mint_access_token(tenant_id, "x", roles=["Application.Read.All"])

    def get(path: str, **params: str) -> requests.Response:
        return requests.get(
            f"{lab.base_url}/{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            verify=str(lab.ca_file),
        )

    dedicated = get("applications", **{"$filter": "startswith(displayName,'ExchangeServerApp-')"}).json()
    assert [app["displayName"] for app in dedicated["value"]] == [f"ExchangeServerApp-{world.organization_guid}"]
    assert dedicated["@odata.context"] == f"{lab.base_url}/$metadata#applications"
    app_id = dedicated["value"][0]["appId"]
    both = get("applications", **{"$filter": f"appId in ('{app_id.upper()}', '00000000-0000-0000-0000-000000000000')"})
    assert [app["appId"] for app in both.json()["value"]] == [app_id]
    by_spn = get(
        "servicePrincipals",
        **{"$filter": "servicePrincipalNames/any(n:n eq 'https://mail.contoso.com/')", "$select": "appId"},
    ).json()
    assert by_spn["value"] == [{"appId": EXCHANGE_ONLINE}]
    assert by_spn["@odata.context"] == f"{lab.base_url}/$metadata#servicePrincipals(appId)"
    refused = get("servicePrincipals", **{"$filter": "endswith(displayName,'Online')"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "Request_UnsupportedQuery"
    bad_select = get("servicePrincipals", **{"$select": "appId,nonsense"})
    assert bad_select.status_code == 400
    assert "nonsense" in bad_select.json()["error"]["message"]


def test_patch_replaces_whole_lists(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]

    async def scenario() -> None:
        async with async_writer(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                builder = client.service_principals_with_app_id(EXCHANGE_ONLINE)
                before = await builder.get()
                assert before is not None and before.id
                result = await client.service_principals.by_service_principal_id(before.id).patch(
                    ServicePrincipal(service_principal_names=[EXCHANGE_ONLINE, "https://new.contoso.com/"])
                )
                assert result is None  # 204 No Content
                after = await builder.get()
                assert after is not None
                # Replace, not merge: everything not sent is gone (why every fix re-reads and merges).
                assert after.service_principal_names == [EXCHANGE_ONLINE, "https://new.contoso.com/"]
                assert after.reply_urls == before.reply_urls  # untouched properties stay

                # keyCredentials: every credential must carry its key, as in Entra ID.
                keyless = KeyCredential(type="AsymmetricX509Cert", usage="Verify", key=None)
                with pytest.raises(ODataError) as refused:
                    await client.service_principals.by_service_principal_id(before.id).patch(
                        ServicePrincipal(key_credentials=[keyless])
                    )
                assert refused.value.response_status_code == 400
                extra = make_certificate("next auth certificate", *_validity())
                await client.service_principals.by_service_principal_id(before.id).patch(
                    ServicePrincipal(
                        key_credentials=[
                            KeyCredential(type="AsymmetricX509Cert", usage="Verify", key=world.auth_certificate.der),
                            KeyCredential(type="AsymmetricX509Cert", usage="Verify", key=extra.der),
                        ]
                    )
                )
            finally:
                await http.aclose()

    run(scenario)
    stored = next(sp for sp in lab.state.tenants[tenant_id]["servicePrincipals"] if sp["appId"] == EXCHANGE_ONLINE)
    assert len(stored["keyCredentials"]) == 2
    second = stored["keyCredentials"][1]
    assert second["keyId"] and second["startDateTime"] and second["endDateTime"]
    assert base64.b64decode(second["customKeyIdentifier"]).hex().upper() == make_thumbprint(second["key"])


def test_spn_already_on_another_principal_is_a_conflict(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    token = lab.mint_access_token(tenant_id, "x", roles=["Application.ReadWrite.All"])
    sp = next(sp for sp in lab.state.tenants[tenant_id]["servicePrincipals"] if sp["appId"] == EXCHANGE_ONLINE)
    response = requests.patch(
        f"{lab.base_url}/servicePrincipals/{sp['id']}",
        json={"servicePrincipalNames": [*sp["servicePrincipalNames"], "https://graph.microsoft.com"]},
        headers={"Authorization": f"Bearer {token}"},
        verify=str(lab.ca_file),
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"] == [{"code": "ObjectConflict", "target": "servicePrincipalNames"}]


def test_read_only_app_gets_403_on_patch(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    before = json.dumps(lab.state.tenants[tenant_id])

    async def scenario() -> ODataError:
        async with async_reader(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                principal = await client.service_principals_with_app_id(EXCHANGE_ONLINE).get()
                assert principal is not None and principal.id
                with pytest.raises(ODataError) as denied:
                    await client.service_principals.by_service_principal_id(principal.id).patch(
                        ServicePrincipal(service_principal_names=[EXCHANGE_ONLINE])
                    )
                return denied.value
            finally:
                await http.aclose()

    error = run(scenario)
    assert error.response_status_code == 403
    assert error.error is not None
    assert error.error.code == "Authorization_RequestDenied"
    assert error.error.message == "Insufficient privileges to complete the operation."
    assert json.dumps(lab.state.tenants[tenant_id]) == before


def test_organization_needs_organization_read_all(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    token = lab.mint_access_token(tenant_id, "x", roles=["Application.Read.All"])
    headers = {"Authorization": f"Bearer {token}"}
    response = requests.get(f"{lab.base_url}/organization", headers=headers, verify=str(lab.ca_file))
    assert response.status_code == 403
    assert requests.get(f"{lab.base_url}/servicePrincipals", headers=headers, verify=str(lab.ca_file)).ok


def test_429_is_retried_by_msgraph_honouring_retry_after(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    lab.faults.throttle(1, retry_after=1, endpoint="organization")

    async def scenario() -> float:
        async with async_reader(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                started = time.monotonic()
                organization = await client.organization.get()
                assert organization is not None and organization.value
                return time.monotonic() - started
            finally:
                await http.aclose()

    elapsed = run(scenario)
    assert elapsed >= 1.0  # the retry waited Retry-After
    assert lab.counters["by_endpoint"]["GET /v1.0/organization"] == 2
    assert lab.faults.pending == 0


def test_injected_500_surfaces_as_odata_error_and_503_is_retried(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    lab.faults.fail(1, status=500)
    lab.faults.fail(1, status=503, retry_after=1)

    async def scenario() -> None:
        async with async_reader(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                with pytest.raises(ODataError) as failed:
                    await client.domains.get()
                assert failed.value.response_status_code == 500
                domains = await client.domains.get()  # 503 then success
                assert domains is not None and domains.value
            finally:
                await http.aclose()

    run(scenario)
    assert lab.counters["by_endpoint"]["GET /v1.0/domains"] == 3


def test_429_without_retry_after_has_no_header(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    lab.faults.throttle(1, retry_after=None)
    token = lab.mint_access_token(tenant_id, "x", roles=["Domain.Read.All"])
    response = requests.get(
        f"{lab.base_url}/domains", headers={"Authorization": f"Bearer {token}"}, verify=str(lab.ca_file)
    )
    assert response.status_code == 429
    assert "Retry-After" not in response.headers
    assert response.json()["error"]["code"] == "TooManyRequests"


def test_bearer_token_problems_are_401(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    tenant_id = world.tenant_ids[0]
    url = f"{lab.base_url}/servicePrincipals"

    def status_and_message(headers: dict[str, str]) -> tuple[int, str]:
        response = requests.get(url, headers=headers, verify=str(lab.ca_file))
        return response.status_code, response.json()["error"]["message"]

    assert status_and_message({}) == (401, "Access token is empty.")
    expired = lab.mint_access_token(tenant_id, "x", roles=["Application.Read.All"], lifetime_s=-60)
    assert status_and_message({"Authorization": f"Bearer {expired}"})[1].startswith("Lifetime validation failed")
    foreign = lab.mint_access_token("11111111-2222-3333-4444-555555555555", "x", roles=["Application.Read.All"])
    assert status_and_message({"Authorization": f"Bearer {foreign}"})[0] == 401
    with GraphLabServer(world.state.copy()) as other:  # another lab's key: signature fails
        alien = other.mint_access_token(tenant_id, "x", roles=["Application.Read.All"])
    assert status_and_message({"Authorization": f"Bearer {alien}"}) == (
        401,
        "Access token validation failure. Invalid signature.",
    )
    response = requests.get(url, verify=str(lab.ca_file))
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_each_tenant_sees_its_own_directory_and_counters_split_by_tenant(
    lab: GraphLabServer, world: SampleGraphWorld
) -> None:
    async def organization_name(tenant_id: str) -> str:
        async with async_reader(lab, world, tenant_id) as credential:
            client, http = graph_client(lab, credential)
            try:
                organization = await client.organization.get()
                assert organization is not None and organization.value
                return organization.value[0].display_name or ""
            finally:
                await http.aclose()

    async def both() -> list[str]:
        return list(await asyncio.gather(*(organization_name(tenant) for tenant in world.tenant_ids)))

    assert run(both) == ["Contoso", "Fabrikam"]
    for tenant_id in world.tenant_ids:
        assert lab.graph_requests(tenant_id) == 1
    lab.reset_counters()
    assert lab.counters["total"] == 0


def test_latency_is_injected(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    lab.latency_ms = 150
    started = time.monotonic()
    requests.get(f"{lab.authority}/common/discovery/instance", verify=str(lab.ca_file))
    assert time.monotonic() - started >= 0.15


def test_describe_names_what_a_client_needs(lab: GraphLabServer, world: SampleGraphWorld) -> None:
    description = lab.describe()
    tenant_id = world.tenant_ids[0]
    assert description["authority"] == lab.authority
    assert description["ca_file"] == str(lab.ca_file)
    assert description["tenant_ids"] == world.tenant_ids
    assert description["tenants"][tenant_id]["read_only"]["client_id"] == world.read_only[tenant_id].app_id
    assert description["tenants"][tenant_id]["read_write"]["client_id"] == world.read_write[tenant_id].app_id
    # The certificate file works with CertificateCredential as printed.
    reader = description["tenants"][tenant_id]["read_only"]
    credential = CertificateCredential(
        tenant_id,
        reader["client_id"],
        certificate_path=reader["certificate_file"],
        authority=description["authority"],
        disable_instance_discovery=True,
        connection_verify=description["ca_file"],
    )
    assert credential.get_token(description["scope"]).token


# -- helpers ------------------------------------------------------------------------------


def _validity() -> tuple[Any, Any]:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(days=1), now + dt.timedelta(days=30)


def make_thumbprint(b64_der: str) -> str:
    import hashlib

    return hashlib.sha1(base64.b64decode(b64_der)).hexdigest().upper()
