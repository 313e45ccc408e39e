"""Findings of the adversarial review of issue 10's change: each test failed on the reviewed
commit (before its fix) and states the expected behaviour in its docstring. Public
interfaces only (CLI, Store, reconcile_tenant)."""

from __future__ import annotations

import contextlib
import copy
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.api.v1alpha1 import KINDS, Resource
from controller.cli import main
from controller.errors import StaleWrite
from controller.reconcile.gitmode import _refuse_transitions
from controller.reconcile.step import findings_for, reconcile_tenant
from controller.records import RunRecord
from tests.conftest import NOW, git
from tests.reconcile.test_identity import load_tenant
from tests.stores import Backend

ACME = "acme-cad"
PART = "tenants/acme-cad/part-similarity.yaml"


def docs(tenant: str = ACME) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json", by_alias=True, exclude_none=True)
            for r in load_tenant(tenant)]


def find(ds: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in ds if d["kind"] == kind and d["metadata"]["name"] == name)


def drop(ds: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [d for d in copy.deepcopy(ds)
            if not (d["kind"] == kind and d["metadata"]["name"] == name)]


def apply(backend: Backend, ds: list[dict[str, Any]], at: int = 0, guard: Any = None,
          tenant: str = ACME) -> Any:
    resources: list[Resource] = [KINDS[d["kind"]].model_validate(d) for d in ds]
    now = NOW + timedelta(seconds=at)
    return reconcile_tenant(backend.store, tenant, resources, findings_for(resources, now),
                            now, "t", guard=guard)


def reconcile(backend: Backend, repo: Path, capsys: pytest.CaptureFixture[str],
              *args: str) -> int:
    code = main(["reconcile", "--repo", str(repo), "--store", backend.app_url, *args])
    print(capsys.readouterr())
    return code


def live_versions(backend: Backend, model: str) -> dict[str, tuple[str, str]]:
    with backend.store.transaction(ACME, "t") as tx:
        return {v.name: (v.version, v.stage) for v in tx.versions(model) if not v.deleted}


def routes(backend: Backend, model: str, tenant: str = ACME) -> list[tuple[str, int]]:
    with backend.store.transaction(tenant, "t") as tx:
        snap = tx.serving_snapshot(model)
    assert snap is not None
    return [(r.version, r.weight) for r in snap.routes]


# ------------------------------------ F1: a name held by a tombstone of another identity

def test_rename_version_to_a_name_a_deleted_version_of_another_semver_held(
        sqlite_backend: Backend) -> None:
    """Expected: renaming the CANARY 1.2.0 to the name a removed DRAFT (1.3.0-rc.1) once had
    converges (the 1.2.0 row takes the name; the tombstone keeps its history). Today every
    pass fails with UNIQUE(model, version): the tenant is wedged, exactly issue 10 item 1."""
    ds = docs()
    apply(sqlite_backend, ds)
    ds = drop(ds, "ModelVersion", "part-similarity-1-3-0-rc-1")
    apply(sqlite_backend, ds, 1)
    find(ds, "ModelVersion", "part-similarity-1-2-0")["metadata"]["name"] = \
        "part-similarity-1-3-0-rc-1"
    apply(sqlite_backend, ds, 2)  # ConflictError: UNIQUE constraint failed
    assert live_versions(sqlite_backend, "part-similarity")["part-similarity-1-3-0-rc-1"] == (
        "1.2.0", "CANARY")


def test_rename_policy_to_a_name_a_deleted_policy_of_another_model_held(
        sqlite_backend: Backend) -> None:
    """Expected: after assembly-match's RolloutPolicy is removed, part-similarity's policy may
    be renamed to `assembly-match` (a rename: its policyVersion line continues). Today every
    pass fails with UNIQUE(tenant, model_id) on model_rollout_policy: the tenant is wedged."""
    ds = docs()
    apply(sqlite_backend, ds)
    ds = drop(ds, "RolloutPolicy", "assembly-match")
    apply(sqlite_backend, ds, 1)
    find(ds, "RolloutPolicy", "part-similarity")["metadata"]["name"] = "assembly-match"
    apply(sqlite_backend, ds, 2)  # ConflictError: UNIQUE constraint failed
    with sqlite_backend.store.transaction(ACME, "t") as tx:
        snap = tx.serving_snapshot("part-similarity")
    assert snap is not None and snap.policy_name == "assembly-match"
    assert snap.policy_version == 1  # unchanged routing: the line continues, no new snapshot


# ------------------------------------------------- F2: a reused name rewrites a tombstone's semver

def test_reusing_a_deleted_versions_name_for_another_semver_keeps_its_history(
        sqlite_backend: Backend) -> None:
    """Expected: the runs of a withdrawn canary 1.2.0 stay 1.2.0's runs when a new canary 1.4.0
    is later published under the same object name (a common `<model>-canary` naming). Today
    the soft-deleted 1.2.0 row is overwritten in place (version := 1.4.0), so 1.2.0's runs,
    evaluations and job bindings are reported as 1.4.0's and 1.2.0's history is gone."""
    ds = docs()
    apply(sqlite_backend, ds)
    with sqlite_backend.store.transaction(ACME, "t") as tx:
        tx.record_runs([RunRecord("part-similarity", "1.2.0", 1, "policy", {}, 10.0, False,
                                  False, created_at=NOW)])
    withdrawn = drop(ds, "ModelVersion", "part-similarity-1-2-0")
    find(withdrawn, "RolloutPolicy", "part-similarity")["spec"]["weights"] = [
        {"version": "1.1.0", "weight": 100}]
    apply(sqlite_backend, withdrawn, 1)
    again = copy.deepcopy(ds)
    v = find(again, "ModelVersion", "part-similarity-1-2-0")
    v["spec"]["version"] = "1.4.0"
    v["spec"]["artifact"].update(uri="s3://acme-models/part-sim/1.4.0/index.faiss",
                                 sha256="ab" * 32)
    find(again, "RolloutPolicy", "part-similarity")["spec"]["weights"] = [
        {"version": "1.1.0", "weight": 90}, {"version": "1.4.0", "weight": 10}]
    apply(sqlite_backend, again, 2)
    window = (NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    with sqlite_backend.store.transaction(ACME, "t") as tx:
        old = tx.run_facts("part-similarity", *window, version="1.2.0")
        new = tx.run_facts("part-similarity", *window, version="1.4.0")
    assert (len(old), len(new)) == (1, 0)  # today (0, 1): 1.4.0 inherits 1.2.0's failed run


# ------------------------------------------------- F3: a rename bypasses artifact immutability

def test_a_rename_does_not_change_the_artifact_of_the_served_stable_version(
        sqlite_backend: Backend) -> None:
    """Expected: Git mode's transition check (version.artifact-immutable) also applies when the
    object is renamed, since the store keeps the same row (same runs, routes, STABLE stage):
    the pass is refused. Today a rename + new artifact replaces the artifact of the STABLE
    1.1.0 that serves 90 % of traffic, audited only as `rename … runs and routes carry on`."""
    ds = docs()
    apply(sqlite_backend, ds)
    v = find(ds, "ModelVersion", "part-similarity-1-1-0")
    v["metadata"]["name"] = "part-sim-stable"
    v["spec"]["artifact"].update(uri="s3://elsewhere/other.faiss", sha256="cd" * 32)
    for d in ds:
        if d["kind"] == "ReleaseRecord" and \
                d["spec"]["artifacts"]["modelRef"] == "part-similarity-1-1-0":
            d["spec"]["artifacts"]["modelRef"] = "part-sim-stable"
    with contextlib.suppress(Exception):  # refused is the expected outcome
        apply(sqlite_backend, ds, 1, guard=_refuse_transitions)
    with sqlite_backend.store.transaction(ACME, "t") as tx:
        served = [(x.stage, x.artifact_uri) for x in tx.versions("part-similarity")
                  if x.version == "1.1.0"]
    assert served == [("STABLE", "s3://acme-models/part-sim/1.1.0/index.faiss")]


# ------------------------------------------------- F4: the older-commit guard fails open

def test_a_stale_clone_cannot_undo_a_rollback(backend: Backend, gitops_repo: Path,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Expected: a stale agent (a clone that has not fetched the rollback commit) reconciling
    its older HEAD is refused, like `--ref OLD` in an up-to-date clone: the guard cannot prove
    the commit is newer, so it must fail closed (or compare what it can). Today the applied
    commit is unknown to the stale clone, the guard returns early, and the old 90/10 canary
    replaces the rollback (exit 0)."""
    assert reconcile(backend, gitops_repo, capsys) == 0
    stale = tmp_path / "stale"
    subprocess.run(["git", "clone", "-q", str(gitops_repo), str(stale)], check=True)
    body = (gitops_repo / PART).read_text()
    (gitops_repo / PART).write_text(body.replace(
        "    - version: 1.1.0\n      weight: 90\n    - version: 1.2.0\n      weight: 10\n",
        "    - version: 1.1.0\n      weight: 100\n"))
    git(gitops_repo, "commit", "-qam", "roll back")
    assert reconcile(backend, gitops_repo, capsys) == 0
    assert routes(backend, "part-similarity") == [("1.1.0", 100)]
    code = reconcile(backend, stale, capsys)  # the stale agent's periodic pass
    assert routes(backend, "part-similarity") == [("1.1.0", 100)]  # today: 90/10 again
    assert code == 1


# ------------------------------------------------- F5: a PREFIX narrower than a tenant prunes it

def test_a_file_prefix_does_not_delete_the_rest_of_its_tenant(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Expected: `cadml reconcile --repo R tenants/acme-cad/part-similarity.yaml` (a PREFIX
    naming one file) applies that file and leaves acme-cad's other objects alone, or refuses
    without --prune. Today the tenant is reconciled from that file alone: assembly-match's
    Model, its three versions (one STABLE, serving) and its policy are deleted, 5 of 11
    objects, under the half threshold, exit 0, without --prune; the model stops serving."""
    assert reconcile(backend, gitops_repo, capsys) == 0
    code = reconcile(backend, gitops_repo, capsys, PART)
    with backend.store.transaction(ACME, "t") as tx:
        deleted = [(e.object_kind, e.object_name) for e in tx.audit_events()
                   if e.action == "delete"]
        serving = tx.serving_snapshot("assembly-match")
    assert deleted == [], (code, deleted)
    assert serving is not None


# ------------------------------------------------- F6: the generation guard ignores incarnations

def test_a_recreated_object_at_generation_1_is_not_a_stale_pass(sqlite_backend: Backend) -> None:
    """Expected: the generation guard compares generations of one incarnation (DESIGN §9:
    "key by uid + generation"). A RolloutPolicy re-created in a new cluster pointing at the
    same store (restore, migration, or operator → Git mode, where manifests carry no
    generation) is a newer object, not an older view: its rollback applies. Today every pass
    is StaleWrite, and the operator requeues it every second forever with no status."""
    ds = docs()
    pol = find(ds, "RolloutPolicy", "part-similarity")
    pol["metadata"].update(uid="uid-old-cluster", generation=3)
    apply(sqlite_backend, ds)
    pol["metadata"].update(uid="uid-new-cluster", generation=1)
    pol["spec"]["weights"] = [{"version": "1.1.0", "weight": 100}]
    try:
        apply(sqlite_backend, ds, 1)
    except StaleWrite as exc:
        pytest.fail(f"a new incarnation was refused as stale: {exc}")
    assert routes(sqlite_backend, "part-similarity") == [("1.1.0", 100)]


# ------------------------------------------------- F7: a model rename resumes an aborted canary

def test_renaming_the_model_does_not_resume_an_aborted_canary(sqlite_backend: Backend) -> None:
    """Expected (README: "keyed by (model, version, the policy's spec hash) so a rename neither
    resumes nor resets an abort"): after canary 1.2.0 was aborted, renaming the Model (same
    modelKey; its versions and policy re-created with the new modelRef, as modelRef is
    immutable) keeps all traffic on STABLE. Today the policy's spec hash includes modelRef,
    so the abort no longer matches and 1.2.0 gets its 10 % back."""
    from controller.evaluation import analysis_key
    from controller.records import AnalysisState

    ds = docs()
    apply(sqlite_backend, ds)
    policy = KINDS["RolloutPolicy"].model_validate(find(ds, "RolloutPolicy", "part-similarity"))
    key = analysis_key(policy.spec.model_dump(mode="json", by_alias=True, exclude_none=True))
    with sqlite_backend.store.transaction(ACME, "canary-analysis") as tx:  # as analysis keys it
        tx.save_analysis(AnalysisState("part-similarity", "1.2.0", key, 2, True,
                                       ({"overall": "Failed", "summary": "success_rate low",
                                         "at": NOW.isoformat()},)))
    apply(sqlite_backend, ds, 1)
    assert routes(sqlite_backend, "part-similarity") == [("1.1.0", 100)]  # the abort holds
    renamed = []
    for d in copy.deepcopy(ds):
        if d["kind"] == "ReleaseRecord":
            continue
        if d["kind"] == "Model" and d["metadata"]["name"] == "part-similarity":
            d["metadata"]["name"] = "part-sim"
        elif d["kind"] != "Model" and d["spec"].get("modelRef") == "part-similarity":
            d["metadata"]["name"] = d["metadata"]["name"].replace("part-similarity", "part-sim")
            d["spec"]["modelRef"] = "part-sim"
        renamed.append(d)
    apply(sqlite_backend, renamed, 2)
    assert routes(sqlite_backend, "part-sim") == [("1.1.0", 100)]  # today: 90/10 again


# ------------------------------------------------- F8: drift turns a normal promote into a refusal

def test_a_promote_commit_applies_over_a_drifted_row(sqlite_backend: Backend) -> None:
    """Expected: drift (a row changed behind the controller's back: here the CANARY's
    artifact_uri, spec hash unchanged) is repaired, and a normal promote commit (CANARY →
    STABLE, the old STABLE → DEPRECATED, weights 100 % to the new one) applies, as `cadml diff`
    says it does between the two commits. Today Git mode judges the transition against the
    drifted columns: version.artifact-immutable refuses the promote on every pass, forever
    (the drift is only repaired by a pass that does not change that version's spec)."""
    from dataclasses import replace

    ds = docs()
    apply(sqlite_backend, ds)
    with sqlite_backend.store.transaction(ACME, "dba") as tx:
        row = next(v for v in tx.versions("part-similarity") if v.version == "1.2.0")
        tx.upsert_version(replace(row, artifact_uri="s3://mirror/part-sim/1.2.0/index.faiss"))
    find(ds, "ModelVersion", "part-similarity-1-2-0")["spec"]["stage"] = "STABLE"
    find(ds, "ModelVersion", "part-similarity-1-1-0")["spec"]["stage"] = "DEPRECATED"
    find(ds, "RolloutPolicy", "part-similarity")["spec"]["weights"] = [
        {"version": "1.2.0", "weight": 100}]
    apply(sqlite_backend, ds, 1, guard=_refuse_transitions)  # InvalidInput today
    assert live_versions(sqlite_backend, "part-similarity")["part-similarity-1-2-0"] == (
        "1.2.0", "STABLE")
