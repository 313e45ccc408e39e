"""Group commit for run records: many concurrent requests, one transaction per batch.

Each request waits until its runs are committed (nothing is answered that is not
recorded), but the requests arriving while one batch commits share the next one.
A failed batch is retried run by run, so one bad run cannot fail its neighbours.

The commits run on one thread of their own, fed by a lock-free queue: a request costs
one `put` and one future, a batch one wake-up of the event loop for all its requests
(an executor hop per batch and an asyncio queue per request cost more than the SQLite
insert, measured by bench/worker_bench.py's HTTP figure). On stop, everything queued
is committed before the thread ends.

Under load the batch lingers: when the previous batch held more than one request, the
thread sleeps `linger` seconds (default 2 ms) after the first request of the next one,
so the requests that arrive meanwhile share its commit; sleeping, not waiting on the
queue, so that those arrivals do not each wake the thread. A request of an idle worker
(the previous batch was itself alone) is committed at once: it never waits for the
bound. A crash loses only what no request was answered for: the batch in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from controller.worker.runtime import SearchOutcome

log = logging.getLogger("cadml.worker")

MAX_BATCH = 256
LINGER_SECONDS = 0.002  # the most a request waits for others to share its commit

_Waiting = tuple[list[SearchOutcome], "asyncio.Future[None]"]
_STOP = None


def linger_for(previous_requests: int, bound: float) -> float:
    """Purely computational: how long the next batch waits for company after its first
    request. Only under load (the previous batch was shared): an idle worker's lone
    request is committed at once."""
    return bound if previous_requests > 1 else 0.0


class Background:
    """A worker-lifetime task running `_loop` (started and stopped with the app)."""

    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        """Whether the loop runs: a dead one would leave its work waiting forever."""
        return self._task is not None and not self._task.done()


class RunWriter:
    def __init__(self, record: Callable[[list[SearchOutcome]], None],
                 linger: float = LINGER_SECONDS) -> None:
        self._record = record
        self._linger = linger
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, args=(asyncio.get_running_loop(),),
                                        name="cadml-run-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    async def write(self, outcomes: list[SearchOutcome]) -> None:
        """Return once `outcomes` are committed; raise what their commit raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((outcomes, future))
        await future

    @property
    def alive(self) -> bool:
        """Whether the commit thread runs: a dead one would leave every request waiting."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = 1
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            wait = linger_for(previous, self._linger)
            if wait > 0:
                time.sleep(wait)
            batch, stopping = self._drain(item)
            previous = len(batch)
            _answer(loop, batch, self._commit(batch))
            if stopping:
                return

    def _drain(self, first: _Waiting) -> tuple[list[_Waiting], bool]:
        """The batch that starts with `first`: what is queued now, up to MAX_BATCH runs;
        and whether a stop came with it."""
        batch, size = [first], len(first[0])
        while size < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
            size += len(item[0])
        return batch, False

    def _commit(self, batch: list[_Waiting]) -> list[Exception | None]:
        """Each request's result: one transaction for all, or (when it fails) one each."""
        try:
            self._record([o for outcomes, _ in batch for o in outcomes])
            return [None] * len(batch)
        except Exception:  # isolate the culprit: commit each request on its own
            log.warning("batch of %d requests failed; retrying one request at a time",
                        len(batch))
        results: list[Exception | None] = []
        for outcomes, _ in batch:
            try:
                self._record(outcomes)
            except Exception as exc:  # the request learns why
                results.append(exc)
            else:
                results.append(None)
        return results


def _answer(loop: asyncio.AbstractEventLoop, batch: list[_Waiting],
            results: list[Exception | None]) -> None:
    """Wake the event loop once for the whole batch."""
    try:
        loop.call_soon_threadsafe(_settle_all, [f for _, f in batch], results)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        log.debug("event loop closed; %d committed requests not answered", len(batch))


def _settle_all(futures: list[asyncio.Future[None]], results: list[Exception | None]) -> None:
    for future, exc in zip(futures, results, strict=True):
        _settle(future, exc)


def _settle(future: asyncio.Future[None], exc: Exception | None) -> None:
    """Answer a waiting request, unless it stopped waiting (cancelled: client gone, a
    timeout); its runs are committed all the same."""
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
