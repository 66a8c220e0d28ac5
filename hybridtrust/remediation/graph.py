"""Changes of Entra ID lists through Microsoft Graph (msgraph-sdk): servicePrincipalNames, replyUrls, keyCredentials.

A PATCH of one of these properties REPLACES the whole list (S3's own example replaced
every service principal name Exchange Online had). So a change never writes what the
plan saw: it re-reads the object immediately before writing, refuses to write when the
list is not what the plan (and this run's earlier changes) left it, merges
(current + what is missing, minus only what the fix itself removes), writes, and reads
back. keyCredentials are re-read with the single-object ``$select=keyCredentials``
request, the only one for which Graph returns each credential's ``key``: a credential
sent back without its key would be dropped, so a list where any key is missing is never
written.

A graph-list change's ``target`` (JSON, kept in the remediation record)::

    {"tenant": "<tenant id>", "object": "servicePrincipals/<object id>",
     "method": "PATCH", "url": "https://graph.microsoft.com/v1.0/servicePrincipals/<object id>",
     "property": "servicePrincipalNames", "add": ["https://mail.contoso.com/"], "remove": [],
     "body": "servicePrincipalNames = existing + ['https://mail.contoso.com/']"}

``remove`` holds keyIds (HYB-SHARED-SP-CLEAN only); ``add`` holds names, URLs, or whole
keyCredentials (with a keyId chosen by the plan, so rollback removes exactly that one).

Requests go through msgraph-sdk's request builders and its middleware (auth, retries
honouring Retry-After), with kiota's native response handler so the JSON is kept as
Graph sent it: customKeyIdentifier and key are re-sent byte for byte, never
re-encoded by a model.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar, cast

import httpx
from azure.core.exceptions import AzureError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_http.middleware.options import ResponseHandlerOption
from msgraph import GraphServiceClient
from msgraph.generated.applications.item.application_item_request_builder import ApplicationItemRequestBuilder
from msgraph.generated.models.application import Application
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.service_principals.item.service_principal_item_request_builder import (
    ServicePrincipalItemRequestBuilder,
)

from hybridtrust.sources.graph import (
    CredentialError,
    CredentialSpec,
    GraphEndpoints,
    build_credential,
    build_graph_client,
    graph_http_client,
)

LIST_PROPERTIES = ("servicePrincipalNames", "replyUrls", "keyCredentials")
T = TypeVar("T")


class GraphWriteError(Exception):
    """Graph (or Entra sign-in) refused; the message carries Graph's own words, never a secret."""


def item_key(property_name: str, item: Any) -> str:
    """What identifies a list item: the text itself, or a keyCredential's keyId."""
    if property_name == "keyCredentials":
        return str((item or {}).get("keyId") or "").lower() if isinstance(item, dict) else str(item).lower()
    return str(item)


def keys_of(property_name: str, items: Iterable[Any] | None) -> list[str]:
    return [item_key(property_name, item) for item in items or []]


def merged(property_name: str, current: list[Any], add: list[Any], remove: list[str]) -> list[Any]:
    """current + what is missing, minus exactly the keyIds the fix removes; the order of current is kept."""
    dropped = {key.lower() for key in remove}
    result = [item for item in current if item_key(property_name, item).lower() not in dropped]
    present = {item_key(property_name, item).lower() for item in result}
    if property_name != "keyCredentials":
        # Entra compares names case-insensitively: a name already there in another case is there.
        present = {key.lower() for key in present}
    for item in add:
        key = item_key(property_name, item).lower()
        if key not in present:
            result.append(item)
            present.add(key)
    return result


def restored(
    property_name: str, current: list[Any], added: list[str], removed: list[Any], before: list[Any]
) -> list[Any]:
    """The list with what a fix added taken out and what it removed put back where it was."""
    taken = {key.lower() for key in added}
    result = [item for item in current if item_key(property_name, item).lower() not in taken]
    present = {item_key(property_name, item).lower() for item in result}
    before_keys = keys_of(property_name, before)
    for item in removed:
        key = item_key(property_name, item).lower()
        if key in present:
            continue
        # Put it back at its old position among the items that are still there.
        position = (
            before_keys.index(item_key(property_name, item)) if item_key(property_name, item) in before_keys else -1
        )
        earlier = {k.lower() for k in before_keys[:position]} if position >= 0 else None
        index = len(result)
        if earlier is not None:
            index = sum(1 for existing in result if item_key(property_name, existing).lower() in earlier)
        result.insert(index, item)
        present.add(key)
    return result


def describe_items(property_name: str, items: Iterable[Any]) -> list[str]:
    """Items as a person reads them (a keyCredential by thumbprint and keyId, never its whole DER)."""
    if property_name != "keyCredentials":
        return [str(item) for item in items]
    from hybridtrust.facts import KeyCredential

    described = []
    for item in items:
        credential = KeyCredential.from_json(item) if isinstance(item, dict) else None
        described.append(f"{credential.describe()} keyId {credential.key_id}" if credential is not None else str(item))
    return described


class _Loop:
    """A private event loop in a thread: msgraph-sdk is async, the runner is not (and may run inside a loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hybridtrust-graph-writes", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class GraphWriter:
    """Reads and PATCHes list properties in the tenants of one organization, with the remediation identity."""

    def __init__(self, endpoints: GraphEndpoints, credentials: Mapping[str, CredentialSpec | str]) -> None:
        self.endpoints = endpoints
        self.credentials = dict(credentials)
        """tenant id -> how to sign in, or why that tenant cannot be changed."""
        self._loop: _Loop | None = None
        self._clients: dict[str, tuple[GraphServiceClient, Any, httpx.AsyncClient, list[str]]] = {}

    def url(self, object_path: str) -> str:
        return f"{self.endpoints.graph_base_url}/{object_path}"

    # -- plumbing ---------------------------------------------------------------------------------
    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = _Loop()
        # Retries after 429/503 honour Retry-After: allow a few of them on top of the request timeout.
        return self._loop.run(coroutine, timeout=self.endpoints.timeout_s * 4 + 30)

    async def _client(self, tenant_id: str) -> tuple[GraphServiceClient, list[str]]:
        if tenant_id in self._clients:
            client, _, _, secrets = self._clients[tenant_id]
            return client, secrets
        spec = self.credentials.get(tenant_id)
        if spec is None or isinstance(spec, str):
            raise GraphWriteError(spec or f"the profile names no credential for tenant {tenant_id}")
        try:
            credential, options, secrets = build_credential(spec, tenant_id, self.endpoints)
        except (CredentialError, ValueError, OSError) as error:
            raise GraphWriteError(
                f"cannot build the {spec.method} credential for tenant {tenant_id}: {error}"
            ) from None
        http_client = graph_http_client(self.endpoints)
        client = build_graph_client(credential, self.endpoints, http_client, token_options=options)
        self._clients[tenant_id] = (client, credential, http_client, secrets)
        return client, secrets

    @staticmethod
    def _scrub(text: str, secrets: list[str]) -> str:
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _builder(self, client: GraphServiceClient, object_path: str) -> Any:
        collection, _, object_id = object_path.partition("/")
        if collection == "servicePrincipals":
            return client.service_principals.by_service_principal_id(object_id)
        if collection == "applications":
            return client.applications.by_application_id(object_id)
        raise GraphWriteError(f"{object_path}: only servicePrincipals and applications are ever changed")

    async def _send(self, tenant_id: str, what: str, send: Any, secrets: list[str]) -> httpx.Response:
        try:
            return cast(httpx.Response, await send())
        except httpx.HTTPError as error:
            raise GraphWriteError(
                self._scrub(f"{what} (tenant {tenant_id}): cannot reach {self.endpoints.graph_host}: {error}", secrets)
            ) from None
        except AzureError as error:
            lines = (getattr(error, "message", None) or str(error)).strip().splitlines()
            raise GraphWriteError(
                self._scrub(f"{what} (tenant {tenant_id}): could not sign in: {lines[0] if lines else error}", secrets)
            ) from None

    def _refused(self, tenant_id: str, what: str, response: httpx.Response, secrets: list[str]) -> GraphWriteError:
        try:
            body = json.loads(response.content) if response.content else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {}
        error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        reason = (
            f"{what} (tenant {tenant_id}): Graph answered {response.status_code} {error.get('code') or ''}".rstrip()
        )
        if error.get("message"):
            reason += f": {error['message']}"
        if response.status_code == 403:
            reason += " The remediation identity needs the application permission Application.ReadWrite.All."
        request_id = response.headers.get("request-id")
        if request_id:
            reason += f" (request-id {request_id})"
        return GraphWriteError(self._scrub(reason, secrets))

    # -- reads and writes -------------------------------------------------------------------------
    async def _read(self, tenant_id: str, object_path: str, property_name: str) -> list[Any]:
        client, secrets = await self._client(tenant_id)
        builder = self._builder(client, object_path)
        query_type = (
            ServicePrincipalItemRequestBuilder.ServicePrincipalItemRequestBuilderGetQueryParameters
            if object_path.startswith("servicePrincipals/")
            else ApplicationItemRequestBuilder.ApplicationItemRequestBuilderGetQueryParameters
        )
        # A single-object GET with $select naming keyCredentials is the only read that returns `key`.
        configuration = RequestConfiguration(
            query_parameters=query_type(select=["id", property_name]),
            options=[ResponseHandlerOption(NativeResponseHandler())],
        )
        what = f"GET {self.url(object_path)}?$select=id,{property_name}"
        response = await self._send(tenant_id, what, lambda: builder.get(configuration), secrets)
        if response.status_code != 200:
            raise self._refused(tenant_id, what, response, secrets)
        try:
            document = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise GraphWriteError(f"{what} (tenant {tenant_id}): the answer is not JSON: {error}") from None
        value = document.get(property_name) if isinstance(document, dict) else None
        if not isinstance(value, list):
            raise GraphWriteError(f"{what} (tenant {tenant_id}): the answer has no {property_name} list")
        return value

    async def _patch(self, tenant_id: str, object_path: str, property_name: str, value: list[Any]) -> None:
        client, secrets = await self._client(tenant_id)
        builder = self._builder(client, object_path)
        model = ServicePrincipal() if object_path.startswith("servicePrincipals/") else Application()
        information = builder.to_patch_request_information(model)
        # The body is the JSON as Graph gave it (plus what the fix adds), not a re-serialised model.
        information.content = json.dumps({property_name: value}).encode("utf-8")
        information.add_request_options([ResponseHandlerOption(NativeResponseHandler())])
        what = f"PATCH {self.url(object_path)} {property_name}"
        response = await self._send(
            tenant_id,
            what,
            lambda: client.request_adapter.send_async(information, type(model), {}),
            secrets,
        )
        if response.status_code not in (200, 204):
            raise self._refused(tenant_id, what, response, secrets)

    def read(self, tenant_id: str, object_path: str, property_name: str) -> list[Any]:
        return self._run(self._read(tenant_id, object_path, property_name))

    def patch(self, tenant_id: str, object_path: str, property_name: str, value: list[Any]) -> None:
        if property_name not in LIST_PROPERTIES:
            raise GraphWriteError(f"{property_name}: not a property remediation changes")
        if property_name == "keyCredentials":
            lacking = [
                item_key(property_name, item) for item in value if not (isinstance(item, dict) and item.get("key"))
            ]
            if lacking:
                # Graph would drop these credentials: never send such a list.
                raise GraphWriteError(
                    f"PATCH {self.url(object_path)} keyCredentials: credential(s) {', '.join(lacking)} have no key; "
                    "writing the list would drop them"
                )
        self._run(self._patch(tenant_id, object_path, property_name, value))

    async def _close(self) -> None:
        for _, credential, http_client, _ in self._clients.values():
            await http_client.aclose()
            close = getattr(credential, "close", None)
            if close is not None:
                await close()
        self._clients.clear()

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._close())
        finally:
            self._loop.close()
            self._loop = None
