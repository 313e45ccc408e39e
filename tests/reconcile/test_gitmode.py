"""Git mode end to end on a temporary repository built from examples/: real Git, real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from controller.cli import main
from controller.reconcile.gitmode import reconcile_repo, watch
from controller.store import Store
from tests.conftest import NOW, git
from tests.stores import Backend

PART = "tenants/acme-cad/part-similarity.yaml"
CANARY = "    - version: 1.1.0\n      weight: 90\n    - version: 1.2.0\n      weight: 10\n"


def _commit(repo: Path, rel: str, old: str, new: str, message: str) -> str:
    path = repo / rel
    body = path.read_text()
    assert old in body, old
    path.write_text(body.replace(old, new, 1))
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD")


def _run(store: Store, repo: Path):  # type: ignore[no-untyped-def]
    return reconcile_repo(store, str(repo), "HEAD", [], 8 * 1024 * 1024, now=NOW)


def _audit_count(store: Store, tenant: str = "acme-cad") -> int:
    with store.transaction(tenant, "t") as tx:
        return len(list(tx.audit_events()))


def _snapshot(store: Store, model: str = "part-similarity"):  # type: ignore[no-untyped-def]
    with store.transaction("acme-cad", "t") as tx:
        return tx.snapshot(model)


def test_first_reconcile_then_idempotent(backend: Backend, gitops_repo: Path) -> None:
    store = backend.store
    first = _run(store, gitops_repo)
    assert first.ok and first.changed and first.resources == 21
    snap = _snapshot(store)
    assert snap.policy_version == 1
    assert [(r.version, r.weight, r.is_stable) for r in snap.routes] == [
        ("1.1.0", 90, True), ("1.2.0", 10, False)]
    assert snap.thresholds["1.2.0"]["similarity"] == {"value": 0.84, "source": "policy"}
    assert snap.thresholds["1.1.0"]["minMatches"] == {"value": 3.0, "source": "model"}
    with store.transaction("acme-cad", "t") as tx:
        statuses = tx.statuses()
        assert tx.verify_audit() is None
        ef = {v.version: v.ef_search for v in tx.versions("assembly-match")}
    assert ef["2.1.0"] == 128 and ef["2.0.0"] is None  # spec.search.efSearch, per version
    ready = {k: next(c["status"] for c in s["conditions"] if c["type"] == "Ready")
             for k, s in statuses.items()}
    assert set(ready.values()) == {"True"} and len(ready) == 13
    policy_status = statuses[("RolloutPolicy", "part-similarity")]
    assert policy_status["routingSummary"] == "1.1.0=90,1.2.0=10"
    assert statuses[("Model", "part-similarity")]["stableVersion"] == "1.1.0"
    before = _audit_count(store)
    again = _run(store, gitops_repo)
    assert again.ok and not again.changed
    assert _audit_count(store) == before
    with store.transaction("acme-cad", "t") as tx:
        assert tx.statuses() == statuses  # not even lastTransitionTime moved


def test_weights_rollback_and_invalid_commit(backend: Backend, gitops_repo: Path) -> None:
    store = backend.store
    assert _run(store, gitops_repo).ok
    _commit(gitops_repo, PART, CANARY,
            "    - version: 1.1.0\n      weight: 70\n    - version: 1.2.0\n      weight: 30\n",
            "canary to 30 %")
    moved = _run(store, gitops_repo)
    assert moved.ok and _snapshot(store).policy_version == 2
    assert any("1.1.0=90,1.2.0=10 → 1.1.0=70,1.2.0=30" in line
               for p in moved.plans for line in p.summary_lines())
    _commit(gitops_repo, PART,
            "    - version: 1.1.0\n      weight: 70\n    - version: 1.2.0\n      weight: 30\n",
            "    - version: 1.1.0\n      weight: 100\n", "roll back to stable")
    assert _run(store, gitops_repo).ok
    snap = _snapshot(store)
    assert snap.policy_version == 3 and [(r.version, r.weight) for r in snap.routes] == [
        ("1.1.0", 100)]
    audit_before = _audit_count(store)
    _commit(gitops_repo, PART, "      weight: 100\n", "      weight: 90\n", "broken")
    broken = _run(store, gitops_repo)
    assert not broken.ok and not broken.plans
    assert {f.rule for f in broken.findings} >= {"policy.weights-sum-100"}
    assert _snapshot(store).policy_version == 3  # previous state intact
    assert _audit_count(store) == audit_before
    with store.transaction("acme-cad", "t") as tx:
        assert tx.verify_audit() is None
        # the snapshots of every step are still there (history only appends)
        count = tx.conn.execute(text("SELECT count(*) FROM policy_snapshot ps JOIN "
                                     "model_rollout_policy p ON p.id = ps.policy_id "
                                     "WHERE p.name = 'part-similarity'")).scalar()
    assert count == 3


def test_drift_is_repaired_and_audited(backend: Backend, gitops_repo: Path) -> None:
    store = backend.store
    assert _run(store, gitops_repo).ok
    with backend.admin.begin() as c:
        c.execute(text("UPDATE model_version SET stage = 'DEPRECATED', artifact_uri = 's3://evil' "
                       "WHERE name = 'part-similarity-1-2-0'"))
        c.execute(text("UPDATE model_catalog SET worker_replicas = 9 "
                       "WHERE name = 'part-similarity'"))
    result = _run(store, gitops_repo)
    lines = [line for p in result.plans for line in p.summary_lines()]
    assert any(line.startswith("repair ModelVersion acme-cad/part-similarity-1-2-0") and
               "artifact_uri" in line and "stage" in line for line in lines), lines
    assert any(line.startswith("repair Model acme-cad/part-similarity") for line in lines)
    with store.transaction("acme-cad", "t") as tx:
        stages = {v.version: (v.stage, v.artifact_uri) for v in tx.versions("part-similarity")}
        assert stages["1.2.0"] == ("CANARY", "s3://acme-models/part-sim/1.2.0/index.faiss")
        assert tx.verify_audit() is None
    assert not _run(store, gitops_repo).changed


def test_promotion_commit_applies_in_one_pass(backend: Backend, gitops_repo: Path) -> None:
    store = backend.store
    assert _run(store, gitops_repo).ok
    body = (gitops_repo / PART).read_text()
    for semver, old, new in (("1.1.0", "STABLE", "DEPRECATED"), ("1.2.0", "CANARY", "STABLE")):
        body = body.replace(f"  version: {semver}\n  stage: {old}",
                            f"  version: {semver}\n  stage: {new}")
    body = body.replace(CANARY, "    - version: 1.2.0\n      weight: 100\n")
    (gitops_repo / PART).write_text(body)
    git(gitops_repo, "commit", "-qam", "promote 1.2.0")
    assert _run(store, gitops_repo).ok
    snap = _snapshot(store)
    assert snap.stable_version == "1.2.0" and snap.policy_version == 2


def test_removed_objects_are_marked_deleted_not_erased(backend: Backend,
                                                       gitops_repo: Path) -> None:
    store = backend.store
    assert _run(store, gitops_repo).ok
    body = (gitops_repo / PART).read_text()
    docs = body.split("---\n")
    (gitops_repo / PART).write_text("---\n".join(d for d in docs if "1.3.0-rc.1" not in d))
    git(gitops_repo, "commit", "-qam", "drop the draft")
    result = _run(store, gitops_repo)
    assert result.ok
    with store.transaction("acme-cad", "t") as tx:
        deleted = tx.conn.execute(text("SELECT deleted FROM model_version WHERE "
                                       "name = 'part-similarity-1-3-0-rc-1'")).scalar()
        assert bool(deleted) is True
        assert [e.action for e in tx.audit_events()][-1] == "delete"


def test_watch_applies_a_new_commit_once(backend: Backend, gitops_repo: Path) -> None:
    store = backend.store
    seen = []

    def between_passes(_: float) -> None:
        if len(seen) == 1:
            _commit(gitops_repo, PART, CANARY, "    - version: 1.1.0\n      weight: 95\n"
                    "    - version: 1.2.0\n      weight: 5\n", "5 %")

    watch(store, str(gitops_repo), "HEAD", [], 8 * 1024 * 1024, 0.0, seen.append, passes=3,
          sleep=between_passes)
    assert [r.changed for r in seen] == [True, True, False]
    assert _snapshot(store).policy_version == 2


def test_cli_reconcile_and_status(gitops_repo: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", url]) == 0
    out = capsys.readouterr().out
    assert "publish RolloutPolicy acme-cad/part-similarity: policyVersion 1" in out
    assert main(["status", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "RolloutPolicy  part-similarity" in out and "v1 1.1.0=90,1.2.0=10" in out
    _commit(gitops_repo, PART, "weight: 10\n", "weight: 20\n", "bad")
    assert main(["reconcile", "--repo", str(gitops_repo), "--store", url]) == 1
    out = capsys.readouterr().out
    assert "policy.weights-sum-100" in out and "not applied" in out
    assert main(["reconcile", "--repo", str(tmp_path / "nope"), "--store", url]) == 2


def test_reconcile_records_metrics(backend: Backend, gitops_repo: Path) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("cadml_reconciles_total", mode="git")
    assert _run(backend.store, gitops_repo).ok
    assert sample("cadml_reconciles_total", mode="git") == before + 2  # two tenants
    assert sample("cadml_policy_version", tenant="acme-cad", model="part-similarity") == 1
    assert sample("cadml_invalid_objects", tenant="acme-cad") == 0


def test_renaming_a_policy_continues_its_history(backend: Backend, gitops_repo: Path) -> None:
    """A commit that renames a RolloutPolicy (same model) is one policy under a new name:
    policyVersion continues, old snapshots stay, the audit trail says rename."""
    store = backend.store
    assert _run(store, gitops_repo).ok
    _commit(gitops_repo, PART, "kind: RolloutPolicy\nmetadata:\n  name: part-similarity\n",
            "kind: RolloutPolicy\nmetadata:\n  name: part-similarity-rollout\n", "rename")
    renamed = _run(store, gitops_repo)
    assert renamed.ok, [f.render() for f in renamed.findings]
    _commit(gitops_repo, PART, CANARY,
            "    - version: 1.1.0\n      weight: 100\n", "roll back under the new name")
    assert _run(store, gitops_repo).ok
    snap = _snapshot(store)
    assert snap.policy_name == "part-similarity-rollout" and snap.policy_version == 2
    with store.transaction("acme-cad", "t") as tx:
        events = [(e.action, e.object_name) for e in tx.audit_events()]
        policies = tx.conn.execute(text("SELECT name, deleted FROM model_rollout_policy "
                                        "WHERE name LIKE 'part-similarity%'")).all()
        history = tx.conn.execute(text("SELECT count(*) FROM policy_snapshot ps JOIN "
                                       "model_rollout_policy p ON p.id = ps.policy_id "
                                       "WHERE p.name = 'part-similarity-rollout'")).scalar()
        assert tx.verify_audit() is None
    assert ("rename", "part-similarity-rollout") in events
    assert ("delete", "part-similarity") not in events
    assert [(n, bool(d)) for n, d in policies] == [("part-similarity-rollout", False)]
    assert history == 2  # the snapshot published under the old name is kept, in its line


def test_a_tenant_removed_from_git_is_marked_deleted(backend: Backend, gitops_repo: Path) -> None:
    """Git no longer names the tenant at all: only the store knows it (its tenant registry,
    readable by the runtime role on PostgreSQL too), and its objects are soft-deleted."""
    store = backend.store
    assert _run(store, gitops_repo).ok
    git(gitops_repo, "rm", "-rq", "tenants/globex-cad")
    git(gitops_repo, "commit", "-qm", "globex leaves")
    assert reconcile_repo(store, str(gitops_repo), "HEAD", [], 8 * 1024 * 1024, now=NOW,
                          prune=True).exit_code == 0  # pruning a tenant is asked for
    with store.transaction("globex-cad", "t") as tx:
        deleted = dict(tx.conn.execute(text("SELECT name, deleted FROM model_catalog "
                                            "WHERE tenant_id = 'globex-cad'")).all())
        assert tx.verify_audit() is None
    assert deleted and all(bool(d) for d in deleted.values())
