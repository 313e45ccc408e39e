"""Session 7 adversarial review findings: the worker's recorder process (`cadml worker
--run-recorder process`, the default), through real `cadml worker` processes on real
stores."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.store.repository import RunFilter
from tests.conftest import ROOT
from tests.worker.conftest import MODEL, TENANT, World
from tests.worker.process import free_port
from tests.worker.test_recorder_process import _ended, _recorders, _wait


def _query(world: World, job: str) -> dict[str, Any]:
    vector = np.load(world.stable.manifest_path.parent / "vectors.npy")[0]
    return {"vector": [float(x) for x in vector], "jobId": job}


def _call(url: str, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 30) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class _Worker:
    """`cadml worker` in a process group of its own (as a terminal's foreground job or a
    service's control group holds it), started when /readyz answers 200."""

    def __init__(self, store: str, args: list[str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "worker", "--model",
                 f"{TENANT}/{MODEL}", "--store", store, "--port",
                 self.url.rsplit(":", 1)[1], *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("worker exited:\n" + log.read_text())
            try:
                if _call(self.url, "GET", "/readyz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("worker never became ready:\n" + log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)


def _stored(world: World) -> dict[str, str | None]:
    with world.store.read(TENANT) as tx:
        return {r["runKey"]: r["jobId"] for r in tx.runs(RunFilter(model=MODEL))}


@pytest.mark.parametrize("recorder, sig", [("process", signal.SIGINT),
                                           ("process", signal.SIGTERM),
                                           ("thread", signal.SIGINT)])  # the thread: passes
def test_a_signal_to_the_workers_process_group_still_commits_the_batch_in_flight(
        world: World, tmp_path: Path, recorder: str, sig: signal.Signals) -> None:
    """Ctrl-C in a terminal (SIGINT) and a service manager's stop (systemd's default
    KillMode=control-group: SIGTERM) signal every process of the group at once. The worker
    stops gracefully: a request already waiting for its commit is committed and answered
    200 once the store takes writes again (as with --run-recorder thread). The recorder
    must not die of the same signal with that batch in flight."""
    db = str(world.store.engine.url.database)
    worker = _Worker(f"sqlite:///{db}", ["--run-commit-timeout", "15", "--run-recorder", recorder],
                     tmp_path / "w.log")
    try:
        lock = sqlite3.connect(db, timeout=0, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the store's write lock
        answer: dict[str, Any] = {}
        held = threading.Thread(target=lambda: answer.update(
            zip(("status", "body"), _call(worker.url, "POST", "/v1/search",
                                          _query(world, "held")), strict=True)))
        held.start()
        time.sleep(1.5)  # the batch is handed to the commit, which waits on the lock
        os.killpg(worker.proc.pid, sig)
        time.sleep(1.0)
        lock.rollback()
        lock.close()
        held.join(30)
        assert answer.get("status") == 200, (answer, worker.log.read_text()[-3000:])
        assert answer["body"]["runKey"] in _stored(world)
        worker.proc.wait(30)
        assert "Traceback" not in worker.log.read_text(), worker.log.read_text()[-3000:]
    finally:
        worker.stop()


def test_a_recorder_that_cannot_be_started_again_answers_503_run_not_recorded(
        world: World, tmp_path: Path) -> None:
    """The recorder died (killed while idle); the next batch starts a new one, and that
    start fails: the process cannot open the new recorder's pipes (its file limit, set
    here on the live worker with prlimit; a container's pids limit or ENOMEM fail the fork
    alike). The request cannot be recorded: it must get the structured 503
    run_not_recorded (retryable, its runKeys, Retry-After), as when a recorder is lost
    mid-batch, not a 500 `internal` (the OSError of Popen escapes RecorderLost)."""
    db = str(world.store.engine.url.database)
    worker = _Worker(f"sqlite:///{db}", ["--run-commit-timeout", "5"], tmp_path / "w.log")
    try:
        pid = worker.proc.pid
        assert _call(worker.url, "POST", "/v1/search", _query(world, "before"))[0] == 200
        (recorder,) = _recorders(pid)
        os.kill(recorder, signal.SIGKILL)
        _wait(lambda: _ended(recorder), 20, "end of the killed recorder")
        opened = len(os.listdir(f"/proc/{pid}/fd"))
        limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # room for the request's connection, none for the new recorder's pipes
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (opened + 2, limit[1]))
        try:
            status, body = _call(worker.url, "POST", "/v1/search", _query(world, "held"))
            # /healthz says why (the liveness probe restarts a worker that stays so)
            health, why = _call(worker.url, "GET", "/healthz")
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
        assert status == 503, body
        assert body["code"] == "run_not_recorded", body
        assert body["context"]["retryable"] is True and len(body["context"]["runKeys"]) == 1
        assert (health, why.get("code")) == (503, "run_recorder_unavailable"), why
        # a new start is tried after a backoff, requests or not: healthy again, recorded
        _wait(lambda: _call(worker.url, "GET", "/healthz")[0] == 200, 30,
              "a recorder started again after the backoff")
        assert _call(worker.url, "POST", "/v1/search", _query(world, "after"))[0] == 200
    finally:
        worker.stop()
