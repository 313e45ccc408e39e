"""Group commit for run records: many concurrent requests, one transaction per batch.

Each request waits until its runs are committed (nothing is answered that is not
recorded), but the requests arriving while one batch commits share the next one.
A failed batch is retried run by run, so one bad run cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from controller.worker.runtime import SearchOutcome

log = logging.getLogger("cadml.worker")

MAX_BATCH = 256


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


class RunWriter(Background):
    def __init__(self, record: Callable[[list[SearchOutcome]], None]) -> None:
        self._record = record
        self._queue: asyncio.Queue[tuple[list[SearchOutcome], asyncio.Future[None]]] = \
            asyncio.Queue()

    async def write(self, outcomes: list[SearchOutcome]) -> None:
        """Return once `outcomes` are committed; raise what their commit raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((outcomes, future))
        await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and sum(len(o) for o, _ in batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            runs = [o for outcomes, _ in batch for o in outcomes]
            try:
                await loop.run_in_executor(None, self._record, runs)
            except Exception:  # isolate the culprit: commit each request on its own
                log.warning("batch of %d runs failed; retrying one request at a time",
                            len(runs))
                for outcomes, future in batch:
                    try:
                        await loop.run_in_executor(None, self._record, outcomes)
                    except Exception as exc:  # the request learns why
                        _settle(future, exc)
                    else:
                        _settle(future, None)
                continue
            for _, future in batch:
                _settle(future, None)


def _settle(future: asyncio.Future[None], exc: Exception | None) -> None:
    """Answer a waiting request, unless it stopped waiting (cancelled: client gone, a
    timeout); its runs are committed all the same."""
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
