"""The per-tenant queue with real threads: one pass per key at a time, coalesced.

Every wait has a deadline and waits for a positive signal (an event set by the pass),
never a sleep followed by asserting that nothing happened."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from controller.operator.tenantqueue import TenantQueue

DEADLINE = 10.0


class Gate:
    """A pass that records its items and blocks until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[list[int]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def run(self, items: list[int]) -> int:
        with self._lock:
            self.calls.append(items)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            assert self.release.wait(DEADLINE)
            return len(self.calls)
        finally:
            with self._lock:
                self.active -= 1


def _waiting(queue: TenantQueue[int, int], key: str, count: int) -> Callable[[], bool]:
    """True once `count` items wait in the key's pending pass (white-box: the signal that
    the submitters have joined, without sleeping)."""
    def check() -> bool:
        with queue._cond:
            pending = queue._pending.get(key)
            return pending is not None and len(pending.items) == count
    return check


def _until(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(DEADLINE * 100)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met within the deadline")


def test_submits_during_a_pass_leave_exactly_one_more_pass() -> None:
    queue: TenantQueue[int, int] = TenantQueue()
    gate = Gate()
    with ThreadPoolExecutor(max_workers=12) as pool:
        first = pool.submit(queue.submit, "acme", 0, gate.run)
        assert gate.entered.wait(DEADLINE)
        later = [pool.submit(queue.submit, "acme", i, gate.run) for i in range(1, 11)]
        _until(_waiting(queue, "acme", 10))
        gate.release.set()
        assert first.result(DEADLINE) == 1
        results = [f.result(DEADLINE) for f in later]
    assert len(gate.calls) == 2 and gate.max_active == 1
    assert gate.calls[0] == [0] and sorted(gate.calls[1]) == list(range(1, 11))
    assert results == [2] * 10  # every later submit got the pass that covered it
    assert queue.passes == 2


def test_two_keys_pass_in_parallel() -> None:
    queue: TenantQueue[int, int] = TenantQueue()
    a, b = Gate(), Gate()
    with ThreadPoolExecutor(max_workers=2) as pool:
        fa = pool.submit(queue.submit, "acme", 1, a.run)
        fb = pool.submit(queue.submit, "globex", 2, b.run)
        # both passes are inside at once: neither key waits for the other
        assert a.entered.wait(DEADLINE) and b.entered.wait(DEADLINE)
        a.release.set()
        b.release.set()
        assert fa.result(DEADLINE) == 1 and fb.result(DEADLINE) == 1


def test_an_error_reaches_every_covered_submit_and_does_not_wedge_the_key() -> None:
    queue: TenantQueue[int, int] = TenantQueue()
    gate = Gate()
    boom = RuntimeError("store away")

    def failing(items: list[int]) -> int:
        gate.run(items)
        raise boom

    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(queue.submit, "acme", 0, failing)
        assert gate.entered.wait(DEADLINE)
        covered = [pool.submit(queue.submit, "acme", i, failing) for i in (1, 2)]
        _until(_waiting(queue, "acme", 2))
        gate.release.set()
        for future in (first, *covered):
            with pytest.raises(RuntimeError, match="store away"):
                future.result(DEADLINE)
    assert len(gate.calls) == 2  # the first pass and one coalesced retry of the others
    assert queue.submit("acme", 3, lambda items: 42) == 42  # the key is free again


def test_many_threads_many_keys_never_overlap_per_key() -> None:
    queue: TenantQueue[int, int] = TenantQueue()
    lock = threading.Lock()
    active: dict[str, int] = {}
    overlaps: list[str] = []
    seen: dict[str, list[int]] = {}

    def run_for(key: str) -> Callable[[list[int]], int]:
        def run(items: list[int]) -> int:
            with lock:
                active[key] = active.get(key, 0) + 1
                if active[key] > 1:
                    overlaps.append(key)
                seen.setdefault(key, []).extend(items)
            threading.Event().wait(0.001)
            with lock:
                active[key] -= 1
            return len(items)
        return run

    keys = [f"t{i}" for i in range(5)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures: list[Future[int]] = [pool.submit(queue.submit, k, i, run_for(k))
                                      for i in range(200) for k in keys]
        for f in futures:
            f.result(DEADLINE)
    assert not overlaps
    assert all(sorted(seen[k]) == list(range(200)) for k in keys)  # every item passed once


def test_finished_at_is_when_the_last_successful_pass_finished() -> None:
    now = [100.0]
    queue: TenantQueue[int, str] = TenantQueue(clock=lambda: now[0])
    assert queue.finished_at("acme") is None
    queue.submit("acme", 1, lambda items: "plan-1")
    now[0] += 5
    with pytest.raises(ValueError):
        queue.submit("acme", 2, lambda items: (_ for _ in ()).throw(ValueError("x")))
    assert queue.finished_at("acme") == 100.0  # a failed pass leaves the last good one
