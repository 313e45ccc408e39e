"""Runs committed by the worker's recorder process (`cadml worker --run-recorder process`,
the default): the store's insert work runs outside the serving process's GIL.

Through real workers on real stores: the `cadml worker` process records every run
through one recorder child that ends with it (a stop, or SIGKILL of the worker); a
recorder killed while its batch waits answers that batch 503 `run_not_recorded` (never a
200 for a run it may not have committed) and the next batch is served by a new one; a
bad --run-recorder / $CADML_RUN_RECORDER stops the start with one line. The blocked
commit and the stop under a blocked commit run with both recorders in
test_writer_wedge.py.
"""

from __future__ import annotations

import asyncio
import marshal
import os
import signal
import subprocess
import sys
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from controller.errors import ConflictError
from controller.features.sandbox import FeatureSandbox
from controller.store.repository import RunFilter
from controller.worker.app import make_app
from controller.worker.recorder import (
    RecorderProcess,
    frame,
    portable,
    receive,
    records,
    results,
    send,
)
from controller.worker.runkeys import new_run_key
from tests.stores import Backend
from tests.worker.conftest import EDITOR, MODEL, TENANT, World, build_world, editor_guard
from tests.worker.process import WorkerProcess
from tests.worker.test_writer_wedge import until, writes_locked


def _query(world: World, job: str) -> dict[str, Any]:
    vector = np.load(world.stable.manifest_path.parent / "vectors.npy")[0]
    return {"vector": [float(x) for x in vector], "jobId": job}


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _recorders(pid: int) -> list[int]:
    return [c for c in _children(pid)
            if b"controller.worker.recorder" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (a container's init may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _stored(world: World) -> dict[str, str | None]:
    with world.store.read(TENANT) as tx:
        return {r["runKey"]: r["jobId"] for r in tx.runs(RunFilter(model=MODEL))}


@pytest.mark.parametrize("ending", ["stop", "kill"])
def test_the_worker_records_through_one_recorder_process_that_ends_with_it(
        world: World, tmp_path: Path, ending: str) -> None:
    worker = WorkerProcess(f"{TENANT}/{MODEL}", str(world.store.engine.url), [],
                           tmp_path / "worker.log")
    try:
        recorders = _recorders(worker.proc.pid)
        assert len(recorders) == 1, recorders
        keys = {}
        for i in range(12):
            status, body = worker.call("POST", "/v1/search", _query(world, f"job-{i}"))
            assert status == 200, body
            keys[body["runKey"]] = f"job-{i}"
        stored = _stored(world)
        assert {k: stored.get(k) for k in keys} == keys
        assert _recorders(worker.proc.pid) == recorders  # the same one all along
        if ending == "kill":  # no cleanup runs: the recorder learns from the kernel
            worker.proc.kill()
            worker.proc.wait(20)
        else:
            worker.stop()
        _wait(lambda: _ended(recorders[0]), 20, f"end of the recorder after a {ending}")
    finally:
        worker.stop()


async def test_a_recorder_killed_while_its_batch_waits_fails_that_batch_and_is_replaced(
        pg_backend: Backend, tmp_path: Path, corpus_index: Any, corpus_hnsw: Any,
        aiohttp_client: Any) -> None:
    """PostgreSQL: the recorder's insert is seen waiting on the lock (pg_stat_activity),
    a positive signal that its batch is in flight, before it is killed."""
    world = build_world(pg_backend.store, tmp_path, corpus_index, corpus_hnsw,
                        run_commit_timeout=30, run_recorder="process")
    client = await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1),
                                           refresh=False, guard=editor_guard()),
                                  headers=EDITOR)
    recorder = world.runtime.recorder
    assert recorder is not None
    first = await client.post("/v1/search", json=_query(world, "before"))
    assert first.status == 200, await first.text()
    killed = recorder.pid
    assert killed is not None

    async def waiting_on_the_lock() -> bool:
        with pg_backend.admin.connect() as c:
            return bool(c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                "wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO model_run%'"
            )).scalar())

    with writes_locked(pg_backend):
        held = asyncio.create_task(client.post("/v1/search", json=_query(world, "held")))
        await until(waiting_on_the_lock, 20, "insert waiting on the lock")
        os.kill(killed, signal.SIGKILL)
        resp = await asyncio.wait_for(held, 20)
        body = await resp.json()
    assert resp.status == 503, body
    assert body["code"] == "run_not_recorded" and body["context"]["retryable"] is True
    assert body["context"]["reason"] == "run_recorder_lost"
    assert body["context"]["jobId"] == "held" and len(body["context"]["runKeys"]) == 1
    assert "Retry-After" in resp.headers
    lost = body["context"]["runKeys"][0]

    after = await client.post("/v1/search", json=_query(world, "after"))
    assert after.status == 200, await after.text()
    assert recorder.pid not in (None, killed)  # a new recorder took the next batch
    stored = _stored(world)
    assert lost not in stored  # killed before its commit: not a run, and not answered as one
    assert sorted(j for j in stored.values() if j is not None) == ["after", "before"]
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("args, env", [(["--run-recorder", "fork"], {}),
                                       ([], {"CADML_RUN_RECORDER": "threads"})])
def test_a_bad_run_recorder_stops_the_start_with_one_line(args: list[str],
                                                          env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "controller", "worker", "--model", "a/b",
                           *args], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    assert "--run-recorder" in done.stderr and "process or thread" in done.stderr
    assert "Traceback" not in done.stderr


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False), st.text(max_size=20))
_rows = st.tuples(st.text(min_size=1, max_size=10), st.integers(1, 2**31),
                  st.sampled_from(["weights", "binding", "override"]),
                  st.dictionaries(st.text(max_size=8),
                                  st.dictionaries(st.text(max_size=8), _values, max_size=3),
                                  max_size=3),
                  st.floats(0, 1e6), st.booleans(), st.booleans(), st.text(max_size=30),
                  st.none() | st.text(max_size=10), st.none() | st.text(max_size=10),
                  st.text(min_size=32, max_size=32),
                  st.none() | st.floats(0, 1e6), st.none() | st.floats(0, 1e6),
                  st.sampled_from([None, "active", "suspended"]))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_rows, max_size=5), proxied=st.booleans())
def test_a_batch_through_the_pipe_is_the_batch_the_thread_would_commit(
        rows: list[tuple[Any, ...]], proxied: bool, tmp_path_factory: Any) -> None:
    """What the recorder builds from a frame equals what the thread builds from the rows;
    a threshold snapshot marshal cannot carry (a mapping proxy) goes through as a dict."""
    if proxied:
        rows = [(*r[:3], types.MappingProxyType(r[3]), *r[4:]) for r in rows]
        with pytest.raises(ValueError):
            marshal.dumps(rows) if rows else marshal.dumps([types.MappingProxyType({})])
    now = datetime.now(UTC)
    path = tmp_path_factory.mktemp("frames") / "frame"
    with path.open("wb") as out:
        send(out, (portable(rows), now.isoformat()))
    with path.open("rb") as inp:
        sent, created = receive(inp)
    got = records(MODEL, sent, datetime.fromisoformat(created))
    assert [_fields(r) for r in got] == [_fields(r) for r in records(MODEL, rows, now)]


def _fields(record: Any) -> dict[str, Any]:
    """A record's fields, its threshold snapshot as a plain dict."""
    return {name: dict(v) if isinstance(v, types.MappingProxyType) else v
            for name in record.__dataclass_fields__ for v in [getattr(record, name)]}


def test_the_recorder_commits_each_request_on_its_own_when_one_of_them_fails(
        world: World) -> None:
    """A batch whose runs cannot all be committed (one request's version is not in the
    store): the recorder answers per request, the others committed. Driven through the
    recorder's own pipe (a real process on the real store): which requests share a batch
    cannot be steered through HTTP."""
    recorder = RecorderProcess(str(world.store.engine.url), TENANT, "w-test", MODEL)
    recorder.start()
    try:
        proc = recorder.spawn()
        assert proc.stdin is not None and proc.stdout is not None

        def row(version: str, job: str) -> tuple[Any, ...]:
            return (version, 1, "policy", {}, 1.0, True, True, job, None, None,
                    new_run_key(), None, 0.1, None)

        batch = [[row("1.0.0", "good-1")], [row("9.9.9", "bad")],
                 [row("1.0.0", "good-2"), row("1.1.0", "good-3")]]
        proc.stdin.write(frame(batch, datetime.now(UTC)))
        proc.stdin.flush()
        first, bad, last = results(receive(proc.stdout), 3)
        assert first is None and last is None
        assert isinstance(bad, ConflictError) and "9.9.9" in str(bad)
        stored = _stored(world)
        assert sorted(j for j in stored.values() if j) == ["good-1", "good-2", "good-3"]
        pid = proc.pid
    finally:
        recorder.close()
    _wait(lambda: _ended(pid), 20, "end of the recorder once its stdin closed")
