"""The Microsoft 365 clouds: every cloud-specific host the suite knows, in one table.

No check names a host: each asks the profile's `Cloud` (REQUIREMENTS.md, "Versions
and hosts the rows rely on"). A sovereign cloud differs in every column, and a
check that hard-coded the global host would pass a China tenant for the wrong
reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CloudName = Literal["global", "gcchigh", "dod", "china"]


@dataclass(frozen=True)
class Cloud:
    name: CloudName
    title: str
    login_hosts: tuple[str, ...]
    """The authority host first, then older hosts that metadata URLs still use."""
    graph_host: str
    exchange_online_ews_host: str
    autodiscover_hosts: tuple[str, ...]
    """Hosts whose Autodiscover an on-premises IntraOrganizationConnector may name."""
    acs_host: str
    coexistence_suffix: str | None
    """`<prefix>.<suffix>` is the coexistence domain; None: take it from Graph domains."""
    auth_server_type: Literal["AzureAD", "MicrosoftACS"]
    """The AuthServer type of the Exchange OAuth documents for this cloud (S0, S2)."""

    @property
    def authority_host(self) -> str:
        return self.login_hosts[0]

    @property
    def authority(self) -> str:
        return f"https://{self.authority_host}"

    @property
    def graph_base_url(self) -> str:
        return f"https://{self.graph_host}/v1.0"

    @property
    def graph_scope(self) -> str:
        return f"https://{self.graph_host}/.default"

    @property
    def exchange_online_ews_url(self) -> str:
        return f"https://{self.exchange_online_ews_host}/ews/exchange.asmx"

    def federation_metadata_urls(self, domain_or_tenant: str) -> list[str]:
        """The evoSTS metadata URLs S0/S3 document for an AzureAD AuthServer."""
        return [
            f"https://{host}/{domain_or_tenant}/FederationMetadata/2007-06/FederationMetadata.xml"
            for host in self.login_hosts
        ]

    def acs_metadata_url(self, domain_or_tenant: str) -> str:
        return f"https://{self.acs_host}/{domain_or_tenant}/metadata/json/1"

    def autodiscover_endpoints(self) -> list[str]:
        return [f"https://{host}/autodiscover/autodiscover.svc" for host in self.autodiscover_hosts]


CLOUDS: dict[str, Cloud] = {
    "global": Cloud(
        name="global",
        title="Microsoft 365 (worldwide, GCC)",
        login_hosts=("login.microsoftonline.com", "login.windows.net"),
        graph_host="graph.microsoft.com",
        exchange_online_ews_host="outlook.office365.com",
        autodiscover_hosts=("autodiscover-s.outlook.com", "outlook.office365.com"),
        acs_host="accounts.accesscontrol.windows.net",
        coexistence_suffix="mail.onmicrosoft.com",
        auth_server_type="AzureAD",
    ),
    "gcchigh": Cloud(
        name="gcchigh",
        title="Microsoft 365 GCC High",
        login_hosts=("login.microsoftonline.us",),
        graph_host="graph.microsoft.us",
        exchange_online_ews_host="outlook.office365.us",
        autodiscover_hosts=("autodiscover-s.office365.us",),
        acs_host="login.microsoftonline.us",
        coexistence_suffix="mail.onmicrosoft.us",
        auth_server_type="AzureAD",
    ),
    "dod": Cloud(
        name="dod",
        title="Microsoft 365 DoD",
        login_hosts=("login.microsoftonline.us",),
        graph_host="dod-graph.microsoft.us",
        exchange_online_ews_host="outlook-dod.office365.us",
        autodiscover_hosts=("autodiscover-s-dod.office365.us",),
        acs_host="login.microsoftonline.us",
        coexistence_suffix="mail.onmicrosoft.us",
        auth_server_type="AzureAD",
    ),
    "china": Cloud(
        name="china",
        title="Office 365 operated by 21Vianet",
        login_hosts=("login.partner.microsoftonline.cn", "login.chinacloudapi.cn"),
        graph_host="microsoftgraph.chinacloudapi.cn",
        exchange_online_ews_host="partner.outlook.cn",
        autodiscover_hosts=("partner.outlook.cn",),
        acs_host="accounts.accesscontrol.chinacloudapi.cn",
        coexistence_suffix=None,
        auth_server_type="MicrosoftACS",
    ),
}


def cloud(name: str) -> Cloud:
    try:
        return CLOUDS[name]
    except KeyError:
        raise ValueError(f"unknown cloud {name!r}; expected one of {', '.join(CLOUDS)}") from None
