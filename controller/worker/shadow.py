"""Shadow mirroring: a share of requests copied to the shadow version once answered.

The request path only `offer`s (never waits): a bounded queue (by count and by bytes)
takes the copy or drops it, and drops are counted (`stats()`, `/readyz`, the
`cadml_worker_shadow_requests_total{outcome="dropped"}` metric). One consumer task
reuses the served vector when the shadow version extracts the same feature version,
else parses the drawing again for its own (in the feature sandbox, one drawing at a
time, and only while no served upload is being read or parsed: the served path keeps
the parsers; under sustained load the queue fills and drops instead), searches the
shadow version in an executor, compares its results with the served ones
(`controller.shadow.compare_results`) and records shadow runs in batches beside the
served runs. A shadow failure (not loaded, unparseable, dimension mismatch) is a shadow
run with its error code; it never reaches the client, who already has the answer. A
copy whose shadow was withdrawn while it waited, or while it was compared, is skipped
(counted, not recorded): it says nothing about the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller import metrics
from controller.errors import StructuredError
from controller.features.sandbox import FeatureSandbox
from controller.records import ShadowRunRecord
from controller.shadow import compare_results, mirrored
from controller.worker.runtime import Route, SearchOutcome, WorkerRuntime
from controller.worker.runwriter import Background

log = logging.getLogger("cadml.worker")

QUEUE_ITEMS = 256
QUEUE_BYTES = 64 * 1024 * 1024  # drawings waiting to be mirrored, at most
RECORD_BATCH = 64
FLUSH_SECONDS = 0.5
YIELD_SECONDS = 0.005  # how often a shadow parse checks whether served uploads are done


@dataclass(frozen=True, slots=True)
class Mirrored:
    """One served request to repeat against the shadow version."""

    run_key: str
    job_id: str
    version: str  # the shadow version
    payload: np.ndarray | bytes
    k: int
    served: tuple[tuple[str, float], ...]  # the served results: (id, score), best first
    vector: np.ndarray | None = None  # what the served version searched
    feature_version: str | None = None  # ...extracted with this feature version

    def reusable(self, feature_version: str) -> np.ndarray | None:
        """The served vector, when the shadow version extracts the same features."""
        return self.vector if self.feature_version == feature_version else None

    @property
    def size(self) -> int:
        return len(self.payload) if isinstance(self.payload, bytes) else self.payload.nbytes


@dataclass
class MirrorStats:
    offered: int = 0
    dropped: int = 0
    recorded: int = 0
    failed: int = 0  # shadow runs recorded with an error
    lost: int = 0  # shadow runs whose record failed (the store refused the batch)
    skipped: int = 0  # copies whose shadow was withdrawn while they waited
    queued: int = 0
    queued_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_json(self, pending: int = 0) -> dict[str, Any]:
        return {"offered": self.offered, "dropped": self.dropped, "recorded": self.recorded,
                "failed": self.failed, "lost": self.lost, "skipped": self.skipped,
                "queued": self.queued, "queuedBytes": self.queued_bytes, "pending": pending,
                "errors": dict(self.errors)}


def wanted(route: Route, outcome: SearchOutcome) -> str | None:
    """Purely computational: the shadow version this served request is mirrored to, or
    None (no shadow in the snapshot, a failed run, a request the shadow version served
    itself, or a job outside the mirrored percent)."""
    shadow = route.snap.shadow
    if shadow is None or outcome.error is not None or outcome.version == shadow.version:
        return None
    return shadow.version if mirrored(route.job_id, shadow.percent) else None


class ShadowMirror(Background):
    def __init__(self, runtime: WorkerRuntime, sandbox: Callable[[], FeatureSandbox],
                 items: int = QUEUE_ITEMS, max_bytes: int = QUEUE_BYTES,
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.runtime = runtime
        self._sandbox = sandbox
        self._busy = busy
        self._items, self._max_bytes = items, max_bytes
        self._queue: asyncio.Queue[Mirrored] = asyncio.Queue()
        self.stats = MirrorStats()
        self._pending: list[ShadowRunRecord] = []  # compared, waiting for their commit
        self.idle = asyncio.Event()  # set whenever nothing is queued or in hand
        self.idle.set()

    def _count(self, version: str, outcome: str, n: int = 1) -> None:
        s = self.runtime.settings
        metrics.SHADOW_REQUESTS.labels(s.tenant, s.model, version, outcome).inc(n)

    def offer(self, item: Mirrored) -> bool:
        """Queue a copy for the shadow version, or drop it when the queue is full; never
        waits."""
        st = self.stats
        st.offered += 1
        if st.queued >= self._items or st.queued_bytes + item.size > self._max_bytes \
                or not self.alive:
            st.dropped += 1
            self._count(item.version, "dropped")
            return False
        st.queued += 1
        st.queued_bytes += item.size
        self.idle.clear()
        self._queue.put_nowait(item)
        return True

    async def _loop(self) -> None:
        """Compare one copy at a time; record the comparisons in batches, at most
        `FLUSH_SECONDS` after the first one waiting (each commit competes with the served
        runs' commits: on SQLite, for the one write lock)."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        deadline = 0.0
        while True:
            item = None
            with contextlib.suppress(TimeoutError):
                item = await asyncio.wait_for(
                    self._queue.get(), max(0.0, deadline - loop.time()) if pending else None)
            if item is not None:
                # withdrawn before or during the comparison (a parse may wait long)
                done = None if self._withdrawn(item) else await self._compare(item)
                if done is None or self._withdrawn(item):
                    self.stats.skipped += 1
                    self._count(item.version, "skipped")
                else:
                    if not pending:
                        deadline = loop.time() + FLUSH_SECONDS
                    pending.append(done)
                self.stats.queued -= 1
                self.stats.queued_bytes -= item.size
            if pending and (item is None or len(pending) >= RECORD_BATCH):
                await self._flush(list(pending))
                pending.clear()
            if not pending and self._queue.empty():
                self.idle.set()

    async def stop(self) -> None:
        """Stop comparing; the comparisons already made are recorded, not lost."""
        await super().stop()
        if self._pending:
            await self._flush(list(self._pending))
            self._pending.clear()

    async def _flush(self, records: list[ShadowRunRecord]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._record, records)
        except Exception as exc:  # the served runs stand; the comparison is lost
            log.warning("%d shadow runs not recorded: %s", len(records), exc)
            self.stats.lost += len(records)
        else:
            self._counted(records)

    def snapshot(self) -> dict[str, Any]:
        """The counters, and the comparisons waiting for their commit."""
        return self.stats.as_json(len(self._pending))

    def _withdrawn(self, item: Mirrored) -> bool:
        """Whether the snapshot in force no longer mirrors to the item's version."""
        snap = self.runtime.snapshot
        return snap is None or snap.shadow is None or snap.shadow.version != item.version

    async def _compare(self, item: Mirrored) -> ShadowRunRecord:
        started = time.perf_counter()
        try:
            hits = await self._search(item)
        except StructuredError as exc:
            return self._record_of(item, started, error=exc.code)
        except Exception as exc:  # contained: the mirror must outlive any one request
            log.exception("shadow search of run %s failed", item.run_key)
            return self._record_of(item, started, error=type(exc).__name__[:64])
        return self._record_of(item, started, hits=[(h.id, h.score) for h in hits])

    async def _search(self, item: Mirrored) -> list[Any]:
        runtime = self.runtime
        lv = runtime.versions.get(item.version)
        if lv is None:
            why = runtime.load_errors.get(item.version, "not loaded yet")
            raise StructuredError(f"shadow version {item.version} is not loaded: {why}",
                                  code="version_unavailable", stage="shadow")
        fv = lv.artifact.feature_version or lv.row.feature_version
        vector = item.reusable(fv)
        if vector is None:
            vector = await self._features(item.payload, fv)
        return await asyncio.get_running_loop().run_in_executor(
            None, runtime.search_version, lv, vector, item.k)

    async def _features(self, payload: np.ndarray | bytes, fv: str) -> np.ndarray:
        if not isinstance(payload, bytes):
            return payload
        while self._busy():  # a served drawing is parsing: the parsers are theirs first
            await asyncio.sleep(YIELD_SECONDS)
        return (await self._sandbox().extract_async(payload, fv)).vector

    def _record_of(self, item: Mirrored, started: float, *, error: str | None = None,
                   hits: list[tuple[str, float]] | None = None) -> ShadowRunRecord:
        latency = (time.perf_counter() - started) * 1000.0
        if error is not None or hits is None:
            return ShadowRunRecord(item.run_key, self.runtime.settings.model, item.version,
                                   None, None, None, item.served[0][1] if item.served
                                   else None, None, [], latency, error_code=error)
        c = compare_results(item.served, hits)
        return ShadowRunRecord(item.run_key, self.runtime.settings.model, item.version,
                               c.overlap_at_10, c.rbo, c.top1_delta, c.served_top1,
                               c.shadow_top1, [i for i, _ in hits], latency)

    def _record(self, records: list[ShadowRunRecord]) -> None:
        s = self.runtime.settings
        with self.runtime.store.transaction(s.tenant, s.worker_id) as tx:
            tx.record_shadow_runs(records)

    def _counted(self, records: list[ShadowRunRecord]) -> None:
        for r in records:
            outcome = "failed" if r.error_code else "recorded"
            self._count(r.shadow_version, outcome)
            if r.error_code:
                self.stats.failed += 1
                self.stats.errors[r.error_code] = self.stats.errors.get(r.error_code, 0) + 1
            self.stats.recorded += 1
