"""An analysis step bounds `shadow_overlap_at_10` (issue 16): "overlap ≥ 0.7 on ≥ N
shadowed queries before any real traffic moves". Embedded default: Git mode, SQLite or
PostgreSQL, a real worker mirroring every search to the canary (real v4 and v3 faiss
indexes of the DXF corpus), and `cadml schedule-tick` walking the plan."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from controller.worker.app import MIRROR, make_app
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.gitops_trees import commit_tree, copy_artifacts, model_tree, version_doc
from tests.shadow.test_worker_mirror import DRAWINGS, _applied, _search_all
from tests.stores import Backend
from tests.waiting import until
from tests.worker.conftest import MODEL, TENANT

PLAN = f"""  shadow: {{version: 2.0.0, percent: 100}}
  strategy:
    steps:
      - analysis:
          metrics:
            - {{name: shadow_overlap_at_10, min: 0.7}}
          minSampleSize: {len(DRAWINGS)}
          failureLimit: 1
          intervalSeconds: 5
      - setWeight: 10
      - pause: {{}}
"""


def shadowed_tree(tmp_path: Path, stable_index: BuildResult, index: BuildResult, stage: str,
                  weights: list[tuple[str, int]], extra: str) -> str:
    """STABLE 1.0.0 on `stable_index` (v4) and 2.0.0 (`stage`) on `index` (v3), each its
    own artifact under `tmp_path`, and the policy with these weights and `extra`."""
    stable, = copy_artifacts(tmp_path, stable_index, ["stable"])
    other, = copy_artifacts(tmp_path, index, ["other"])
    return model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, f"{MODEL}-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, f"{MODEL}-2-0-0", "2.0.0", stage, other,
                    "  featureVersion: v3\n")], weights, 1, extra)


def _tick(capsys: pytest.CaptureFixture[str], store: str, key: str, now: datetime) -> Any:
    capsys.readouterr()
    assert main(["schedule-tick", "--window-key", key, "--now", now.isoformat(), "--store",
                 store,
                 "-o", "json"]) == 0
    (tick,) = json.loads(capsys.readouterr().out)
    return tick


def _published(capsys: pytest.CaptureFixture[str], backend: Backend) -> Any:
    """What `cadml status -o json` says the policy's workers serve now."""
    capsys.readouterr()
    assert main(["status", "--store", backend.app_url, "-o", "json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["kind"] == "RolloutPolicy"]
    return row["published"]


def _status(backend: Backend) -> dict[str, Any]:
    with backend.store.read(TENANT, "t") as tx:
        status: dict[str, Any] = tx.statuses()[("RolloutPolicy", MODEL)]
        return status


def _routes(backend: Backend) -> list[tuple[str, int]]:
    with backend.store.read(TENANT, "t") as tx:
        snap = tx.snapshot(MODEL)
    assert snap is not None
    return [(r.version, r.weight) for r in snap.routes]


@pytest.mark.parametrize("shadow_index", ["corpus_v3", "corpus_v3_half"])
async def test_an_analysis_step_on_shadow_overlap_gates_the_first_weight(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, shadow_index: str,
        aiohttp_client: Any, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Waits (InsufficientData) with no shadowed query, then passes on the full v3 index
    (overlap ~0.97 with STABLE's v4 answers) and moves to 10 % (then a pause), or aborts
    on the index that lost half the drawings with the verdict in status; the canary never
    took a run before the verdict."""
    tree = shadowed_tree(tmp_path, corpus_index, request.getfixturevalue(shadow_index),
                         "CANARY", [("1.0.0", 50), ("2.0.0", 50)], PLAN)
    repo = commit_tree(tmp_path, MODEL, tree)
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    assert _routes(backend) == [("1.0.0", 100)]  # the canary takes nothing yet
    assert _status(backend)["shadow"] == {"version": "2.0.0", "percent": 100, "inForce": True}

    # no shadowed query yet: the step measures and waits
    assert _tick(capsys, backend.app_url, "w-0", datetime.now(UTC))["steps"] == []
    status = _status(backend)
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        0, "Progressing", 0)
    with backend.store.read(TENANT, "t") as tx:
        (waiting,) = tx.observe().steps[MODEL].measurements
    assert waiting["overall"] == "InsufficientData"
    assert "shadow_overlap_at_10 n/a" in waiting["summary"] and "n=0" in waiting["summary"]

    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow-steps"))
    client = await aiohttp_client(make_app(runtime, sandbox=FeatureSandbox(1)))
    await _applied(client, 1)
    served = await _search_all(client, "steps")
    assert {version for version, _, _ in served.values()} == {"1.0.0"}
    await asyncio.wait_for(client.app[MIRROR].idle.wait(), 30)

    async def recorded() -> Any:
        return (await (await client.get("/readyz")).json())["shadow"]["recorded"] \
            == len(DRAWINGS)
    await until(recorded, 20.0)
    published = _published(capsys, backend)
    assert published["step"] == {"index": 0, "phase": "Progressing", "canaryWeight": 0}
    seen = published["shadow"]
    assert (seen["version"], seen["percent"], seen["runs"]) == ("2.0.0", 100, len(DRAWINGS))
    assert (seen["meanOverlapAt10"] >= 0.7) is (shadow_index == "corpus_v3")

    tick = _tick(capsys, backend.app_url, "w-1", datetime.now(UTC) + timedelta(seconds=10))
    (moved,) = tick["steps"]
    assert "shadow_overlap_at_10" in moved["summary"]
    assert f"n={len(DRAWINGS)}" in moved["summary"]
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok  # status, in Git mode
    status = _status(backend)
    verdict = status["stepVerdicts"][-1]
    assert "shadow_overlap_at_10" in verdict["summary"]
    row = {"published": _published(capsys, backend)}
    assert main(["status", "--store", backend.app_url]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "RolloutPolicy" in ln]
    if shadow_index == "corpus_v3":
        assert row["published"]["step"] == {"index": 2, "phase": "Paused", "canaryWeight": 10}
        # the shadow runs since the 10 % snapshot: none yet
        assert row["published"]["shadow"] == {"version": "2.0.0", "percent": 100, "runs": 0,
                                              "meanOverlapAt10": None}
        assert "step=3 Paused canary=10% shadow=2.0.0@100% runs=0" in line
        assert status["shadow"]["inForce"] is True
    else:
        assert row["published"]["step"] == {"index": 0, "phase": "Aborted", "canaryWeight": 0}
        assert row["published"]["shadow"] is None  # the abort withdrew it
        assert "step=1 Aborted canary=0%" in line and "shadow=" not in line
        assert status["shadow"]["inForce"] is False
        assert "analysis-abort" in status["shadow"]["reason"]
    if shadow_index == "corpus_v3":
        assert verdict["result"] == "Pass"
        assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) \
            == (2, "Paused", 10)
        assert _routes(backend) == [("1.0.0", 90), ("2.0.0", 10)]
    else:
        assert verdict["result"] == "Fail"
        assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) \
            == (0, "Aborted", 0)
        assert _routes(backend) == [("1.0.0", 100)]
