"""One pass per tenant at a time, coalesced: client-go's workqueue, keyed by tenant.

kopf runs the handlers of different objects concurrently, but a pass covers the whole
tenant. `TenantQueue.submit(key, item, run)` marks the key dirty with `item` and blocks
until a pass that started after the call has finished, then returns that pass's result
(or raises its error). The queue guarantees, per key:

- never two passes at once (other keys run in parallel);
- a key submitted while its pass runs is passed exactly once more afterwards, however
  many submits arrived meanwhile: they are coalesced into that one pass, whose `run`
  receives all their items (in order) and reads the latest view itself;
- an error ends only the pass that raised it: every submit it covered gets the error,
  and the key is free for the next pass.

There are no worker threads of its own: the calling threads take turns (the first caller
to find the key idle runs the pending pass; the others it covers wait for it). So a
caller's `run` may execute a pass that covers other callers' items, and `run` must be
the same function for every caller of one key up to its items.

`finished_at(key)` says when the last pass that succeeded finished (the periodic driver
repairs a tenant only once no pass of it finished within its interval).
Nothing here knows kopf; the clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Pass(Generic[T, R]):
    items: list[T] = field(default_factory=list)
    started: bool = False
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class TenantQueue(Generic[T, R]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._running: set[Hashable] = set()
        self._pending: dict[Hashable, _Pass[T, R]] = {}
        self._finished: dict[Hashable, float] = {}
        self.passes = 0  # passes run so far, all keys (metrics, tests)

    def submit(self, key: Hashable, item: T, run: Callable[[list[T]], R]) -> R:
        """Mark `key` dirty with `item`; return the result of the pass that covers it."""
        with self._cond:
            mine = self._pending.get(key)
            if mine is None:
                mine = self._pending[key] = _Pass()
            mine.items.append(item)
            while not mine.started and key in self._running:
                self._cond.wait()
            runner = not mine.started
            if runner:  # the key is idle: this thread runs the pending pass
                del self._pending[key]
                mine.started = True
                self._running.add(key)
                self.passes += 1
        if runner:
            try:
                mine.result = run(list(mine.items))
            except BaseException as exc:  # delivered to every caller the pass covered
                mine.error = exc
            with self._cond:
                mine.done = True
                self._running.discard(key)
                if mine.error is None:
                    self._finished[key] = self._clock()
                self._cond.notify_all()
        else:
            with self._cond:
                while not mine.done:
                    self._cond.wait()
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def finished_at(self, key: Hashable) -> float | None:
        """When the last successful pass of `key` finished (the queue's clock), or None."""
        with self._cond:
            return self._finished.get(key)
