"""The live Entra ID source: Graph v1.0 documents per tenant, via azure-identity and msgraph-sdk.

For every tenant of a profile this reads, concurrently and with the least
privilege (scope ``<graph>/.default``; the audit identity needs
``AUDIT_PERMISSIONS``):

- ``GET /organization`` and ``GET /domains`` (following ``@odata.nextLink``);
- the first-party service principals 00000002 (Exchange Online), 00000003
  (SharePoint Online), 00000004 (Skype for Business Online), each by
  ``GET /servicePrincipals(appId='…')?$select=…,keyCredentials``: a single-object GET
  with keyCredentials selected is the only request for which Graph fills
  ``keyCredentials[].key`` (EXO-AUTHCERT-PUBLISHED compares the DER). A 404 means the
  tenant has no such principal, which is recorded as ``None``, not as an error;
- the dedicated Exchange hybrid application lookups (S5): applications whose
  displayName starts with ``ExchangeServerApp-`` and those whose appId an
  on-premises AuthServer names, following ``@odata.nextLink`` (msgraph-sdk does not).

What comes back is the raw Graph JSON, byte-for-byte what Graph sent (pages
merged into one ``value`` list), so the same parser (`hybridtrust.facts`) reads a
live run and an evidence bundle, and ``--save-evidence`` writes these documents
as they are (`GraphTenantDocuments.evidence_files`).

Why raw JSON through a native response handler and not msgraph-sdk's models:
the models drop what they do not know, re-serialise dates and binary values
(``customKeyIdentifier`` would come back re-encoded, and it is exactly the
property whose three encodings the suite must recognise), lose property order
and ``@odata`` annotations. kiota's `NativeResponseHandler` hands back the
``httpx.Response`` after the whole middleware pipeline (auth, retries honouring
Retry-After on 429/503/504, telemetry) has run, which is the most faithful
record and still uses the SDK's request builders.

Secrets: a client secret is read from the NAMED environment variable when the
credential is built and lives only inside the azure-identity credential; error
texts are scrubbed of it anyway, and nothing here logs it.

Request count per audit: per tenant ``requests_per_tenant(len(hybrid_app_ids))``
Graph requests (organization, domains, three service principals, one
application query plus one per 15 hybrid appIds), plus one per extra page. It
does not grow with the number of servers or tests. Retries the SDK makes after a
429/5xx are the same logical request and are not counted here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

import httpx
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.kiota_client_factory import KiotaClientFactory
from kiota_http.middleware import RetryHandler
from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
from msgraph.generated.service_principals_with_app_id.service_principals_with_app_id_request_builder import (
    ServicePrincipalsWithAppIdRequestBuilder,
)
from msgraph.graph_request_adapter import options as graph_adapter_options
from msgraph_core import GraphClientFactory
from msgraph_core.middleware import GraphTelemetryHandler
from msgraph_core.middleware.options import GraphTelemetryHandlerOption

from hybridtrust.clouds import Cloud
from hybridtrust.facts import FIRST_PARTY_APP_IDS, Missing, TenantDocuments

if TYPE_CHECKING:
    from hybridtrust.profile import Profile

logger = logging.getLogger(__name__)

AUDIT_PERMISSIONS = ("Application.Read.All", "Domain.Read.All", "Organization.Read.All")
"""Application permissions the audit identity needs (Graph's least privileged per endpoint;
Directory.Read.All covers all three but reads far more)."""
REMEDIATION_PERMISSIONS = ("Application.ReadWrite.All",)

SERVICE_PRINCIPAL_SELECT = ["id", "appId", "displayName", "servicePrincipalNames", "replyUrls", "keyCredentials"]
APPLICATION_SELECT = ["id", "appId", "displayName", "keyCredentials"]
DEDICATED_APP_PREFIX = "ExchangeServerApp-"
APP_IDS_PER_FILTER = 15  # Graph limits the values of one `in` clause; larger lists are chunked
MAX_PAGES = 1000  # a nextLink loop is a Graph bug, not a reason to hang an audit

# MSAL validates these hosts itself; any other authority (a sovereign override, the
# lab) needs disable_instance_discovery, or MSAL asks login.microsoftonline.com about it.
_KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login-us.microsoftonline.com",
        "login.microsoftonline.us",
        "login.usgovcloudapi.net",
        "login.partner.microsoftonline.cn",
        "login.chinacloudapi.cn",
        "login.microsoftonline.de",
    }
)
_NEEDED_PERMISSION = {
    "organization": "Organization.Read.All",
    "domains": "Domain.Read.All",
    "servicePrincipals": "Application.Read.All",
    "applications": "Application.Read.All",
}

CredentialMethod = Literal["certificate", "secret", "managed-identity", "azure-cli", "device-code", "default"]


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class GraphEndpoints:
    """Where Entra ID and Graph are: the cloud's hosts, or a profile's overrides (the lab's)."""

    authority: str
    """``https://login.microsoftonline.com`` (no tenant)."""
    graph_base_url: str
    """``https://graph.microsoft.com/v1.0``."""
    ca_file: Path | None = None
    """A CA bundle to verify TLS against instead of the system store (a TLS-inspecting proxy, the lab)."""
    timeout_s: float = 60.0
    max_retries: int = RetryHandlerOption.DEFAULT_MAX_RETRIES
    retry_delay_s: float = RetryHandlerOption.DEFAULT_DELAY
    """kiota's base delay when a 429/503/504 carries no Retry-After (Retry-After is honoured as sent)."""
    sign_in_retries: int | None = None
    """azure-core's retries of a failed token request (None: its default, 3 with backoff)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "authority", self.authority.rstrip("/"))
        object.__setattr__(self, "graph_base_url", self.graph_base_url.rstrip("/"))

    @classmethod
    def for_cloud(
        cls,
        cloud: Cloud,
        *,
        authority: str | None = None,
        graph_url: str | None = None,
        ca_file: Path | None = None,
        timeout_s: float = 60.0,
    ) -> GraphEndpoints:
        return cls(
            authority=authority or cloud.authority,
            graph_base_url=graph_url or cloud.graph_base_url,
            ca_file=ca_file,
            timeout_s=timeout_s,
        )

    @property
    def graph_origin(self) -> str:
        parts = urlsplit(self.graph_base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def graph_host(self) -> str:
        return urlsplit(self.graph_base_url).hostname or ""

    @property
    def scope(self) -> str:
        """The one scope asked for: the Graph resource's ``.default`` (the app's granted roles)."""
        return f"{self.graph_origin}/.default"

    @property
    def custom_authority(self) -> bool:
        return (urlsplit(self.authority).hostname or "").lower() not in _KNOWN_AUTHORITY_HOSTS

    def ssl_context(self) -> ssl.SSLContext:
        # httpx 0.28 wants an SSLContext; with ca_file only that CA is trusted, like
        # azure-core's connection_verify=<path> for the token requests.
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return ssl.create_default_context()


@dataclass(frozen=True)
class CredentialSpec:
    """How to sign in to one tenant (the profile's ``[tenants.credential]``); never a secret itself."""

    method: CredentialMethod = "default"
    client_id: str | None = None
    certificate_file: Path | None = None
    certificate_password_env: str | None = None
    secret_env: str | None = None
    """The NAME of the environment variable holding the client secret."""

    @classmethod
    def from_profile(cls, credential: Any) -> CredentialSpec:
        """From `hybridtrust.profile.GraphCredential` (its method names use dashes, as here)."""
        return cls(
            method=credential.method,
            client_id=credential.client_id,
            certificate_file=credential.certificate_file,
            certificate_password_env=credential.certificate_password_env,
            secret_env=credential.secret_env,
        )


@dataclass(frozen=True)
class TenantRequest:
    tenant_id: str
    credential: CredentialSpec
    hybrid_app_ids: tuple[str, ...] = ()
    """ApplicationIdentifier values of the on-premises AuthServers (the dedicated hybrid app)."""


def endpoints_from_profile(profile: Profile) -> GraphEndpoints:
    """The profile's cloud, with its [entra] overrides (authority, graph_url, ca_file, timeout)."""
    entra = profile.entra
    return GraphEndpoints.for_cloud(
        profile.cloud,
        authority=entra.authority,
        graph_url=entra.graph_url,
        ca_file=profile.resolve(entra.ca_file),
        timeout_s=entra.timeout_seconds,
    )


def tenant_requests_from_profile(profile: Profile, hybrid_app_ids: Sequence[str] = ()) -> list[TenantRequest]:
    """One request per [[tenants]] entry; `hybrid_app_ids` from the AuthServers (looked up in every tenant)."""
    requests = []
    for tenant in profile.tenants:
        spec = CredentialSpec.from_profile(tenant.credential)
        if spec.certificate_file is not None:
            spec = replace(spec, certificate_file=profile.resolve(spec.certificate_file))
        requests.append(TenantRequest(tenant.id, spec, tuple(hybrid_app_ids)))
    return requests


# -- results ----------------------------------------------------------------------------


class GraphSourceError(Exception):
    """One item could not be collected: which tenant, which request, and why (never a secret)."""

    def __init__(
        self,
        tenant_id: str,
        item: str,
        endpoint: str,
        reason: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.item = item
        """``organization``, ``domains``, ``servicePrincipals/<appId>`` or ``applications``."""
        self.endpoint = endpoint
        self.reason = reason
        self.status = status
        self.code = code
        super().__init__(f"{endpoint} (tenant {tenant_id}): {reason}")


@dataclass
class GraphTenantDocuments:
    """Raw Graph documents of one tenant, the shape of the evidence bundle's entra/<tenant id>/ files."""

    tenant_id: str
    organization: dict[str, Any] | None = None
    domains: dict[str, Any] | None = None
    service_principals: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """By appId: the object, or None when Graph answered 404 (the tenant has none)."""
    applications: dict[str, Any] | None = None
    errors: dict[str, GraphSourceError] = field(default_factory=dict)
    """By item: what could not be collected. A failed item is None above and listed here."""
    not_found: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Graph's 404 body per absent service principal (the evidence file of an absent principal)."""
    notes: list[str] = field(default_factory=list)
    requests: int = 0
    """Graph requests issued for this tenant (pages included, SDK retries not)."""

    def to_facts(self) -> TenantDocuments:
        """The documents as `hybridtrust.facts` reads them; a failed item becomes `Missing` with its reason."""

        def value(item: str, document: dict[str, Any] | None) -> dict[str, Any] | Missing:
            if item in self.errors or document is None:
                reason = self.errors[item].args[0] if item in self.errors else f"not collected: {item}"
                return Missing(f"entra:{item}", str(reason))
            return document

        principals: dict[str, dict[str, Any] | Missing | None] = {}
        for app_id in FIRST_PARTY_APP_IDS:
            item = f"servicePrincipals/{app_id}"
            if item in self.errors or app_id not in self.service_principals:
                principals[app_id] = value(item, None)
            else:
                principals[app_id] = self.service_principals[app_id]
        return TenantDocuments(
            organization=value("organization", self.organization),
            domains=value("domains", self.domains),
            service_principals=principals,
            applications=value("applications", self.applications),
        )

    def evidence_files(self) -> dict[str, dict[str, Any]]:
        """Relative path -> JSON document, exactly the files of CONTRACTS.md's evidence bundle.

        An item that failed has no file (the offline run then reports "not collected",
        as it should); an absent principal's file is Graph's 404 body.
        """
        prefix = f"entra/{self.tenant_id}"
        files: dict[str, dict[str, Any]] = {}
        if self.organization is not None:
            files[f"{prefix}/organization.json"] = self.organization
        if self.domains is not None:
            files[f"{prefix}/domains.json"] = self.domains
        for app_id, principal in self.service_principals.items():
            document = principal if principal is not None else self.not_found.get(app_id)
            if document is not None:
                files[f"{prefix}/servicePrincipals/{app_id}.json"] = document
        if self.applications is not None:
            files[f"{prefix}/applications.json"] = self.applications
        return files


def requests_per_tenant(hybrid_app_ids: int = 0) -> int:
    """Graph requests for one tenant without extra pages: constant, whatever the organization's size."""
    return 2 + len(FIRST_PARTY_APP_IDS) + 1 + math.ceil(hybrid_app_ids / APP_IDS_PER_FILTER)


# -- credentials --------------------------------------------------------------------------


class CredentialError(Exception):
    """A credential spec that cannot be turned into a credential (missing variable, file)."""


class _ThreadedCredential:
    """An async face for a sync-only credential (DeviceCodeCredential has no aio version).

    The sync call runs in a worker thread so a person typing a device code never
    blocks the other tenants' requests on the event loop.
    """

    def __init__(self, credential: TokenCredential) -> None:
        self._credential = credential

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return await asyncio.to_thread(self._credential.get_token, *scopes, **kwargs)

    async def close(self) -> None:
        close = getattr(self._credential, "close", None)
        if close is not None:
            close()

    async def __aenter__(self) -> _ThreadedCredential:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _environment_value(name: str | None, what: str) -> str:
    if not name:
        raise CredentialError(f"{what}: no environment variable named")
    value = os.environ.get(name)
    if not value:
        raise CredentialError(f"{what}: environment variable {name} is not set")
    return value


def build_credential(
    spec: CredentialSpec, tenant_id: str, endpoints: GraphEndpoints
) -> tuple[AsyncTokenCredential, dict[str, Any], list[str]]:
    """An azure-identity credential for one tenant, the get_token options it needs, and its secrets.

    The secrets (a client secret, a certificate password) are returned only so error
    texts can be scrubbed of them; callers must not keep them beyond that.
    """
    from azure.identity import DeviceCodeCredential
    from azure.identity.aio import (
        AzureCliCredential,
        CertificateCredential,
        ClientSecretCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
    )

    # azure-core: connection_verify=<CA file> for the token endpoint's TLS (verification stays on).
    transport: dict[str, Any] = {"connection_verify": str(endpoints.ca_file)} if endpoints.ca_file else {}
    if endpoints.sign_in_retries is not None:
        transport["retry_total"] = endpoints.sign_in_retries
    secrets: list[str] = []
    if spec.method == "certificate":
        if not spec.client_id or not spec.certificate_file:
            raise CredentialError("method 'certificate' needs client_id and certificate_file")
        if not Path(spec.certificate_file).is_file():
            raise CredentialError(f"certificate file {spec.certificate_file} does not exist or is not a file")
        password = None
        if spec.certificate_password_env:
            password = _environment_value(spec.certificate_password_env, "certificate password")
            secrets.append(password)
        credential: Any = CertificateCredential(
            tenant_id,
            spec.client_id,
            certificate_path=str(spec.certificate_file),
            password=password,
            authority=endpoints.authority,
            **transport,
        )
        return credential, {}, secrets
    if spec.method == "secret":
        if not spec.client_id:
            raise CredentialError("method 'secret' needs client_id")
        secret = _environment_value(spec.secret_env, "client secret")
        secrets.append(secret)
        credential = ClientSecretCredential(
            tenant_id, spec.client_id, secret, authority=endpoints.authority, **transport
        )
        return credential, {}, secrets
    if spec.method == "managed-identity":
        kwargs: dict[str, Any] = {"client_id": spec.client_id} if spec.client_id else {}
        return ManagedIdentityCredential(**kwargs, **transport), {}, secrets
    if spec.method == "azure-cli":
        return AzureCliCredential(tenant_id=tenant_id), {}, secrets
    if spec.method == "device-code":
        if not spec.client_id:
            raise CredentialError("method 'device-code' needs client_id")
        sync = DeviceCodeCredential(
            client_id=spec.client_id,
            tenant_id=tenant_id,
            authority=endpoints.authority,
            disable_instance_discovery=endpoints.custom_authority or None,
            **transport,
        )
        return cast(AsyncTokenCredential, _ThreadedCredential(sync)), {}, secrets
    if spec.method == "default":
        credential = DefaultAzureCredential(
            authority=endpoints.authority,
            additionally_allowed_tenants=[tenant_id],
            managed_identity_client_id=spec.client_id,
            **transport,
        )
        # The chain signs in wherever its environment points; ask for this tenant's token.
        return credential, {"tenant_id": tenant_id}, secrets
    raise CredentialError(f"unknown credential method {spec.method!r}")


@dataclass
class SignIn:
    """One tenant's credential, built before its collection starts, or why it could not be built."""

    credential: AsyncTokenCredential | None = None
    token_options: dict[str, Any] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    """Only for scrubbing error texts (see `build_credential`)."""
    error: str | None = None
    owned: bool = True
    """Closed when its tenant's collection ends; a credential the caller passed in is the caller's to close."""


def prepare_sign_in(request: TenantRequest, endpoints: GraphEndpoints) -> SignIn:
    """`request`'s credential, ready for `collect` (nothing is sent: signing in happens there).

    Building a certificate credential is CPU, not network: azure-identity is imported and the
    private key is loaded and validated twice, about 0.1 s per tenant. The live source does it
    while Exchange opens its pools, so that it does not take turns with the per-server queries.
    """
    try:
        credential, token_options, secrets = build_credential(request.credential, request.tenant_id, endpoints)
    except (CredentialError, ValueError, OSError) as error:
        return SignIn(error=f"cannot build the {request.credential.method} credential: {error}")
    return SignIn(credential, token_options, secrets)


def build_graph_client(
    credential: AsyncTokenCredential | TokenCredential,
    endpoints: GraphEndpoints,
    http_client: httpx.AsyncClient,
    *,
    token_options: Mapping[str, Any] | None = None,
) -> GraphServiceClient:
    """msgraph-sdk's client on `http_client` (see `graph_http_client`), for `endpoints`.

    ``allowed_hosts`` keeps the bearer token to the Graph host: a nextLink or a
    redirect elsewhere gets no token.
    """
    auth = AzureIdentityAuthenticationProvider(
        credential,
        options=dict(token_options) if token_options else None,
        scopes=[endpoints.scope],
        allowed_hosts=[endpoints.graph_host],
    )
    adapter = GraphRequestAdapter(auth, client=http_client)
    adapter.base_url = endpoints.graph_base_url
    return GraphServiceClient(request_adapter=adapter)


_STARTED = "hybridtrust.first_attempt"


class _BoundedRetryHandler(RetryHandler):
    """kiota's RetryHandler (429/503/504, Retry-After honoured as sent), within a time budget.

    kiota waits whatever Retry-After says (anything under 180 s), up to ``max_retries``
    times per request, and a throttling storm answering ``Retry-After: 120`` would hold an
    unattended audit for many minutes per request (more, since the requests waiting for a
    slot of the concurrency limit wait too). Here a retry whose wait would end after the
    request's budget, ``[entra] timeout_seconds`` counted from its first attempt, is not
    made: Graph's last answer stands and becomes that item's error, in Graph's words
    (tests/reliability/test_faults.py measures the bound).
    """

    def __init__(self, options: RetryHandlerOption, budget_s: float) -> None:
        super().__init__(options)
        self.budget_s = budget_s

    async def send(self, request: httpx.Request, transport: httpx.AsyncBaseTransport) -> httpx.Response:
        # kiota retries with this same request object, so its first attempt's time travels with it.
        request.extensions.setdefault(_STARTED, time.monotonic())
        return await super().send(request, transport)

    def get_delay_time(
        self,
        retry_count: int,
        response: httpx.Response | None = None,
        delay: float = RetryHandlerOption.DEFAULT_DELAY,
    ) -> float:
        wait = super().get_delay_time(retry_count, response, delay)
        started = response.request.extensions.get(_STARTED) if response is not None else None
        if isinstance(started, float) and time.monotonic() - started + wait > self.budget_s:
            return RetryHandlerOption.MAX_DELAY  # kiota makes no retry that waits MAX_DELAY or more
        return wait


def graph_http_client(endpoints: GraphEndpoints) -> httpx.AsyncClient:
    """An httpx client with Graph's default middleware (retry, redirect, telemetry) and our TLS trust.

    GraphRequestAdapter adds that middleware only to a client it creates itself; a
    client we pass (to set verify= and the timeout) gets GraphClientFactory's default
    chain, built here as that factory builds it, with kiota's RetryHandler bounded by
    ``timeout_s`` (`_BoundedRetryHandler`).
    """
    client = httpx.AsyncClient(
        verify=endpoints.ssl_context(),
        timeout=httpx.Timeout(endpoints.timeout_s),
        base_url=endpoints.graph_base_url,
        http2=True,  # as msgraph-sdk's own default client
    )
    options = dict(graph_adapter_options)
    retry = RetryHandlerOption(delay=endpoints.retry_delay_s, max_retries=endpoints.max_retries)
    options[RetryHandlerOption.get_key()] = retry
    middleware = [
        _BoundedRetryHandler(retry, endpoints.timeout_s) if isinstance(handler, RetryHandler) else handler
        for handler in KiotaClientFactory.get_default_middleware(options)
    ]
    telemetry = options.get(GraphTelemetryHandlerOption.get_key())
    middleware.append(
        GraphTelemetryHandler(options=telemetry)
        if isinstance(telemetry, GraphTelemetryHandlerOption)
        else GraphTelemetryHandler()
    )
    return GraphClientFactory.create_with_custom_middleware(middleware, client=client)


# -- collection ---------------------------------------------------------------------------


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _is_guid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower() and len(value) == 36
    except ValueError:
        return False


class _TenantCollector:
    def __init__(
        self,
        request: TenantRequest,
        endpoints: GraphEndpoints,
        client: GraphServiceClient,
        semaphore: asyncio.Semaphore,
        secrets: Sequence[str],
        result: GraphTenantDocuments,
    ) -> None:
        self.request = request
        self.endpoints = endpoints
        self.client = client
        self.semaphore = semaphore
        self.secrets = secrets
        self.result = result
        self.tenant_id = request.tenant_id

    def _native(self, query_parameters: Any = None) -> RequestConfiguration[Any]:
        return RequestConfiguration(
            query_parameters=query_parameters, options=[ResponseHandlerOption(NativeResponseHandler())]
        )

    async def _send(
        self, item: str, endpoint: str, send: Callable[[], Awaitable[Any]]
    ) -> tuple[int, dict[str, Any], httpx.Response]:
        """One Graph request: (status, JSON body, response); transport failures raise GraphSourceError."""
        self.result.requests += 1
        async with self.semaphore:
            try:
                response = cast(httpx.Response, await send())
            except httpx.HTTPError as error:
                raise GraphSourceError(
                    self.tenant_id,
                    item,
                    endpoint,
                    _scrub(
                        f"cannot reach {self.endpoints.graph_host}: {type(error).__name__}: {error}{_tls_hint(str(error))}",
                        self.secrets,
                    ),
                ) from None
            except AzureError as error:  # sign-in (token refresh) failed inside the pipeline
                raise self._auth_error(item, endpoint, error) from None
        try:
            body = json.loads(response.content) if response.content else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise GraphSourceError(
                self.tenant_id,
                item,
                endpoint,
                f"Graph answered {response.status_code} with a body that is not a JSON object",
                status=response.status_code,
            )
        return response.status_code, body, response

    def _http_error(
        self, item: str, endpoint: str, status: int, body: dict[str, Any], response: httpx.Response
    ) -> GraphSourceError:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = str(error.get("code") or "") or None
        message = str(error.get("message") or "").strip()
        reason = f"Graph answered {status} {code or ''}".rstrip()
        if message:
            reason += f": {message}"
        if status == 403:
            needed = _NEEDED_PERMISSION.get(item.split("/")[0], "Application.Read.All")
            reason += f" The audit identity needs the application permission {needed} in this tenant."
        elif status == 401:
            reason += " The token was refused; check the tenant id and the cloud's Graph URL."
        elif status in RetryHandler.DEFAULT_RETRY_STATUS_CODES:
            # Retried as Graph asked until the budget ran out (_BoundedRetryHandler): say so, and what
            # Graph wanted next, so a throttled tenant is told apart from one that is down.
            retries = response.request.headers.get("Retry-Attempt", "0")
            after = response.headers.get("Retry-After")
            reason += (
                f" Still {status} after {retries} retr{'y' if retries == '1' else 'ies'}"
                + (f" (Graph asked to wait {after} s more)" if after else "")
                + f"; the audit waits at most [entra] timeout_seconds = {self.endpoints.timeout_s:g} s per request."
            )
        request_id = response.headers.get("request-id")
        if request_id:
            reason += f" (request-id {request_id})"
        return GraphSourceError(self.tenant_id, item, endpoint, _scrub(reason, self.secrets), status=status, code=code)

    def _auth_error(self, item: str, endpoint: str, error: Exception) -> GraphSourceError:
        return _sign_in_error(self.request, item, endpoint, error, self.secrets)

    async def _list(
        self, item: str, endpoint: str, first: Callable[[], Awaitable[Any]], builder: Any
    ) -> dict[str, Any]:
        """A list response with every page's values merged into the first page's document."""
        status, document, response = await self._send(item, endpoint, first)
        if status != 200:
            raise self._http_error(item, endpoint, status, document, response)
        values = list(document.get("value") or [])
        pages = 1
        next_link = document.pop("@odata.nextLink", None)
        while next_link:
            if not str(next_link).startswith(self.endpoints.graph_base_url + "/"):
                raise GraphSourceError(
                    self.tenant_id, item, endpoint, f"Graph's @odata.nextLink leaves {self.endpoints.graph_base_url}"
                )
            pages += 1
            if pages > MAX_PAGES:
                raise GraphSourceError(self.tenant_id, item, endpoint, f"more than {MAX_PAGES} pages; giving up")
            link = str(next_link)
            status, page, response = await self._send(
                item, endpoint, lambda link=link: builder.with_url(link).get(self._native())
            )
            if status != 200:
                raise self._http_error(item, f"{endpoint} (page {pages})", status, page, response)
            values.extend(page.get("value") or [])
            next_link = page.get("@odata.nextLink")
        document["value"] = values
        return document

    async def organization(self) -> None:
        builder = self.client.organization
        self.result.organization = await self._list(
            "organization",
            f"GET {self.endpoints.graph_base_url}/organization",
            lambda: builder.get(self._native()),
            builder,
        )

    async def domains(self) -> None:
        builder = self.client.domains
        self.result.domains = await self._list(
            "domains", f"GET {self.endpoints.graph_base_url}/domains", lambda: builder.get(self._native()), builder
        )

    async def service_principal(self, app_id: str) -> None:
        item = f"servicePrincipals/{app_id}"
        endpoint = (
            f"GET {self.endpoints.graph_base_url}/servicePrincipals(appId='{app_id}')"
            f"?$select={','.join(SERVICE_PRINCIPAL_SELECT)}"
        )
        # Not client.service_principals_with_app_id(app_id): msgraph-sdk's alternate-key
        # builders write appId into the client's shared path_parameters dict and kiota
        # expands the URL only after an await, so concurrent lookups would all ask for
        # the last appId (seen here: three requests for 00000004). A private copy each.
        builder = ServicePrincipalsWithAppIdRequestBuilder(
            self.client.request_adapter, dict(self.client.path_parameters), app_id
        )
        query = ServicePrincipalsWithAppIdRequestBuilder.ServicePrincipalsWithAppIdRequestBuilderGetQueryParameters(
            select=SERVICE_PRINCIPAL_SELECT
        )
        status, document, response = await self._send(item, endpoint, lambda: builder.get(self._native(query)))
        if status == 404:
            error = document.get("error") if isinstance(document.get("error"), dict) else {}
            if error.get("code") == "Request_ResourceNotFound":
                self.result.service_principals[app_id] = None
                self.result.not_found[app_id] = document
                return
        if status != 200:
            raise self._http_error(item, endpoint, status, document, response)
        self.result.service_principals[app_id] = document

    async def applications(self) -> None:
        builder = self.client.applications
        queries = [f"startswith(displayName,'{DEDICATED_APP_PREFIX}')"]
        app_ids: list[str] = []
        for app_id in self.request.hybrid_app_ids:
            if _is_guid(app_id.strip()):
                if app_id.strip().lower() not in app_ids:
                    app_ids.append(app_id.strip().lower())
            else:
                # Never pasted into an OData filter: it came from Exchange, not from us.
                self.result.notes.append(f"AuthServer ApplicationIdentifier {app_id!r} is not an appId; not looked up")
        for start in range(0, len(app_ids), APP_IDS_PER_FILTER):
            chunk = app_ids[start : start + APP_IDS_PER_FILTER]
            queries.append("appId in (" + ", ".join(f"'{value}'" for value in chunk) + ")")

        async def one(filter_text: str) -> dict[str, Any]:
            query = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
                filter=filter_text, select=APPLICATION_SELECT
            )
            endpoint = f"GET {self.endpoints.graph_base_url}/applications?$filter={filter_text}"
            return await self._list("applications", endpoint, lambda: builder.get(self._native(query)), builder)

        documents = await asyncio.gather(*(one(text) for text in queries))
        merged = documents[0]
        seen = {value.get("id") for value in merged["value"]}
        for document in documents[1:]:
            for value in document["value"]:
                if value.get("id") not in seen:
                    seen.add(value.get("id"))
                    merged["value"].append(value)
        self.result.applications = merged

    async def run(self) -> None:
        tasks: dict[str, Awaitable[None]] = {
            "organization": self.organization(),
            "domains": self.domains(),
            **{f"servicePrincipals/{app_id}": self.service_principal(app_id) for app_id in FIRST_PARTY_APP_IDS},
            "applications": self.applications(),
        }
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        for item, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, GraphSourceError):
                self.result.errors[item] = outcome
            elif isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError | KeyboardInterrupt):
                    raise outcome
                # Fail closed: an unexpected failure is an error for that item, never silence.
                text = _scrub(f"{type(outcome).__name__}: {outcome}", self.secrets)
                self.result.errors[item] = GraphSourceError(self.tenant_id, item, item, f"collection failed: {text}")
                logger.debug("graph source: %s for tenant %s failed", item, self.tenant_id, exc_info=outcome)


def _sign_in_error(
    request: TenantRequest, item: str, endpoint: str, error: Exception, secrets: Sequence[str]
) -> GraphSourceError:
    """Entra's reason for a failed sign-in, on one line (azure-identity's message may append the body)."""
    spec = request.credential
    who = f"{spec.client_id} " if spec.client_id else ""
    lines = (getattr(error, "message", None) or str(error)).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return GraphSourceError(
        request.tenant_id,
        item,
        endpoint,
        _scrub(f"could not sign in to Entra ID as {who}({spec.method}): {text}{_tls_hint(text)}", secrets),
    )


def _tls_hint(text: str) -> str:
    """What to do about a certificate the system does not trust (a TLS-inspecting proxy, a private CA)."""
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "; name the CA that issued the server's certificate in [entra] ca_file"
    return ""


def _all_items() -> list[str]:
    return [
        "organization",
        "domains",
        *(f"servicePrincipals/{app_id}" for app_id in FIRST_PARTY_APP_IDS),
        "applications",
    ]


def _fail_all(result: GraphTenantDocuments, endpoint: str, reason: str) -> None:
    for item in _all_items():
        result.errors[item] = GraphSourceError(result.tenant_id, item, endpoint, reason)


async def collect_tenant_async(
    request: TenantRequest,
    endpoints: GraphEndpoints,
    http_client: httpx.AsyncClient,
    semaphore: asyncio.Semaphore,
    *,
    credential: AsyncTokenCredential | None = None,
    sign_in: SignIn | None = None,
) -> GraphTenantDocuments:
    """Collect one tenant; never raises for Graph or sign-in failures (they are per-item errors).

    The credential is `credential` (the caller's, not closed here), else `sign_in` (see
    `prepare_sign_in`), else built here.
    """
    result = GraphTenantDocuments(tenant_id=request.tenant_id)
    if credential is not None:
        sign_in = SignIn(credential, owned=False)
    elif sign_in is None:
        sign_in = prepare_sign_in(request, endpoints)
    if sign_in.credential is None:
        _fail_all(result, "sign-in", sign_in.error or "no credential")
        return result
    credential, token_options, secrets = sign_in.credential, sign_in.token_options, sign_in.secrets
    try:
        # One token request before the concurrent Graph requests, with the arguments
        # kiota will use (enable_cae=True), so they all find it in the cache and a
        # sign-in failure is reported once, with Entra's reason, for every item.
        token_endpoint = f"POST {endpoints.authority}/{request.tenant_id}/oauth2/v2.0/token"
        # azure-core waits whatever a 429's Retry-After says, retry after retry: an Entra ID that
        # throttles the token endpoint would hold the audit for as long. Sign-in gets the budget a
        # Graph request has; a device code waits for a person and keeps azure-identity's own timeout.
        budget = None if request.credential.method == "device-code" else endpoints.timeout_s
        try:
            await asyncio.wait_for(credential.get_token(endpoints.scope, enable_cae=True, **token_options), budget)
        except TimeoutError:
            reason = (
                f"could not sign in to Entra ID: no token within {budget:g} s ([entra] timeout_seconds); "
                "the token endpoint is throttling (429 with a long Retry-After) or not answering"
            )
            _fail_all(result, token_endpoint, reason)
            return result
        except (AzureError, ValueError, OSError) as error:  # Entra refused, or the authority is unreachable
            failure = _sign_in_error(request, "sign-in", token_endpoint, error, secrets)
            _fail_all(result, failure.endpoint, failure.reason)
            return result
        client = build_graph_client(credential, endpoints, http_client, token_options=token_options)
        await _TenantCollector(request, endpoints, client, semaphore, secrets, result).run()
        return result
    finally:
        if sign_in.owned:
            await credential.close()


async def collect_async(
    requests: Sequence[TenantRequest],
    endpoints: GraphEndpoints,
    *,
    max_concurrency: int = 8,
    credentials: Mapping[str, AsyncTokenCredential] | None = None,
    sign_ins: Mapping[str, SignIn] | None = None,
) -> dict[str, GraphTenantDocuments]:
    """Every tenant concurrently; at most `max_concurrency` Graph requests in flight in all.

    `credentials` (by tenant id) replaces a request's `CredentialSpec` with a credential
    the caller built and keeps ownership of (it is not closed here). `sign_ins` (by tenant
    id, from `prepare_sign_in`) are used and closed here, including any whose tenant is
    not among `requests`.
    """
    semaphore = asyncio.Semaphore(max_concurrency)
    given = credentials or {}
    prepared = dict(sign_ins or {})
    try:
        async with graph_http_client(endpoints) as http_client:
            results = await asyncio.gather(
                *(
                    collect_tenant_async(
                        request,
                        endpoints,
                        http_client,
                        semaphore,
                        credential=given.get(request.tenant_id),
                        sign_in=None if request.tenant_id in given else prepared.pop(request.tenant_id, None),
                    )
                    for request in requests
                )
            )
    finally:
        for unused in prepared.values():
            if unused.credential is not None and unused.owned:
                await unused.credential.close()
    return {result.tenant_id: result for result in results}


def collect(
    requests: Sequence[TenantRequest],
    endpoints: GraphEndpoints,
    *,
    max_concurrency: int = 8,
    credentials: Mapping[str, AsyncTokenCredential] | None = None,
    sign_ins: Mapping[str, SignIn] | None = None,
) -> dict[str, GraphTenantDocuments]:
    """`collect_async` for synchronous callers (the pytest plugin); safe inside a running loop too."""

    def run() -> dict[str, GraphTenantDocuments]:
        return asyncio.run(
            collect_async(
                requests, endpoints, max_concurrency=max_concurrency, credentials=credentials, sign_ins=sign_ins
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
