"""The lab organization: one JSON document that is the whole simulated world.

Both lab servers (WinRM/PSRP for Exchange and SharePoint, Graph + token for Entra
ID) read and change the same `LabState`, and the evidence-bundle builder turns it
into the files an administrator's collector would write. Keeping the world in the
vocabulary of the real products (Exchange's property names as `Get-*` returns
them, Graph's JSON as Graph returns it) is what keeps the emulators faithful: the
state is never a second model of our own facts.

Layout (format ``hybridtrust-lab/1``)::

    {
      "format": "hybridtrust-lab/1",
      "organization": {"Name": "Contoso", "Guid": "<exchange organization guid>",
                       "AdDomain": "contoso.local"},
      "exchange": {                       # on-premises Exchange, per cmdlet noun
        "ExchangeServer": [{...}], "AuthServer": [...], "PartnerApplication": [...],
        "AuthConfig": [{...}],            # exactly one object
        "ExchangeCertificate": [{"Server": "EX01", "RawData": "<base64 DER>", ...}],
        "OrganizationConfig": [{...}], "IntraOrganizationConnector": [...],
        "AvailabilityAddressSpace": [...], "SettingOverride": [...],
        "ClientAccessService": [...], "AcceptedDomain": [...], "User": [...],
        "MailUser": [...], "ManagementRoleAssignment": [...],
        "MapiVirtualDirectory": [...], "WebServicesVirtualDirectory": [...],
        "OabVirtualDirectory": [...], "AutodiscoverVirtualDirectory": [...],
        "ActiveSyncVirtualDirectory": [...], "OwaVirtualDirectory": [...],
        "EcpVirtualDirectory": [...]
      },
      "exchange_online": {"IntraOrganizationConnector": [...]},
      "sharepoint": {                     # the farm, per cmdlet noun / projection
        "AuthenticationRealm": "<realm>",
        "TrustedSecurityTokenIssuer": [...], "ServiceApplicationProxy": [...],
        "AppPrincipal": [...], "SecurityTokenServiceConfig": {...},
        "AuthenticationProvider": [...]
      },
      "tenants": {                        # Entra ID, per tenant id, Graph v1.0 JSON
        "<tenant id>": {
          "organization": {...}, "domains": [...],
          "servicePrincipals": [...], "applications": [...],
          "clients": [{"appId": ..., "displayName": ..., "secret": ...,
                       "certificate": "<base64 DER>" | null,
                       "permissions": ["Application.Read.All"]}]
        }
      },
      "credentials": {"exchange": {"username": ..., "password": ...},
                      "sharepoint": {"username": ..., "password": ...}}
    }

Exchange objects keep Exchange's property names and JSON-native values: strings,
booleans, integers, ``null``; lists for multi-valued properties (enum lists hold
the enum names, e.g. ``["Ntlm", "OAuth"]``); ISO 8601 strings for dates;
certificates as base64 DER in ``RawData``. Every object carries ``Identity`` and
``Guid``; virtual directories and certificates carry ``Server`` (the server Name).
The lab's type table (``hybridtrust.lab.exchange_objects``) knows which
properties are enums, dates, URIs or multi-valued, so the state stays plain JSON.

Further keys the lab builders (``hybridtrust.lab.contoso``) write and the lab
endpoints read, all optional:

- ``organization``: ``DomainController`` (OriginatingServer, the ``<dc>`` of
  object-not-found errors), ``PartitionGuid``, ``WhenCreated`` (default object
  dates), ``SmtpDomains`` (on-premises primary SMTP domains),
  ``NamespaceCertificateAuthority`` (base64 DER of the CA of the namespace cert).
- ``ExchangeCertificate`` objects: ``Server`` and ``Identity`` (``EX01\\<thumbprint>``)
  are the lab's bookkeeping; only ``RawData`` is a property of the real object.
- ``sharepoint``: ``AppPrincipal[].Site`` (the site it is registered on),
  ``ServiceApplicationProxy[].InDefaultProxyGroup`` (membership of the default
  proxy group, which the collector notes on each proxy), and the projections
  ``SecurityTokenServiceConfig`` {Name, AllowOAuthOverHttp, SigningCertificate
  (base64 DER), WebApplicationUrl} and ``AuthenticationProvider`` [{WebApplicationUrl,
  Zone, DisplayName, ClaimProviderName, UseWindowsIntegratedAuthentication,
  DisableKerberos, UseBasicAuthentication, AllowAnonymous}].
- ``tenants.<id>``: ``stsSigningCertificates`` (base64 DER the tenant's token
  service signs with; the AuthServers' CertificateStrings carry the same), and
  per client ``certificate_private_key`` (PEM, lab secret like ``secret``).
- ``lab``: ``{"servers_down": ["EX03"]}``: servers whose IIS does not answer, so
  ``Get-*VirtualDirectory`` without ``-ADPropertiesOnly`` fails for them.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FORMAT = "hybridtrust-lab/1"

EXCHANGE_NOUNS = (
    "ExchangeServer",
    "AuthServer",
    "PartnerApplication",
    "AuthConfig",
    "ExchangeCertificate",
    "OrganizationConfig",
    "IntraOrganizationConnector",
    "AvailabilityAddressSpace",
    "SettingOverride",
    "ClientAccessService",
    "AcceptedDomain",
    "User",
    "MailUser",
    "ManagementRoleAssignment",
    "MapiVirtualDirectory",
    "WebServicesVirtualDirectory",
    "OabVirtualDirectory",
    "AutodiscoverVirtualDirectory",
    "ActiveSyncVirtualDirectory",
    "OwaVirtualDirectory",
    "EcpVirtualDirectory",
)


class LabStateError(ValueError):
    """A lab state file that cannot be used; the message names the file and the key."""


class LabState:
    """The simulated organization, shared by every lab endpoint of one lab.

    Endpoints serve requests from several threads: every read or change goes
    through `lock`, and `changed()` persists the document when a state file was
    given, so state outlives the process (``serve --state FILE``).
    """

    def __init__(self, document: dict[str, Any], path: Path | None = None) -> None:
        if document.get("format") != FORMAT:
            where = path or "<lab state>"
            raise LabStateError(f"{where}: key 'format' is {document.get('format')!r}, expected {FORMAT!r}")
        self.document = document
        self.path = path
        self.lock = threading.RLock()
        self.revision = 0
        """Advanced by every `changing()`: what hybridtrust.lab.output_cache and `derived` key on."""
        self.output_cache: Any = None
        """hybridtrust.lab.output_cache.OutputCache when a benchmark turned it on (off by default)."""
        self._derived: dict[str, _Derived] = {}

    @classmethod
    def load(cls, path: Path) -> LabState:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise LabStateError(f"{path}: cannot read the lab state: {error}") from error
        return cls(document, path)

    def copy(self) -> LabState:
        return LabState(copy.deepcopy(self.document))

    # -- the parts of the world -------------------------------------------------
    @property
    def exchange(self) -> dict[str, list[dict[str, Any]]]:
        return self.document.setdefault("exchange", {})

    @property
    def exchange_online(self) -> dict[str, list[dict[str, Any]]]:
        return self.document.setdefault("exchange_online", {})

    @property
    def sharepoint(self) -> dict[str, Any]:
        return self.document.setdefault("sharepoint", {})

    @property
    def tenants(self) -> dict[str, dict[str, Any]]:
        return self.document.setdefault("tenants", {})

    @property
    def credentials(self) -> dict[str, dict[str, str]]:
        return self.document.setdefault("credentials", {})

    def objects(self, noun: str) -> list[dict[str, Any]]:
        """The on-premises Exchange objects of one cmdlet noun (``"AuthServer"``)."""
        return self.exchange.setdefault(noun, [])

    def derived(self, name: str, build: Callable[[], T], *sources: Sized) -> T:
        """What ``build`` computes from the document (an index), reused until the organization changes.

        Why: an audit of a 1,000-server organization sends ~1,000 ``Get-ExchangeCertificate
        -Server`` pipelines; scanning every server and certificate for each of them makes the
        audit quadratic, and an index built once makes each lookup O(1).

        The value is rebuilt after every `changing()` (which advances `revision`), and also when
        one of ``sources`` (the lists it is built from) was replaced or changed length, because
        tests and builders edit the document directly too, without ``changing()``. A field edited
        in place without ``changing()`` is not seen (as with hybridtrust.lab.output_cache). While
        a change is under way (an odd `revision`) nothing is cached: the document may be
        half-changed.
        """
        with self.lock:
            if self.revision % 2:
                return build()
            found = self._derived.get(name)
            if found is not None and found.current(self.revision, sources):
                return found.value  # type: ignore[no-any-return]
            value = build()
            self._derived[name] = _Derived(self.revision, sources, tuple(len(s) for s in sources), value)
            return value

    @contextmanager
    def changing(self) -> Iterator[dict[str, Any]]:
        """Hold the lock while a cmdlet or PATCH changes the world, then persist it."""
        with self.lock:
            self.revision += 1
            try:
                yield self.document
            finally:
                self.revision += 1  # what was built from the document before is stale now
            self.save()

    def save(self, path: Path | None = None) -> None:
        """Write the document atomically (a crash never leaves half a state file)."""
        target = path or self.path
        if target is None:
            return
        text = json.dumps(self.document, indent=1, sort_keys=False)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)


@dataclass(frozen=True)
class _Derived:
    """A value `LabState.derived` built, with what it was built from."""

    revision: int
    sources: tuple[Sized, ...]  # the lists themselves: a replaced list is another object
    lengths: tuple[int, ...]
    value: Any

    def current(self, revision: int, sources: tuple[Sized, ...]) -> bool:
        if self.revision != revision or len(self.sources) != len(sources):
            return False
        return all(
            kept is given and len(given) == length
            for kept, given, length in zip(self.sources, sources, self.lengths, strict=True)
        )
