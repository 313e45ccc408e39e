"""Shadow mirroring: a share of requests copied to the shadow version once answered.

The request path only `offer`s (never waits): a bounded queue (by count and by bytes)
takes the copy or drops it, and drops are counted (`stats()`, `/readyz`, the
`cadml_worker_shadow_requests_total{outcome="dropped"}` metric). One consumer task
extracts the drawing's features for the shadow version's feature version (in the
feature sandbox, one drawing at a time, so served uploads keep the other parsers),
searches the shadow version in an executor, compares its results with the served ones
(`controller.shadow.compare_results`) and records shadow runs in batches beside the
served runs. A shadow failure (not loaded, unparseable, dimension mismatch) is a shadow
run with its error code; it never reaches the client, who already has the answer.
"""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True, slots=True)
class Mirrored:
    """One served request to repeat against the shadow version."""

    run_key: str
    job_id: str
    version: str  # the shadow version
    payload: np.ndarray | bytes
    k: int
    served: tuple[tuple[str, float], ...]  # the served results: (id, score), best first

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
    queued: int = 0
    queued_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"offered": self.offered, "dropped": self.dropped, "recorded": self.recorded,
                "failed": self.failed, "lost": self.lost, "queued": self.queued,
                "queuedBytes": self.queued_bytes, "errors": dict(self.errors)}


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
                 items: int = QUEUE_ITEMS, max_bytes: int = QUEUE_BYTES) -> None:
        self.runtime = runtime
        self._sandbox = sandbox
        self._items, self._max_bytes = items, max_bytes
        self._queue: asyncio.Queue[Mirrored] = asyncio.Queue()
        self.stats = MirrorStats()
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
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < RECORD_BATCH:
                batch.append(self._queue.get_nowait())
            records = []
            for item in batch:
                records.append(await self._compare(item))
                self.stats.queued -= 1
                self.stats.queued_bytes -= item.size
            try:
                await loop.run_in_executor(None, self._record, records)
            except Exception as exc:  # the served runs stand; the comparison is lost
                log.warning("%d shadow runs not recorded: %s", len(records), exc)
                self.stats.lost += len(records)
            else:
                self._counted(records)
            if self._queue.empty():
                self.idle.set()

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
        vector = item.payload
        if isinstance(vector, bytes):
            features = await self._sandbox().extract_async(
                vector, lv.artifact.feature_version or lv.row.feature_version)
            vector = features.vector
        return await asyncio.get_running_loop().run_in_executor(
            None, runtime.search_version, lv, vector, item.k)

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
