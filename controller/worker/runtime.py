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
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from controller import metrics
from controller.errors import StructuredError
from controller.features.identity import extractor_version, mismatched
from controller.records import PolicySnapshot, VersionRow
from controller.routing import Choice, choose_version, routable
from controller.search.artifacts import Artifact, load_artifact
from controller.search.fetch import Fetcher
from controller.search.loader import LoaderLimits
from controller.search.pickle_scan import ScanReport, UnsafeArtifact, check_mode
from controller.store.repository import Store
from controller.worker.events import EVENTS, emit
from controller.worker.recorder import RUN_RECORDERS, RecorderProcess, RunRow, commit_rows
from controller.worker.runkeys import new_run_key
from controller.worker.thresholds import judge_thresholds

log = logging.getLogger("cadml.worker")


def load_error(exc: BaseException) -> tuple[str, str]:
    """(kind, message) of a failed load: a structured error's code, else the exception's
    type; the message bounded (a hostile artifact chooses it)."""
    kind = exc.code if isinstance(exc, StructuredError) else type(exc).__name__
    return kind, str(exc)[:500]


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
    max_concurrent_uploads: int = 8  # drawings read or parsed at once; beyond: 429
    hnsw_ef_search: int | None = None
    probe_seconds: float | None = None  # None: min(1 s, refreshSeconds / 4)
    artifact_cache: str | None = None  # None: fetch.default_cache()
    artifact_max_bytes: int = 4 * 1024**3
    loader_memory_bytes: int = 2 * 1024**3  # the child that deserialises pickle/npz
    loader_cpu_seconds: float = 60.0
    run_linger_seconds: float = 0.002  # under load, a run batch waits this long for company
    run_commit_timeout: float = 10.0  # a request waits this long for its commit, then 503
    # where runs are committed: "process" (a recorder process of its own, recorder.py: the
    # insert does not take the serving process's GIL) or "thread" (the run writer's)
    run_recorder: str = "thread"

    def __post_init__(self) -> None:
        check_mode(self.pickle_mode)  # a removed mode fails at start, naming its replacement
        if self.run_recorder not in RUN_RECORDERS:
            raise ValueError(f"run_recorder must be one of {', '.join(RUN_RECORDERS)}")


# A single query over at most this many stored floats (~50 µs of flat scan) is searched
# on the event loop: handing it to an executor thread costs more than the search itself
# (two GIL hand-offs per request, measured by bench/worker_bench.py's HTTP figure).
INLINE_SEARCH_FLOATS = 1 << 18


@dataclass
class LoadedVersion:
    row: VersionRow
    artifact: Artifact
    degraded: str | None
    next_retry: float | None = None  # monotonic time of the next automatic recovery
    backoff: float = 0.0
    manual_until: float | None = None  # a manual attempt pauses the automatic one

    @property
    def inline(self) -> bool:
        """Whether one query is cheap enough to search without leaving the event loop."""
        return search_inline(*self.artifact.vectors.shape)


def search_inline(rows: int, dims: int, queries: int = 1) -> bool:
    """Purely computational: whether a search of `queries` over rows x dims stored floats
    is cheaper than an executor hop (an upper bound for HNSW, which scans far less)."""
    return rows * dims * queries <= INLINE_SEARCH_FLOATS


@dataclass(slots=True)
class Hit:
    id: str
    distance: float
    score: float


@dataclass(frozen=True, slots=True)
class Route:
    """Where a job was sent (version and why) under which snapshot; `loaded` is None when
    that version is not loaded here (the request still becomes a run, a failed one)."""

    job_id: str
    choice: Choice
    snap: PolicySnapshot
    loaded: LoadedVersion | None


@dataclass
class SearchOutcome:
    """One routed request: found results, or the error it failed with. Either way a run."""

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
    error: StructuredError | None = None
    failed_thresholds: tuple[str, ...] = ()
    unapplied_thresholds: tuple[str, ...] = ()
    parse_ms: float | None = None
    search_ms: float | None = None
    binding: str | None = None  # the job's binding: active | suspended; None: not bound
    started: float | None = None  # perf_counter at the request's start: latency ends at record

    @property
    def error_code(self) -> str | None:
        return None if self.error is None else self.error.code

    def as_json(self) -> dict[str, Any]:
        body = {"runKey": self.run_key, "jobId": self.job_id, "version": self.version,
                "policyVersion": self.policy_version, "routeSource": self.route_source,
                "decision": "PENDING_REVIEW", "reviewStatus": "PENDING_REVIEW",
                "thresholds": self.thresholds, "metThreshold": self.met_threshold,
                "failedThresholds": list(self.failed_thresholds),
                "degraded": self.degraded, "latencyMs": round(self.latency_ms, 3),
                "parseMs": None if self.parse_ms is None else round(self.parse_ms, 3),
                "searchMs": None if self.search_ms is None else round(self.search_ms, 3),
                "binding": self.binding,
                "results": [{"id": h.id, "distance": h.distance, "score": h.score}
                            for h in self.hits]}
        if self.unapplied_thresholds:
            body["unappliedThresholds"] = list(self.unapplied_thresholds)
        if self.error is not None:
            body["error"] = self.error.as_json()
        return body


def log_changes(before: PolicySnapshot | None, after: PolicySnapshot | None,
                previous: dict[str, LoadedVersion], loaded: dict[str, LoadedVersion]) -> None:
    """One event per change a refresh applied: the policy, each version loaded or newly
    degraded (failures are logged where they happen)."""
    old_pv = before.policy_version if before else None
    new_pv = after.policy_version if after else None
    if old_pv != new_pv:
        emit("policy_applied", oldPolicyVersion=old_pv, policyVersion=new_pv,
             source=after.source if after else None,
             routes={r.version: r.weight for r in after.routes} if after else {})
    for version, lv in loaded.items():
        was = previous.get(version)
        if was is not lv and (was is None or was.artifact is not lv.artifact):
            emit("version_loaded", version=version, degraded=lv.degraded)
        if lv.degraded and (was is None or not was.degraded):
            emit("version_degraded", logging.WARNING, version=version, reason=lv.degraded,
                 retryInSeconds=lv.backoff)


def not_ready_reason(snap: PolicySnapshot | None, loaded: dict[str, Any],
                     load_errors: dict[str, str]) -> str | None:
    """Why a worker cannot serve its snapshot (None: it can). The STABLE version must be
    loaded (without one, a forced override's version); a canary that failed is not
    reason enough: its jobs fail as runs and analysis judges it."""
    if snap is None:
        return "no policy snapshot is published and no version is STABLE"
    needed = [r.version for r in snap.routes if r.is_stable] or \
        [r.version for r in snap.routes[:1]]
    missing = [v for v in needed if v not in loaded]
    if not missing:
        return None if loaded else "no version is loaded"
    return "; ".join(f"version {v} is not loaded: {load_errors.get(v, 'not loaded yet')}"
                     for v in missing)


def hits_of(lv: LoadedVersion, dist: np.ndarray, ids: np.ndarray) -> list[Hit]:
    """An index answer as hits: drawing ids, distances, scores 1 / (1 + distance). A row
    whose distance overflowed float32 (inf, or NaN from inf - inf) is no match, as faiss
    answers it (id -1): the exact search of a Degraded version returned its id."""
    names = lv.artifact.ids
    return [Hit(names[x], d, 1.0 / (1.0 + d))
            for d, x in zip(dist.tolist(), ids.tolist(), strict=True)
            if x >= 0 and math.isfinite(d)]


def recorder_for(store: Store, settings: WorkerSettings) -> RecorderProcess | None:
    """The recorder process the runs go through (None: the run writer's thread commits).
    An in-memory SQLite store lives in this process only: its runs stay here."""
    if settings.run_recorder != "process":
        return None
    url = store.engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        log.warning("an in-memory store: runs are committed by the run writer's thread")
        return None
    return RecorderProcess(url.render_as_string(hide_password=False), settings.tenant,
                           settings.worker_id, settings.model)


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
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.recorder = recorder_for(store, settings)

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
        if snap is not None and snap.shadow is not None:  # loaded to compare, never routed
            wanted.add(snap.shadow.version)
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
            before, previous = self.snapshot, self.versions
            self.snapshot, self.versions, self.bindings = snap, loaded, bindings
            self.bindings_seen = seen
            self.last_refresh = now
        log_changes(before, snap, previous, loaded)
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
        emit("version_load_failed", logging.ERROR, version=row.version,
             error=self.load_errors.get(row.version, "").partition(":")[0],
             message=self.load_errors.get(row.version), retryInSeconds=backoff,
             hint="POST /admin/recover to retry now")
        return None

    def _load(self, row: VersionRow, now: float) -> LoadedVersion | None:
        s = self.settings
        try:
            artifact = load_artifact(row.artifact_uri, row.artifact_sha256, row.artifact_format,
                                     pickle_mode=s.pickle_mode,
                                     ef_search=row.ef_search or s.hnsw_ef_search,
                                     fetcher=self.fetcher, limits=LoaderLimits(
                                         s.loader_memory_bytes, s.loader_cpu_seconds))
        except Exception as exc:  # any failure of one version stays with that version
            self._load_failed(row, exc)
            return None
        if self.load_errors.pop(row.version, None) is not None:
            emit("version_recovered", version=row.version)
        self._audit_scan(row, artifact.scan)
        lv = LoadedVersion(row, artifact, artifact.degraded)
        if mismatched(extractor_version(), {row.version: artifact.manifest.get(
                "extractorVersion")}):
            log.warning("version %s: index built by extractor %s, this worker extracts with "
                        "%s: similarity of uploaded drawings is unreliable until the index "
                        "is rebuilt", row.version, artifact.manifest["extractorVersion"],
                        extractor_version())
        if lv.degraded:
            lv.backoff = s.backoff_initial
            lv.next_retry = now + lv.backoff
        return lv

    def _audit_scan(self, row: VersionRow, report: ScanReport | None) -> None:
        """In audit mode, the census of every scanned pickle, loaded or refused."""
        s = self.settings
        if report is not None and s.pickle_mode == "audit":
            with self.store.transaction(s.tenant, s.worker_id) as tx:
                tx.audit("artifact-scan", "ModelVersion", row.name, report.as_dict())

    def _load_failed(self, row: VersionRow, exc: Exception) -> None:
        """Record why a version did not load: /readyz, worker_state, a metric, the log."""
        s, version = self.settings, row.version
        kind, text = load_error(exc)
        self.load_errors[version] = f"{kind}: {text}"
        if isinstance(exc, UnsafeArtifact):
            metrics.ARTIFACT_REFUSALS.labels(s.tenant, s.model, exc.code).inc()
            self._audit_scan(row, exc.report)
        metrics.WORKER_LOAD_FAILURES.labels(s.tenant, s.model, version, kind).inc()
        log.error("version %s not loaded: %s: %s", version, kind, text)

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
            emit("version_recovered", version=version, was=lv.degraded)
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

    def extractors(self) -> dict[str, Any]:
        """This worker's extractorVersion, each loaded artifact's, and the mismatches."""
        theirs = {v: lv.artifact.manifest.get("extractorVersion")
                  for v, lv in self.versions.items()}
        ours = extractor_version()
        return {"extractorVersion": ours, "artifactExtractors": theirs,
                "extractorMismatch": mismatched(ours, theirs)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        snap = self.snapshot
        s = self.settings
        if snap is None:
            reason: str | None = f"no routing for {s.tenant}/{s.model} yet: " + (
                "the worker has not read its policy snapshot yet" if self.last_refresh is None
                else "the model needs a STABLE version or a RolloutPolicy in the store "
                     "(`cadml status`)")
        else:
            reason = not_ready_reason(snap, self.versions, self.load_errors)
        return reason is None, {
            **({} if reason is None else {"reason": reason}),
            **self.extractors(),
            "policyVersion": snap.policy_version if snap else None,
            "versions": {v: ("Degraded: " + lv.degraded) if lv.degraded else "Ready"
                         for v, lv in self.versions.items()},
            "search": {v: lv.artifact.index.describe() for v, lv in self.versions.items()},
            "loadErrors": dict(self.load_errors),
            "degraded": any(lv.degraded for lv in self.versions.values()),
        }

    def route(self, job_id: str) -> Route:
        """Where this job goes now. Raises only when nothing is published (no run: nothing
        was routed); a version that is not loaded comes back with `loaded` None."""
        with self._lock:
            snap, versions, bindings = self.snapshot, self.versions, self.bindings
        if snap is None:
            raise WorkerError("no rollout policy is published and no version is STABLE",
                              code="no_policy", stage="route", status=503)
        binding = bindings.get(job_id)
        choice = choose_version(job_id, snap.routes, snap.source, binding, frozenset(versions))
        if choice is not None:
            return Route(job_id, choice, snap, versions[choice.version])
        target = choose_version(job_id, snap.routes, snap.source, binding,
                                frozenset(r.version for r in snap.routes))
        if target is None:
            raise WorkerError("the published routes give this job no version",
                              code="no_route", stage="route", status=503)
        return Route(job_id, target, snap, None)

    def choose(self, job_id: str) -> tuple[Choice, LoadedVersion, PolicySnapshot]:
        r = self.route(job_id)
        if r.loaded is None:
            raise self.unavailable(r)
        return r.choice, r.loaded, r.snap

    def unavailable(self, r: Route) -> WorkerError:
        version = r.choice.version
        why = self.load_errors.get(version, "not loaded yet")
        return WorkerError(f"job {r.job_id} routes to version {version} ({r.choice.source}), "
                           f"which this worker has not loaded: {why}",
                           code="version_unavailable", stage="route", status=503,
                           context={"version": version, "jobId": r.job_id,
                                    "routeSource": r.choice.source, "loadError": why})

    def search(self, vectors: np.ndarray, job_ids: list[str], k: int,
               record: bool = True) -> list[SearchOutcome]:
        """Route each query, search its version's index, record every run (failed too)."""
        started = time.perf_counter()
        outcomes = self.search_routed([self.route(j) for j in job_ids], list(vectors), k,
                                      started)
        if record:
            self.record(outcomes)
        return outcomes

    def search_routed(self, routes: list[Route], vectors: list[np.ndarray], k: int,
                      started: float, parse_ms: float | None = None) -> list[SearchOutcome]:
        """Search routed queries, grouped by version (one index call per version); a query
        that cannot be served becomes a failed outcome, never an exception."""
        k = self.top_k(k)
        out: list[SearchOutcome | None] = [None] * len(routes)
        groups: dict[str, tuple[LoadedVersion, list[int]]] = {}
        for i, r in enumerate(routes):
            if r.loaded is None:
                out[i] = self.failure(r, self.unavailable(r), started, parse_ms)
                continue
            vec, dims = vectors[i], r.loaded.artifact.vectors.shape[1]
            if vec.shape[0] != dims:
                out[i] = self.failure(r, WorkerError(
                    f"query has {vec.shape[0]} dimensions, version {r.choice.version} expects "
                    f"{dims}", code="dimension_mismatch", stage="search", status=422,
                    context={"version": r.choice.version}), started, parse_ms)
                continue
            groups.setdefault(r.choice.version, (r.loaded, []))[1].append(i)
        for lv, rows in groups.values():
            t0 = time.perf_counter()
            queries = vectors[rows[0]].reshape(1, -1) if len(rows) == 1 else \
                np.vstack([vectors[i] for i in rows])
            dist, ids = lv.artifact.index.search(queries, k)
            search_ms = (time.perf_counter() - t0) * 1000.0
            for j, i in enumerate(rows):
                out[i] = self._found(routes[i], lv, dist[j], ids[j], started, parse_ms,
                                     search_ms)
        return [o for o in out if o is not None]

    def search_version(self, lv: LoadedVersion, vector: np.ndarray, k: int) -> list[Hit]:
        """One query against one loaded version, outside routing (the shadow comparison).
        Raises WorkerError `dimension_mismatch` like a routed search fails."""
        dims = lv.artifact.vectors.shape[1]
        if vector.shape[0] != dims:
            raise WorkerError(f"query has {vector.shape[0]} dimensions, version "
                              f"{lv.row.version} expects {dims}", code="dimension_mismatch",
                              stage="search", status=422, context={"version": lv.row.version})
        dist, ids = lv.artifact.index.search(vector[None, :], self.top_k(k))
        return hits_of(lv, dist[0], ids[0])

    def _found(self, r: Route, lv: LoadedVersion, dist: np.ndarray, ids: np.ndarray,
               started: float, parse_ms: float | None, search_ms: float) -> SearchOutcome:
        hits = hits_of(lv, dist, ids)
        verdict = judge_thresholds(r.snap.thresholds.get(r.choice.version, {}),
                                   [(h.distance, h.score) for h in hits])
        return SearchOutcome(new_run_key(), r.job_id, r.choice.version,
                             r.snap.policy_version, r.choice.source, verdict.snapshot, hits,
                             verdict.met, 0.0, lv.degraded is not None,
                             failed_thresholds=verdict.failed,
                             unapplied_thresholds=verdict.unapplied, parse_ms=parse_ms,
                             binding=r.choice.binding,
                             search_ms=search_ms, started=started)

    @staticmethod
    def failure(r: Route, error: StructuredError, started: float,
                parse_ms: float | None = None) -> SearchOutcome:
        """A routed request that failed (artifact unavailable, parse error, time limit,
        dimension mismatch): a run all the same, so analysis can judge its version."""
        return SearchOutcome(new_run_key(), r.job_id, r.choice.version,
                             r.snap.policy_version, r.choice.source,
                             dict(r.snap.thresholds.get(r.choice.version, {})), [], False, 0.0,
                             r.loaded is not None and r.loaded.degraded is not None,
                             error=error, parse_ms=parse_ms, started=started,
                             binding=r.choice.binding)

    def top_k(self, k: int) -> int:
        if not 1 <= k <= self.settings.max_top_k:
            raise WorkerError(f"topK must be within 1..{self.settings.max_top_k}",
                              code="bad_top_k", stage="request", status=400)
        return k

    def record(self, outcomes: list[SearchOutcome]) -> None:
        """Write the runs in one transaction, in this process (the run writer's thread;
        with a recorder process, the PipeWriter sends `run_rows` there instead)."""
        s = self.settings
        rows, now = self.run_rows(outcomes)
        commit_rows(self.store, s.tenant, s.worker_id, s.model, rows, now)
        self.recorded(outcomes)

    def run_rows(self, outcomes: list[SearchOutcome]) -> tuple[list[RunRow], datetime]:
        """The runs as the store takes them, created now. A run's latency is its whole
        request: from its start (upload read) to this record."""
        now, stamp = datetime.now(UTC), time.perf_counter()
        rows = []
        for o in outcomes:
            if o.started is not None:
                o.latency_ms = (stamp - o.started) * 1000.0
            rows.append((o.version, o.policy_version, o.route_source, o.thresholds,
                         o.latency_ms, o.error is None, o.met_threshold, o.job_id,
                         o.hits[0].id if o.hits else None, o.error_code, o.run_key,
                         o.parse_ms, o.search_ms, o.binding))
        return rows, now

    def recorded(self, outcomes: list[SearchOutcome]) -> None:
        """After the runs' commit: their debug events and metrics."""
        if EVENTS.isEnabledFor(logging.DEBUG):
            for o in outcomes:
                emit("run", logging.DEBUG, run=o.run_key, job=o.job_id, version=o.version,
                     policyVersion=o.policy_version, routeSource=o.route_source,
                     error=o.error_code, metThreshold=o.met_threshold,
                     latencyMs=round(o.latency_ms, 3))
        counts: dict[tuple[str, str], int] = {}
        for o in outcomes:
            key = (o.version, o.route_source)
            counts[key] = counts.get(key, 0) + 1
            self._run_metrics(key)[1].observe(o.latency_ms / 1000.0)
        for key, n in counts.items():  # one increment per version and route source
            self._run_metrics(key)[0].inc(n)

    def _run_metrics(self, key: tuple[str, str]) -> tuple[Any, Any]:
        """The request counter and latency histogram of runs of (version, route source),
        looked up once each (a label look-up costs as much as the observation)."""
        found = self._metric_children.get(key)
        if found is None:
            s, (version, source) = self.settings, key
            found = self._metric_children[key] = (
                metrics.WORKER_REQUESTS.labels(s.tenant, s.model, version, source),
                metrics.RUN_LATENCY.labels(s.tenant, s.model, version))
        return found
