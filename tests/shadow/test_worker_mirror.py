"""A real worker mirrors a share of requests to the shadow version after answering.

Git mode + a real worker over HTTP (refresh loop running, refreshSeconds 1) on SQLite
and PostgreSQL; STABLE serves a v4 index of the corpus, the shadow version is a DRAFT
v3 index of the same corpus (another feature version: every drawing is parsed again
for it). Real DXF uploads. The answers with a shadow are the answers without one, and
every mirrored request is a shadow run beside its served run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from controller.shadow import mirrored
from controller.worker.app import MIRROR, SANDBOX, make_app
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from controller.worker.shadow import ShadowMirror
from tests.conftest import DXF_CORPUS, git
from tests.gitops_trees import commit_tree, copy_artifacts, model_tree, version_doc
from tests.stores import Backend
from tests.waiting import until
from tests.worker.conftest import MODEL, TENANT

DRAWINGS = sorted(DXF_CORPUS.glob("*.dxf"))[:12]


def _tree(stable: BuildResult, draft: BuildResult, extra: str, draft_doc: str = "") -> str:
    return model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, f"{MODEL}-1-0-0", "1.0.0", "STABLE", stable),
        draft_doc or version_doc(TENANT, MODEL, f"{MODEL}-2-0-0", "2.0.0", "DRAFT", draft,
                                 "  featureVersion: v3\n")], [("1.0.0", 100)], 1, extra)


async def _until(probe: Any, timeout: float = 20.0) -> Any:
    return await until(probe, timeout)


async def _search_all(client: Any, tag: str) -> dict[str, Any]:
    """Upload each drawing once (job ids fixed per drawing); id → (version, results)."""
    out = {}
    for i, path in enumerate(DRAWINGS):
        resp = await client.post(f"/v1/search?jobId=job-{i}&topK=10", data=path.read_bytes(),
                                 headers={"Content-Type": "application/dxf"})
        body = await resp.json()
        assert resp.status == 200, body
        out[f"job-{i}"] = (body["version"], [(r["id"], r["score"]) for r in body["results"]],
                           body["runKey"])
    return out


async def _applied(client: Any, pv: int) -> Any:
    async def probe() -> Any:
        body = await (await client.get("/readyz")).json()
        return body if body.get("policyVersion") == pv and body.get("ready") else None
    return await _until(probe)


async def test_mirrored_requests_leave_answers_alone_and_become_shadow_runs(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_v3: BuildResult,
        aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    stable, = copy_artifacts(tmp_path, corpus_index, ["stable"])
    draft, = copy_artifacts(tmp_path, corpus_v3, ["draft"])
    repo = commit_tree(tmp_path, MODEL, _tree(stable, draft, ""))
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1)))
    await _applied(client, 1)
    before = await _search_all(client, "no shadow")

    (repo / "models" / f"{MODEL}.yaml").write_text(
        _tree(stable, draft, "  shadow: {version: 2.0.0, percent: 50}\n"))
    git(repo, "commit", "-qam", "shadow 2.0.0 at 50 %")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    ready = await _applied(client, 2)
    assert ready["versions"] == {"1.0.0": "Ready", "2.0.0": "Ready"}
    after = await _search_all(client, "shadow")
    # the answers are the same answers: version and results, score for score
    assert {j: v[:2] for j, v in after.items()} == {j: v[:2] for j, v in before.items()}

    expected = {after[j][2] for j in after if mirrored(j, 50)}
    assert 0 < len(expected) < len(DRAWINGS)  # the share is deterministic by job id
    await asyncio.wait_for(client.app[MIRROR].idle.wait(), 30)

    async def recorded() -> Any:
        with backend.store.read(TENANT, "test") as tx:
            rows = tx.shadow_runs(MODEL)
        return rows if len(rows) >= len(expected) else None
    rows = await _until(recorded)
    assert {r["run_key"] for r in rows} == expected
    for r in rows:
        assert r["shadow_version"] == "2.0.0" and r["served_version"] == "1.0.0"
        assert (r["shadow_feature_version"], r["served_feature_version"]) == ("v3", "v4")
        assert r["error_code"] is None, r
        assert 0.0 <= r["overlap_at_10"] <= 1.0 and 0.0 <= r["rbo"] <= 1.0
        served_top1 = after[r["job_key"]][1][0][1]
        assert r["served_top1"] == served_top1
        assert r["top1_delta"] == r["shadow_top1"] - served_top1
    stats = (await (await client.get("/readyz")).json())["shadow"]
    assert stats["recorded"] == len(expected) and stats["dropped"] == 0

    # `cadml compare --shadow` shows them: the distribution, the queries that changed
    # most, and what the v4 → v3 feature change does to the top-1 score
    capsys.readouterr()
    assert main(["compare", f"{TENANT}/{MODEL}", "--shadow", "--changed", "3",
                 "--store", backend.app_url, "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    two = report["versions"]["2.0.0"]
    overlaps = sorted(r["overlap_at_10"] for r in rows)
    assert two["sampleSize"] == len(rows)
    assert two["overlapAt10"]["mean"] == pytest.approx(sum(overlaps) / len(overlaps))
    assert two["lowOverlapShare"] == pytest.approx(
        sum(o < 0.5 for o in overlaps) / len(overlaps))
    assert [c["overlapAt10"] for c in two["changedMost"]] == overlaps[:3]
    (migration,) = report["migrations"]
    assert migration["featureVersions"] == ["v4", "v3"]
    deltas = [r["top1_delta"] for r in rows]
    assert migration["negativeShare"] == pytest.approx(
        sum(d < 0 for d in deltas) / len(deltas))
    assert main(["compare", f"{TENANT}/{MODEL}", "--shadow", "--store", backend.app_url]) == 0
    text = capsys.readouterr().out
    assert "queries that changed most (2.0.0)" in text
    assert "feature versions v4 → v3 (1.0.0 → 2.0.0" in text
    worst = min(rows, key=lambda r: (r["overlap_at_10"], r["rbo"], r["job_key"]))
    assert worst["run_key"] in text


async def test_a_full_queue_drops_and_counts_and_answers_all_the_same(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_v3: BuildResult,
        aiohttp_client: Any) -> None:
    stable, = copy_artifacts(tmp_path, corpus_index, ["stable"])
    draft, = copy_artifacts(tmp_path, corpus_v3, ["draft"])
    repo = commit_tree(tmp_path, MODEL, _tree(
        stable, draft, "  shadow: {version: 2.0.0, percent: 100}\n"))
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow-full"))
    app = make_app(runtime, sandbox=FeatureSandbox(1))
    app[MIRROR] = ShadowMirror(runtime, lambda: app[SANDBOX], max_bytes=16)  # no drawing fits
    client = await aiohttp_client(app)
    await _applied(client, 1)
    answers = await _search_all(client, "full")
    assert all(v[0] == "1.0.0" and v[1] for v in answers.values())
    stats = (await (await client.get("/readyz")).json())["shadow"]
    assert stats["dropped"] == stats["offered"] == len(DRAWINGS)
    metrics = await (await client.get("/metrics")).text()
    assert (f'cadml_worker_shadow_requests_total{{model="{MODEL}",outcome="dropped",'
            f'tenant="{TENANT}",version="2.0.0"}}') in metrics


async def test_a_shadow_version_that_cannot_load_is_contained(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, aiohttp_client: Any
        ) -> None:
    stable, = copy_artifacts(tmp_path, corpus_index, ["stable"])
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b".")
    doc = f"""apiVersion: cadml.io/v1alpha1
kind: ModelVersion
metadata: {{name: {MODEL}-2-0-0, namespace: {TENANT}}}
spec:
  modelRef: {MODEL}
  version: 2.0.0
  stage: DRAFT
  artifact: {{uri: {broken.as_uri()}, sha256: {hashlib.sha256(b".").hexdigest()},
             format: pickle}}
"""
    repo = commit_tree(tmp_path, MODEL, _tree(
        stable, stable, "  shadow: {version: 2.0.0, percent: 100}\n", doc))
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow-broken"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1)))
    ready = await _applied(client, 1)
    assert "UnpicklingError" in ready["loadErrors"]["2.0.0"]
    answers = await _search_all(client, "broken shadow")
    assert all(v[0] == "1.0.0" and v[1] for v in answers.values())
    await asyncio.wait_for(client.app[MIRROR].idle.wait(), 30)

    async def recorded() -> Any:
        with backend.store.read(TENANT, "test") as tx:
            rows = tx.shadow_runs(MODEL)
        return rows if len(rows) == len(DRAWINGS) else None
    rows = await _until(recorded)
    assert {r["error_code"] for r in rows} == {"version_unavailable"}
    assert all(r["overlap_at_10"] is None for r in rows)


@pytest.mark.parametrize(("argv", "message"), [
    (["--shadow", "-o", "markdown"], "--shadow prints text or json"),
    (["--shadow", "--changed", "-1"], "--changed must be 0 or more"),
    ([], "--versions needs at least two versions (or --shadow)"),
])
def test_compare_shadow_refuses_bad_options(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", f"{TENANT}/{MODEL}", *argv, "--store", "sqlite://"]) != 0
    assert message in capsys.readouterr().err


def test_compare_shadow_names_an_unknown_model(backend: Backend,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", f"{TENANT}/nope", "--shadow", "--store", backend.app_url]) != 0
    assert f"model {TENANT}/nope: not in" in capsys.readouterr().err


async def test_batch_queries_are_mirrored_with_their_own_vectors(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult,
        aiohttp_client: Any) -> None:
    """A batch of vectors, the shadow an HNSW index of the same v4 features: each query is
    compared with the vector it was served with (no parse), and the batch's answer is
    the answer without a shadow."""
    stable, = copy_artifacts(tmp_path, corpus_index, ["stable"])
    hnsw, = copy_artifacts(tmp_path, corpus_hnsw, ["hnsw"])
    doc = version_doc(TENANT, MODEL, f"{MODEL}-2-0-0", "2.0.0", "DRAFT", hnsw)
    repo = commit_tree(tmp_path, MODEL, _tree(stable, hnsw, "", doc))
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow-batch"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1)))
    await _applied(client, 1)
    vectors = np.load(stable.manifest_path.parent / "vectors.npy")[:20]
    body = {"queries": [{"vector": [float(x) for x in v], "jobId": f"b-{i}"}
                        for i, v in enumerate(vectors)], "topK": 10}

    async def batch() -> list[Any]:
        resp = await client.post("/v1/search/batch", json=body)
        assert resp.status == 200
        return [(r["version"], [(h["id"], h["score"]) for h in r["results"]])
                for r in (await resp.json())["results"]]
    before = await batch()
    (repo / "models" / f"{MODEL}.yaml").write_text(
        _tree(stable, hnsw, "  shadow: {version: 2.0.0, percent: 100}\n", doc))
    git(repo, "commit", "-qam", "shadow the HNSW index")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    await _applied(client, 2)
    assert await batch() == before
    await asyncio.wait_for(client.app[MIRROR].idle.wait(), 30)
    with backend.store.read(TENANT, "test") as tx:
        rows = tx.shadow_runs(MODEL)
    assert len(rows) == len(vectors)
    assert {r["error_code"] for r in rows} == {None}
    assert sum(r["overlap_at_10"] for r in rows) / len(rows) > 0.9  # HNSW recall ~0.99
