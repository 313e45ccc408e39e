"""Bindings beat nothing: a job's binding holds only while the effective routing routes to
its version. Through a real worker over HTTP (its own refresh loop, refreshSeconds 2),
Git mode reconciling real commits (`cadml rollback`, `cadml promote`), both engines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.records import RouteRow
from controller.search.build import BuildResult
from controller.store import Store
from controller.worker.app import make_app
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.gitops_trees import ANALYSIS, commit_tree, copy_artifacts, model_tree, version_doc
from tests.stores import Backend
from tests.worker.conftest import EDITOR, MODEL, TENANT, World, editor_guard

REFRESH = 2


def _version(semver: str, stage: str, art: BuildResult) -> str:
    return version_doc(TENANT, MODEL, f"ps-{semver.replace('.', '-')}", semver, stage, art)


def _tree(versions: list[tuple[str, str, BuildResult]], weights: list[tuple[str, int]]) -> str:
    return model_tree(TENANT, MODEL, [_version(*v) for v in versions], weights, REFRESH)


def _artifacts(root: Path, index: BuildResult, n: int) -> list[BuildResult]:
    return copy_artifacts(root, index, [f"art-{i}" for i in range(n)])


def _repo(root: Path, tree: str) -> Path:
    return commit_tree(root, MODEL, tree)


def _reconcile(store: Store, repo: Path) -> None:
    result = reconcile_repo(store, str(repo), "HEAD", [], 10**7)
    assert result.ok, result


async def _until(done: Callable[[], bool], what: str, timeout: float = 3 * REFRESH) -> None:
    """Wait for a positive signal (polled every 20 ms); fail after `timeout`."""
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout} s"
        await asyncio.sleep(0.02)


async def _serve(store: Store, aiohttp_client: Any) -> tuple[WorkerRuntime, Any]:
    runtime = WorkerRuntime(store, WorkerSettings(TENANT, MODEL, "unused", worker_id="w-b"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1),
                                           guard=editor_guard()), headers=EDITOR)
    await _until(lambda: runtime.snapshot is not None and bool(runtime.versions),
                 "the worker's first refresh")
    return runtime, client


def _applied(runtime: WorkerRuntime, store: Store) -> Callable[[], bool]:
    """True once the worker serves the policyVersion the store publishes now."""
    with store.read(TENANT) as tx:
        pv = tx.policy_version_of(MODEL)
    return lambda: runtime.snapshot is not None and runtime.snapshot.policy_version == pv


async def _search(client: Any, job: str, vector: list[float]) -> dict[str, Any]:
    resp = await client.post("/v1/search", json={"vector": vector, "jobId": job, "topK": 3})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_a_bound_job_goes_to_stable_with_a_rollback_commit(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult,
        aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    stable, canary = _artifacts(tmp_path, corpus_index, 2)
    repo = _repo(tmp_path, _tree([("1.0.0", "STABLE", stable), ("1.1.0", "CANARY", canary)],
                                 [("1.0.0", 50), ("1.1.0", 50)]))
    store = backend.store
    _reconcile(store, repo)
    runtime, client = await _serve(store, aiohttp_client)
    vector = [float(x) for x in np.load(stable.manifest_path.parent / "vectors.npy")[0]]
    job = next(f"job-{i}" for i in range(100) if runtime.choose(f"job-{i}")[0].version
               == "1.0.0")  # the policy alone would send it to STABLE

    bound = await client.post(f"/v1/jobs/{job}/binding", json={"version": "1.1.0"})
    assert bound.status == 200
    before = await _search(client, job, vector)
    assert before["version"] == "1.1.0" and before["routeSource"] == "binding"

    assert main(["rollback", f"{TENANT}/{MODEL}", "--reason", "canary regressed",
                 "--actor", "oncall@acme", "--repo", str(repo)]) == 0
    capsys.readouterr()
    _reconcile(store, repo)
    await _until(_applied(runtime, store), "the rollback's policyVersion applied")

    # the moment the worker serves the rollback, the bound job is on STABLE
    run = await _search(client, job, vector)
    assert run["version"] == "1.0.0" and run["routeSource"] == "policy"
    assert run["binding"] == "suspended"
    recorded = await (await client.get(f"/v1/runs/{run['runKey']}")).json()
    assert recorded["version"] == "1.0.0" and recorded["binding"] == "suspended"
    recorded = await (await client.get(f"/v1/runs/{before['runKey']}")).json()
    assert recorded["version"] == "1.1.0" and recorded["binding"] == "active"
    binding = await client.get(f"/v1/jobs/{job}/binding")
    assert binding.status == 200
    view = await binding.json()
    assert view["version"] == "1.1.0" and view["state"] == "suspended"  # kept, not deleted
    assert "not routed" in view["reason"]
    # only routed versions are loaded: the binding no longer keeps the canary loaded
    ready = await (await client.get("/readyz")).json()
    assert set(ready["versions"]) == {"1.0.0"}
    # binding to the version the policy no longer routes is refused, nothing written
    refused = await client.post("/v1/jobs/other/binding", json={"version": "1.1.0"})
    assert refused.status == 409
    error = await refused.json()
    assert error["code"] == "not_routable" and error["context"]["routable"] == ["1.0.0"]
    assert (await client.get("/v1/jobs/other/binding")).status == 404


async def test_a_bound_job_goes_to_stable_when_analysis_aborts_its_canary(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult,
        aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    stable, canary = _artifacts(tmp_path, corpus_index, 2)
    unreachable = "  thresholdDefaults: {similarity: 0.9999}\n"  # the canary fails its runs
    repo = _repo(tmp_path, model_tree(TENANT, MODEL, [
        _version("1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, "ps-1-1-0", "1.1.0", "CANARY", canary, unreachable)],
        [("1.0.0", 50), ("1.1.0", 50)], REFRESH, ANALYSIS))
    store = backend.store
    _reconcile(store, repo)
    runtime, client = await _serve(store, aiohttp_client)
    vectors = np.load(stable.manifest_path.parent / "vectors.npy")
    rng = np.random.default_rng(7)
    noisy = vectors[rng.integers(0, len(vectors), 200)] + rng.normal(scale=0.05, size=(
        200, vectors.shape[1]))
    job = next(f"job-{i}" for i in range(100) if runtime.choose(f"job-{i}")[0].version
               == "1.0.0")
    assert (await client.post(f"/v1/jobs/{job}/binding", json={"version": "1.1.0"})).status \
        == 200
    resp = await client.post("/v1/search/batch", json={"queries": [
        {"vector": [float(x) for x in q], "jobId": f"t-{i}"} for i, q in enumerate(noisy)]})
    assert resp.status == 200

    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    capsys.readouterr()
    assert main(["schedule-tick", "--window-key", "w-1", "--store", backend.app_url,
                 "--now", later, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["analysis"][0]["aborted"]
    await _until(_applied(runtime, store), "the abort's policyVersion applied")
    run = await _search(client, job, [float(x) for x in vectors[0]])
    assert run["version"] == "1.0.0" and run["routeSource"] == "policy"
    assert run["binding"] == "suspended"
    assert runtime.snapshot is not None and runtime.snapshot.source == "analysis-abort"


@pytest.mark.parametrize("source, routes", [
    ("analysis-abort", [RouteRow("1.0.0", 100, True)]),
    ("override", [RouteRow("1.0.0", 100, True, forced=True)]),
    ("rollback", [RouteRow("1.0.0", 100, True)]),
])
def test_a_binding_is_suspended_while_its_version_is_not_routed(
        world: World, source: str, routes: list[RouteRow]) -> None:
    job = "bound-job"
    with world.store.transaction(TENANT, "t") as tx:
        tx.bind_job(job, "ps-1-1-0", {})
    world.runtime.refresh()
    assert world.runtime.choose(job)[0].version == "1.1.0"
    world.publish(routes, source=source)
    world.runtime.refresh()
    choice = world.runtime.choose(job)[0]
    assert choice.version == "1.0.0" and choice.binding == "suspended"
    assert set(world.runtime.versions) == {"1.0.0"}
    world.publish([RouteRow("1.0.0", 90, True), RouteRow("1.1.0", 10, False)])
    world.runtime.refresh()  # routed again: the binding applies again
    choice = world.runtime.choose(job)[0]
    assert (choice.version, choice.source, choice.binding) == ("1.1.0", "binding", "active")


async def test_deleting_a_binding_is_audited_and_reaches_the_worker(
        world: World, aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1),
                                           refresh=False, guard=editor_guard()), headers=EDITOR)
    job = next(f"job-{i}" for i in range(100)
               if world.runtime.choose(f"job-{i}")[0].version == "1.0.0")
    assert (await client.post(f"/v1/jobs/{job}/binding", json={"version": "1.1.0"})).status \
        == 200
    other = WorkerRuntime(world.store, WorkerSettings(TENANT, MODEL, "unused",
                                                      worker_id="w-other"))
    other.refresh()  # a second replica: it learns of bindings from the store only
    assert other.choose(job)[0].version == "1.1.0"
    gone = await client.delete(f"/v1/jobs/{job}/binding")
    assert gone.status == 200 and (await gone.json())["version"] == "1.1.0"
    assert (await client.get(f"/v1/jobs/{job}/binding")).status == 404
    assert (await client.delete(f"/v1/jobs/{job}/binding")).status == 404
    other.refresh()
    assert other.choose(job)[0].version == "1.0.0" and other.choose(job)[0].binding is None
    with world.store.read(TENANT) as tx:
        last = list(tx.audit_events())[-1]
        assert tx.job_bindings(MODEL) == {}
    assert (last.action, last.object_name, last.details) == ("unbind", "ps-1-1-0",
                                                             {"job": job})


async def _versions_of(client: Any, jobs: list[str], vector: list[float]) -> dict[str, str]:
    resp = await client.post("/v1/search/batch", json={
        "queries": [{"vector": vector, "jobId": j} for j in jobs], "topK": 1})
    assert resp.status == 200, await resp.text()
    return {r["jobId"]: r["version"] for r in (await resp.json())["results"]}


async def test_promote_keeps_every_job_where_it_was(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult,
        aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """STABLE first, two canaries, the last one promoted: by position its jobs would have
    moved to the other canary (and the other canary's to it) as it became STABLE."""
    arts = _artifacts(tmp_path, corpus_index, 3)
    repo = _repo(tmp_path, _tree(
        [("1.0.0", "STABLE", arts[0]), ("1.1.0", "CANARY", arts[1]),
         ("1.2.0", "CANARY", arts[2])], [("1.0.0", 80), ("1.1.0", 10), ("1.2.0", 10)]))
    store = backend.store
    _reconcile(store, repo)
    runtime, client = await _serve(store, aiohttp_client)
    vector = [float(x) for x in np.load(arts[0].manifest_path.parent / "vectors.npy")[0]]
    jobs = [f"job-{i}" for i in range(1000)]
    before = await _versions_of(client, jobs, vector)
    assert 50 < list(before.values()).count("1.2.0") < 150

    assert main(["promote", f"{TENANT}/{MODEL}", "--version", "1.2.0", "--reason", "canary healthy",
                 "--actor", "ml@acme", "--repo", str(repo)]) == 0
    capsys.readouterr()
    _reconcile(store, repo)
    await _until(_applied(runtime, store), "the promotion's policyVersion applied")
    after = await _versions_of(client, jobs, vector)
    moved = {j: (before[j], after[j]) for j in jobs
             if before[j] != after[j] and before[j] != "1.0.0"}
    assert moved == {}  # 1.2.0's jobs stay on it as it becomes STABLE; 1.1.0 keeps its own
    assert {after[j] for j in jobs if before[j] == "1.0.0"} == {"1.2.0"}
