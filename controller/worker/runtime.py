"""The worker's state: the policy snapshot it serves, the loaded versions, degradation.

`WorkerRuntime.refresh()` re-reads the snapshot (every `refreshSeconds`), loads
the routed versions it does not have yet (artifact sha256 verified), retries
degraded ones on an exponential backoff, and reports the applied policyVersion
into `worker_state`. `search()` is the whole request path short of HTTP: route,
features, index search, thresholds, run record. Everything blocking here is
sync; the HTTP layer calls it from an executor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from controller import metrics
from controller.errors import StructuredError
from controller.records import PolicySnapshot, RunRecord, VersionRow
from controller.routing import Choice, choose_version, routable
from controller.search.artifacts import Artifact, ArtifactError, load_artifact
from controller.search.fetch import Fetcher
from controller.search.pickle_scan import UnsafeArtifact
from controller.store.repository import Store

log = logging.getLogger("cadml.worker")


class WorkerError(StructuredError):
    """A request the worker cannot serve, answered with HTTP `status`."""

    def __init__(self, message: str, *, code: str, stage: str, status: int,
                 context: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, stage=stage, context=context)
        self.status = status


@dataclass(frozen=True)
class WorkerSettings:
    tenant: str
    model: str
    store_url: str
    worker_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    pickle_mode: str = "whitelist"
    backoff_initial: float = 300.0
    backoff_factor: float = 2.0
    backoff_max: float = 3600.0
    admin_token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    default_top_k: int = 10
    max_top_k: int = 100
    parallel_batch_threshold: int = 64
    sandbox_workers: int = 2
    cpu_seconds: float = 10.0
    hnsw_ef_search: int | None = None
    probe_seconds: float | None = None  # None: min(1 s, refreshSeconds / 4)
    artifact_cache: str | None = None  # None: fetch.default_cache()
    artifact_max_bytes: int = 4 * 1024**3


@dataclass
class LoadedVersion:
    row: VersionRow
    artifact: Artifact
    degraded: str | None
    next_retry: float | None = None  # monotonic time of the next automatic recovery
    backoff: float = 0.0
    manual_until: float | None = None  # a manual attempt pauses the automatic one


@dataclass
class Hit:
    id: str
    distance: float
    score: float


@dataclass
class SearchOutcome:
    run_key: str
    job_id: str
    version: str
    policy_version: int
    route_source: str
    thresholds: dict[str, Any]
    hits: list[Hit]
    met_threshold: bool
    latency_ms: float
    degraded: bool
    binding: str | None = None  # the job's binding: active | suspended; None: not bound

    def as_json(self) -> dict[str, Any]:
        return {"runKey": self.run_key, "jobId": self.job_id, "version": self.version,
                "policyVersion": self.policy_version, "routeSource": self.route_source,
                "decision": "PENDING_REVIEW", "reviewStatus": "PENDING_REVIEW",
                "thresholds": self.thresholds, "metThreshold": self.met_threshold,
                "degraded": self.degraded, "latencyMs": round(self.latency_ms, 3),
                "binding": self.binding,
                "results": [{"id": h.id, "distance": h.distance, "score": h.score}
                            for h in self.hits]}


class WorkerRuntime:
    def __init__(self, store: Store, settings: WorkerSettings) -> None:
        self.store = store
        self.settings = settings
        self.snapshot: PolicySnapshot | None = None
        self.versions: dict[str, LoadedVersion] = {}
        self.bindings: dict[str, str] = {}
        self.bindings_seen = 0  # the store's binding change marker this map is up to
        self.load_errors: dict[str, str] = {}
        # versions whose artifact failed to load: (what was tried, next attempt, backoff)
        self.failed: dict[str, tuple[tuple[Any, ...], float, float]] = {}
        self.last_refresh: float | None = None
        self.fetcher = Fetcher(Path(settings.artifact_cache) if settings.artifact_cache
                               else None, max_bytes=settings.artifact_max_bytes)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- refresh

    def refresh(self, now: float | None = None) -> None:
        """Read the policy snapshot, load what it routes to, report what is applied."""
        now = time.monotonic() if now is None else now
        s = self.settings
        with self.store.read(s.tenant, s.worker_id) as tx:
            snap = tx.serving_snapshot(s.model)
            rows = {v.version: v for v in tx.versions(s.model)}
            changes, seen = tx.binding_changes(s.model, self.bindings_seen)
        bindings = {**self.bindings, **{j: v for j, v in changes.items() if v is not None}}
        for job in (j for j, v in changes.items() if v is None):
            bindings.pop(job, None)
        wanted = set(routable(snap.routes)) if snap else set()  # never for a binding alone
        loaded: dict[str, LoadedVersion] = {}
        for version in sorted(wanted):
            row = rows.get(version)
            if row is None:
                continue
            current = self.versions.get(version)
            if current and self._attempt_key(current.row) == self._attempt_key(row):
                loaded[version] = self._maybe_recover(current, now)
                continue
            lv = self._load_or_back_off(row, now)
            if lv is not None:
                loaded[version] = lv
        for version in set(self.failed) - wanted:
            self.failed.pop(version)
            self.load_errors.pop(version, None)
        with self._lock:
            self.snapshot, self.versions, self.bindings = snap, loaded, bindings
            self.bindings_seen = seen
            self.last_refresh = now
        degraded = any(v.degraded for v in loaded.values())
        for version, lv in loaded.items():
            metrics.WORKER_DEGRADED.labels(s.tenant, s.model, version).set(
                1 if lv.degraded else 0)
        applied = snap.policy_version if snap else 0
        metrics.WORKER_POLICY_VERSION.labels(s.tenant, s.model).set(applied)
        with self.store.transaction(s.tenant, s.worker_id) as tx:
            tx.report_worker(s.worker_id, s.model, applied, degraded, {
                "versions": sorted(loaded), "loadErrors": self.load_errors,
                "search": {v: lv.artifact.index.describe() for v, lv in loaded.items()},
                "degraded": {v: lv.degraded for v, lv in loaded.items() if lv.degraded}})

    @staticmethod
    def _attempt_key(row: VersionRow) -> tuple[Any, ...]:
        """What a loaded version is made of: a change means loading it again."""
        return row.artifact_uri, row.artifact_sha256, row.artifact_format, row.ef_search

    def _load_or_back_off(self, row: VersionRow, now: float) -> LoadedVersion | None:
        """Load a version not yet loaded. After a failure the same artifact is tried again
        with the recovery backoff (not at every refresh); a changed artifact at once."""
        key, failed = self._attempt_key(row), self.failed.get(row.version)
        retrying = failed is not None and failed[0] == key
        if failed is not None and retrying and now < failed[1]:
            return None
        lv = self._load(row, now)
        if lv is not None:
            self.failed.pop(row.version, None)
            return lv
        s = self.settings
        backoff = min(failed[2] * s.backoff_factor, s.backoff_max) \
            if failed is not None and retrying else s.backoff_initial
        self.failed[row.version] = (key, now + backoff, backoff)
        log.error("version %s: next load attempt in %.0f s (POST /admin/recover to retry now)",
                  row.version, backoff)
        return None

    def _load(self, row: VersionRow, now: float) -> LoadedVersion | None:
        s = self.settings
        try:
            artifact = load_artifact(row.artifact_uri, row.artifact_sha256, row.artifact_format,
                                     pickle_mode=s.pickle_mode,
                                     ef_search=row.ef_search or s.hnsw_ef_search,
                                     fetcher=self.fetcher)
        except (ArtifactError, UnsafeArtifact) as exc:
            self.load_errors[row.version] = f"{exc.code}: {exc}"
            if isinstance(exc, UnsafeArtifact):
                metrics.ARTIFACT_REFUSALS.labels(s.tenant, s.model, exc.code).inc()
            log.error("version %s not loaded: %s", row.version, exc)
            return None
        self.load_errors.pop(row.version, None)
        if artifact.scan is not None and s.pickle_mode == "audit":
            with self.store.transaction(s.tenant, s.worker_id) as tx:
                tx.audit("artifact-scan", "ModelVersion", row.name, artifact.scan.as_dict())
        lv = LoadedVersion(row, artifact, artifact.degraded)
        if lv.degraded:
            lv.backoff = s.backoff_initial
            lv.next_retry = now + lv.backoff
        return lv

    def _maybe_recover(self, lv: LoadedVersion, now: float) -> LoadedVersion:
        if not lv.degraded or lv.next_retry is None or now < lv.next_retry:
            return lv
        if lv.manual_until is not None and now < lv.manual_until:
            return lv
        return self.recover(lv.row.version, now, manual=False) or lv

    def recover(self, version: str, now: float | None = None, *,
                manual: bool = True) -> LoadedVersion | None:
        """Try to load a degraded version's index again; on failure back off by the factor."""
        now = time.monotonic() if now is None else now
        lv = self.versions.get(version)
        if lv is None:
            if manual and version in self.failed:  # never loaded: retry at the next refresh
                self.failed.pop(version)
                self.refresh(now)
                return self.versions.get(version)
            return None
        fresh = self._load(lv.row, now)
        s = self.settings
        if fresh is not None and not fresh.degraded:
            with self._lock:
                self.versions[version] = fresh
            return fresh
        lv.backoff = min(max(lv.backoff, s.backoff_initial) * s.backoff_factor, s.backoff_max) \
            if not manual else max(lv.backoff, s.backoff_initial)
        lv.next_retry = now + lv.backoff
        if manual:
            lv.manual_until = lv.next_retry
        if fresh is not None:
            lv.degraded = fresh.degraded
        return lv

    def published_version(self) -> int | None:
        """The policyVersion the store has now: one indexed row, cheap to poll often."""
        s = self.settings
        with self.store.read(s.tenant, s.worker_id) as tx:
            return tx.policy_version_of(s.model)

    # ---------------------------------------------------------------- requests

    def ready(self) -> tuple[bool, dict[str, Any]]:
        snap = self.snapshot
        ok = snap is not None and bool(self.versions)
        return ok, {
            "policyVersion": snap.policy_version if snap else None,
            "versions": {v: ("Degraded: " + lv.degraded) if lv.degraded else "Ready"
                         for v, lv in self.versions.items()},
            "search": {v: lv.artifact.index.describe() for v, lv in self.versions.items()},
            "loadErrors": dict(self.load_errors),
            "degraded": any(lv.degraded for lv in self.versions.values()),
        }

    def choose(self, job_id: str) -> tuple[Choice, LoadedVersion, PolicySnapshot]:
        with self._lock:
            snap, versions, bindings = self.snapshot, self.versions, self.bindings
        if snap is None:
            raise WorkerError("no rollout policy is published and no version is STABLE",
                              code="no_policy", stage="route", status=503)
        choice = choose_version(job_id, snap.routes, snap.source, bindings.get(job_id),
                                frozenset(versions))
        if choice is None:
            raise WorkerError("the version this job routes to is not loaded",
                              code="version_unavailable", stage="route", status=503,
                              context={"loadErrors": dict(self.load_errors)})
        return choice, versions[choice.version], snap

    def search(self, vectors: np.ndarray, job_ids: list[str], k: int,
               record: bool = True) -> list[SearchOutcome]:
        """Route each query, search its version's index, record every run."""
        start = time.perf_counter()
        k = self._top_k(k)
        groups: dict[str, list[int]] = {}
        chosen: list[tuple[Choice, LoadedVersion, PolicySnapshot]] = []
        for i, job in enumerate(job_ids):
            c = self.choose(job)
            chosen.append(c)
            groups.setdefault(c[0].version, []).append(i)
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for version, rows in groups.items():
            lv = chosen[rows[0]][1]
            q = vectors[rows]
            if q.shape[1] != lv.artifact.vectors.shape[1]:
                raise WorkerError(
                    f"query has {q.shape[1]} dimensions, version {version} expects "
                    f"{lv.artifact.vectors.shape[1]}", code="dimension_mismatch",
                    stage="search", status=422)
            dist, ids = lv.artifact.index.search(q, k)
            for j, row in enumerate(rows):
                found[row] = (dist[j], ids[j])
        elapsed = (time.perf_counter() - start) * 1000.0 / max(len(job_ids), 1)
        outcomes = []
        for i, job in enumerate(job_ids):
            choice, lv, snap = chosen[i]
            dist, ids = found[i]
            hits = [Hit(lv.artifact.ids[int(x)], float(d), 1.0 / (1.0 + float(d)))
                    for d, x in zip(dist, ids, strict=True) if x >= 0]
            thresholds = dict(snap.thresholds.get(choice.version, {}))
            limit = thresholds.get("similarity", {}).get("value")
            met = bool(hits) and (limit is None or hits[0].score >= float(limit))
            outcomes.append(SearchOutcome(uuid.uuid4().hex, job, choice.version,
                                          snap.policy_version, choice.source, thresholds,
                                          hits, met, elapsed, lv.degraded is not None,
                                          choice.binding))
        if record:
            self.record(outcomes)
        return outcomes

    def _top_k(self, k: int) -> int:
        if not 1 <= k <= self.settings.max_top_k:
            raise WorkerError(f"topK must be within 1..{self.settings.max_top_k}",
                              code="bad_top_k", stage="request", status=400)
        return k

    def record(self, outcomes: list[SearchOutcome], error_code: str | None = None) -> None:
        s = self.settings
        runs = [RunRecord(s.model, o.version, o.policy_version, o.route_source, o.thresholds,
                          o.latency_ms, error_code is None, o.met_threshold, job_key=o.job_id,
                          ai_suggestion=(o.hits[0].id if o.hits else None),
                          error_code=error_code, run_key=o.run_key,
                          created_at=datetime.now(UTC), binding_state=o.binding)
                for o in outcomes]
        with self.store.transaction(s.tenant, s.worker_id) as tx:
            tx.record_runs(runs)
        for o in outcomes:
            metrics.WORKER_REQUESTS.labels(s.tenant, s.model, o.version, o.route_source).inc()
            metrics.RUN_LATENCY.labels(s.tenant, s.model, o.version).observe(
                o.latency_ms / 1000.0)
