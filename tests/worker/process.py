"""A real `cadml worker` process for tests that go through its HTTP port, and the write
contract checked through one (token file here, the Kubernetes API server in tests/e2e)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import ROOT
from tests.worker.conftest import TENANT, World


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """`python -m controller worker --model MODEL --store STORE ARGS…` on a loopback port,
    started when its /readyz answers 200."""

    def __init__(self, model: str, store: str, args: list[str], log: Path) -> None:
        self.log = log
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "worker", "--model", model,
                 "--store", store, "--port", str(port), *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("worker exited:\n" + log.read_text())
            try:
                if self.call("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("worker never became ready:\n" + log.read_text())

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def assert_writes_are_authenticated(world: World, worker: WorkerProcess, *, edit: str,
                                    view: str, user: str) -> None:
    """The access contract through a live worker: a search needs a token (a cadml-view
    user's will do); for writes no token, an unknown one or a bare one is 401, a read-only
    user's is 403, and none of them leaves a trace; an editor's token is accepted and
    recorded as `user`, whatever X-Reviewer or a `reviewer` field claims."""
    vector = [float(x) for x in np.load(world.stable.manifest_path.parent / "vectors.npy")[0]]
    query = {"vector": vector, "jobId": "auth-1"}
    status, refused = worker.call("POST", "/v1/search", query)
    assert (status, refused.get("code")) == (401, "unauthenticated"), refused  # reads: a token
    viewer = {"Authorization": f"Bearer {view}"}
    status, run = worker.call("POST", "/v1/search", query, viewer)
    assert status == 200, run  # a cadml-view user may read
    status, found = worker.call("GET", f"/v1/runs/{run['runKey']}", None, viewer)
    assert status == 200 and found["runKey"] == run["runKey"], found
    review = f"/v1/runs/{run['runKey']}/review"
    forged = {"X-Reviewer": "mallory"}
    body = {"status": "REJECTED", "agree": False, "humanDecision": "no-match",
            "reviewer": "mallory"}
    with world.store.transaction(TENANT, "t") as tx:
        events = len(list(tx.audit_events()))

    for headers, code, error in (
        (forged, 401, "unauthenticated"),
        ({**forged, "Authorization": "Bearer not-a-token"}, 401, "unauthenticated"),
        ({**forged, "Authorization": edit}, 401, "unauthenticated"),  # no Bearer scheme
        ({**forged, "Authorization": f"Bearer {view}"}, 403, "forbidden"),
    ):
        status, answer = worker.call("POST", review, body, headers)
        assert (status, answer.get("code"), answer.get("stage")) == (code, error, "auth"), answer
        status, answer = worker.call("POST", "/v1/jobs/auth-1/binding", {"version": "1.1.0"},
                                     headers)
        assert (status, answer.get("code")) == (code, error), answer
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
        assert stored is not None and stored["review_status"] == "PENDING_REVIEW"
        assert stored["reviewer"] is None
        assert len(list(tx.audit_events())) == events  # refused writes leave no trace

    editor = {**forged, "Authorization": f"Bearer {edit}"}
    status, answer = worker.call("POST", review, body, editor)
    assert status == 200 and answer["reviewer"] == user, answer
    status, bound = worker.call("POST", "/v1/jobs/auth-1/binding", {"version": "1.1.0"},
                                editor)
    assert status == 200, bound
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
        review_event, bind_event = list(tx.audit_events())[-2:]
    assert stored is not None and stored["review_status"] == "REJECTED"
    assert stored["reviewer"] == user and stored["decision"] == "PENDING_REVIEW"
    assert review_event.action == "review" and review_event.actor == f"reviewer:{user}"
    assert review_event.details["reviewer"] == user
    assert bind_event.action == "bind" and bind_event.actor == user
