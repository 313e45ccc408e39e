"""A RolloutPolicy's status counts the job bindings its routing suspends (issue 12): after
a rollback, an abort or an override, jobs bound to a version the effective routing no
longer routes are served by the policy; the policy says how many, per version. Through
Git mode (`cadml reconcile --repo`, `cadml rollback`, `cadml status -o json`) on both
engines; the operator writes the very status the pass computes (tests/operator)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from controller.records import RunRecord
from controller.search.build import BuildResult
from tests.gitops_trees import ANALYSIS, commit_tree, model_tree, version_doc
from tests.stores import Backend

TENANT, MODEL = "acme-cad", "part-sim"


def _artifact(root: Path, name: str) -> BuildResult:
    """An artifact reference (reconciling reads only its URI and digest, never the file)."""
    return BuildResult(root / name / "manifest.json", name[0] * 64, 0, [])


def _repo(root: Path, weights: list[tuple[str, int]], extra: str = "") -> Path:
    versions = [version_doc(TENANT, MODEL, "ps-1-0-0", "1.0.0", "STABLE", _artifact(root, "a")),
                version_doc(TENANT, MODEL, "ps-1-1-0", "1.1.0", "CANARY", _artifact(root, "b")),
                version_doc(TENANT, MODEL, "ps-1-2-0", "1.2.0", "CANARY", _artifact(root, "c"))]
    return commit_tree(root, MODEL, model_tree(TENANT, MODEL, versions, weights, 2, extra))


def _cli(backend: Backend, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main([*args, "--store", backend.app_url]) == 0
    return capsys.readouterr().out


def _policy_status(backend: Backend, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    rows = json.loads(_cli(backend, capsys, "status", "-o", "json"))
    policy = next(r for r in rows if r["kind"] == "RolloutPolicy")
    status: dict[str, Any] = policy["status"]
    return status


def _bind(backend: Backend, jobs: dict[str, str]) -> None:
    """Jobs bound as a worker binds them (the worker's HTTP binding is tested in
    tests/worker/test_bindings.py; here only the counts matter)."""
    with backend.store.transaction(TENANT, "worker") as tx:
        for job, version_name in jobs.items():
            tx.bind_job(job, version_name, {})


def test_a_rollback_commit_counts_the_bindings_it_suspends(
        backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _repo(tmp_path, [("1.0.0", 60), ("1.1.0", 20), ("1.2.0", 20)])
    _cli(backend, capsys, "reconcile", "--repo", str(repo))
    _bind(backend, {"j1": "ps-1-1-0", "j2": "ps-1-1-0", "j3": "ps-1-2-0", "j4": "ps-1-0-0"})
    _cli(backend, capsys, "reconcile", "--repo", str(repo))
    # every bound version is routed: nothing is suspended
    assert _policy_status(backend, capsys)["suspendedBindings"] == {"count": 0, "versions": {}}

    assert main(["rollback", f"{TENANT}/{MODEL}", "--reason", "canary regressed",
                 "--actor", "oncall@acme", "--repo", str(repo)]) == 0
    _cli(backend, capsys, "reconcile", "--repo", str(repo))
    status = _policy_status(backend, capsys)
    assert status["routingSummary"] == "1.0.0=100"
    # the jobs bound to either canary are served by STABLE now; the binding to STABLE holds
    assert status["suspendedBindings"] == {"count": 3, "versions": {"1.1.0": 2, "1.2.0": 1}}


def test_an_automatic_abort_counts_the_bindings_it_suspends(
        backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _repo(tmp_path, [("1.0.0", 50), ("1.1.0", 50)], ANALYSIS)
    _cli(backend, capsys, "reconcile", "--repo", str(repo))
    _bind(backend, {"j1": "ps-1-1-0", "j2": "ps-1-0-0"})
    with backend.store.transaction(TENANT, "worker") as tx:  # a canary failing its runs
        tx.record_runs([RunRecord(MODEL, "1.1.0", 1, "policy", {}, 5.0, False, False,
                                  job_key=f"f-{i}", error_code="version_unavailable")
                        for i in range(30)])
    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    tick = json.loads(_cli(backend, capsys, "schedule-tick", "--window-key", "w-1", "--now",
                           later, "-o", "json"))
    assert tick[0]["analysis"][0]["aborted"]
    _cli(backend, capsys, "reconcile", "--repo", str(repo))  # the same commit, reconciled again
    status = _policy_status(backend, capsys)
    assert status["abortedVersions"] == ["1.1.0"] and status["routingSummary"] == "1.0.0=100"
    assert status["suspendedBindings"] == {"count": 1, "versions": {"1.1.0": 1}}
