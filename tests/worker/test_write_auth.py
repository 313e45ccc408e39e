"""Reviews and bindings need an authenticated caller: a real `cadml worker` process with a
token file, over HTTP. The reviewer recorded is the token's user, never a header or a
body field (the Kubernetes TokenReview path is in tests/e2e/test_write_auth.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.worker.app import make_app
from controller.worker.auth import TokenFile, WriteGuard, bearer, listen_problem
from tests.conftest import ROOT
from tests.worker.conftest import MODEL, TENANT, World

EDIT, VIEW = "t0k-edit-ann", "t0k-view-vic"
TOKENS = f"# token user access\n{EDIT} ann@acme edit\n{VIEW} vic@acme view\n"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """`python -m controller worker` as a subprocess on loopback."""

    def __init__(self, url: str, store: str, args: list[str], log: Path) -> None:
        self.url, self.log = url, log
        port = int(url.rsplit(":", 1)[1])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "worker", "--model", f"{TENANT}/{MODEL}",
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


@pytest.fixture
def token_worker(world: World, tmp_path: Path) -> Iterator[Worker]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    w = Worker(f"http://127.0.0.1:{_port()}", str(world.store.engine.url),
               ["--auth-token-file", str(tokens)], tmp_path / "worker.log")
    yield w
    w.stop()


def _vector(world: World) -> list[float]:
    return [float(x) for x in np.load(world.stable.manifest_path.parent / "vectors.npy")[0]]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_reviews_and_bindings_are_checked_and_recorded_as_the_token_user(
        world: World, token_worker: Worker) -> None:
    status, run = token_worker.call("POST", "/v1/search", {"vector": _vector(world),
                                                           "jobId": "auth-1"})
    assert status == 200, run  # reads need no token
    review = f"/v1/runs/{run['runKey']}/review"
    forged = {"X-Reviewer": "mallory"}
    body = {"status": "REJECTED", "humanDecision": "no-match", "reviewer": "mallory"}
    with world.store.transaction(TENANT, "t") as tx:
        events = len(list(tx.audit_events()))

    for headers, code, error in (
        (forged, 401, "unauthenticated"),
        ({**forged, "Authorization": "Bearer not-a-token"}, 401, "unauthenticated"),
        ({**forged, "Authorization": EDIT}, 401, "unauthenticated"),  # no Bearer scheme
        ({**forged, **_auth(VIEW)}, 403, "forbidden"),
    ):
        status, answer = token_worker.call("POST", review, body, headers)
        assert (status, answer["code"], answer["stage"]) == (code, error, "auth"), answer
        status, answer = token_worker.call("POST", "/v1/jobs/auth-1/binding",
                                           {"version": "1.1.0"}, headers)
        assert (status, answer["code"]) == (code, error), answer
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
        assert stored is not None and stored["review_status"] == "PENDING_REVIEW"
        assert stored["reviewer"] is None
        assert len(list(tx.audit_events())) == events  # refused writes leave no trace

    status, answer = token_worker.call("POST", review, body, {**forged, **_auth(EDIT)})
    assert status == 200 and answer["reviewer"] == "ann@acme", answer
    status, bound = token_worker.call("POST", "/v1/jobs/auth-1/binding", {"version": "1.1.0"},
                                      {**forged, **_auth(EDIT)})
    assert status == 200, bound
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
        review_event, bind_event = list(tx.audit_events())[-2:]
    assert stored is not None and stored["review_status"] == "REJECTED"
    assert stored["reviewer"] == "ann@acme" and stored["decision"] == "PENDING_REVIEW"
    assert review_event.action == "review" and review_event.actor == "reviewer:ann@acme"
    assert review_event.details["reviewer"] == "ann@acme"
    assert bind_event.action == "bind" and bind_event.actor == "ann@acme"


@pytest.fixture
def sandbox() -> Iterator[FeatureSandbox]:
    box = FeatureSandbox(1)
    yield box
    box.close()


@pytest.mark.parametrize(("guard", "status", "code", "reviewer"), [
    (None, 401, "writes_disabled", None),
    (WriteGuard(insecure_local=True), 200, None, "insecure-local"),
    (WriteGuard(TokenFile.parse(TOKENS)), 200, None, "ann@acme"),
])
async def test_writes_without_a_checker_are_refused_unless_insecure_local(
        world: World, sandbox: FeatureSandbox, aiohttp_client: Any, guard: WriteGuard | None,
        status: int, code: str | None, reviewer: str | None) -> None:
    app = make_app(world.runtime, sandbox=sandbox, refresh=False, guard=guard)
    app.on_cleanup.clear()
    client = await aiohttp_client(app)
    run = await (await client.post("/v1/search", json={"vector": _vector(world),
                                                       "jobId": "g-1"})).json()
    resp = await client.post(f"/v1/runs/{run['runKey']}/review",
                             json={"status": "APPROVED", "reviewer": "mallory"},
                             headers={"X-Reviewer": "mallory", **_auth(EDIT)})
    body = await resp.json()
    assert resp.status == status and body.get("code") == code, body
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
    assert stored is not None and stored["reviewer"] == reviewer


def test_insecure_local_is_refused_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--model", f"{TENANT}/{MODEL}", "--insecure-local",
                 "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_a_malformed_token_file_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "tokens"
    bad.write_text("only-a-token\n")
    assert main(["worker", "--model", f"{TENANT}/{MODEL}", "--auth-token-file",
                 str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_the_default_listen_address_is_loopback() -> None:
    from controller.cli import build_parser

    args = build_parser().parse_args(["worker", "--model", f"{TENANT}/{MODEL}"])
    assert args.host == "127.0.0.1"


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
    ("", None), (None, None), ("abc", None),
])
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize(("host", "insecure", "ok"), [
    ("127.0.0.1", True, True), ("::1", True, True), ("localhost", True, True),
    ("0.0.0.0", True, False), ("10.1.2.3", True, False), ("0.0.0.0", False, True),
])
def test_listen_problem(host: str, insecure: bool, ok: bool) -> None:
    assert (listen_problem(host, insecure) is None) is ok
