"""A canary that cannot load is served around, counted and aborted (issue 12, items 2-3).

Git mode + a real worker over HTTP (its refresh loop running, refreshSeconds 2) + the
`cadml` CLI, on SQLite and on PostgreSQL. The canary's artifact is a 1-byte pickle
whose sha256 is right: before, it stopped the worker's refresh (STABLE never served,
`loadErrors` empty), and requests routed to it were answered 503 and never recorded,
so its sample size stayed 0 and analysis could never abort it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.worker.app import make_app
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import git
from tests.stores import Backend
from tests.waiting import until
from tests.worker.conftest import EDITOR, MODEL, TENANT, editor_guard


def _tree(stable: Path, stable_sha: str, canary: Path, canary_sha: str) -> str:
    return f"""apiVersion: cadml.io/v1alpha1
kind: Model
metadata: {{name: {MODEL}, namespace: {TENANT}}}
spec: {{modelKey: {MODEL}, provider: acme, displayName: Parts,
        thresholdDefaults: {{similarity: 0.3}}}}
---
apiVersion: cadml.io/v1alpha1
kind: ModelVersion
metadata: {{name: {MODEL}-1-0-0, namespace: {TENANT}}}
spec:
  modelRef: {MODEL}
  version: 1.0.0
  stage: STABLE
  artifact: {{uri: {stable.as_uri()}, sha256: {stable_sha}, format: faiss-index}}
---
apiVersion: cadml.io/v1alpha1
kind: ModelVersion
metadata: {{name: {MODEL}-1-1-0, namespace: {TENANT}}}
spec:
  modelRef: {MODEL}
  version: 1.1.0
  stage: CANARY
  artifact: {{uri: {canary.as_uri()}, sha256: {canary_sha}, format: pickle}}
---
apiVersion: cadml.io/v1alpha1
kind: RolloutPolicy
metadata: {{name: {MODEL}, namespace: {TENANT}}}
spec:
  modelRef: {MODEL}
  weights:
    - {{version: 1.0.0, weight: 50}}
    - {{version: 1.1.0, weight: 50}}
  refreshSeconds: 2
  analysis:
    metrics:
      - {{name: success_rate, min: 0.9}}
    minSampleSize: 10
    failureLimit: 1
    windowSeconds: 3600
"""


_until = until


async def test_a_canary_that_cannot_load_fails_its_runs_and_is_aborted(
        backend: Backend, tmp_path: Path, corpus_index: Any, aiohttp_client: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "stable"
    shutil.copytree(corpus_index.manifest_path.parent, art)
    pickle = tmp_path / "canary.pkl"
    pickle.write_bytes(b".")
    repo = tmp_path / "gitops"
    repo.mkdir()
    (repo / "part-sim.yaml").write_text(_tree(
        art / "manifest.json", corpus_index.manifest_sha256, pickle,
        hashlib.sha256(b".").hexdigest()))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "part-sim 50/50, canary artifact broken")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok

    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-failed-canary"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1),
                                           guard=editor_guard()), headers=EDITOR)

    async def ready() -> dict[str, Any] | None:
        resp = await client.get("/readyz")
        return await resp.json() if resp.status == 200 else None

    # STABLE serves; /readyz names the version that failed and why
    body = await _until(ready, timeout=10.0)
    assert body["versions"] == {"1.0.0": "Ready"}
    assert "UnpicklingError" in body["loadErrors"]["1.1.0"]
    vectors = np.load(art / "vectors.npy")
    statuses: Counter[tuple[int, str]] = Counter()
    for i in range(40):
        resp = await client.post("/v1/search", json={
            "vector": [float(x) for x in vectors[i % len(vectors)]], "jobId": f"job-{i}"})
        answer = await resp.json()
        version = answer.get("version") or answer["context"]["version"]
        statuses[(resp.status, version)] += 1
    assert set(statuses) == {(200, "1.0.0"), (503, "1.1.0")}, statuses
    assert statuses[(503, "1.1.0")] >= 10  # enough for minSampleSize

    # the failed requests are runs: evaluation sees them and analysis aborts the canary
    assert main(["evaluate", "--store", backend.app_url, "-o", "json"]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["1.1.0"]["successRate"] == 0.0
    assert rows["1.1.0"]["sampleSize"] == statuses[(503, "1.1.0")]
    assert rows["1.0.0"]["successRate"] == 1.0
    assert main(["schedule-tick", "--window-key", "w-1", "--store", backend.app_url,
                 "-o", "json"]) == 0
    (tick,) = json.loads(capsys.readouterr().out)
    (verdict,) = tick["analysis"]
    assert verdict["version"] == "1.1.0" and verdict["verdict"] == "Fail"
    assert verdict["aborted"]

    # the running worker applies the abort: every job is on STABLE within a refresh cycle
    with backend.store.read(TENANT, "t") as tx:
        published = tx.policy_version_of(MODEL)

    async def applied() -> bool:
        body = await (await client.get("/readyz")).json()
        return bool(body["policyVersion"] == published)

    await _until(applied, timeout=2.0 + 1.0)  # one refreshSeconds, plus scheduling slack
    for i in range(40):
        resp = await client.post("/v1/search", json={
            "vector": [float(x) for x in vectors[i % len(vectors)]], "jobId": f"job-{i}"})
        assert resp.status == 200 and (await resp.json())["version"] == "1.0.0"
