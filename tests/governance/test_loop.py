"""The governance loop end to end on the embedded default: Git mode + a local worker + SQLite.

A healthy canary passes its analysis; a canary whose success rate falls below its
bound is aborted automatically, new runs land on STABLE within one refresh cycle,
status and audit say why; `cadml compare` shows both versions; `cadml rollback
--repo` makes a commit that validates and reconciles to STABLE; a repeated
schedule tick does nothing.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from controller.cli import main
from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import git
from tests.gitops_trees import ANALYSIS, canary_tree

TENANT, MODEL = "acme-cad", "part-sim"


def _tree(stable: BuildResult, canary: BuildResult, canary_similarity: float) -> str:
    return canary_tree(TENANT, MODEL, stable, canary, canary_similarity, 5, ANALYSIS)


def _traffic(runtime: WorkerRuntime, vectors: np.ndarray, prefix: str, n: int) -> list[str]:
    rng = np.random.default_rng(len(prefix))
    queries = (vectors[rng.integers(0, len(vectors), n)]
               + rng.normal(scale=0.05, size=(n, vectors.shape[1]))).astype(np.float32)
    jobs = [f"{prefix}-{i}" for i in range(n)]
    return [o.version for o in runtime.search(queries, jobs, 5)]


def _policy_status(store: Store) -> dict[str, object]:
    with store.transaction(TENANT, "t") as tx:
        return tx.statuses()[("RolloutPolicy", MODEL)]


def _cond(status: dict[str, object], kind: str) -> dict[str, str]:
    return next(c for c in status["conditions"] if c["type"] == kind)  # type: ignore[union-attr]


def test_canary_abort_rollback_and_tick(tmp_path: Path, corpus_index: BuildResult,
                                        corpus_hnsw: BuildResult,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "gitops"
    (repo / "models").mkdir(parents=True)
    shutil.copytree(corpus_index.manifest_path.parent, tmp_path / "art-stable")
    shutil.copytree(corpus_hnsw.manifest_path.parent, tmp_path / "art-canary")
    stable = BuildResult(tmp_path / "art-stable/manifest.json", corpus_index.manifest_sha256,
                         0, [])
    canary = BuildResult(tmp_path / "art-canary/manifest.json", corpus_hnsw.manifest_sha256,
                         0, [])
    doc = repo / "models" / "part-sim.yaml"
    doc.write_text(_tree(stable, canary, 0.3))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "part-sim 70/30 with analysis")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(make_engine(url))
    upgrade(store.engine)
    assert reconcile_repo(store, str(repo), "HEAD", [], 10**7).ok

    runtime = WorkerRuntime(store, WorkerSettings(TENANT, MODEL, url, worker_id="w1"))
    runtime.refresh()
    vectors = np.load(stable.manifest_path.parent / "vectors.npy")

    # 1. healthy canary: its runs meet the threshold, the analysis passes
    served = _traffic(runtime, vectors, "healthy", 200)
    assert 0.2 < served.count("1.1.0") / 200 < 0.4
    assert main(["schedule-tick", "--window-key", "w-1", "--store", url, "-o", "json"]) == 0
    (tick,) = json.loads(capsys.readouterr().out)
    assert tick["ran"] and tick["analysis"][0]["verdict"] == "Pass"
    assert reconcile_repo(store, str(repo), "HEAD", [], 10**7).ok
    assert _cond(_policy_status(store), "RolloutHealthy")["status"] == "True"

    # 2. the canary's threshold becomes unreachable: its success rate collapses
    doc.write_text(_tree(stable, canary, 0.9999))
    git(repo, "commit", "-qam", "canary threshold 0.9999")
    assert reconcile_repo(store, str(repo), "HEAD", [], 10**7).ok
    runtime.refresh()
    served = _traffic(runtime, vectors, "failing", 1200)
    assert served.count("1.1.0") > 250
    # the next measurement is due once the policy's intervalSeconds (60 by default) passed
    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    assert main(["schedule-tick", "--window-key", "w-2", "--store", url, "--now", later,
                 "-o", "json"]) == 0
    (tick,) = json.loads(capsys.readouterr().out)
    (verdict,) = tick["analysis"]
    assert verdict["verdict"] == "Fail" and verdict["aborted"]
    assert "success_rate" in verdict["summary"] and "min 0.9" in verdict["summary"]

    # new runs land on STABLE within one refresh cycle (the worker's cheap probe sees it)
    assert runtime.published_version() != runtime.snapshot.policy_version  # type: ignore[union-attr]
    runtime.refresh()
    after = _traffic(runtime, vectors, "after-abort", 300)
    assert set(after) == {"1.0.0"}

    # Git still says 70/30; reconciling keeps the abort and explains it
    result = reconcile_repo(store, str(repo), "HEAD", [], 10**7)
    assert result.ok and not any(p.snapshots for p in result.plans)
    status = _policy_status(store)
    healthy = _cond(status, "RolloutHealthy")
    assert healthy["status"] == "False" and healthy["reason"] == "CanaryAborted"
    assert "success_rate" in healthy["message"]
    assert status["abortedVersions"] == ["1.1.0"]
    assert status["routingSummary"] == "1.0.0=100"
    last = status["lastRollback"]
    assert last["effectiveAt"] is not None and last["cycles"] <= 1.0  # type: ignore[index]
    assert _cond(status, "RollbackSLOBreached")["status"] == "False"
    with store.transaction(TENANT, "t") as tx:
        abort = [e for e in tx.audit_events() if e.action == "abort"]
        assert tx.verify_audit() is None
    assert len(abort) == 1 and abort[0].details["version"] == "1.1.0"

    # 3. compare shows the two versions side by side
    assert main(["compare", f"{TENANT}/{MODEL}", "--versions", "1.0.0,1.1.0", "--store", url,
                 "-o", "json"]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)["versions"]}
    assert rows["1.0.0"]["successRate"] > 0.9 > rows["1.1.0"]["successRate"]
    assert rows["1.1.0"]["sampleSize"] > 250

    # 4. rollback in Git: a commit that validates and reconciles to STABLE
    assert main(["rollback", f"{TENANT}/{MODEL}", "--reason", "canary 1.1.0 aborted",
                 "--actor", "oncall@acme", "--repo", str(repo)]) == 0
    capsys.readouterr()
    message = git(repo, "log", "-1", "--format=%B")
    assert "Reason: canary 1.1.0 aborted" in message and "Actor: oncall@acme" in message
    committed = git(repo, "show", "HEAD:models/part-sim.yaml")
    assert "cadml.io/rollback-reason: canary 1.1.0 aborted" in committed
    assert committed.count("kind: ModelVersion") == 2  # the rest of the file is untouched
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(repo)]) == 0
    capsys.readouterr()
    assert reconcile_repo(store, str(repo), "HEAD", [], 10**7).ok
    with store.transaction(TENANT, "t") as tx:
        snap = tx.snapshot(MODEL)
    assert snap is not None and snap.source == "rollback"
    assert [(r.version, r.weight) for r in snap.routes] == [("1.0.0", 100)]
    assert git(repo, "rev-list", "--count", "HEAD") == "3"  # history appended, not rewritten

    # 5. a repeated tick in the same window does nothing and says so
    assert main(["schedule-tick", "--window-key", "w-2", "--store", url]) == 0
    assert "already ran; nothing to do" in capsys.readouterr().out
    store.dispose()
