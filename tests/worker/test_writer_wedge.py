"""A run writer that cannot commit must not wedge the worker or answer as if it had.

Through a real worker (aiohttp test client) on a real store: a commit blocked by another
session's lock answers 503 `run_not_recorded` after the worker's bound, `/healthz` and
`/readyz` say why, and once the lock is gone the writer recovers; a writer that stopped
(shutdown, or a BaseException in its thread) answers every request, at once, with a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from controller.features.sandbox import FeatureSandbox
from controller.search.build import BuildResult
from controller.store.runinsert import RunInsert
from controller.worker.app import WRITER, make_app
from tests.stores import Backend
from tests.worker.conftest import EDITOR, TENANT, World, build_world, editor_guard

BOUND = 0.5  # the worker's --run-commit-timeout in these tests


@contextlib.contextmanager
def writes_locked(backend: Backend) -> Iterator[None]:
    """Another session holds the run table's write lock until the block ends: SQLite's
    `BEGIN IMMEDIATE` from a second connection, PostgreSQL's `LOCK TABLE … ACCESS
    EXCLUSIVE` (the worker's insert waits for either)."""
    if backend.kind == "sqlite":
        conn = sqlite3.connect(backend.app_url.removeprefix("sqlite:///"), timeout=0,
                               isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    with backend.admin.connect() as c:
        c.execute(text("LOCK TABLE model_run IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            c.rollback()


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Wait for a positive signal (polling), failing with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture(params=["thread", "process"])
def wedge_world(request: pytest.FixtureRequest, backend: Backend, tmp_path: Path,
                corpus_index: BuildResult, corpus_hnsw: BuildResult) -> World:
    """A worker whose runs are committed by its run writer's thread, or by its recorder
    process (`cadml worker`'s default)."""
    return build_world(backend.store, tmp_path, corpus_index, corpus_hnsw,
                       run_commit_timeout=BOUND, run_recorder=request.param)


async def _client(world: World, aiohttp_client: Any) -> Any:
    return await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1),
                                         refresh=False, guard=editor_guard()), headers=EDITOR)


def _query(world: World, job: str) -> dict[str, Any]:
    vector = np.load(world.stable.manifest_path.parent / "vectors.npy")[0]
    return {"vector": [float(x) for x in vector], "jobId": job}


def _runs(world: World) -> int:
    with world.store.read(TENANT) as tx:
        return int(tx.count_runs())


async def test_a_blocked_commit_answers_503_and_fails_healthz_until_it_recovers(
        backend: Backend, wedge_world: World, aiohttp_client: Any) -> None:
    """Before: the search waited for the commit for ever (SQLite: 30 s of busy timeout per
    attempt, then once more per request; PostgreSQL: for as long as the lock is held),
    while /healthz said ok."""
    world = wedge_world
    client = await _client(world, aiohttp_client)
    assert (await client.post("/v1/search", json=_query(world, "before"))).status == 200
    with writes_locked(backend):
        resp = await asyncio.wait_for(client.post("/v1/search", json=_query(world, "held")),
                                      BOUND + 10)
        body = await resp.json()
        assert resp.status == 503, body
        assert body["code"] == "run_not_recorded" and body["stage"] == "record"
        assert body["context"]["retryable"] is True
        assert body["context"]["boundSeconds"] == BOUND
        assert body["context"]["runKeys"] and body["context"]["jobId"] == "held"
        assert int(resp.headers["Retry-After"]) >= 1
        assert "results" not in body  # not answered as a success

        health = await client.get("/healthz")
        why = await health.json()
        assert health.status == 503, why
        assert why["code"] == "run_writer_stalled"
        assert why["context"]["oldestPendingSeconds"] >= BOUND
        ready = await client.get("/readyz")
        readiness = await ready.json()
        assert ready.status == 503 and readiness["ready"] is False
        assert "run" in readiness["reason"] and readiness["runWriter"]["code"] == \
            "run_writer_stalled"

        # while stalled, a new request is refused at once (not queued behind the stall)
        fast = await asyncio.wait_for(client.post("/v1/search", json=_query(world, "fast")),
                                      BOUND + 10)
        refused = await fast.json()
        assert fast.status == 503 and refused["code"] == "run_not_recorded"
        assert refused["context"]["reason"] == "run_writer_stalled"
        assert "Retry-After" in fast.headers

    async def healthy() -> bool:
        return (await client.get("/healthz")).status == 200

    await until(healthy, 40, "healthy /healthz after the lock was released")
    assert (await client.get("/readyz")).status == 200
    after = await client.post("/v1/search", json=_query(world, "after"))
    assert after.status == 200, await after.text()
    # before, held (its commit was under way: recorded once the lock went) and after; the
    # request refused while stalled was never queued, so it is not a run
    assert _runs(world) == 3


async def test_a_search_after_the_writer_stopped_answers_503_at_once(
        world: World, aiohttp_client: Any) -> None:
    """Before: a request arriving once the writer's thread had ended (a shutdown under
    way) queued its runs for nobody and waited for ever."""
    client = await _client(world, aiohttp_client)
    await client.app[WRITER].stop()
    resp = await asyncio.wait_for(client.post("/v1/search", json=_query(world, "late")), 10)
    body = await resp.json()
    assert resp.status == 503 and body["code"] == "run_not_recorded", body
    assert body["context"]["reason"] == "run_writer_stopped"
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["code"] == "run_writer_stopped"
    assert _runs(world) == 0


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
async def test_a_base_exception_in_the_writer_answers_every_request(
        world: World, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch,
        fatal: type[BaseException]) -> None:
    """Before: the exception ended the writer's thread with the waiting requests' futures
    open, and they (and every later search) hung while /healthz said ok. (A MemoryError
    is an Exception: the writer already answered it as that request's error and lived.)

    A fake insert: no real store raises KeyboardInterrupt or SystemExit on demand, and the
    case is what happens when one does inside the commit thread."""
    def explode(*_: Any, **__: Any) -> None:
        raise fatal("injected into the run insert")

    client = await _client(world, aiohttp_client)
    monkeypatch.setattr(RunInsert, "execute", explode)
    first = await asyncio.wait_for(asyncio.gather(*(
        client.post("/v1/search", json=_query(world, f"j{i}")) for i in range(5))), 10)
    for resp in first:
        body = await resp.json()
        assert resp.status == 503 and body["code"] == "run_not_recorded", body
    health = await client.get("/healthz")
    why = await health.json()
    assert health.status == 503 and why["code"] == "run_writer_stopped"
    assert fatal.__name__ in why["message"]
    later = await asyncio.wait_for(client.post("/v1/search", json=_query(world, "later")), 10)
    assert later.status == 503
    assert (await later.json())["context"]["reason"] == "run_writer_stopped"
    assert (await client.get("/readyz")).status == 503


@pytest.mark.parametrize("args, env", [(["--run-commit-timeout", "0"], {}),
                                       ([], {"CADML_RUN_COMMIT_TIMEOUT": "-1"})])
def test_the_commit_bound_must_be_positive(args: list[str], env: dict[str, str]) -> None:
    """A bound of 0 or less would refuse every request: refused at start, naming it."""
    done = subprocess.run([sys.executable, "-m", "controller", "worker", "--model", "a/b",
                           *args], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert done.returncode == 2
    assert "--run-commit-timeout" in done.stderr and "above 0" in done.stderr


async def test_stopping_a_worker_whose_commit_is_blocked_answers_and_returns(
        backend: Backend, wedge_world: World, aiohttp_client: Any) -> None:
    """A shutdown while a request waits on a blocked commit. Before: the request waited
    for ever and so did the stop (it joined the commit thread), so a wedged worker could
    not even shut down (SIGKILL at the end of the grace period)."""
    world = wedge_world
    client = await _client(world, aiohttp_client)
    with writes_locked(backend):
        waiting = asyncio.create_task(client.post("/v1/search", json=_query(world, "held")))

        async def stalled() -> bool:
            return (await client.get("/healthz")).status == 503

        await until(stalled, BOUND + 10, "stalled writer")
        await asyncio.wait_for(client.app[WRITER].stop(), BOUND + 10)
        resp = await asyncio.wait_for(waiting, BOUND + 10)
        assert resp.status == 503 and (await resp.json())["code"] == "run_not_recorded"
