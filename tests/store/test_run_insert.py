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

