"""A tenant pass writes in batches (issue 10: the first reconcile costs at most 4x
validation): a few statements per kind of write whatever the number of objects, with the
same results as one write at a time: the audit chain, statuses, the generation guard,
renames and the one-STABLE order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text

from controller.cli import main
from controller.errors import StaleWrite
from controller.reconcile.apply import apply_plan
from controller.reconcile.planner import AuditEntry, Plan, SnapshotPlan
from controller.records import ModelRow, PolicyRow, RouteRow, VersionRow
from controller.store import Store, repository
from controller.store.audit import AuditAppend
from controller.store.repository import NewSnapshot
from tests.stores import Backend

MODELS = 250  # x (model + STABLE + CANARY + policy) = 1,000 objects


def _first_pass(tenant: str, models: int) -> Plan:
    """What the planner asks of a first reconcile: every object created, one snapshot per
    policy, a status and an audit event per object."""
    plan = Plan(tenant)
    for i in range(models):
        m = f"model-{i:03d}"
        plan.models.append(ModelRow(m, m, "acme-ml", m.title(), threshold_defaults={
            "similarity": 0.8}, generation=1, spec_hash=f"m{i}"))
        plan.versions += [
            VersionRow(f"{m}-1-0-0", m, "1.0.0", "STABLE", "s3://b/s", "npz", "a" * 64,
                       generation=1, spec_hash=f"s{i}"),
            VersionRow(f"{m}-1-1-0", m, "1.1.0", "CANARY", "s3://b/c", "npz", "b" * 64,
                       generation=1, spec_hash=f"c{i}")]
        plan.policies.append(PolicyRow(m, m, {"weights": [{"version": "1.1.0",
                                                           "weight": 10}]}, 5, 1, f"p{i}"))
        plan.snapshots.append(SnapshotPlan(m, m, 1, (RouteRow("1.0.0", 90, True),
                                                     RouteRow("1.1.0", 10, False)),
                                           {"similarity": {"value": 0.8, "source": "model"}},
                                           "policy", "", 5, 1))
        for kind, name in (("Model", m), ("ModelVersion", f"{m}-1-0-0"),
                           ("ModelVersion", f"{m}-1-1-0"), ("RolloutPolicy", m)):
            plan.statuses[kind, name] = (1, {"observedGeneration": 1, "conditions": []})
            plan.audit.append(AuditEntry("create", kind, name, {"specHash": name}))
        plan.audit.append(AuditEntry("publish", "RolloutPolicy", m, {"policyVersion": 1}))
    return plan


@contextmanager
def _statements(store: Store) -> Iterator[Counter[str]]:
    """Count the statements sent to the database by verb and table (an executemany is one)."""
    seen: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        verb = words[0].upper()
        table = {"INSERT": 2, "UPDATE": 1, "DELETE": 2}.get(verb)
        seen[f"{verb} {words[table]}" if table is not None else verb] += 1

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def test_a_1k_object_first_pass_writes_each_kind_in_a_few_statements(
        backend: Backend) -> None:
    """It was ~10,000 statements for 1,000 objects (three per audit event, two per status,
    two to four per row): now each kind of write is one or two statements, and the
    reads are a handful, whatever the number of objects."""
    plan = _first_pass("acme", MODELS)
    with _statements(backend.store) as seen, \
            backend.store.transaction("acme", "git") as tx:
        apply_plan(tx, plan)
    writes = {k: n for k, n in seen.items() if k.split()[0] in ("INSERT", "UPDATE", "DELETE")}
    for table in ("model_catalog", "model_version", "model_rollout_policy", "policy_snapshot",
                  "policy_route", "object_status", "audit_event"):
        assert writes.get(f"INSERT {table}") == 1, seen
    assert writes.get("UPDATE model_rollout_policy") == 1 and \
        writes.get("UPDATE audit_head") == 1, seen
    assert sum(writes.values()) <= 12, seen
    assert seen["SELECT"] <= 20, seen
    with backend.store.read("acme") as tx:
        observed = tx.observe()
        assert len(observed.models) == MODELS and len(observed.versions) == 2 * MODELS
        assert {s.policy_version for s in observed.snapshots.values()} == {1}
        assert len(tx.statuses()) == 4 * MODELS
        assert len(list(tx.audit_events())) == 5 * MODELS
    assert backend.store.verify_audit("acme") is None


def test_batched_and_single_audit_appends_make_one_chain(
        backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    """Batches and single appends, within one transaction and across several, extend one
    chain that `cadml audit verify` checks, the events in the order given."""
    store = backend.store
    with store.transaction("acme", "git") as tx:
        assert tx.audit_many([]) == []
        first = tx.audit_many([AuditAppend("create", "Model", f"m{i}", {"i": i})
                               for i in range(3)])
        tx.audit("change", "Model", "m0", {"single": True})
        tx.audit_many([AuditAppend("delete", "Model", "m1", None, "alice"),
                       AuditAppend("create", "Model", "m3")])
    with store.transaction("acme", "bob") as tx:
        tx.audit("change", "Model", "m2")
    with store.transaction("acme", "git") as tx:
        tx.audit_many([AuditAppend("publish", "RolloutPolicy", "p", {"policyVersion": i})
                       for i in range(1, 5)])
    with store.read("acme") as tx:
        events = list(tx.audit_events())
    assert [e.seq for e in events] == list(range(1, 12))
    assert [(e.action, e.object_name, e.actor) for e in events[:7]] == [
        ("create", "m0", "git"), ("create", "m1", "git"), ("create", "m2", "git"),
        ("change", "m0", "git"), ("delete", "m1", "alice"), ("create", "m3", "git"),
        ("change", "m2", "bob")]
    assert events[:3] == first and events[1].prev_hash == events[0].hash
    assert [e.details for e in events[7:]] == [{"policyVersion": i} for i in range(1, 5)]
    assert store.verify_audit("acme") is None
    assert main(["audit", "verify", "--store", backend.app_url, "--tenant", "acme"]) == 0
    assert "acme: audit chain intact" in capsys.readouterr().out


def test_statuses_written_then_rewritten(backend: Backend) -> None:
    """New keys are inserted and known ones overwritten in one call; other tenants' rows
    with the same keys are neither read as existing nor touched."""
    store = backend.store
    with store.transaction("other", "git") as tx:
        tx.write_statuses({("Model", "a"): (7, {"other": True})})
    with store.transaction("acme", "git") as tx:
        tx.write_statuses({("Model", "a"): (1, {"v": 1}), ("Model", "b"): (1, {"v": 1})})
        tx.write_statuses({})
    with store.transaction("acme", "git") as tx:
        tx.write_statuses({("Model", "b"): (2, {"v": 2}), ("ModelVersion", "a"): (1, {"v": 1}),
                           ("Model", "c"): (1, {"v": 1})})
        tx.write_status("Model", "a", 3, {"v": 3})
    with store.read("acme") as tx:
        assert tx.statuses() == {("Model", "a"): {"v": 3}, ("Model", "b"): {"v": 2},
                                 ("ModelVersion", "a"): {"v": 1}, ("Model", "c"): {"v": 1}}
    with store.read("other") as tx:
        assert tx.statuses() == {("Model", "a"): {"other": True}}
    with backend.admin.connect() as c:
        generations = dict(c.execute(text(
            "SELECT kind || '/' || name, generation FROM object_status "
            "WHERE tenant_id = 'acme'")).all())
    assert generations == {"Model/a": 3, "Model/b": 2, "ModelVersion/a": 1, "Model/c": 1}


def _model(name: str, generation: int = 1, key: str | None = None,
           previous: str | None = None) -> ModelRow:
    return ModelRow(name, key or name, "acme-ml", name, generation=generation,
                    previous_name=previous)


def _version(name: str, semver: str, stage: str, generation: int = 1,
             previous: str | None = None) -> VersionRow:
    return VersionRow(name, "m", semver, stage, "s3://b/x", "npz", "a" * 64,
                      generation=generation, previous_name=previous)


def test_batched_upserts_keep_ids_renames_and_the_guard(backend: Backend) -> None:
    store = backend.store
    with store.transaction("acme", "git") as tx:
        ids = tx.upsert_models([_model("m"), _model("n"), _model("o")])
        assert len(set(ids)) == 3
    with store.transaction("acme", "git") as tx:
        # overwrite, rename (keeps the id), new row, and a name given twice (last wins)
        again = tx.upsert_models([_model("m", 2), _model("n2", 2, key="n", previous="n"),
                                  _model("p"), _model("o", 2, key="o1"),
                                  _model("o", 3, key="o2")])
        assert again[:2] == ids[:2] and again[3] == again[4] == ids[2]
        assert again[2] not in ids
    with store.read("acme") as tx:
        models = tx.observe().models
    assert sorted(models) == ["m", "n2", "o", "p"]
    assert (models["m"].generation, models["o"].model_key, models["o"].generation) == \
        (2, "o2", 3)
    with pytest.raises(StaleWrite, match="model_catalog acme/o"), \
            store.transaction("acme", "git") as tx:
        tx.upsert_models([_model("q"), _model("m", 5), _model("o", 2)])
    with store.read("acme") as tx:  # a stale row anywhere in the batch: nothing written
        assert sorted(tx.observe().models) == ["m", "n2", "o", "p"]
        assert tx.observe().models["m"].generation == 2


def test_a_batch_moves_stable_in_plan_order(backend: Backend) -> None:
    """A promotion in one batch: the old STABLE leaves (DEPRECATED) before the new one
    enters, whether the new one is a new row or an existing one; a rename with the same
    semver keeps the row."""
    store = backend.store
    with store.transaction("acme", "git") as tx:
        tx.upsert_models([_model("m")])
        tx.upsert_versions([_version("v1", "1.0.0", "STABLE"),
                            _version("v2", "2.0.0", "CANARY")])
    with store.transaction("acme", "git") as tx:
        tx.upsert_versions([_version("v1", "1.0.0", "DEPRECATED", 2),
                            _version("v2", "2.0.0", "STABLE", 2)])
    with store.transaction("acme", "git") as tx:
        tx.upsert_versions([_version("v2-renamed", "2.0.0", "DEPRECATED", 3, previous="v2"),
                            _version("v3", "3.0.0", "STABLE")])
    with store.read("acme") as tx:
        rows = {v.name: (v.version, v.stage) for v in tx.versions("m")}
    assert rows == {"v1": ("1.0.0", "DEPRECATED"), "v2-renamed": ("2.0.0", "DEPRECATED"),
                    "v3": ("3.0.0", "STABLE")}


def test_snapshots_of_one_policy_in_one_batch_build_on_each_other(backend: Backend) -> None:
    store = backend.store
    with store.transaction("acme", "git") as tx:
        tx.upsert_models([_model("m"), _model("k")])
        tx.upsert_versions([_version("v1", "1.0.0", "STABLE")])
        tx.upsert_policies([PolicyRow("p", "m", {}, 5, 1), PolicyRow("q", "k", {}, 5, 1)])
        stable = (RouteRow("1.0.0", 100, True),)
        assert tx.publish_snapshots([NewSnapshot("p", stable, {}, "policy"),
                                     NewSnapshot("q", (), {}, "policy")]) == [1, 1]
        assert tx.publish_snapshots([NewSnapshot("p", stable, {}, "policy"),
                                     NewSnapshot("p", stable, {}, "rollback", "r")]) == [2, 3]
    with store.read("acme") as tx:
        snap = tx.snapshot("m")
    assert snap is not None and (snap.policy_version, snap.source, snap.routes) == \
        (3, "rollback", stable)


def test_batches_larger_than_one_in_list_are_read_in_chunks(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines cap the parameters of one statement: reads by name go IN_CHUNK at a time
    (here 2, so every read of a 3-model pass spans chunks) with the same result."""
    monkeypatch.setattr(repository, "IN_CHUNK", 2)
    with backend.store.transaction("acme", "git") as tx:
        apply_plan(tx, _first_pass("acme", 3))
    with backend.store.transaction("acme", "git") as tx:
        again = _first_pass("acme", 3)
        assert tx.upsert_models(again.models) == tx.upsert_models(again.models)
        assert tx.publish_snapshots([NewSnapshot(s.policy_name, s.routes, {}, "policy")
                                     for s in again.snapshots]) == [2, 2, 2]
    with backend.store.read("acme") as tx:
        observed = tx.observe()
    assert len(observed.versions) == 6 and len(observed.statuses) == 12
    assert {s.policy_version for s in observed.snapshots.values()} == {2}
    assert backend.store.verify_audit("acme") is None
