"""Store identity that survives renames, and the generation guard (issue 10, items 1 and the
guard): Git mode through the CLI on a real repository, the planner and store on both engines."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from controller.api.v1alpha1 import KINDS, Resource, RolloutPolicy
from controller.cli import main
from controller.errors import StaleWrite
from controller.reconcile.step import findings_for, reconcile_tenant
from tests.conftest import EXAMPLES, NOW, git
from tests.stores import Backend

PART = "tenants/acme-cad/part-similarity.yaml"
DEDUP = "tenants/globex-cad/drawing-dedup.yaml"
FASTENER = "tenants/globex-cad/fastener-lookup.yaml"


def _edit(repo: Path, rel: str, *pairs: tuple[str, str]) -> None:
    path = repo / rel
    body = path.read_text()
    for old, new in pairs:
        assert old in body, old
        body = body.replace(old, new)
    path.write_text(body)


def _reconcile(backend: Backend, repo: Path, capsys: pytest.CaptureFixture[str]) -> int:
    code = main(["reconcile", "--repo", str(repo), "--store", backend.app_url])
    print(capsys.readouterr().out)
    return code


def _rows(backend: Backend, sql: str) -> list[tuple[object, ...]]:
    with backend.store.engine.connect() as c:  # the app role: what it may see (RLS)
        if backend.kind == "postgresql":
            c.execute(text("SELECT set_config('app.tenant_id', 'acme-cad', false)"))
        return [tuple(r) for r in c.execute(text(sql)).all()]


def test_version_rename_and_another_tenants_rollback_in_one_commit(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Renaming a ModelVersion (same semver) wedged its tenant with a UNIQUE violation and
    every tenant sorting after it (globex's rollback in the same commit) was never applied."""
    assert _reconcile(backend, gitops_repo, capsys) == 0
    _edit(gitops_repo, PART, ("name: part-similarity-1-1-0\n", "name: part-sim-stable\n"),
          ("modelRef: part-similarity-1-1-0", "modelRef: part-sim-stable"))
    _edit(gitops_repo, DEDUP, ("    - {version: 0.9.0, weight: 75}\n"
                               "    - {version: 1.0.0, weight: 25}\n"
                               "  override:\n    version: 0.9.0\n",
                               "    - {version: 0.9.0, weight: 100}\n"
                               "  annotationsGone:\n    version: 0.9.0\n"))
    _edit(gitops_repo, DEDUP, ("  annotationsGone:\n    version: 0.9.0\n"
                               '    reason: "INC-4412: 1.0.0 flags revisions of the same sheet as '
                               'distinct drawings"\n', ""))
    git(gitops_repo, "commit", "-qam", "rename a version; roll globex back")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    with backend.store.transaction("globex-cad", "t") as tx:
        dedup = tx.snapshot("drawing-dedup")
    assert dedup is not None and (dedup.policy_version, dedup.source) == (2, "policy")
    assert [(r.version, r.weight) for r in dedup.routes] == [("0.9.0", 100)]
    rows = _rows(backend, "SELECT name, version, stage, deleted FROM model_version WHERE "
                          "version = '1.1.0' AND tenant_id = 'acme-cad'")
    assert [(n, v, s, bool(d)) for n, v, s, d in rows] == [
        ("part-sim-stable", "1.1.0", "STABLE", False)]  # one row: its runs and routes follow
    with backend.store.transaction("acme-cad", "t") as tx:
        events = [(e.action, e.object_name, e.details.get("previousName"))
                  for e in tx.audit_events()]
        assert tx.verify_audit() is None
    assert ("rename", "part-sim-stable", "part-similarity-1-1-0") in events
    assert _reconcile(backend, gitops_repo, capsys) == 0  # and converged: a no-op after


def test_a_version_deleted_then_created_under_another_name(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Delete-then-create in two commits: the soft-deleted row takes the new name."""
    assert _reconcile(backend, gitops_repo, capsys) == 0
    body = (gitops_repo / PART).read_text()
    draft = body[body.index("---\napiVersion: cadml.io/v1alpha1\nkind: ModelVersion\n"
                            "metadata:\n  name: part-similarity-1-3-0-rc-1"):]
    draft = draft[:draft.index("---", 4)]
    (gitops_repo / PART).write_text(body.replace(draft, ""))
    git(gitops_repo, "commit", "-qam", "drop the draft")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    (gitops_repo / PART).write_text(body.replace("name: part-similarity-1-3-0-rc-1",
                                                 "name: part-sim-rc"))
    git(gitops_repo, "commit", "-qam", "the draft again, under another name")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    rows = _rows(backend, "SELECT name, deleted FROM model_version WHERE "
                          "version = '1.3.0-rc.1' AND tenant_id = 'acme-cad'")
    assert [(n, bool(d)) for n, d in rows] == [("part-sim-rc", False)]


def test_model_recreated_under_a_new_name_with_the_same_key(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The model, its version and its policy under new names (modelRef is immutable, so a
    cluster needs new objects too), the same modelKey and semver: one line of history."""
    assert _reconcile(backend, gitops_repo, capsys) == 0
    body = (gitops_repo / FASTENER).read_text()
    (gitops_repo / FASTENER).write_text(body.replace("fastener-lookup", "fastener-v2")
                                        .replace("modelKey: fastener-v2",
                                                 "modelKey: fastener-lookup"))
    git(gitops_repo, "commit", "-qam", "the model under a new name")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    with backend.store.transaction("globex-cad", "t") as tx:
        snap = tx.snapshot("fastener-v2", live=True)
        versions = {v.name: v.stage for v in tx.versions("fastener-v2") if not v.deleted}
        models = {m: tx.model_id(m) for m in ("fastener-lookup", "fastener-v2")}
        renamed = {(e.object_kind, e.object_name, e.details.get("previousName"))
                   for e in tx.audit_events() if e.action == "rename"}
    assert snap is not None and snap.policy_version == 1  # the line continues, unchanged
    assert versions == {"fastener-v2-3-4-1": "STABLE"}
    assert models["fastener-lookup"] is None and models["fastener-v2"] is not None
    assert renamed == {("Model", "fastener-v2", "fastener-lookup"),
                       ("ModelVersion", "fastener-v2-3-4-1", "fastener-lookup-3-4-1"),
                       ("RolloutPolicy", "fastener-v2", "fastener-lookup")}
    assert _reconcile(backend, gitops_repo, capsys) == 0


def test_a_release_record_name_reused_for_a_new_release(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Release records are append-only history keyed by releaseId; the object name of a
    removed record may be used again for a new release."""
    assert _reconcile(backend, gitops_repo, capsys) == 0
    body = (gitops_repo / DEDUP).read_text()
    record = body[body.index("---\napiVersion: cadml.io/v1alpha1\nkind: ReleaseRecord"):]
    (gitops_repo / DEDUP).write_text(body.replace(record, ""))
    git(gitops_repo, "commit", "-qam", "the record leaves Git (the store keeps it)")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    (gitops_repo / DEDUP).write_text(body.replace("releaseId: rel_2026_10_20_002",
                                                  "releaseId: rel_2026_11_30_009"))
    git(gitops_repo, "commit", "-qam", "a new release under the old record's name")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    with backend.store.engine.connect() as c:
        if backend.kind == "postgresql":
            c.execute(text("SELECT set_config('app.tenant_id', 'globex-cad', false)"))
        ids = sorted(c.execute(text("SELECT release_id FROM release_record WHERE "
                                    "tenant_id = 'globex-cad'")).scalars())
    assert ids == ["rel_2026_10_20_002", "rel_2026_11_30_009"]  # both kept


# ---------------------------------------------------------------- the generation guard

def load_tenant(tenant: str) -> list[Resource]:
    """The tenant's resources in examples/, as the operator would hand them to a pass."""
    return [KINDS[doc["kind"]].model_validate(doc)
            for path in sorted((EXAMPLES / "tenants" / tenant).glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _policy(generation: int, weights: list[tuple[str, int]],
            annotations: dict[str, str] | None = None) -> RolloutPolicy:
    base = next(r for r in load_tenant("acme-cad") if isinstance(r, RolloutPolicy)
                and r.metadata.name == "part-similarity")
    body = base.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"].update(generation=generation, annotations=annotations or {})
    body["spec"]["weights"] = [{"version": v, "weight": w} for v, w in weights]
    return RolloutPolicy.model_validate(body)


def test_a_stale_pass_does_not_undo_a_rollback(backend: Backend) -> None:
    """A pass built from an older view (generation 1: 50/50) committing after the rollback
    (generation 2: 100 % STABLE) is refused whole; nothing it planned is written."""
    store = backend.store
    others = [r for r in load_tenant("acme-cad") if not isinstance(r, RolloutPolicy)
              or r.metadata.name != "part-similarity"]

    def apply(policy: RolloutPolicy, at: int) -> None:
        resources = [*others, policy]
        now = NOW + timedelta(seconds=at)
        reconcile_tenant(store, "acme-cad", resources, findings_for(resources, now), now, "t")

    apply(_policy(1, [("1.1.0", 50), ("1.2.0", 50)]), 0)
    apply(_policy(2, [("1.1.0", 100)], {"cadml.io/rollback-reason": "bad canary"}), 1)
    with store.transaction("acme-cad", "t") as tx:
        audit_before = len(list(tx.audit_events()))
    with pytest.raises(StaleWrite, match="generation"):
        apply(_policy(1, [("1.1.0", 50), ("1.2.0", 50)]), 2)
    with store.transaction("acme-cad", "t") as tx:
        snap = tx.snapshot("part-similarity")
        generation = tx.conn.execute(text(
            "SELECT generation FROM model_rollout_policy WHERE name = 'part-similarity' "
            "AND tenant_id = 'acme-cad'")).scalar()
        assert len(list(tx.audit_events())) == audit_before
    assert snap is not None and snap.policy_version == 2 and snap.source == "rollback"
    assert [(r.version, r.weight) for r in snap.routes] == [("1.1.0", 100)]
    assert generation == 2


def test_git_mode_never_applies_an_older_commit_over_a_newer_one(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The generation guard in Git mode: `--ref` naming an ancestor of the commit already
    applied (a stale agent, a mistyped ref) would undo a rollback; it is refused and the
    store keeps the newer state. A new commit that goes back (git revert) applies."""
    assert _reconcile(backend, gitops_repo, capsys) == 0
    first = git(gitops_repo, "rev-parse", "HEAD")
    _edit(gitops_repo, PART, ("    - version: 1.1.0\n      weight: 90\n"
                              "    - version: 1.2.0\n      weight: 10\n",
                              "    - version: 1.1.0\n      weight: 100\n"))
    git(gitops_repo, "commit", "-qam", "roll back")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    code = main(["reconcile", "--repo", str(gitops_repo), "--ref", first,
                 "--store", backend.app_url])
    captured = capsys.readouterr()
    assert code == 1 and "older than" in captured.out + captured.err
    with backend.store.transaction("acme-cad", "t") as tx:
        snap = tx.snapshot("part-similarity")
    assert snap is not None and [(r.version, r.weight) for r in snap.routes] == [("1.1.0", 100)]
    git(gitops_repo, "revert", "--no-edit", "HEAD")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    with backend.store.transaction("acme-cad", "t") as tx:
        snap = tx.snapshot("part-similarity")
    assert snap is not None and [(r.version, r.weight) for r in snap.routes] == [
        ("1.1.0", 90), ("1.2.0", 10)]


def test_git_mode_refuses_a_branch_that_diverged_from_the_applied_commit(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--ref side` where side was cut before the applied commit: applying it would undo
    main's change (and the next pass of main would flip it back). Refused, nothing
    changed; a commit that descends from the applied one (the merge) applies."""
    assert _reconcile(backend, gitops_repo, capsys) == 0
    git(gitops_repo, "branch", "side")
    _edit(gitops_repo, PART, ("    - version: 1.1.0\n      weight: 90\n"
                              "    - version: 1.2.0\n      weight: 10\n",
                              "    - version: 1.1.0\n      weight: 100\n"))
    git(gitops_repo, "commit", "-qam", "roll back on main")
    assert _reconcile(backend, gitops_repo, capsys) == 0
    git(gitops_repo, "checkout", "-q", "side")
    _edit(gitops_repo, DEDUP, ("similarity: 0.93", "similarity: 0.94"))
    git(gitops_repo, "commit", "-qam", "a change on a side branch")
    git(gitops_repo, "checkout", "-q", "main")
    code = main(["reconcile", "--repo", str(gitops_repo), "--ref", "side",
                 "--store", backend.app_url])
    captured = capsys.readouterr()
    assert code == 1 and "not a descendant of" in captured.out + captured.err
    with backend.store.transaction("acme-cad", "t") as tx:
        snap = tx.snapshot("part-similarity")
    assert snap is not None and [(r.version, r.weight) for r in snap.routes] == [("1.1.0", 100)]
    git(gitops_repo, "merge", "-q", "--no-edit", "side")
    assert _reconcile(backend, gitops_repo, capsys) == 0
