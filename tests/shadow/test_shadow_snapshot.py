"""`spec.shadow` in Git reaches the snapshot the workers read, and only while it applies.

Git mode (`reconcile_repo`, as `cadml reconcile --repo` runs it) on SQLite and
PostgreSQL; the snapshot is read back as a worker reads it (`serving_snapshot`).
"""

from __future__ import annotations

from pathlib import Path

from controller.reconcile.gitmode import reconcile_repo
from controller.records import ShadowRoute
from controller.search.build import BuildResult
from tests.conftest import git
from tests.gitops_trees import commit_tree, copy_artifacts, model_tree, version_doc
from tests.stores import Backend
from tests.worker.conftest import MODEL, TENANT


def _tree(stable: BuildResult, draft: BuildResult, policy_extra: str,
          draft_stage: str = "DRAFT") -> str:
    return model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, f"{MODEL}-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, f"{MODEL}-2-0-0", "2.0.0", draft_stage, draft,
                    "  featureVersion: v3\n")], [("1.0.0", 100)], 2, policy_extra)


def _serving(backend: Backend) -> tuple[int, ShadowRoute | None]:
    with backend.store.read(TENANT, "test") as tx:
        snap = tx.serving_snapshot(MODEL)
    assert snap is not None
    return snap.policy_version, snap.shadow


def _commit(repo: Path, tree: str, message: str) -> None:
    (repo / "models" / f"{MODEL}.yaml").write_text(tree)
    git(repo, "commit", "-qam", message)


def test_shadow_is_published_changed_and_withdrawn(backend: Backend, tmp_path: Path,
                                                  corpus_index: BuildResult,
                                                  corpus_v3: BuildResult) -> None:
    stable, = copy_artifacts(tmp_path, corpus_index, ["stable"])
    draft, = copy_artifacts(tmp_path, corpus_v3, ["draft"])
    repo = commit_tree(tmp_path, MODEL, _tree(stable, draft,
                                              "  shadow: {version: 2.0.0, percent: 50}\n"))
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _serving(backend) == (1, ShadowRoute("2.0.0", 50))
    # the same spec again: nothing new is published
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _serving(backend) == (1, ShadowRoute("2.0.0", 50))
    _commit(repo, _tree(stable, draft, "  shadow: {version: 2.0.0, percent: 20}\n"), "20 %")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _serving(backend) == (2, ShadowRoute("2.0.0", 20))
    # an override routes by hand: no comparison runs under it
    _commit(repo, _tree(stable, draft, "  shadow: {version: 2.0.0, percent: 20}\n"
                        "  override: {version: 1.0.0, reason: incident}\n"), "override")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _serving(backend) == (3, None)
    _commit(repo, _tree(stable, draft, ""), "no shadow")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _serving(backend) == (4, None)
    with backend.store.read(TENANT, "test") as tx:
        summaries = [e.details.get("summary", "") for e in tx.audit_events()
                     if e.action == "publish"]
    assert any("shadow 2.0.0 50% → shadow 2.0.0 20%" in s for s in summaries), summaries
