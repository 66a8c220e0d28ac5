"""One organization audited in a run: its profile, where its facts come from, its facts.

Facts are collected once per run and per organization, the first time a test
needs them, whatever the number of servers, tests or subjects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridtrust.facts import Collection, Organization, Tenant
from hybridtrust.profile import Profile
from hybridtrust.sources.evidence import read_evidence_bundle


@dataclass
class Audit:
    profile: Profile
    evidence: Path | None = None
    """Judge this bundle instead of connecting (--evidence, or the profile's [evidence])."""
    save_evidence: Path | None = None
    connectivity: bool = False
    """--connectivity: also run the live probes (metadata documents, Test-OAuthConnectivity)."""
    _organization: Organization | None = field(default=None, repr=False)
    collection_seconds: float | None = field(default=None, repr=False)
    """How long the sources took to collect this organization (the results document's timings.sources_s)."""

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def mode(self) -> str:
        if self.evidence is not None:
            return "evidence"
        if self.profile.lab is not None:
            return "lab"
        return "live"

    def organization(self) -> Organization:
        if self._organization is None:
            started = time.perf_counter()
            collection = self._collect()
            self.collection_seconds = time.perf_counter() - started
            self._organization = self._build(collection)
        return self._organization

    def _collect(self) -> Collection:
        tenant_ids = [tenant.id for tenant in self.profile.tenants]
        if self.evidence is not None:
            collection = read_evidence_bundle(self.evidence, tenant_ids)
        else:
            from hybridtrust.sources.live import collect_live

            collection = collect_live(self.profile, connectivity=self.connectivity)
            if self.save_evidence is not None:
                from hybridtrust.sources.save import save_evidence_bundle

                save_evidence_bundle(collection, self.save_evidence)
        return collection

    def _build(self, collection: Collection) -> Organization:
        cloud = self.profile.cloud
        tenants = [
            Tenant(tenant.id, tenant.initial_domain, cloud, collection.tenants.get(tenant.id))
            for tenant in self.profile.tenants
        ]
        return Organization(self.profile, collection, cloud, tenants)
