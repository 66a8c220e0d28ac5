"""Profiles: one TOML file per organization (CONTRACTS.md, "Profile").

pydantic is the schema: unknown keys are refused (a typo must not silently
disable a check), and every error names the file, the key, the value and what
was expected. Credentials are never stored in a profile: it names environment
variables, certificate files or a credential method.
"""

from __future__ import annotations

import re
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from hybridtrust.catalog import SCENARIOS
from hybridtrust.clouds import CLOUDS, Cloud
from hybridtrust.limits import NESTING_ERRORS, PROFILE_BYTES, TooLarge, read_bounded

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ProfileError(ValueError):
    """A profile that cannot be used. The message is one line an administrator can act on."""


def _guid(value: str) -> str:
    try:
        return str(uuid.UUID(value)).lower()
    except ValueError:
        raise ValueError("expected a tenant id GUID like 8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35") from None


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _domain(value: str) -> str:
    value = value.strip().lower()
    if not _DOMAIN.match(value):
        raise ValueError("expected a DNS domain like contoso.com")
    return value


def _url(value: str) -> str:
    if not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _env_name(value: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise ValueError("expected the NAME of an environment variable (the secret itself never goes in a profile)")
    return value


Guid = Annotated[str, AfterValidator(_guid)]
DomainName = Annotated[str, AfterValidator(_domain)]
Url = Annotated[str, AfterValidator(_url)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class _Strict(BaseModel):
    # Booleans and numbers are declared strict field by field (StrictBool, strict=True): in lax mode
    # pydantic reads `verify_tls = "false"` as False and `max_concurrency = true` as 1, so a quoted
    # value would silently turn TLS verification off. Not model-wide: strict mode would also refuse
    # the TOML strings that Path and the validated text types are built from.
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrganizationSection(_Strict):
    name: str = Field(min_length=1)
    cloud: Literal["global", "gcchigh", "dod", "china"] = "global"
    scenarios: list[Literal[SCENARIOS]] = Field(min_length=1)  # type: ignore[valid-type]
    smtp_domains: list[DomainName] = Field(min_length=1)
    resource_forest: StrictBool = False
    """S3: the account forest / resource forest topology OWA-RESOURCE-FOREST applies to."""
    dedicated_hybrid_app: StrictBool | None = None
    """None: on with exchange-oauth or hma (S5 is Microsoft's end state); false opts out."""
    test_mailbox: str | None = None
    """A mailbox for the opt-in Test-OAuthConnectivity probe (--connectivity)."""


class GraphCredential(_Strict):
    method: Literal["certificate", "secret", "managed-identity", "azure-cli", "device-code", "default"] = "default"
    client_id: Guid | None = None
    certificate_file: Path | None = None
    certificate_password_env: EnvName | None = None
    secret_env: EnvName | None = None

    @model_validator(mode="after")
    def _complete(self) -> GraphCredential:
        if self.method in ("certificate", "secret", "device-code") and not self.client_id:
            raise ValueError(f"method {self.method!r} needs client_id")
        if self.method == "certificate" and not self.certificate_file:
            raise ValueError("method 'certificate' needs certificate_file (a PEM with the private key)")
        if self.method == "secret" and not self.secret_env:
            raise ValueError("method 'secret' needs secret_env, the name of the variable holding the secret")
        return self


class TenantSection(_Strict):
    id: Guid
    initial_domain: DomainName
    primary: StrictBool = False
    """The tenant whose evoSTS is the default authorization endpoint (HMA-DEFAULT-ENDPOINT)."""
    test_mailbox: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    """A mailbox of this tenant for Test-OAuthConnectivity (--connectivity)."""
    credential: GraphCredential = GraphCredential()
    remediation_credential: GraphCredential | None = None
    """--remediate/--rollback only: an identity with Application.ReadWrite.All (default: `credential`)."""

    @field_validator("initial_domain")
    @classmethod
    def _initial(cls, value: str) -> str:
        if not (value.endswith(".onmicrosoft.com") or value.endswith(".onmicrosoft.us") or ".onmschina." in value):
            raise ValueError("expected the tenant's initial domain, <name>.onmicrosoft.com")
        return value


class EntraSection(_Strict):
    authority: Url | None = None
    """Override of the cloud's login host (tests point the real clients at the lab this way)."""
    graph_url: Url | None = None
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=60, gt=0, strict=True)


class RemotingSection(_Strict):
    uri: Url
    auth: Literal["kerberos", "negotiate", "ntlm", "basic", "credssp"] = "kerberos"
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    verify_tls: StrictBool = True
    ca_file: Path | None = None
    connect_timeout_seconds: float = Field(default=30, gt=0, strict=True)
    operation_timeout_seconds: float = Field(default=120, gt=0, strict=True)
    max_concurrency: int = Field(default=8, ge=1, le=18, strict=True)
    """Exchange throttles remote PowerShell at PowerShellMaxConcurrency (18 by default)."""
    configuration_name: str | None = None


class ExchangeSection(RemotingSection):
    pass


class SharePointSection(RemotingSection):
    web_application: Url
    public_root_domain: DomainName
    hybrid_site: Url | None = None
    """The site the SharePoint Online app principal is registered on (default: the web application)."""


class ExchangeOnlineSection(_Strict):
    evidence: Path | None = None
    """A folder of Exchange Online Export-Clixml files (Get-IntraOrganizationConnector.xml)."""


class EvidenceSection(_Strict):
    path: Path
    """An evidence bundle judged whenever this profile runs without --evidence."""


class LabSection(_Strict):
    mode: Literal["embedded", "external"] = "embedded"
    state: Path | None = None
    """embedded: a lab state file (default: the shipped flawed Contoso); external: unused."""
    connection: Path | None = None
    """external: the JSON line `python -m hybridtrust.lab serve` printed, saved to a file."""
    latency_ms: int = Field(default=0, ge=0, strict=True)


class Profile(_Strict):
    organization: OrganizationSection
    tenants: list[TenantSection] = Field(min_length=1)
    exchange: ExchangeSection | None = None
    sharepoint: SharePointSection | None = None
    entra: EntraSection = EntraSection()
    exchange_online: ExchangeOnlineSection = ExchangeOnlineSection()
    evidence: EvidenceSection | None = None
    lab: LabSection | None = None

    # Filled in by `load_profile`, not by the file.
    name: str = ""
    path: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        ids = [tenant.id for tenant in self.tenants]
        if len(set(ids)) != len(ids):
            raise ValueError("a tenant id appears twice in [[tenants]]")
        if sum(tenant.primary for tenant in self.tenants) > 1:
            raise ValueError("only one of [[tenants]] may say primary = true")
        needs_farm = "sharepoint-s2s" in self.organization.scenarios
        if needs_farm and self.sharepoint is None and self.lab is None and self.evidence is None:
            raise ValueError("scenario 'sharepoint-s2s' needs a [sharepoint] section")
        return self

    @property
    def cloud(self) -> Cloud:
        return CLOUDS[self.organization.cloud]

    @property
    def primary_tenant(self) -> TenantSection:
        return next((tenant for tenant in self.tenants if tenant.primary), self.tenants[0])

    @property
    def scenarios(self) -> frozenset[str]:
        """The selected scenarios, with S5's dedicated hybrid app on by default."""
        selected = set(self.organization.scenarios)
        dedicated = self.organization.dedicated_hybrid_app
        if dedicated is None:
            dedicated = "dedicated-hybrid-app" in selected or bool(selected & {"exchange-oauth", "hma"})
        if dedicated:
            selected.add("dedicated-hybrid-app")
        else:
            selected.discard("dedicated-hybrid-app")
        return frozenset(selected)

    def resolve(self, path: Path | None) -> Path | None:
        """A path of the profile, relative to the profile file."""
        if path is None or path.is_absolute() or self.path is None:
            return path
        return (self.path.parent / path).resolve()


def _describe_location(location: tuple[Any, ...], document: dict[str, Any]) -> str:
    """A pydantic error location as the TOML key an administrator edits: [tenants][1].id."""
    parts: list[str] = []
    node: Any = document
    for index, part in enumerate(location):
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part + 1}]" if parts else f"[{part + 1}]"
        elif index == 0:
            parts.append(f"[{part}]")
        else:
            parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    head, *rest = parts or ["(top level)"]
    return head + ("" if not rest else " key '" + ".".join(rest) + "'")


_EXPECTED = {
    # The strict types' own words ("a valid boolean") do not say that quotes are the usual mistake.
    "bool_type": "expected a boolean (true/false, unquoted)",
    "int_type": "expected a whole number (unquoted)",
    "float_type": "expected a number (unquoted)",
}


def _one_line(error: dict[str, Any], document: dict[str, Any], where: str) -> str:
    location = tuple(error["loc"])
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        known = _known_keys(location[:-1])
        hint = f"; known keys there: {', '.join(known)}" if known else ""
        return f"{where}: unknown key '{location[-1]}' in {_describe_location(location[:-1], document) if location[:-1] else 'the top level'}{hint}"
    if kind == "missing":
        return f"{where}: {_describe_location(location, document)} is missing (required)"
    message = _EXPECTED.get(kind) or message.replace("Input should be", "expected")
    return f"{where}: {_describe_location(location, document)} is {_as_written(error.get('input'))}: {message}"


def _as_written(value: Any) -> str:
    """A value as the file spells it: `true`, `[true, 2]`, not Python's `True`, `[True, 2]`."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{', '.join(_as_written(item) for item in value)}]"
    return repr(value)


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    model: Any = Profile
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", (annotation,)):
            inner = (
                getattr(candidate, "__args__", (candidate,))[0]
                if getattr(candidate, "__origin__", None) is list
                else candidate
            )
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
                break
        else:
            return []
    return [name for name in model.model_fields if name not in ("name", "path")]


def profile_path(name_or_path: str) -> Path:
    """`--profile NAME` is profiles/NAME.toml; anything ending in .toml is a path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return Path(name_or_path)
    return PROFILES_DIR / f"{name_or_path}.toml"


def load_profile(name_or_path: str) -> Profile:
    path = profile_path(name_or_path)
    where = str(path)
    try:
        # Bounded: a multi-gigabyte file (or /dev/zero) is refused before it fills the memory (limits.py).
        text = read_bounded(path, PROFILE_BYTES).decode("utf-8")
    except FileNotFoundError:
        available = sorted(p.stem for p in PROFILES_DIR.glob("*.toml")) if PROFILES_DIR.is_dir() else []
        raise ProfileError(
            f"{where}: no such profile; available: {', '.join(available) or 'none'} (or give a path to a .toml file)"
        ) from None
    except TooLarge as error:
        raise ProfileError(f"{where}: refused: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileError(f"{where}: cannot be read: {error}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{where}: not valid TOML: {error}") from None
    except NESTING_ERRORS:
        # tomllib is recursive: `a = [[[[...` would otherwise end the run as an internal error.
        raise ProfileError(f"{where}: not valid TOML: arrays or tables nested too deeply") from None
    try:
        profile = Profile.model_validate(document)
    except ValidationError as error:
        # An unknown key first: a typo also makes the intended key "missing", and the typo is the news.
        errors = sorted(error.errors(), key=lambda item: item["type"] != "extra_forbidden")
        first = errors[0]
        more = len(errors) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ProfileError(_one_line(first, document, where) + suffix) from None
    return profile.model_copy(update={"name": path.stem, "path": path.resolve()})
