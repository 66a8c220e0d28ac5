"""OData query handling for the lab Graph endpoint: $filter, $select, paging, errors.

Only what Microsoft Graph's directory objects support without advanced queries
(``ConsistencyLevel: eventual``) is accepted, so code that works against the lab
also works against Entra ID: ``eq`` and ``in`` on filterable properties,
``startswith(prop,'x')``, ``collection/any(v:v eq 'x')``, joined by ``and`` /
``or``. Anything else is a ``Request_UnsupportedQuery`` like Graph answers, not a
silent match-all, which would hide a wrong filter in the suite.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

Predicate = Callable[[Mapping[str, Any]], bool]


class GraphRequestError(Exception):
    """An error answered as a Graph ODataError body with this status and code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def odata_error_body(
    code: str,
    message: str,
    *,
    request_id: str,
    client_request_id: str,
    details: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The ODataError document Graph returns (error.code, error.message, error.innerError)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    error["innerError"] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": client_request_id,
    }
    return {"error": error}


# -- entity types ------------------------------------------------------------------


@dataclass(frozen=True)
class EntityType:
    """What the lab knows of one Graph entity set: its properties and which it can filter or set."""

    entity_set: str  # "servicePrincipals"
    type_name: str  # "servicePrincipal" (microsoft.graph.<type_name>)
    properties: frozenset[str]
    filterable: frozenset[str]
    collections: frozenset[str]  # string collections usable with /any(...)
    updatable: frozenset[str]

    @property
    def resource_name(self) -> str:
        # Graph names the resource type with a capital in query errors ("ServicePrincipal").
        return self.type_name[0].upper() + self.type_name[1:]


def _names(text: str) -> frozenset[str]:
    """Property names written as one space-separated string, as Graph's docs list them."""
    return frozenset(text.split())


SERVICE_PRINCIPAL = EntityType(
    entity_set="servicePrincipals",
    type_name="servicePrincipal",
    properties=_names(
        "id deletedDateTime accountEnabled addIns alternativeNames appDescription appDisplayName appId "
        "applicationTemplateId appOwnerOrganizationId appRoleAssignmentRequired appRoles customSecurityAttributes "
        "description disabledByMicrosoftStatus displayName homepage info keyCredentials loginUrl logoutUrl notes "
        "notificationEmailAddresses oauth2PermissionScopes passwordCredentials preferredSingleSignOnMode "
        "preferredTokenSigningKeyThumbprint replyUrls resourceSpecificApplicationPermissions "
        "samlSingleSignOnSettings servicePrincipalNames servicePrincipalType signInAudience tags "
        "tokenEncryptionKeyId verifiedPublisher"
    ),
    filterable=_names(
        "id appId displayName accountEnabled appOwnerOrganizationId servicePrincipalType "
        "preferredSingleSignOnMode signInAudience"
    ),
    collections=frozenset({"servicePrincipalNames", "tags", "alternativeNames", "notificationEmailAddresses"}),
    updatable=_names(
        "accountEnabled addIns alternativeNames appDescription appRoleAssignmentRequired appRoles "
        "customSecurityAttributes description disabledByMicrosoftStatus displayName homepage info keyCredentials "
        "loginUrl logoutUrl notes notificationEmailAddresses oauth2PermissionScopes preferredSingleSignOnMode "
        "preferredTokenSigningKeyThumbprint replyUrls samlSingleSignOnSettings servicePrincipalNames tags "
        "tokenEncryptionKeyId"
    ),
)

APPLICATION = EntityType(
    entity_set="applications",
    type_name="application",
    properties=_names(
        "id deletedDateTime addIns api appId applicationTemplateId appRoles certification createdDateTime "
        "defaultRedirectUri description disabledByMicrosoftStatus displayName groupMembershipClaims identifierUris "
        "info isDeviceOnlyAuthSupported isFallbackPublicClient keyCredentials logo nativeAuthenticationApisEnabled "
        "notes oauth2RequirePostResponse optionalClaims parentalControlSettings passwordCredentials publicClient "
        "publisherDomain requestSignatureVerification requiredResourceAccess samlMetadataUrl "
        "serviceManagementReference servicePrincipalLockConfiguration signInAudience spa tags "
        "tokenEncryptionKeyId uniqueName verifiedPublisher web"
    ),
    filterable=_names("id appId displayName publisherDomain signInAudience createdDateTime"),
    collections=frozenset({"identifierUris", "tags"}),
    updatable=_names(
        "addIns api appRoles defaultRedirectUri description disabledByMicrosoftStatus displayName "
        "groupMembershipClaims identifierUris info isDeviceOnlyAuthSupported isFallbackPublicClient keyCredentials "
        "logo notes oauth2RequirePostResponse optionalClaims parentalControlSettings publicClient "
        "requestSignatureVerification requiredResourceAccess samlMetadataUrl serviceManagementReference "
        "servicePrincipalLockConfiguration signInAudience spa tags tokenEncryptionKeyId web"
    ),
)

ORGANIZATION = EntityType(
    entity_set="organization",
    type_name="organization",
    properties=_names(
        "id deletedDateTime assignedPlans businessPhones city country countryLetterCode createdDateTime "
        "defaultUsageLocation displayName marketingNotificationEmails onPremisesLastSyncDateTime "
        "onPremisesSyncEnabled partnerTenantType postalCode preferredLanguage privacyProfile provisionedPlans "
        "securityComplianceNotificationMails securityComplianceNotificationPhones state street "
        "technicalNotificationMails tenantType verifiedDomains"
    ),
    filterable=frozenset({"id"}),
    collections=frozenset(),
    updatable=frozenset(),
)

DOMAIN = EntityType(
    entity_set="domains",
    type_name="domain",
    properties=_names(
        "id authenticationType availabilityStatus isAdminManaged isDefault isInitial isRoot isVerified "
        "passwordNotificationWindowInDays passwordValidityPeriodInDays state supportedServices"
    ),
    filterable=frozenset(),
    collections=frozenset(),
    updatable=frozenset(),
)


# -- $select -----------------------------------------------------------------------


def parse_select(text: str | None, entity: EntityType, sample: Mapping[str, Any] | None = None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise GraphRequestError(400, "BadRequest", "Invalid $select: no property named.")
    known = entity.properties | set(sample or {})
    for name in names:
        if name not in known:
            raise GraphRequestError(
                400,
                "BadRequest",
                f"Could not find a property named '{name}' on type 'microsoft.graph.{entity.type_name}'.",
            )
    return names


def project(obj: Mapping[str, Any], select: list[str] | None, *, keep_keys: bool) -> dict[str, Any]:
    """The object as Graph returns it: selected properties (absent ones as null), `key` masked.

    Graph fills ``keyCredentials[].key`` only for a single object requested with
    ``$select`` naming keyCredentials; everywhere else it is null. The suite's
    EXO-AUTHCERT-PUBLISHED check compares the DER when the key is present, so the
    lab must be exact here, or a collector that forgets the $select would pass.
    """
    if select is None:
        result = {name: value for name, value in obj.items() if not name.startswith("@")}
    else:
        result = {name: obj.get(name) for name in select}
    credentials = result.get("keyCredentials")
    if isinstance(credentials, list) and not keep_keys:
        result["keyCredentials"] = [
            {**credential, "key": None} if isinstance(credential, dict) else credential for credential in credentials
        ]
    return result


# -- $filter -----------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<punct>[(),:])|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_./]*))"
)


@dataclass
class _Token:
    kind: str
    text: str
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise GraphRequestError(
                400, "BadRequest", f"Invalid filter clause: syntax error at position {position} in '{text}'."
            )
        kind = match.lastgroup or "word"
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    return tokens


def _literal(token: _Token) -> Any:
    if token.kind == "string":
        return token.text[1:-1].replace("''", "'")
    if token.kind == "number":
        return float(token.text) if "." in token.text else int(token.text)
    if token.kind == "word" and token.text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[token.text]
    raise GraphRequestError(400, "BadRequest", f"Invalid filter clause: '{token.text}' is not a literal.")


def _equal(left: Any, right: Any) -> bool:
    # Directory string comparisons ignore case (appId eq works with an upper-case GUID).
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold() == right.casefold()
    return bool(left == right)


def _starts_with(value: Any, prefix: Any) -> bool:
    return isinstance(value, str) and isinstance(prefix, str) and value.casefold().startswith(prefix.casefold())


class _FilterParser:
    def __init__(self, text: str, entity: EntityType) -> None:
        self.text = text
        self.entity = entity
        self.tokens = _tokenize(text)
        self.index = 0

    # token helpers
    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _next(self) -> _Token:
        token = self._peek()
        if token is None:
            raise GraphRequestError(400, "BadRequest", f"Invalid filter clause: unexpected end of '{self.text}'.")
        self.index += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._next()
        if token.text != text:
            raise GraphRequestError(
                400,
                "BadRequest",
                f"Invalid filter clause: expected '{text}' at position {token.position} in '{self.text}'.",
            )

    def _unsupported(self, name: str) -> GraphRequestError:
        return GraphRequestError(
            400,
            "Request_UnsupportedQuery",
            f"Unsupported or invalid query filter clause specified for property '{name}' "
            f"of resource '{self.entity.resource_name}'.",
        )

    def _property(self, name: str) -> str:
        if name not in self.entity.filterable:
            raise self._unsupported(name)
        return name

    # grammar
    def parse(self) -> Predicate:
        predicate = self._or()
        if self._peek() is not None:
            token = self._next()
            raise GraphRequestError(
                400,
                "BadRequest",
                f"Invalid filter clause: unexpected '{token.text}' at position {token.position} in '{self.text}'.",
            )
        return predicate

    def _or(self) -> Predicate:
        parts = [self._and()]
        while (token := self._peek()) is not None and token.text == "or":
            self._next()
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda obj: any(part(obj) for part in parts)

    def _and(self) -> Predicate:
        parts = [self._primary()]
        while (token := self._peek()) is not None and token.text == "and":
            self._next()
            parts.append(self._primary())
        if len(parts) == 1:
            return parts[0]
        return lambda obj: all(part(obj) for part in parts)

    def _primary(self) -> Predicate:
        token = self._next()
        if token.text == "(":
            inner = self._or()
            self._expect(")")
            return inner
        if token.kind != "word":
            raise GraphRequestError(
                400, "BadRequest", f"Invalid filter clause: unexpected '{token.text}' in '{self.text}'."
            )
        if token.text == "not":
            # Graph needs $count=true and ConsistencyLevel: eventual for not: refuse as it does.
            raise self._unsupported("not")
        if token.text == "startswith":
            self._expect("(")
            name = self._property(self._next().text)
            self._expect(",")
            prefix = _literal(self._next())
            self._expect(")")
            return lambda obj: _starts_with(obj.get(name), prefix)
        if token.text.endswith("/any"):
            return self._any(token.text[: -len("/any")])
        name = token.text
        operator = self._next()
        if operator.text == "eq":
            self._property(name)
            value = _literal(self._next())
            return lambda obj: _equal(obj.get(name), value)
        if operator.text == "in":
            self._property(name)
            self._expect("(")
            values = [_literal(self._next())]
            while (separator := self._next()).text == ",":
                values.append(_literal(self._next()))
            if separator.text != ")":
                raise GraphRequestError(400, "BadRequest", f"Invalid filter clause: expected ')' in '{self.text}'.")
            return lambda obj: any(_equal(obj.get(name), value) for value in values)
        # ne, gt, lt, endswith(...)... are advanced queries on directory objects.
        raise self._unsupported(name)

    def _any(self, collection: str) -> Predicate:
        if collection not in self.entity.collections:
            raise self._unsupported(collection)
        self._expect("(")
        variable = self._next().text
        self._expect(":")
        head = self._next()
        if head.text == variable:
            self._expect("eq")
            value = _literal(self._next())
            self._expect(")")
            return lambda obj: any(_equal(item, value) for item in obj.get(collection) or [])
        if head.text == "startswith":
            self._expect("(")
            if self._next().text != variable:
                raise self._unsupported(collection)
            self._expect(",")
            prefix = _literal(self._next())
            self._expect(")")
            self._expect(")")
            return lambda obj: any(_starts_with(item, prefix) for item in obj.get(collection) or [])
        raise self._unsupported(collection)


def parse_filter(text: str | None, entity: EntityType) -> Predicate | None:
    if text is None:
        return None
    if not text.strip():
        raise GraphRequestError(400, "BadRequest", "Invalid filter clause: the filter is empty.")
    return _FilterParser(text, entity).parse()


# -- paging ------------------------------------------------------------------------

MAX_PAGE_SIZE = 999
# Characters Graph leaves unescaped in the query of its nextLinks ($filter=startswith(displayName,'x')).
_QUERY_SAFE = "$'(),:=/"


def parse_top(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        top = int(text)
    except ValueError:
        top = 0
    if not 1 <= top <= MAX_PAGE_SIZE:
        raise GraphRequestError(
            400,
            "Request_BadRequest",
            f"Invalid page size specified: '{text}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive.",
        )
    return top


def encode_skiptoken(offset: int) -> str:
    # Opaque to clients, as Graph's are: they must follow @odata.nextLink, not build it.
    raw = json.dumps({"v": 1, "offset": offset}).encode()
    return "RFNwdAIA" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_skiptoken(token: str | None) -> int:
    if token is None:
        return 0
    try:
        if not token.startswith("RFNwdAIA"):
            raise ValueError(token)
        payload = token[len("RFNwdAIA") :]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        offset = int(data["offset"])
        if offset < 0:
            raise ValueError(token)
        return offset
    except (ValueError, KeyError, TypeError) as error:
        raise GraphRequestError(
            400, "Directory_ExpiredPageToken", "The specified page token value has expired and can no longer be used."
        ) from error


def next_link(base_url: str, path: str, query: list[tuple[str, str]], offset: int) -> str:
    """An absolute @odata.nextLink: the request's own query plus $skiptoken, as Graph writes it."""
    kept = [(name, value) for name, value in query if name != "$skiptoken"]
    kept.append(("$skiptoken", encode_skiptoken(offset)))
    text = "&".join(f"{quote(name, safe='$')}={quote(value, safe=_QUERY_SAFE)}" for name, value in kept)
    return f"{base_url}{path}?{text}"


def context_url(base_url: str, entity_set: str, select: list[str] | None, *, entity: bool) -> str:
    """@odata.context as Graph writes it: ``$metadata#servicePrincipals(id,appId)/$entity``."""
    selection = f"({','.join(select)})" if select else ""
    return f"{base_url}/$metadata#{entity_set}{selection}" + ("/$entity" if entity else "")
