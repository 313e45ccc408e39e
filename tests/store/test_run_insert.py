"""The run insert prepared once per dialect (controller.store.runinsert) writes what the
ORM statement wrote, and refuses as the store refuses: on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.errors import ConflictError
from controller.records import RunRecord
from controller.store import Store
from tests.store.helpers import seed_model

THRESHOLDS = {"similarity": {"value": 0.8, "source": "model", "met": True}}


def _run(key: str, version: str = "1.0.0", **kw: object) -> RunRecord:
    values: dict[str, object] = dict(
        model_name="part-sim", version=version, policy_version=3, route_source="policy",
        thresholds=THRESHOLDS, latency_ms=12.5, success=True, met_threshold=True,
        job_key=f"job-{key}", ai_suggestion="drawing-7", run_key=key, search_ms=0.25,
        binding_state="suspended")
    values.update(kw)
    return RunRecord(**values)  # type: ignore[arg-type]


def test_every_column_reads_back_as_written(store: Store) -> None:
    seed_model(store)
    at = datetime(2026, 11, 30, 21, 0, 0, 123456, tzinfo=UTC)
    with store.transaction("acme", "worker") as tx:
        tx.record_runs([_run("r1", created_at=at),
                        _run("r2", version="1.1.0", error_code="version_unavailable",
                             success=False, met_threshold=False, ai_suggestion=None,
                             parse_ms=40.0, binding_state=None)])
    with store.read("acme") as tx:
        one, two = tx.run_view("r1"), tx.run_view("r2")
    assert one is not None and two is not None
    assert (one["version"], one["thresholds"], one["jobId"], one["aiSuggestion"],
            one["latencyMs"], one["searchMs"], one["binding"], one["policyVersion"]) == (
        "1.0.0", THRESHOLDS, "job-r1", "drawing-7", 12.5, 0.25, "suspended", 3)
    assert datetime.fromisoformat(one["createdAt"]) == at
    assert (two["version"], two["errorCode"], two["success"], two["metThreshold"],
            two["parseMs"], two["binding"]) == ("1.1.0", "version_unavailable", False, False,
                                                40.0, None)


@pytest.mark.parametrize("second", [_run("dup"), _run("r9", version="9.9.9")],
                         ids=["duplicate-run-key", "version-not-in-store"])
def test_a_refused_run_writes_nothing_of_its_batch(store: Store, second: RunRecord) -> None:
    seed_model(store)
    with store.transaction("acme", "worker") as tx:
        tx.record_runs([_run("dup")])
    with pytest.raises(ConflictError), store.transaction("acme", "worker") as tx:
        tx.record_runs([_run("ok"), second])
    with store.read("acme") as tx:
        assert tx.count_runs() == 1
        assert tx.run_view("ok") is None



def test_values_shared_across_a_batch_are_each_written_as_their_own(store: Store) -> None:
    """Bound forms are reused for a value the previous run of the batch also had (the
    same object): a run with another value in between still gets its own."""
    seed_model(store)
    a = datetime(2026, 11, 30, 21, 0, 0, 1, tzinfo=UTC)
    b = datetime(2026, 11, 30, 22, 0, 0, 2, tzinfo=UTC)
    other = {"similarity": {"value": 0.9, "source": "policy", "met": False}}
    plan = [("s1", a, THRESHOLDS), ("s2", a, THRESHOLDS), ("s3", b, other),
            ("s4", a, THRESHOLDS), ("s5", b, THRESHOLDS)]
    with store.transaction("acme", "worker") as tx:
        tx.record_runs([_run(key, created_at=at, thresholds=th) for key, at, th in plan])
    with store.read("acme") as tx:
        views = {key: tx.run_view(key) for key, _, _ in plan}
    assert {key: (datetime.fromisoformat(v["createdAt"]), v["thresholds"])
            for key, v in views.items() if v is not None} == {
        key: (at, th) for key, at, th in plan}


def test_runs_without_thresholds_share_one_bound_form_and_read_back_empty(store: Store
                                                                         ) -> None:
    seed_model(store)
    with store.transaction("acme", "worker") as tx:
        tx.record_runs([_run("e1", thresholds={}), _run("e2", thresholds={}),
                        _run("e3"), _run("e4", thresholds={})])
    with store.read("acme") as tx:
        got = {k: v["thresholds"] for k in ("e1", "e2", "e3", "e4")
               if (v := tx.run_view(k)) is not None}
    assert got == {"e1": {}, "e2": {}, "e3": THRESHOLDS, "e4": {}}
