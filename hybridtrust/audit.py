"""One organization audited in a run: its profile, where its facts come from, its facts.

Facts are collected once per run and per organization, the first time a test
needs them, whatever the number of servers, tests or subjects.
"""

from __future__ import annotations

import concurrent.futures
import threading
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """One collection even when `collect_concurrently` and a test ask at the same time."""

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
        if self._organization is not None:
            return self._organization
        with self._lock:
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

            # Each record's CLIXML as sent is kept only when it is to be saved (80 MB at 1,000 servers).
            collection = collect_live(
                self.profile, connectivity=self.connectivity, keep_clixml=self.save_evidence is not None
            )
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


MAX_CONCURRENT_COLLECTIONS = 8
"""Organizations collected at the same time when a run audits several live ones."""


def collect_concurrently(audits: list[Audit]) -> None:
    """Start collecting every live organization of the run at once, in the background.

    A live collection mostly waits for the network, so twenty organizations one after the
    other cost twenty times that wait; collected side by side they cost little more than
    the slowest. Each audit's own lock keeps it to one collection: the first test that
    needs an organization waits for its collection to end. Evidence bundles are read
    where they are needed (reading is CPU, which threads do not share). Every source has
    its timeouts and fails closed, so no thread can hold up or break the run.
    """
    live = [audit for audit in audits if audit.evidence is None and audit._organization is None]
    if len(live) < 2:
        return
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(MAX_CONCURRENT_COLLECTIONS, len(live)), thread_name_prefix="hybridtrust-collect"
    )
    for audit in live:
        pool.submit(audit.organization)
    pool.shutdown(wait=False)
