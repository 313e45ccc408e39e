"""The database itself refuses bad rows, even when application code is bypassed (raw SQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.store.helpers import seed_model
from tests.stores import Backend


def _ids(b: Backend) -> dict[str, int]:
    with b.admin.connect() as c:
        rows = c.execute(text("SELECT name, id FROM model_version")).all()
        model = c.execute(text("SELECT id FROM model_catalog WHERE name = 'part-sim'")).scalar()
    return {**{r[0]: r[1] for r in rows}, "model": int(model)}


BAD_SQL = {
    "unknown stage": "UPDATE model_version SET stage = 'LIVE' WHERE name = 'part-sim-1.1.0'",
    "second STABLE": "UPDATE model_version SET stage = 'STABLE' WHERE name = 'part-sim-1.1.0'",
    "canary without sha256":
        "UPDATE model_version SET artifact_sha256 = NULL WHERE name = 'part-sim-1.1.0'",
    "AI takes control": "UPDATE model_catalog SET review_control_allowed = true",
    "review default weakened":
        "UPDATE model_catalog SET review_default_decision = 'AUTO_APPROVE'",
    "canary weight 0": "UPDATE policy_route SET weight = 0 WHERE is_stable = false",
    "canary weight 100": "UPDATE policy_route SET weight = 100 WHERE is_stable = false",
    "weight over 100": "UPDATE policy_route SET weight = 101 WHERE is_stable = true",
    "refresh 0": "UPDATE model_rollout_policy SET refresh_seconds = 0",
    "release record edited": "UPDATE release_record SET git_sha = 'fffffff'",
    "release record deleted": "DELETE FROM release_record",
    "audit row edited": "UPDATE audit_event SET actor = 'mallory'",
    "audit row deleted": "DELETE FROM audit_event",
    "duplicate schedule tick":
        "INSERT INTO schedule_tick (tenant_id, window_key, result, created_at) "
        "VALUES ('acme', 'w1', '{{}}', CURRENT_TIMESTAMP)",
    "version pointing into another tenant":
        "INSERT INTO model_version (tenant_id, model_id, model_key, name, version, stage, "
        "artifact_uri, artifact_format, feature_version, threshold_defaults, generation, "
        "spec_hash, deleted, created_at, updated_at) VALUES ('globex', {model}, 'part-sim', "
        "'x', '9.9.9', 'DRAFT', 's3://x', 'npz', 'v4', '{{}}', 0, '', false, "
        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "AI decision recorded as final":
        "INSERT INTO model_run (tenant_id, run_key, model_id, model_version_id, policy_version, "
        "route_source, thresholds, decision, review_status, latency_ms, success, met_threshold, "
        "created_at) VALUES ('acme', 'r1', {model}, {v}, 1, 'policy', '{{}}', 'APPROVED', "
        "'PENDING_REVIEW', 1.0, true, true, CURRENT_TIMESTAMP)",
    "reviewed without reviewer":
        "INSERT INTO model_run (tenant_id, run_key, model_id, model_version_id, policy_version, "
        "route_source, thresholds, decision, review_status, latency_ms, success, met_threshold, "
        "created_at) VALUES ('acme', 'r2', {model}, {v}, 1, 'policy', '{{}}', 'PENDING_REVIEW', "
        "'APPROVED', 1.0, true, true, CURRENT_TIMESTAMP)",
    "negative latency":
        "INSERT INTO model_run (tenant_id, run_key, model_id, model_version_id, policy_version, "
        "route_source, thresholds, decision, review_status, latency_ms, success, met_threshold, "
        "created_at) VALUES ('acme', 'r3', {model}, {v}, 1, 'policy', '{{}}', 'PENDING_REVIEW', "
        "'PENDING_REVIEW', -1.0, true, true, CURRENT_TIMESTAMP)",
    "success rate over 1":
        "INSERT INTO evaluation (tenant_id, model_version_id, job_key, window_start, window_end, "
        "success_rate, sample_size, reviewed_sample_size, created_at) VALUES ('acme', {v}, '', "
        "'2026-01-01', '2026-01-02', 1.5, 10, 0, CURRENT_TIMESTAMP)",
}


@pytest.mark.parametrize("case", list(BAD_SQL))
def test_database_refuses(backend: Backend, case: str) -> None:
    seed_model(backend.store)
    with backend.store.transaction("acme", "seed") as tx:
        from controller.records import ReleaseRow
        tx.record_release(ReleaseRow("rel-1", "rel_1", "abc1234", "part-sim-1.0.0", "low",
                                     {"x": 1}, "h"))
        tx.claim_tick("w1", {})
    ids = _ids(backend)
    sql = BAD_SQL[case].format(model=ids["model"], v=ids["part-sim-1.0.0"])
    # a constraint or a trigger refuses it; a typo in the SQL would not count as a refusal
    with pytest.raises(IntegrityError), backend.admin.begin() as c:
        c.execute(text(sql))
    # nothing changed: the seeded state is intact
    with backend.store.transaction("acme", "check") as tx:
        snap = tx.snapshot("part-sim")
        assert snap is not None and snap.stable_version == "1.0.0"
        assert [v.stage for v in tx.versions("part-sim")] == ["STABLE", "CANARY"]
        assert tx.verify_audit() is None


def test_repeated_tick_does_nothing(store) -> None:  # type: ignore[no-untyped-def]
    seed_model(store)
    with store.transaction("acme", "cron") as tx:
        assert tx.claim_tick("2026-11-22T12", {"ran": ["evaluate"]}) is True
    with store.transaction("acme", "cron") as tx:
        assert tx.claim_tick("2026-11-22T12", {"ran": ["evaluate"]}) is False
    with store.transaction("globex", "cron") as tx:  # another tenant has its own windows
        assert tx.claim_tick("2026-11-22T12", {}) is True
