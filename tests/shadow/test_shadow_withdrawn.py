"""Ordering (issue 12, review of issue 16): the shadow version is deleted in Git while
mirrored copies wait in the worker's queue, one of them already in hand (its drawing
waiting for the parser). A real worker over HTTP, Git mode, SQLite and PostgreSQL, real
DXF uploads; the mirror is held by its own `busy` seam (served parses come first), which
is how a loaded worker holds it.

Every copy is accounted for (none recorded against the deleted version, none lost with
a refused batch), the served answers are untouched, and the mirror goes on working for
the next shadow.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from controller.features.sandbox import FeatureSandbox
from controller.reconcile.gitmode import reconcile_repo
from controller.search.build import BuildResult
from controller.worker.app import MIRROR, SANDBOX, make_app
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from controller.worker.shadow import ShadowMirror
from tests.conftest import git
from tests.gitops_trees import commit_tree, copy_artifacts, model_tree, version_doc
from tests.shadow.test_worker_mirror import DRAWINGS, _applied, _search_all, _tree
from tests.stores import Backend
from tests.waiting import until
from tests.worker.conftest import MODEL, TENANT

SHADOW = "  shadow: {version: 2.0.0, percent: 100}\n"


async def test_a_shadow_version_deleted_while_its_copies_are_queued(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_v3: BuildResult,
        aiohttp_client: Any) -> None:
    stable, = copy_artifacts(tmp_path, corpus_index, ["stable"])
    draft, = copy_artifacts(tmp_path, corpus_v3, ["draft"])
    repo = commit_tree(tmp_path, MODEL, _tree(stable, draft, SHADOW))
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    runtime = WorkerRuntime(backend.store, WorkerSettings(TENANT, MODEL, backend.app_url,
                                                          worker_id="w-shadow-gone"))
    held = threading.Event()
    held.set()
    app = make_app(runtime, sandbox=FeatureSandbox(1))
    app[MIRROR] = mirror = ShadowMirror(runtime, lambda: app[SANDBOX], busy=held.is_set)
    client = await aiohttp_client(app)
    await _applied(client, 1)
    served = await _search_all(client, "queued")
    assert mirror.stats.offered == len(DRAWINGS) and mirror.stats.dropped == 0

    async def in_hand() -> Any:  # one copy taken, waiting for the parser; the rest queued
        return mirror.stats.queued == len(DRAWINGS) and mirror._queue.qsize() == \
            len(DRAWINGS) - 1
    await until(in_hand, 20.0)

    # 2.0.0 leaves Git (its document and the shadow): the store soft-deletes it
    (repo / "models" / f"{MODEL}.yaml").write_text(model_tree(TENANT, MODEL, [
        version_doc(TENANT, MODEL, f"{MODEL}-1-0-0", "1.0.0", "STABLE", stable)],
        [("1.0.0", 100)], 1))
    git(repo, "commit", "-qam", "2.0.0 deleted")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    ready = await _applied(client, 2)
    assert "2.0.0" not in ready["versions"]
    held.clear()
    await asyncio.wait_for(mirror.idle.wait(), 30)
    stats = (await (await client.get("/readyz")).json())["shadow"]
    assert (stats["skipped"], stats["recorded"], stats["lost"], stats["queued"]) == (
        len(DRAWINGS), 0, 0, 0), stats
    with backend.store.read(TENANT, "test") as tx:
        assert tx.shadow_runs(MODEL) == []
    # the answers did not change, and the mirror serves the next shadow
    again = await _search_all(client, "after")
    assert {j: v[:2] for j, v in again.items()} == {j: v[:2] for j, v in served.items()}
    (repo / "models" / f"{MODEL}.yaml").write_text(_tree(stable, draft, SHADOW))
    git(repo, "commit", "-qam", "2.0.0 again")
    assert reconcile_repo(backend.store, str(repo), "HEAD", [], 10**7).ok
    await _applied(client, 3)
    await _search_all(client, "back")
    await asyncio.wait_for(mirror.idle.wait(), 30)

    async def recorded() -> Any:
        with backend.store.read(TENANT, "test") as tx:
            return len(tx.shadow_runs(MODEL)) == len(DRAWINGS)
    await until(recorded, 30.0)
