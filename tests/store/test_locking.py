"""Locking and isolation: a locked SQLite is a retryable StoreUnavailable, readers take no
write lock (they neither wait for a writer nor block one), and on PostgreSQL reads and the
reconcile step see one consistent snapshot."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from controller.errors import StaleWrite, StoreError, StoreUnavailable
from controller.records import RouteRow
from controller.store import Store
from controller.store.engine import make_engine
from tests.store.helpers import seed_model
from tests.stores import Backend

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
POSTGRES = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def _impatient(backend: Backend) -> Store:
    """The same SQLite store, with a writer that waits 0.2 s for the lock (URL `timeout`)."""
    return Store(make_engine(f"{backend.app_url}?timeout=0.2"))


@contextmanager
def write_locked(backend: Backend) -> Iterator[None]:
    """Another process's writer holds the SQLite write lock with an uncommitted change."""
    raw = sqlite3.connect(make_url(backend.app_url).database or "", isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE model_catalog SET description = 'uncommitted'")
    try:
        yield
    finally:
        raw.execute("ROLLBACK")
        raw.close()


@SQLITE
def test_a_locked_sqlite_store_is_unavailable_and_retryable(backend: Backend) -> None:
    seed_model(backend.store)
    store = _impatient(backend)
    with write_locked(backend), pytest.raises(StoreUnavailable, match="locked") as caught, \
            store.transaction("acme", "t") as tx:
        tx.set_stage("part-sim-1.1.0", "DRAFT")
    assert caught.value.retryable
    store.dispose()


@SQLITE
def test_status_reads_while_a_writer_holds_the_lock(backend: Backend) -> None:
    seed_model(backend.store)
    with backend.store.transaction("acme", "t") as tx:
        tx.write_status("Model", "part-sim", 1, {"conditions": []})
    with write_locked(backend):
        done = subprocess.run(
            [sys.executable, "-m", "controller", "status", "--store",
             f"{backend.app_url}?timeout=0.2", "--output", "json"],
            check=False, capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert '"part-sim"' in done.stdout


@SQLITE
def test_an_open_reader_neither_blocks_a_writer_nor_sees_its_commit(backend: Backend) -> None:
    seed_model(backend.store)
    writer = _impatient(backend)
    with backend.store.read("acme") as reader:
        before = reader.snapshot("part-sim")
        with writer.transaction("acme", "t") as tx:  # would time out behind a write lock
            tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "rollback")
        assert reader.snapshot("part-sim") == before  # one snapshot for the whole read
        assert reader.policy_version_of("part-sim") == 1
    with backend.store.read("acme") as reader:
        assert reader.policy_version_of("part-sim") == 2
    writer.dispose()


def test_a_read_only_transaction_refuses_writes(backend: Backend) -> None:
    seed_model(backend.store)
    with pytest.raises(StoreError) as caught, backend.store.read("acme") as tx:
        tx.set_stage("part-sim-1.1.0", "DRAFT")
    assert not caught.value.retryable
    with backend.store.read("acme") as tx:
        assert [v.stage for v in tx.versions("part-sim")] == ["STABLE", "CANARY"]


@POSTGRES
def test_postgresql_reads_and_reconcile_steps_run_in_one_snapshot(backend: Backend) -> None:
    store = backend.store
    seed_model(store)

    def isolation(tx_conn: object) -> str:
        return str(tx_conn.execute(text("SHOW transaction_isolation")).scalar())  # type: ignore[attr-defined]

    with store.read("acme") as tx:
        assert isolation(tx.conn) == "repeatable read"
        first = tx.observe()
        with store.transaction("acme", "t") as other:
            other.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "rollback")
        assert tx.observe() == first  # the commit in between is not half-seen
    with store.transaction("acme", "t", snapshot=True) as tx:
        assert isolation(tx.conn) == "repeatable read"
    with store.transaction("acme", "t") as tx:
        assert isolation(tx.conn) == "read committed"


@POSTGRES
def test_a_reconcile_step_that_lost_a_race_is_retryable(backend: Backend) -> None:
    """Two steps saw the same policy_version; the second to publish is refused (retry on a
    fresh view), never a policy published from a stale view."""
    store = backend.store
    seed_model(store)
    with pytest.raises(StaleWrite) as caught, \
            store.transaction("acme", "a", snapshot=True) as tx:
        tx.observe()
        with store.transaction("acme", "b", snapshot=True) as other:
            other.observe()
            other.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "rollback")
        tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "rollback")
    assert caught.value.retryable  # requeued from a fresh view
    with store.read("acme") as tx:
        assert tx.policy_version_of("part-sim") == 2
