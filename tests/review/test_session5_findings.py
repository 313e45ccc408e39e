"""Session 5 adversarial review findings (issues 11, 12, 15, 16), through the public
interfaces: `cadml reconcile` of a Git repository, the `cadml` CLI, shard files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from tests.conftest import git
from tests.gitops_trees import commit_tree, copy_artifacts, model_tree, version_doc
from tests.stores import Backend

TENANT, MODEL = "acme-cad", "part-sim"
PAUSE_STEPS = """  strategy:
    steps:
      - setWeight: 10
      - pause: {}
      - setWeight: 50
"""
POLICY_META = f"metadata: {{name: {MODEL}, namespace: {TENANT}}}"


def _steps_tree(tmp_path: Path, index: BuildResult, annotation: str | None) -> Path:
    """The plan 10 % → pause (no duration) → 50 % in a new Git repository; `annotation`:
    a rollout-command annotation on the RolloutPolicy, as committed by hand."""
    stable, canary = copy_artifacts(tmp_path, index, ["art-stable", "art-canary"])
    tree = model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, "part-sim-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, "part-sim-1-1-0", "1.1.0", "CANARY", canary)],
        [("1.0.0", 70), ("1.1.0", 30)], 5, PAUSE_STEPS)
    if annotation is not None:  # on the RolloutPolicy only (the last document)
        head, _, tail = tree.rpartition(POLICY_META)
        meta = (f"metadata:\n  name: {MODEL}\n  namespace: {TENANT}\n  annotations:\n"
                f"    cadml.io/rollout-command: '{annotation}'")
        tree = head + meta + tail
    return commit_tree(tmp_path, MODEL, tree)


def _policy_status(backend: Backend) -> dict[str, Any]:
    with backend.store.read(TENANT, "t") as tx:
        return tx.statuses()[("RolloutPolicy", MODEL)]


def test_git_commit_cannot_forge_a_rollout_command(tmp_path: Path, corpus_index: BuildResult,
                                                   backend: Backend) -> None:
    """A `cadml.io/rollout-command` annotation committed to Git (no webhook stamps it)
    must not resume the pause: only `cadml rollout resume` (audited with --actor) or the
    webhook-stamped annotation in a cluster may. Before the fix the planner applied it and
    audited the forged user ("k8s:admin")."""
    repo = _steps_tree(tmp_path, corpus_index, None)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _policy_status(backend)["stepPhase"] == "Paused"
    # a commit adds the annotation by hand (no webhook in Git mode)
    forged = json.dumps({"action": "resume", "user": "admin", "id": "forged-1"})
    path = repo / "models" / f"{MODEL}.yaml"
    head, _, tail = path.read_text().rpartition(POLICY_META)
    path.write_text(head + f"metadata:\n  name: {MODEL}\n  namespace: {TENANT}\n"
                    f"  annotations:\n    cadml.io/rollout-command: '{forged}'" + tail)
    git(repo, "commit", "-qam", "resume by hand")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    status = _policy_status(backend)
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        1, "Paused", 10)
    with backend.store.read(TENANT, "t") as tx:
        actors = {event.actor for event in tx.audit_events()}
    assert "k8s:admin" not in actors


def test_refused_command_is_not_audited_as_the_users(tmp_path: Path,
                                                     corpus_index: BuildResult,
                                                     backend: Backend) -> None:
    """A command that does not apply (resume while not paused: the first sync of a new
    plan) is read once and changes nothing; the audit row of the walk must not name the
    command's user as its actor. Before: the row of the new plan was attributed to
    "k8s:<user>" because the command id was consumed."""
    resume = json.dumps({"action": "resume", "user": "mallory", "id": "c-1"})
    repo = _steps_tree(tmp_path, corpus_index, resume)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _policy_status(backend)["stepPhase"] == "Paused"
    with backend.store.read(TENANT, "t") as tx:
        steps_rows = [e for e in tx.audit_events() if e.action == "step"]
    assert steps_rows and all(e.actor != "k8s:mallory" and "user" not in e.details
                              for e in steps_rows)
