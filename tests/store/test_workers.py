"""Workers report the policyVersion they serve; the store keeps one row per worker."""

from __future__ import annotations

from controller.store import Store
from tests.store.helpers import seed_model


def test_worker_reports_are_upserted(store: Store) -> None:
    seed_model(store)
    with store.transaction("acme", "worker-a") as tx:
        tx.report_worker("worker-a", "part-sim", 1, False, {"versions": ["1.0.0"]})
        tx.report_worker("worker-b", "part-sim", 0, True)
    with store.transaction("acme", "worker-a") as tx:
        tx.report_worker("worker-a", "part-sim", 2, False)
    with store.transaction("acme", "t") as tx:
        states = tx.worker_states()["part-sim"]
    assert [(w.worker_id, w.applied_policy_version, w.degraded) for w in states] == [
        ("worker-a", 2, False), ("worker-b", 0, True)]
