"""Policy-change notifications: PostgreSQL delivers them at COMMIT, per (tenant, model)."""

from __future__ import annotations

import queue

import pytest
from sqlalchemy import text

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

    def nothing_before_marker(self, b: Backend, model: str) -> None:
        """Nothing is queued for `model` ahead of a marker sent now: PostgreSQL delivers a
        channel's notifications in commit order, so a notification that had been sent
        would arrive first (a positive signal, not a silence of N seconds)."""
        with b.admin.connect() as c:
            c.execute(text("SELECT pg_notify(:c, 'marker')"), {"c": channel("acme", model)})
            c.commit()
        got = self.next()
        assert got == "marker", f"unexpected notification {got!r}"


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


def test_sqlite_cannot_notify_so_workers_poll(sqlite_backend: Backend) -> None:
    assert sqlite_backend.store.listen("acme", "part-sim", Inbox()) is None


def test_publish_notifies_at_commit_only(pg_backend: Backend) -> None:
    seed_model(pg_backend.store)
    seed_model(pg_backend.store, model="other")
    inbox, others = Inbox(), Inbox()
    listeners = [_listening(pg_backend, "part-sim", inbox),
                 _listening(pg_backend, "other", others)]
    try:
        with pg_backend.store.transaction("acme", "alice") as tx:
            pv = tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "policy")
            inbox.nothing_before_marker(pg_backend, "part-sim")  # not before COMMIT
        assert inbox.next() == str(pv)

        with pytest.raises(RuntimeError, match="the step failed"), \
                pg_backend.store.transaction("acme", "alice") as tx:
            tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "policy")
            raise RuntimeError("the step failed after publishing")
        inbox.nothing_before_marker(pg_backend, "part-sim")  # a rollback wakes nobody

        with pg_backend.store.transaction("acme", "bob") as tx:
            tx.bind_job("job-7", "part-sim-1.1.0", {"policyVersion": pv})
        assert inbox.next() == "binding"
        others.nothing_before_marker(pg_backend, "other")  # the other model: never woken
    finally:
        for listener in listeners:
            listener.stop()


def test_listener_reconnects_after_its_connection_is_killed(pg_backend: Backend) -> None:
    seed_model(pg_backend.store)
    inbox = Inbox()
    listener = _listening(pg_backend, "part-sim", inbox)
    try:
        with pg_backend.admin.begin() as c:  # an operator or a failover ends the session
            killed = c.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN cadml_policy_%' AND datname = current_database() "
                "AND pid <> pg_backend_pid()")).scalar()
        assert killed == 1
        assert inbox.next(timeout=15) == ""  # reconnected: refresh once for what was missed
        with pg_backend.store.transaction("acme", "alice") as tx:
            pv = tx.publish_snapshot("part-sim", [RouteRow("1.0.0", 100, True)], {}, "policy")
        assert inbox.next() == str(pv)
    finally:
        listener.stop()
