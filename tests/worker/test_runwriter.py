"""Group commit: concurrent requests share a transaction; one bad run fails only its request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from controller.errors import ConflictError, StoreUnavailable
from controller.worker.runwriter import RunNotRecorded, RunWriter, linger_for, writer_problem


class Outcome:
    def __init__(self, key: str) -> None:
        self.run_key = self.job_id = key


def _recorder(commits: list[list[str]]) -> Any:
    def record(outcomes: list[Any]) -> None:
        keys = [o.run_key for o in outcomes]
        if "bad" in keys:
            raise ConflictError("version not in the store")
        commits.append(keys)
    return record


async def _write_all(writer: RunWriter, keys: list[str]) -> list[Any]:
    writer.start()
    try:
        return await asyncio.gather(*(writer.write([Outcome(k)]) for k in keys),
                                    return_exceptions=True)
    finally:
        await writer.stop()


class HeldFirst:
    """A record function whose first commit waits for `release` (and sets `committing`
    when it starts), so that the requests written meanwhile queue behind it; every commit
    then goes to `then`."""

    def __init__(self, then: Callable[[list[Any]], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.committing, self.release = asyncio.Event(), asyncio.Event()
        self.then, self.calls = then, 0

    def __call__(self, outcomes: list[Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            self.loop.call_soon_threadsafe(self.committing.set)
            asyncio.run_coroutine_threadsafe(self.release.wait(), self.loop).result(5)
        self.then(outcomes)

    async def behind(self, writer: RunWriter, first: str, keys: list[str]
                     ) -> tuple[asyncio.Task[None], list[asyncio.Task[None]]]:
        """Write `first`, and once its commit is held, `keys` (each its own request)."""
        head = asyncio.create_task(writer.write([Outcome(first)]))  # type: ignore[list-item]
        await asyncio.wait_for(self.committing.wait(), 5)
        queued = [asyncio.create_task(writer.write([Outcome(k)]))  # type: ignore[list-item]
                  for k in keys]
        await asyncio.sleep(0)  # all queued behind the held commit
        return head, queued


async def test_concurrent_requests_share_commits() -> None:
    commits: list[list[str]] = []
    results = await _write_all(RunWriter(_recorder(commits)), [f"r{i}" for i in range(20)])
    assert results == [None] * 20
    assert sorted(k for batch in commits for k in batch) == sorted(f"r{i}" for i in range(20))
    assert len(commits) < 20


async def test_a_bad_run_fails_only_its_own_request() -> None:
    commits: list[list[str]] = []
    keys = [f"r{i}" for i in range(10)] + ["bad"] + [f"s{i}" for i in range(10)]
    results = await _write_all(RunWriter(_recorder(commits)), keys)
    assert isinstance(results[10], ConflictError)
    assert all(r is None for i, r in enumerate(results) if i != 10)
    committed = sorted(k for batch in commits for k in batch)
    assert committed == sorted(k for k in keys if k != "bad")  # each exactly once


async def test_write_returns_only_after_the_commit() -> None:
    done = asyncio.Event()

    def record(_: list[Any]) -> None:
        done.set()

    writer = RunWriter(record)
    writer.start()
    try:
        await writer.write([Outcome("x")])
        assert done.is_set()
    finally:
        await writer.stop()



@pytest.mark.parametrize("key, committed", [("cancelled", [["cancelled"], ["next"]]),
                                            ("bad", [["next"]])])
async def test_a_cancelled_waiter_does_not_stop_the_writer(key: str,
                                                           committed: list[list[str]]) -> None:
    """A request cancelled while its batch commits (client gone, a timeout), whether the
    commit succeeds or fails: the writer's loop used to call `set_result`/`set_exception`
    on the cancelled future, die, and leave every later request waiting forever. The next
    write must still commit and return; the cancelled request's runs are committed too."""
    committing, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    commits: list[list[str]] = []
    recorder = _recorder(commits)

    def record(outcomes: list[Any]) -> None:
        loop.call_soon_threadsafe(committing.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        recorder(outcomes)

    writer = RunWriter(record)
    writer.start()
    try:
        waiter = asyncio.create_task(writer.write([Outcome(key)]))  # type: ignore[list-item]
        await asyncio.wait_for(committing.wait(), 5)
        waiter.cancel()
        release.set()
        await asyncio.wait_for(writer.write([Outcome("next")]), 5)  # type: ignore[list-item]
        assert commits == committed
        assert writer.alive
    finally:
        await writer.stop()


async def test_stopping_commits_what_is_queued_and_answers_its_requests() -> None:
    """A worker shutting down commits the runs already queued (and answers their requests)
    instead of dropping them with the writer."""
    commits: list[list[str]] = []
    writer = RunWriter(_recorder(commits))
    writer.start()
    waiters = [asyncio.create_task(writer.write([Outcome(f"r{i}")]))  # type: ignore[list-item]
               for i in range(30)]
    await asyncio.sleep(0)  # every request queued its runs
    await writer.stop()
    assert not writer.alive
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [None] * 30
    assert sorted(k for batch in commits for k in batch) == sorted(f"r{i}" for i in range(30))


@pytest.mark.parametrize("previous, bound, expected", [
    (1, 0.002, 0.0),  # an idle worker: the lone request is committed at once
    (2, 0.002, 0.002),  # under load: the next batch waits for company
    (200, 0.002, 0.002),
    (5, 0.0, 0.0),  # linger off
])
def test_linger_only_under_load(previous: int, bound: float, expected: float) -> None:
    assert linger_for(previous, bound) == expected


async def test_an_idle_request_is_not_held_for_the_linger() -> None:
    """A lone request on an idle worker commits at once, however long the bound: with a
    30 s linger it would otherwise miss the 5 s wait."""
    commits: list[list[str]] = []
    writer = RunWriter(_recorder(commits), linger=30.0)
    writer.start()
    try:
        for key in ("first", "second"):  # the second one too: its predecessor was alone
            await asyncio.wait_for(writer.write([Outcome(key)]), 5)  # type: ignore[list-item]
        assert commits == [["first"], ["second"]]
    finally:
        await writer.stop()


async def test_under_load_a_batch_lingers_for_later_requests() -> None:
    """After a shared batch, the next one waits its bound: a request arriving while the
    first of that batch lingers shares its commit (without the linger: two commits)."""
    commits: list[list[str]] = []
    held = HeldFirst(_recorder(commits))
    writer = RunWriter(held, linger=1.0)
    writer.start()
    try:
        first, shared = await held.behind(writer, "a0", [f"b{i}" for i in range(3)])
        held.release.set()  # the three queued behind the held commit: one batch
        await asyncio.wait_for(asyncio.gather(first, *shared), 5)
        early = asyncio.create_task(writer.write([Outcome("c0")]))  # type: ignore[list-item]
        await asyncio.sleep(0.05)  # the writer took c0 and lingers
        late = asyncio.create_task(writer.write([Outcome("c1")]))  # type: ignore[list-item]
        await asyncio.wait_for(asyncio.gather(early, late), 5)
        assert commits == [["a0"], ["b0", "b1", "b2"], ["c0", "c1"]]
    finally:
        await writer.stop()


async def test_requests_queued_behind_a_stop_are_answered() -> None:
    """A request that queues its runs after the stop was asked (a shutdown under way) is
    committed and answered; one that comes after the thread ended is refused at once.
    Before: the first waited for ever (the thread ended at the stop), the second too."""
    commits: list[list[str]] = []
    held = HeldFirst(_recorder(commits))
    writer = RunWriter(held)
    writer.start()
    first, _ = await held.behind(writer, "a", [])
    stopping = asyncio.create_task(writer.stop())
    await asyncio.sleep(0)  # the stop is queued
    behind = asyncio.create_task(writer.write([Outcome("b")]))  # type: ignore[list-item]
    await asyncio.sleep(0)
    held.release.set()
    await asyncio.wait_for(asyncio.gather(first, behind, stopping), 5)
    assert commits == [["a"], ["b"]]
    with pytest.raises(RunNotRecorded) as refused:
        await asyncio.wait_for(writer.write([Outcome("c")]), 5)  # type: ignore[list-item]
    assert refused.value.context["reason"] == "run_writer_stopped"


@pytest.mark.parametrize("alive, death, since, now, expected", [
    (True, None, None, 100.0, None),  # idle
    (True, None, 99.0, 100.0, None),  # a commit under way, within the bound
    (True, None, 80.0, 100.0, "run_writer_stalled"),
    (False, None, None, 100.0, "run_writer_stopped"),
    (False, "MemoryError: x", 80.0, 100.0, "run_writer_stopped"),  # dead beats stalled
])
def test_writer_problem(alive: bool, death: str | None, since: float | None, now: float,
                        expected: str | None) -> None:
    found = writer_problem(alive, death, since, now, bound=10.0)
    assert (None if found is None else found.code) == expected
    if found is not None and since is not None and alive:
        assert found.context["oldestPendingSeconds"] == now - since


async def test_an_unavailable_store_fails_the_batch_once_not_once_per_request() -> None:
    """A batch that failed because the store is unavailable (a locked SQLite waits its
    busy timeout, 30 s, per attempt) fails all its requests with that error. Before: each
    request was tried again on its own, so the writer waited for the store once more per
    request while every later request queued behind it."""
    attempts: list[list[str]] = []

    def record(outcomes: list[Any]) -> None:
        attempts.append([o.run_key for o in outcomes])
        if len(attempts) > 1:  # the first (held) commit succeeds; then the store is gone
            raise StoreUnavailable("store unavailable: database is locked")

    held = HeldFirst(record)
    writer = RunWriter(held)
    writer.start()
    try:
        first, batch = await held.behind(writer, "a", [f"b{i}" for i in range(5)])
        held.release.set()
        await asyncio.wait_for(first, 5)
        results = await asyncio.wait_for(asyncio.gather(*batch, return_exceptions=True), 5)
        # each answered run_not_recorded (retryable, its own runKeys), the store's reason
        assert all(isinstance(r, RunNotRecorded) and r.context["reason"] ==
                   "store_unavailable" and r.context["storeError"] == "StoreUnavailable"
                   for r in results), results
        assert attempts == [["a"], [f"b{i}" for i in range(5)]]  # one attempt for the batch
    finally:
        await writer.stop()
