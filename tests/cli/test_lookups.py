"""Look-ups from the shell: `cadml runs`, `cadml audit log` (read only: a missing store is
an error, nothing is created) and `cadml status` showing the routing as published."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.records import RouteRow, RunRecord
from controller.search.build import BuildResult
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.worker.app import make_app
from tests.gitops_trees import ANALYSIS, commit_tree, copy_artifacts, model_tree, version_doc
from tests.worker.conftest import (
    EDITOR,
    MODEL,
    TENANT,
    World,
    corpus_hnsw,
    corpus_index,
    editor_guard,
    world,
)

__all__ = ["corpus_hnsw", "corpus_index", "world"]  # the worker fixtures, shared


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


async def test_runs_and_audit_log_find_what_the_worker_recorded(
        world: World, aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(world.store.engine.url)
    client = await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1),
                                           refresh=False, guard=editor_guard()), headers=EDITOR)
    vector = [float(x) for x in np.load(world.stable.manifest_path.parent / "vectors.npy")[0]]
    start = datetime.now(UTC)
    assert (await client.post("/v1/jobs/bound/binding", json={"version": "1.1.0"})).status \
        == 200
    first = await (await client.post("/v1/search", json={"vector": vector,
                                                          "jobId": "bound"})).json()
    world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    world.runtime.refresh()
    second = await (await client.post("/v1/search", json={"vector": vector,
                                                           "jobId": "bound"})).json()
    for i in range(3):
        await client.post("/v1/search", json={"vector": vector, "jobId": f"other-{i}"})

    runs = _json(capsys, ["runs", "--store", url, "--job", "bound", "--json"])
    assert [(r["runKey"], r["version"], r["binding"]) for r in runs] == [
        (second["runKey"], "1.0.0", "suspended"), (first["runKey"], "1.1.0", "active")]
    assert runs[0]["tenant"] == TENANT and runs[0]["outcome"] == "met"
    assert len(_json(capsys, ["runs", "--store", url, "--version", "1.1.0", "-o", "json"])) == 1
    assert len(_json(capsys, ["runs", "--store", url, "--json"])) == 5
    assert _json(capsys, ["runs", "--store", url, "--outcome", "failed", "--json"]) == []
    assert _json(capsys, ["runs", "--store", url, "--json", "--until",
                          start.isoformat()]) == []
    assert len(_json(capsys, ["runs", "--store", url, "--json", "--since",
                              start.isoformat(), "--limit", "2"])) == 2
    assert main(["runs", "--store", url, "--job", "bound"]) == 0
    text = capsys.readouterr().out
    assert f"run={second['runKey']}" in text and "binding=suspended" in text

    events = _json(capsys, ["audit", "log", "--store", url, "--object",
                            "ModelVersion/ps-1-1-0", "--action", "bind", "--json"])
    # the actor is the authenticated caller (issue 13), not the job
    assert [(e["actor"], e["details"]) for e in events] == [("ann@acme", {"job": "bound"})]
    assert _json(capsys, ["audit", "log", "--store", url, "--actor", "nobody", "--json"]) == []
    assert main(["audit", "log", "--store", url, "--since", "yesterday"]) == 2
    assert "--since 'yesterday': not a time" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["runs"], ["audit", "log"]])
def test_lookups_refuse_a_missing_store_and_create_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    missing = tmp_path / "nowhere" / "cadml.db"
    assert main([*argv, "--store", f"sqlite:///{missing}"]) == 2
    assert "no store at" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists()


def test_status_shows_an_abort_as_published_before_any_reconcile(
        tmp_path: Path, corpus_index: BuildResult, capsys: pytest.CaptureFixture[str]) -> None:
    stable, canary = copy_artifacts(tmp_path, corpus_index, ["stable", "canary"])
    repo = commit_tree(tmp_path, MODEL, model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, "ps-1-0-0", "1.0.0", "STABLE", stable),
        version_doc(TENANT, MODEL, "ps-1-1-0", "1.1.0", "CANARY", canary)],
        [("1.0.0", 50), ("1.1.0", 50)], 2, ANALYSIS))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(make_engine(url))
    upgrade(store.engine)
    assert reconcile_repo(store, str(repo), "HEAD", [], 10**7).ok
    with store.transaction(TENANT, "worker") as tx:  # what a worker records for a failing canary
        tx.record_runs([RunRecord(MODEL, "1.1.0", 1, "policy", {}, 5.0, False, False,
                                  job_key=f"j-{i}", error_code="version_unavailable")
                        for i in range(30)])
        tx.bind_job("bound", "ps-1-1-0", {})  # suspended by the abort: status counts it
    store.dispose()
    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    tick = _json(capsys, ["schedule-tick", "--window-key", "w-1", "--store", url, "--now",
                          later, "-o", "json"])
    assert tick[0]["analysis"][0]["aborted"]

    rows = _json(capsys, ["status", "--store", url, "-o", "json"])
    policy = next(r for r in rows if r["kind"] == "RolloutPolicy")
    assert policy["published"]["routing"] == "1.0.0=100"
    assert policy["published"]["source"] == "analysis-abort"
    assert policy["published"]["suspendedBindings"] == {"1.1.0": 1}
    assert main(["status", "--store", url]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "RolloutPolicy" in x)
    assert "1.0.0=100 (analysis-abort) suspended-bindings=1.1.0:1" in line
    assert "1.1.0=50" not in line


def test_the_cli_lists_the_run_outcomes_the_store_filters_by() -> None:
    from controller.cli.lookup_cmds import RUN_OUTCOMES as CLI_OUTCOMES
    from controller.store.repository import RUN_OUTCOMES

    assert CLI_OUTCOMES == RUN_OUTCOMES
