"""Policy-change notifications: PostgreSQL delivers them at COMMIT, per (tenant, model)."""

from __future__ import annotations

import queue
import time

import pytest

from controller.records import RouteRow
from controller.store.notify import PolicyListener, channel
from tests.store.helpers import seed_model
from tests.stores import Backend


class Inbox:
    def __init__(self) -> None:
        self.q: queue.Queue[str] = queue.Queue()

    def __call__(self, payload: str) -> None:
        self.q.put(payload)

    def next(self, timeout: float = 5.0) -> str:
        return self.q.get(timeout=timeout)

    def quiet(self, seconds: float = 1.0) -> bool:
        try:
            got = self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected notification {got!r}")


def _listening(b: Backend, model: str, inbox: Inbox) -> PolicyListener:
    listener = b.store.listen("acme", model, inbox)
    assert listener is not None
    assert inbox.next() == ""  # the (re)connect hint: refresh once, something may be missed
    return listener


def test_channels_are_per_tenant_and_model_and_reveal_no_names() -> None:
    names = {channel(t, m) for t in ("acme", "globex") for m in ("a", "b")}
    assert len(names) == 4
    for name in names:
        assert name.isidentifier() and len(name) <= 63 and "acme" not in name


def test_sqlite_cannot_notify_so_workers_poll(backend: Backend) -> None:
    if backend.kind != "sqlite":
        pytest.skip("the SQLite case")
    assert backend.store.listen("acme", "part-sim", Inbox()) is None


def test_publish_notifies_at_commit_only(backend: Backend) -> None:
    if backend.kind != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's (SQLite: see the polling case)")
    seed_model(backend.store)
    seed_model(backend.store, model="other")
    inbox, others = Inbox(), Inbox()
    listeners = [_listening(backend, "part-sim", inbox), _listening(backend, "other", others)]
    try:
        with backend.store.transaction("acme", "alice") as tx:
            pv = tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "policy")
            time.sleep(0.5)
            assert inbox.q.empty()  # not before COMMIT
        assert inbox.next() == str(pv)

        with pytest.raises(RuntimeError), backend.store.transaction("acme", "alice") as tx:
            tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "policy")
            raise RuntimeError("the step failed after publishing")
        assert inbox.quiet()  # a rolled-back publication wakes nobody

        with backend.store.transaction("acme", "bob") as tx:
            tx.bind_job("job-7", "part-sim-1.1.0", {"policyVersion": pv})
        assert inbox.next() == "binding"
        assert others.quiet(0.2)  # the other model's workers were never woken
    finally:
        for listener in listeners:
            listener.stop()


def test_listener_reconnects_after_its_connection_is_killed(backend: Backend) -> None:
    if backend.kind != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    from sqlalchemy import text

    seed_model(backend.store)
    inbox = Inbox()
    listener = _listening(backend, "part-sim", inbox)
    try:
        with backend.admin.begin() as c:  # an operator or a failover ends the session
            killed = c.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN cadml_policy_%' AND datname = current_database() "
                "AND pid <> pg_backend_pid()")).scalar()
        assert killed == 1
        assert inbox.next(timeout=15) == ""  # reconnected: refresh once for what was missed
        with backend.store.transaction("acme", "alice") as tx:
            pv = tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "policy")
        assert inbox.next() == str(pv)
    finally:
        listener.stop()
