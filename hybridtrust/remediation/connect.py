"""Where fixes are sent, and as whom: the profile's endpoints, or a lab's, with the WRITE identity for Graph.

The audit reads Entra ID with the least privilege (Application.Read.All); fixes need
Application.ReadWrite.All, so each tenant may name a second credential,
``[tenants.remediation_credential]`` (same keys as ``[tenants.credential]``); without it
the audit credential is used and Graph's 403 says what is missing. A lab hands out a
``read_write`` client per tenant for the same purpose.

Exchange and SharePoint are reached exactly as the live sources reach them (the same
settings, the same lab connection), so a fix talks to the servers the audit read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hybridtrust.profile import Profile
from hybridtrust.sources.graph import CredentialSpec, GraphEndpoints, endpoints_from_profile
from hybridtrust.sources.live import embedded_lab, lab_connections, profile_connections
from hybridtrust.sources.remoting import RemotingSettings, SettingsError


@dataclass
class Targets:
    """The endpoints one organization's fixes go to."""

    origin: str
    exchange: RemotingSettings | SettingsError | None
    sharepoint: RemotingSettings | SettingsError | None
    graph: GraphEndpoints | None
    graph_credentials: dict[str, CredentialSpec | str] = field(default_factory=dict)
    """tenant id -> the write credential, or why that tenant cannot be changed."""
    graph_unavailable: str | None = None


def targets_for(profile: Profile) -> Targets:
    if profile.lab is not None:
        return _lab_targets(profile)
    connections = profile_connections(profile)
    credentials: dict[str, CredentialSpec | str] = {}
    for tenant in profile.tenants:
        # Optional key added by the remediation work; older profile models simply lack it.
        chosen = getattr(tenant, "remediation_credential", None) or tenant.credential
        spec = CredentialSpec.from_profile(chosen)
        if spec.certificate_file is not None:
            spec = replace(spec, certificate_file=profile.resolve(spec.certificate_file))
        credentials[tenant.id] = spec
    return Targets(
        origin=connections.origin,
        exchange=connections.exchange,
        sharepoint=connections.sharepoint,
        graph=endpoints_from_profile(profile),
        graph_credentials=credentials,
    )


def _lab_description(profile: Profile) -> tuple[Mapping[str, Any] | str, str]:
    assert profile.lab is not None
    if profile.lab.mode == "embedded":
        # The same running lab the audit of this process read (started on first use).
        return embedded_lab(profile).describe(), "lab (embedded)"
    path = profile.resolve(profile.lab.connection)
    if path is None:
        return "[lab] mode = 'external' needs connection, the file with the lab's JSON line", "lab (unreachable)"
    try:
        line = next((text for text in Path(path).read_text(encoding="utf-8").splitlines() if text.strip()), "")
        description = json.loads(line)
    except (OSError, ValueError) as error:
        return f"the lab connection file {path} cannot be read: {error}", "lab (unreachable)"
    if not isinstance(description, dict):
        return f"the lab connection file {path} holds no JSON object", "lab (unreachable)"
    return description, f"lab (external, {path})"


def _lab_targets(profile: Profile) -> Targets:
    description, origin = _lab_description(profile)
    if isinstance(description, str):
        error = SettingsError(description)
        return Targets(origin, error, error, None, graph_unavailable=description)
    connections = lab_connections(profile, description, origin=origin)
    graph = description.get("graph")
    if not isinstance(graph, Mapping):
        return Targets(
            origin,
            connections.exchange,
            connections.sharepoint,
            None,
            graph_unavailable="the lab runs no Graph endpoint",
        )
    endpoints = GraphEndpoints(
        authority=str(graph["authority"]),
        graph_base_url=str(graph["base_url"]),
        ca_file=Path(str(graph["ca_file"])),
        timeout_s=profile.entra.timeout_seconds,
    )
    credentials: dict[str, CredentialSpec | str] = {}
    tenants: Mapping[str, Any] = graph.get("tenants") or {}
    for tenant in profile.tenants:
        client = (tenants.get(tenant.id) or {}).get("read_write")
        if not client or not client.get("certificate_file"):
            credentials[tenant.id] = f"the lab has no read-write client for tenant {tenant.id}"
            continue
        credentials[tenant.id] = CredentialSpec(
            method="certificate", client_id=client["client_id"], certificate_file=Path(client["certificate_file"])
        )
    return Targets(origin, connections.exchange, connections.sharepoint, endpoints, credentials)


__all__ = ["Targets", "targets_for"]
