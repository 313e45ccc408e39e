"""Defects left over from issue 10's last adversarial review, each reproduced through the
CLI (`cadml reconcile --repo` / `status` / `history`) on a real Git repository and a real
store on both engines; each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from controller.cli import main
from controller.reconcile.planner import snapshot_change
from controller.records import PolicySnapshot, RouteRow
from tests.conftest import NOW, ROOT, git
from tests.stores import Backend

ACME = "acme-cad"
PART = "tenants/acme-cad/part-similarity.yaml"
CANARY_DOC = ("---\napiVersion: cadml.io/v1alpha1\nkind: ModelVersion\n"
              "metadata:\n  name: part-similarity-1-2-0")


def cli(backend: Backend, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()  # what earlier calls printed
    code = main([*args, "--store", backend.app_url])
    out = capsys.readouterr().out
    print(out)  # shown when the test fails
    return code, out


def reconcile(backend: Backend, repo: Path, capsys: pytest.CaptureFixture[str],
              *args: str) -> tuple[int, str]:
    return cli(backend, capsys, "reconcile", "--repo", str(repo), *args)


def status(backend: Backend, capsys: pytest.CaptureFixture[str],
           tenant: str = ACME) -> dict[tuple[str, str], dict[str, Any]]:
    code, out = cli(backend, capsys, "status", "--tenant", tenant, "--output", "json")
    assert code == 0
    return {(r["kind"], r["name"]): r for r in json.loads(out)}


def ready(row: dict[str, Any]) -> str:
    return next(c["status"] for c in row["status"]["conditions"] if c["type"] == "Ready")


def commit(repo: Path, rel: str, body: str, message: str) -> None:
    (repo / rel).write_text(body)
    git(repo, "commit", "-qam", message)


def canary_doc(body: str) -> str:
    """The ModelVersion document of the CANARY 1.2.0 in part-similarity.yaml."""
    doc = body[body.index(CANARY_DOC):]
    return doc[:doc.index("---", 4)]


# ------------------------------------------- 1. status keeps names that left the store

def test_status_drops_the_old_name_of_a_renamed_version(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Renaming the CANARY 1.2.0 (same semver): `cadml status` went on listing the old name
    as Ready=True with weight 10 beside the new one: statuses are keyed by (kind, name) and
    nothing removed the row of a name that left."""
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    body = (gitops_repo / PART).read_text()
    commit(gitops_repo, PART, body.replace("name: part-similarity-1-2-0", "name: part-sim-canary"),
           "rename the canary")
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    found = status(backend, capsys)
    assert ready(found[("ModelVersion", "part-sim-canary")]) == "True"
    assert found[("ModelVersion", "part-sim-canary")]["status"]["servingWeight"] == 10
    assert ("ModelVersion", "part-similarity-1-2-0") not in found
    assert [k for k, r in found.items() if r["deleted"]] == []


def test_status_keeps_no_name_that_only_a_refused_commit_had(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A commit that renames the served canary and changes its artifact is refused
    (version.artifact-immutable); once it is reverted, the name it introduced must not stay
    in `cadml status` (it stayed, Stalled, for ever)."""
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    body = (gitops_repo / PART).read_text()
    commit(gitops_repo, PART, body.replace("name: part-similarity-1-2-0", "name: part-sim-canary")
           .replace("part-sim/1.2.0/index.faiss", "part-sim/1.2.0/index-rebuilt.faiss"),
           "rename the canary and swap its artifact")
    code, out = reconcile(backend, gitops_repo, capsys)
    assert code == 1 and "version.artifact-immutable" in out
    assert ("ModelVersion", "part-sim-canary") in status(backend, capsys)  # says why: Stalled
    git(gitops_repo, "revert", "--no-edit", "HEAD")
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    found = status(backend, capsys)
    assert ("ModelVersion", "part-sim-canary") not in found
    assert ready(found[("ModelVersion", "part-similarity-1-2-0")]) == "True"


# --------------------------- 2. a deleted served version resurrected with another artifact

def test_a_deleted_served_version_recreated_with_another_artifact_is_refused(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Delete the served CANARY 1.2.0 in one commit, re-create 1.2.0 under another name with
    another artifact in the next: the store's identity is (model, semver), so the soft-deleted
    row (its runs, its evaluations) was resurrected with the new artifact and reconcile said
    0. A semver that served traffic keeps its artifact: refused with
    version.artifact-immutable, the row untouched; the same artifact is a plain re-creation."""
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    body = (gitops_repo / PART).read_text()
    without = body.replace(canary_doc(body), "").replace(
        "    - version: 1.1.0\n      weight: 90\n    - version: 1.2.0\n      weight: 10\n",
        "    - version: 1.1.0\n      weight: 100\n")
    commit(gitops_repo, PART, without, "withdraw the canary 1.2.0")
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    again = canary_doc(body).replace("name: part-similarity-1-2-0", "name: part-sim-canary")
    commit(gitops_repo, PART, without + again.replace(
        "part-sim/1.2.0/index.faiss", "part-sim/1.2.0/index-rebuilt.faiss").replace(
        "181cc84fc9b6c1b374a8aefac6c122eef35f1d0e494649cad5ab350ce9d53865", "ab" * 32),
        "1.2.0 again, another artifact")
    code, out = reconcile(backend, gitops_repo, capsys)
    assert code == 1, out
    assert "version.artifact-immutable" in out and "acme-cad: FAILED" in out
    with backend.store.engine.connect() as c:
        if backend.kind == "postgresql":
            c.execute(text(f"SELECT set_config('app.tenant_id', '{ACME}', false)"))
        rows = c.execute(text("SELECT name, artifact_uri, deleted FROM model_version WHERE "
                              "tenant_id = 'acme-cad' AND version = '1.2.0'")).all()
    assert [(n, u, bool(d)) for n, u, d in rows] == [
        ("part-similarity-1-2-0", "s3://acme-models/part-sim/1.2.0/index.faiss", True)]
    # `cadml diff` over the whole change (from before the deletion) gives the same verdict;
    # a diff of the re-creating commit alone cannot see the deleted version: only the
    # store remembers it
    code = main(["diff", "--repo", str(gitops_repo), "--base", "HEAD~2", "--head", "HEAD"])
    assert code == 1 and "version.artifact-immutable" in capsys.readouterr().out
    commit(gitops_repo, PART, without + again, "1.2.0 again, its own artifact")
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    assert ready(status(backend, capsys)[("ModelVersion", "part-sim-canary")]) == "True"


# ----------------------- 3. PostgreSQL: two first reconciles of one repository at once

def _cli_process(backend: Backend, repo: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "controller", "reconcile", "--repo",
                             str(repo), "--store", backend.app_url], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_first_reconciles_at_once_both_converge_and_stall_nothing(
        pg_backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two `cadml reconcile` processes take their snapshot of an empty tenant before either
    writes (held at their first model insert by a table lock the test takes, then let go
    together). The loser's insert met the winner's rows: a unique violation reported as
    Conflict, and `stall_tenant` wrote Stalled/Conflict over the winner's statuses. A unique
    violation against rows committed after the pass's snapshot is a lost race (StalePass):
    retried once from a fresh view, it finds nothing to do; nothing is stalled."""
    admin = pg_backend.admin.connect()
    tx = admin.begin()
    admin.execute(text("LOCK TABLE model_catalog IN SHARE MODE"))  # reads pass, inserts wait
    procs = [_cli_process(pg_backend, gitops_repo) for _ in range(2)]
    try:
        waiting = 0
        for _ in range(600):  # both blocked at their first write: a positive signal
            with pg_backend.admin.connect() as probe:
                waiting = probe.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                    "relation = 'model_catalog'::regclass")).scalar() or 0
            if waiting == 2 or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        assert waiting == 2, [p.communicate() for p in procs]
    finally:
        tx.rollback()  # let both go at once
        admin.close()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    print(*outs, sep="\n")
    assert [p.returncode for p in procs] == [0, 0], outs
    found = status(pg_backend, capsys, ACME) | status(pg_backend, capsys, "globex-cad")
    assert found and {k: ready(r) for k, r in found.items()} == dict.fromkeys(found, "True")
    with pg_backend.store.read(ACME) as rtx:
        assert rtx.verify_audit() is None
        creates = [(e.object_kind, e.object_name) for e in rtx.audit_events()
                   if e.action == "create"]
    assert len(creates) == len(set(creates))  # one pass applied the commit, once


# ------------------------------------------------ 4. a tenant pruned, then re-added

def test_a_pruned_tenant_re_added_is_restored_and_history_says_since_when(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """globex-cad removed from Git (reconciled with --prune), then re-added (git revert). The
    re-adding pass audited `update … stage DEPRECATED → STABLE` (the prune had deprecated
    its STABLE versions), `cadml history` reported its routing as in force since the
    snapshot published before the deletion, and while it was pruned its release record
    still showed Ready in `cadml status`. Expected: while pruned, nothing of it is Ready;
    re-added, every object is audited `restore`, and history says it serves since then."""
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    git(gitops_repo, "rm", "-rq", "tenants/globex-cad")
    git(gitops_repo, "commit", "-qm", "globex leaves")
    assert reconcile(backend, gitops_repo, capsys, "--prune")[0] == 0
    pruned = status(backend, capsys, "globex-cad")
    assert pruned and not [k for k, r in pruned.items() if not r["deleted"]]
    git(gitops_repo, "revert", "--no-edit", "HEAD")
    code, out = reconcile(backend, gitops_repo, capsys)
    assert code == 0
    lines = [line.strip() for line in out.splitlines() if "globex-cad/" in line]
    assert lines and all(line.startswith("restore ") for line in lines), lines
    assert "DEPRECATED → STABLE" not in out
    found = status(backend, capsys, "globex-cad")
    assert {k: (ready(r), r["deleted"]) for k, r in found.items()} == dict.fromkeys(
        found, ("True", False))
    with backend.store.read("globex-cad") as tx:
        assert tx.verify_audit() is None
        events = [(e.action, e.at) for e in tx.audit_events()
                  if (e.object_kind, e.object_name) == ("Model", "drawing-dedup")]
    (_, deleted_at), (_, restored_at) = [e for e in events if e[0] in ("delete", "restore")]
    code, out = cli(backend, capsys, "history", "--tenant", "globex-cad", "--at", restored_at,
                    "--output", "json")
    dedup = next(r for r in json.loads(out) if r["model"] == "drawing-dedup")
    assert (dedup["source"], dedup["since"]) == ("override", restored_at)
    code, out = cli(backend, capsys, "history", "--tenant", "globex-cad", "--at", deleted_at,
                    "--output", "json")
    dedup = next(r for r in json.loads(out) if r["model"] == "drawing-dedup")
    assert (dedup["source"], dedup["since"]) == ("deleted", deleted_at)


# ------------------------------------- 5. a thresholds-only change says what changed

def test_a_thresholds_only_change_says_which_threshold_changed(
        backend: Backend, gitops_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Raising the policy's similarity threshold publishes policyVersion 2; its summary read
    `1.1.0=90,1.2.0=10 → 1.1.0=90,1.2.0=10 (policy)`, as if nothing had changed. It names
    the threshold, of each version, with its value before and after (and its source where
    that changed: a version's own threshold replaced by the policy's)."""
    assert reconcile(backend, gitops_repo, capsys)[0] == 0
    body = (gitops_repo / PART).read_text()
    commit(gitops_repo, PART, body.replace("  thresholds:\n    similarity: 0.84\n",
                                           "  thresholds:\n    similarity: 0.86\n"),
           "stricter similarity")
    code, out = reconcile(backend, gitops_repo, capsys)
    assert code == 0
    (line,) = [x.strip() for x in out.splitlines() if x.strip().startswith("publish ")]
    assert line == ("publish RolloutPolicy acme-cad/part-similarity: policyVersion 2: routes "
                    "1.1.0=90,1.2.0=10 (unchanged); threshold similarity of 1.1.0 0.84 → "
                    "0.86; threshold similarity of 1.2.0 0.84 → 0.86 (policy)")


_ROUTES = (RouteRow("1.1.0", 90, True), RouteRow("1.2.0", 10, False))
_THR = {"1.1.0": {"similarity": {"value": 0.84, "source": "policy"}}}


@pytest.mark.parametrize(("routes", "thresholds", "refresh", "source", "reason", "says"), [
    ((RouteRow("1.1.0", 100, True),), _THR, 5, "policy", "",
     "1.1.0=90,1.2.0=10 → 1.1.0=100 (policy)"),
    (_ROUTES, {"1.1.0": {"similarity": {"value": 0.8, "source": "model"}}}, 5, "policy", "",
     "routes 1.1.0=90,1.2.0=10 (unchanged); threshold similarity of 1.1.0 0.84 (policy) → "
     "0.8 (model) (policy)"),
    (_ROUTES, {}, 5, "policy", "", "routes 1.1.0=90,1.2.0=10 (unchanged); threshold "
     "similarity of 1.1.0 0.84 (policy) → - (policy)"),
    (_ROUTES, _THR, 10, "policy", "", "routes 1.1.0=90,1.2.0=10 (unchanged); refreshSeconds "
     "5 → 10 (policy)"),
    (_ROUTES, _THR, 5, "override", "INC-1", "routes 1.1.0=90,1.2.0=10 (unchanged); source "
     "policy → override; because INC-1 (override)"),
])
def test_a_snapshots_summary_names_each_change(
        routes: tuple[RouteRow, ...], thresholds: dict[str, Any], refresh: int, source: str,
        reason: str, says: str) -> None:
    current = PolicySnapshot("m", "p", 1, "policy", "", _ROUTES, _THR, 5, NOW)
    assert snapshot_change(current, routes, thresholds, refresh, source, reason) == says
    assert snapshot_change(None, routes, thresholds, refresh, source, reason).startswith(
        "- → ")
