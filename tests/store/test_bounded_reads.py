"""What a reconcile pass and a worker refresh read is bounded by live objects, not history:
the newest rollback and its first obeying run, the newest evaluation per version, live
worker rows, and the job bindings changed since a marker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import event

from controller.evaluation import Metrics
from controller.reconcile.status import WORKER_STALE_AFTER
from controller.records import ModelRow, RouteRow, RunRecord, VersionRow
from controller.store import Store, StoreTx
from controller.store.repository import WORKER_STATE_TTL
from tests.store.helpers import seed_model
from tests.stores import Backend

T = TypeVar("T")
ROUTES = [RouteRow("1.0.0", 100, True)]


@contextmanager
def counting(store: Store) -> Iterator[list[str]]:
    """The SQL statements the store sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def sqlite_steps(tx: StoreTx, read: Callable[[StoreTx], T]) -> tuple[T, int]:
    """The result of `read` and the SQLite virtual-machine instructions it took: the work
    done, which grows with every row read."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    raw = tx.conn.connection.driver_connection
    assert raw is not None
    raw.set_progress_handler(step, 1)
    try:
        return read(tx), steps
    finally:
        raw.set_progress_handler(None, 1)


def _run(pv: int, at: datetime, key: str) -> RunRecord:
    return RunRecord("part-sim", "1.0.0", pv, "policy", {}, 10.0, True, True, run_key=key,
                     created_at=at)


def _rollback(store: Store, source: str = "rollback", runs_before: int = 0) -> tuple[int, datetime]:
    """Publish a rollback-like snapshot after `runs_before` runs at the previous version;
    its policy_version and publication time."""
    with store.transaction("acme", "t") as tx:
        pv = tx.policy_version_of("part-sim") or 0
        tx.record_runs([_run(pv, tx.now - timedelta(seconds=1), f"pre-{pv}-{i}")
                        for i in range(runs_before)])
        new = tx.publish_snapshot("part-sim", ROUTES, {}, source, "test")
        return new, tx.now


def test_rollback_facts_are_the_newest_rollback_and_its_first_obeying_run(
        store: Store) -> None:
    seed_model(store)
    seed_model(store, model="other")  # never rolled back: no facts
    for _ in range(4):
        _rollback(store)
    pv, requested = _rollback(store, "analysis-abort")
    with store.transaction("acme", "t") as tx:  # a later ordinary change is no rollback
        tx.publish_snapshot("part-sim", ROUTES, {}, "policy")
        tx.record_runs([
            _run(pv - 1, requested + timedelta(seconds=0.1), "lagging"),
            _run(pv, requested + timedelta(seconds=0.5), "first"),
            _run(pv + 1, requested + timedelta(seconds=3), "later"),
        ])
    with store.read("acme") as tx, counting(store) as statements:
        facts = tx.rollback_facts()
    assert set(facts) == {"part-sim"}
    got = facts["part-sim"]
    assert (got.policy_version, got.source) == (pv, "analysis-abort")
    assert got.requested_at == requested
    assert got.effective_at == requested + timedelta(seconds=0.5)
    assert len(statements) == 1  # not one query per rollback ever published


def test_a_rollback_no_run_obeyed_yet_has_no_effective_time(store: Store) -> None:
    seed_model(store)
    pv, requested = _rollback(store)
    with store.transaction("acme", "t") as tx:
        tx.record_runs([_run(pv - 1, requested + timedelta(seconds=1), "lagging")])
    with store.read("acme") as tx:
        got = tx.rollback_facts()["part-sim"]
    assert got.policy_version == pv and got.effective_at is None


def _evaluate(store: Store, version: str, end: datetime, rate: float) -> None:
    with store.transaction("acme", "t") as tx:
        tx.write_evaluation("part-sim", version, end - timedelta(hours=1), end,
                            Metrics(rate, 0.0, 10.0, 10, 0))


def test_latest_evaluations_are_the_newest_whole_model_window_per_version(
        store: Store) -> None:
    seed_model(store)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for day in range(5):
        _evaluate(store, "1.0.0", base + timedelta(days=day), 0.5 + day / 10)
    _evaluate(store, "1.0.0", base - timedelta(days=30), 0.1)  # written last, but older
    _evaluate(store, "1.1.0", base, 0.7)
    with store.transaction("acme", "t") as tx:  # a per-job evaluation is not whole-model
        tx.write_evaluation("part-sim", "1.0.0", base + timedelta(days=9), base +
                            timedelta(days=10), Metrics(0.0, 0.0, 1.0, 1, 0), job_key="j")
    with store.read("acme") as tx:
        got = tx.latest_evaluations()
    assert set(got) == {"part-sim/1.0.0", "part-sim/1.1.0"}
    assert got["part-sim/1.0.0"]["successRate"] == pytest.approx(0.9)
    assert got["part-sim/1.0.0"]["window"].endswith((base + timedelta(days=4)).isoformat())
    assert got["part-sim/1.1.0"]["successRate"] == pytest.approx(0.7)


def _dead_worker(store: Store, worker: str, age: timedelta) -> None:
    with store.transaction("acme", worker) as tx:
        tx.now = tx.now - age
        tx.report_worker(worker, "part-sim", 1, False)


def test_stale_worker_rows_are_ignored_and_deleted_when_a_worker_reports(
        backend: Backend) -> None:
    store = backend.store
    seed_model(store)
    assert WORKER_STATE_TTL > WORKER_STALE_AFTER  # every live worker is still read
    for i in range(5):
        _dead_worker(store, f"gone-{i}", WORKER_STATE_TTL + timedelta(minutes=i + 1))
    _dead_worker(store, "quiet", WORKER_STALE_AFTER + timedelta(seconds=30))  # not live, kept
    with store.read("acme") as tx:
        assert [w.worker_id for w in tx.worker_states()["part-sim"]] == ["quiet"]
    with store.transaction("acme", "live") as tx:
        tx.report_worker("live", "part-sim", 1, False)
    with backend.admin.connect() as c:
        rows = sorted(r[0] for r in c.exec_driver_sql("SELECT worker_id FROM worker_state"))
    assert rows == ["live", "quiet"]


def _bind(store: Store, job: str, version_name: str) -> None:
    with store.transaction("acme", "t") as tx:
        tx.bind_job(job, version_name, {})


def test_workers_read_only_the_bindings_changed_since_their_marker(store: Store) -> None:
    seed_model(store)
    seed_model(store, model="other")
    for i in range(3):
        _bind(store, f"job-{i}", "part-sim-1.1.0")
    with store.read("acme") as tx:
        first, marker = tx.binding_changes("part-sim")
    assert first == {"job-0": "1.1.0", "job-1": "1.1.0", "job-2": "1.1.0"}
    with store.read("acme") as tx:
        assert tx.binding_changes("part-sim", marker) == ({}, marker)
    _bind(store, "job-3", "part-sim-1.0.0")
    _bind(store, "job-0", "part-sim-1.0.0")
    _bind(store, "job-1", "other-1.1.0")  # moved to another model: gone from this one
    with store.read("acme") as tx:
        changes, after = tx.binding_changes("part-sim", marker)
    assert changes == {"job-3": "1.0.0", "job-0": "1.0.0", "job-1": None}
    assert after > marker
    with store.read("acme") as tx:  # the full map, applied change by change, is the same
        assert tx.job_bindings("part-sim") == {"job-0": "1.0.0", "job-2": "1.1.0",
                                               "job-3": "1.0.0"}


def test_binding_markers_are_per_tenant(store: Store) -> None:
    seed_model(store)
    seed_model(store, tenant="globex")
    _bind(store, "job", "part-sim-1.1.0")
    with store.transaction("globex", "t") as tx:
        tx.bind_job("job", "part-sim-1.0.0", {})
    with store.read("globex") as tx:
        assert tx.binding_changes("part-sim") == ({"job": "1.0.0"}, 1)


# ------------------------------------------------------------------ work done vs history


def _history(store: Store, rounds: int, start: int) -> None:
    """`rounds` more rounds of history: a rollback with runs around it, an evaluation per
    version, a bind, a worker incarnation that then dies."""
    for r in range(start, start + rounds):
        pv, requested = _rollback(store, runs_before=20)
        with store.transaction("acme", "t") as tx:
            tx.record_runs([_run(pv, requested + timedelta(milliseconds=i + 1), f"r{r}-{i}")
                            for i in range(20)])
            tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 90, True),
                                             RouteRow("1.1.0", 10, False)], {}, "policy")
            tx.bind_job(f"job-{r}", "part-sim-1.1.0", {})
        for version in ("1.0.0", "1.1.0"):
            _evaluate(store, version, requested - timedelta(days=1000 - r), 0.5)
        _dead_worker(store, f"pod-{r}", WORKER_STATE_TTL + timedelta(minutes=1))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_observe_step_does_the_same_work_whatever_the_history(backend: Backend) -> None:
    """Measured in SQLite VM instructions (deterministic): ten times the history costs the
    observe step and the worker's binding read next to nothing more."""
    store = backend.store
    seed_model(store)
    with store.transaction("acme", "t") as tx:
        tx.upsert_model(ModelRow("idle", "idle", "p", "Idle", spec_hash="m"))
        tx.upsert_version(VersionRow("idle-1", "idle", "1.0.0", "DRAFT", "s3://i", "npz",
                                     None, spec_hash="v"))

    def measure() -> tuple[int, int]:
        with store.read("acme") as tx:
            _, marker = tx.binding_changes("part-sim")
        with store.transaction("acme", "live") as tx:
            tx.report_worker("live", "part-sim", 1, False)
        with store.read("acme") as tx:
            _, observe = sqlite_steps(tx, lambda x: x.observe())
            _, bindings = sqlite_steps(tx, lambda x: x.binding_changes("part-sim", marker))
        return observe, bindings

    _history(store, 3, 0)
    small = measure()
    _history(store, 30, 3)
    large = measure()
    assert large[0] <= small[0] * 1.2, (small, large)
    assert large[1] <= small[1] * 1.2, (small, large)
