"""Canary steps end to end on the embedded default (issue 16): Git mode + a local worker
+ SQLite + the `cadml` CLI.

On SQLite and on PostgreSQL (the runtime role, under row-level security).
A plan 10 % → analysis → 50 % → pause → done moves forward on a healthy canary, stops
at the pause (a sync of the unchanged spec, or an unrelated edit, keeps its place),
resumes on `cadml rollout resume`, reports ReadyToPromote, and `cadml promote --repo`
commits the promotion; the same plan with a failing canary aborts at the first analysis
with the verdict in status, routes everything to STABLE, and `cadml rollout retry`
starts it again. No step changes the spec in Git.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import git
from tests.gitops_trees import canary_tree, commit_tree, copy_artifacts
from tests.stores import Backend

TENANT, MODEL = "acme-cad", "part-sim"
STEPS = """  strategy:
    steps:
      - setWeight: 10
      - analysis:
          metrics:
            - name: success_rate
              min: 0.9
          minSampleSize: 10
          failureLimit: 1
          intervalSeconds: 5
      - setWeight: 50
      - pause: {}
"""


def _tree(stable: BuildResult, canary: BuildResult, canary_similarity: float,
          refresh: int = 5) -> str:
    return canary_tree(TENANT, MODEL, stable, canary, canary_similarity, refresh, STEPS)


class Loop:
    """The GitOps repo, the store (`backend`: SQLite or PostgreSQL as the runtime role) and
    a worker serving from it."""

    def __init__(self, tmp_path: Path, index: BuildResult, canary_similarity: float,
                 backend: Backend) -> None:
        self.stable, self.canary = copy_artifacts(tmp_path, index, ["art-stable",
                                                                    "art-canary"])
        self.repo = commit_tree(tmp_path, MODEL, _tree(self.stable, self.canary,
                                                       canary_similarity))
        self.url = backend.app_url
        self.store = backend.store
        self.reconcile()
        self.runtime = WorkerRuntime(self.store, WorkerSettings(TENANT, MODEL, self.url,
                                                                worker_id="w1"))
        self.vectors = np.load(self.stable.manifest_path.parent / "vectors.npy")

    def reconcile(self) -> None:
        assert reconcile_repo(self.store, str(self.repo), "HEAD", [], 10**7).ok

    def traffic(self, prefix: str, n: int) -> list[str]:
        self.runtime.refresh()
        rng = np.random.default_rng(len(prefix))
        queries = (self.vectors[rng.integers(0, len(self.vectors), n)]
                   + rng.normal(scale=0.05, size=(n, self.vectors.shape[1]))).astype(
            np.float32)
        return [o.version for o in self.runtime.search(queries, [f"{prefix}-{i}"
                                                                 for i in range(n)], 5)]

    def status(self) -> dict[str, Any]:
        with self.store.read(TENANT, "t") as tx:
            return tx.statuses()[("RolloutPolicy", MODEL)]

    def routes(self) -> list[tuple[str, int]]:
        with self.store.read(TENANT, "t") as tx:
            snap = tx.snapshot(MODEL)
        assert snap is not None
        return [(r.version, r.weight) for r in snap.routes]

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
        capsys.readouterr()
        code = main([*args, "-o", "json"])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None


def _cond(status: dict[str, Any], kind: str) -> dict[str, str]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_healthy_plan_walks_pauses_resumes_and_promotes(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = Loop(tmp_path, corpus_index, 0.3, backend)
    head = git(loop.repo, "rev-parse", "HEAD")
    # step 1 (setWeight 10) passes at once; the walk waits on the analysis at 10 %
    status = loop.status()
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        1, "Progressing", 10)
    assert loop.routes() == [("1.0.0", 90), ("1.1.0", 10)]
    served = loop.traffic("ten", 300)
    assert 0.04 < served.count("1.1.0") / 300 < 0.18

    # the tick measures the canary's runs of this step: Pass → 50 % → the pause waits
    code, (tick,) = loop.cli(capsys, "schedule-tick", "--window-key", "w-1",
                             "--store", loop.url)
    assert code == 0 and tick["ran"]
    (moved,) = tick["steps"]
    assert (moved["stepIndex"], moved["phase"]) == (3, "Paused")
    assert "step 2 Pass" in moved["summary"]
    assert loop.routes() == [("1.0.0", 50), ("1.1.0", 50)]
    loop.reconcile()
    status = loop.status()
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        3, "Paused", 50)
    assert [v["result"] for v in status["stepVerdicts"]] == ["Pass"]
    assert "success_rate" in status["stepVerdicts"][0]["summary"]
    assert _cond(status, "ReadyToPromote")["status"] == "False"
    served = loop.traffic("fifty", 300)
    assert 0.35 < served.count("1.1.0") / 300 < 0.65

    # a sync of the unchanged spec, and an edit outside the plan, keep the place
    loop.reconcile()
    (loop.repo / "models" / f"{MODEL}.yaml").write_text(
        _tree(loop.stable, loop.canary, 0.3, refresh=6))
    git(loop.repo, "commit", "-qam", "refreshSeconds 6")
    loop.reconcile()
    status = loop.status()
    assert (status["currentStepIndex"], status["stepPhase"]) == (3, "Paused")
    assert loop.routes() == [("1.0.0", 50), ("1.1.0", 50)]

    # resume is not retry: a command that does not apply is refused, nothing written
    code, _ = loop.cli(capsys, "rollout", "retry", f"{TENANT}/{MODEL}", "--store", loop.url)
    assert code == 2
    assert loop.status()["stepPhase"] == "Paused"
    code, out = loop.cli(capsys, "rollout", "resume", f"{TENANT}/{MODEL}", "--store",
                         loop.url, "--actor", "alice")
    assert code == 0 and out["phase"] == "ReadyToPromote" and out["user"] == "alice"
    assert loop.routes() == [("1.0.0", 70), ("1.1.0", 30)]  # the spec's own weights
    loop.reconcile()
    status = loop.status()
    assert status["stepPhase"] == "ReadyToPromote" and status["canaryWeight"] == 30
    assert _cond(status, "ReadyToPromote")["status"] == "True"
    assert [v["result"] for v in status["stepVerdicts"]] == ["Pass", "Resumed"]
    with loop.store.read(TENANT, "t") as tx:
        resumed = [e for e in tx.audit_events() if e.action == "step"
                   and e.details.get("command") == "resume"]
        assert tx.verify_audit() is None
    assert len(resumed) == 1 and resumed[0].actor == "alice"

    # no step touched Git; the promotion is a commit of its own, and it validates
    assert git(loop.repo, "rev-list", "--count", "HEAD") == "2"
    assert git(loop.repo, "status", "--porcelain") == ""
    assert head != git(loop.repo, "rev-parse", "HEAD")  # only the refreshSeconds commit
    code, out = loop.cli(capsys, "promote", f"{TENANT}/{MODEL}", "--version", "1.1.0",
                         "--reason", "steps passed", "--repo", str(loop.repo),
                         "--author", "Alice <alice@acme.example>", "--store", loop.url)
    assert code == 0, out
    committed = git(loop.repo, "show", "HEAD:models/part-sim.yaml")
    assert "strategy" not in committed and "stage: STABLE" in committed
    assert main(["validate", "--git-ref", "HEAD", "--repo", str(loop.repo)]) == 0
    loop.reconcile()
    assert loop.routes() == [("1.1.0", 100)]


def test_failing_canary_aborts_at_the_first_analysis_and_retry_restarts(
        tmp_path: Path, corpus_index: BuildResult, backend: Backend,
        capsys: pytest.CaptureFixture[str]) -> None:
    loop = Loop(tmp_path, corpus_index, 0.9999, backend)
    served = loop.traffic("ten", 400)
    assert served.count("1.1.0") >= 10
    # promote refuses while the plan is not done
    code, _ = loop.cli(capsys, "promote", f"{TENANT}/{MODEL}", "--version", "1.1.0",
                       "--reason", "too early", "--repo", str(loop.repo),
                       "--author", "Alice <alice@acme.example>", "--store", loop.url)
    assert code == 2
    code, (tick,) = loop.cli(capsys, "schedule-tick", "--window-key", "w-1",
                             "--store", loop.url)
    assert code == 0 and tick["ran"]
    assert loop.routes() == [("1.0.0", 100)]
    loop.reconcile()
    status = loop.status()
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        1, "Aborted", 0)
    (verdict,) = status["stepVerdicts"]
    assert verdict["result"] == "Fail" and "success_rate" in verdict["summary"]
    assert _cond(status, "RolloutHealthy")["reason"] == "CanaryAborted"
    assert _cond(status, "Ready")["status"] == "False"
    assert set(loop.traffic("after", 200)) == {"1.0.0"}
    loop.reconcile()  # a sync of Git (still 70/30 with steps) keeps the abort
    assert loop.routes() == [("1.0.0", 100)]

    code, out = loop.cli(capsys, "rollout", "retry", f"{TENANT}/{MODEL}", "--store",
                         loop.url, "--actor", "bob")
    assert code == 0 and (out["stepIndex"], out["phase"]) == (1, "Progressing")
    assert loop.routes() == [("1.0.0", 90), ("1.1.0", 10)]
    code, out = loop.cli(capsys, "rollout", "abort", f"{TENANT}/{MODEL}", "--store",
                         loop.url, "--actor", "bob")
    assert code == 0 and out["phase"] == "Aborted"
    assert loop.routes() == [("1.0.0", 100)]
    assert git(loop.repo, "rev-list", "--count", "HEAD") == "1"

    # a new plan in Git (another first weight) starts afresh at step 0, abort forgotten
    doc = loop.repo / "models" / f"{MODEL}.yaml"
    doc.write_text(doc.read_text().replace("setWeight: 10", "setWeight: 20"))
    git(loop.repo, "commit", "-qam", "first step at 20 %")
    loop.reconcile()
    status = loop.status()
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"],
            status["stepVerdicts"]) == (1, "Progressing", 20, [])
    assert loop.routes() == [("1.0.0", 80), ("1.1.0", 20)]
