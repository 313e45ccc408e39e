"""Reviews and bindings need an authenticated caller: a real `cadml worker` process with a
token file, over HTTP. The reviewer recorded is the token's user, never a header or a
body field (the Kubernetes TokenReview path is in tests/e2e/test_write_auth.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.features.sandbox import FeatureSandbox
from controller.worker.app import make_app
from controller.worker.auth import TokenFile, WriteGuard, bearer, listen_problem
from tests.worker.conftest import MODEL, TENANT, World
from tests.worker.process import WorkerProcess, assert_writes_are_authenticated

EDIT, VIEW = "t0k-edit-ann", "t0k-view-vic"
TOKENS = f"# token user access\n{EDIT} ann@acme edit\n{VIEW} vic@acme view\n"


@pytest.fixture
def token_worker(world: World, tmp_path: Path) -> Iterator[WorkerProcess]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    w = WorkerProcess(f"{TENANT}/{MODEL}", str(world.store.engine.url),
                      ["--auth-token-file", str(tokens)], tmp_path / "worker.log")
    yield w
    w.stop()


def _vector(world: World) -> list[float]:
    return [float(x) for x in np.load(world.stable.manifest_path.parent / "vectors.npy")[0]]


def test_reviews_and_bindings_are_checked_and_recorded_as_the_token_user(
        world: World, token_worker: WorkerProcess) -> None:
    assert_writes_are_authenticated(world, token_worker, edit=EDIT, view=VIEW,
                                    user="ann@acme")


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
                                                       "jobId": "g-1"},
                                   headers={"Authorization": f"Bearer {VIEW}"})).json()
    resp = await client.post(f"/v1/runs/{run['runKey']}/review",
                             json={"status": "APPROVED", "agree": True, "reviewer": "mallory"},
                             headers={"X-Reviewer": "mallory",
                                      "Authorization": f"Bearer {EDIT}"})
    body = await resp.json()
    assert resp.status == status and body.get("code") == code, body
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
    assert stored is not None and stored["reviewer"] == reviewer


class CountingTokens(TokenFile):
    """The token file, counting how often it is asked (a stand-in for the API server's
    TokenReview/SubjectAccessReview round trips, which the cache saves)."""

    asked = 0

    def authenticate(self, token: str) -> Any:
        CountingTokens.asked += 1
        return super().authenticate(token)


async def test_reads_need_a_viewer_token_once_a_checker_is_configured_and_are_cached(
        world: World, sandbox: FeatureSandbox, aiohttp_client: Any) -> None:
    tokens = TokenFile.parse(TOKENS)
    app = make_app(world.runtime, sandbox=sandbox, refresh=False,
                   guard=WriteGuard(CountingTokens(tokens._users)))
    app.on_cleanup.clear()
    client = await aiohttp_client(app)
    query = {"vector": _vector(world), "jobId": "r-1"}
    anonymous = await client.post("/v1/search", json=query)
    assert (anonymous.status, (await anonymous.json())["code"]) == (401, "unauthenticated")
    unknown = await client.get("/v1/jobs/r-1/binding",
                               headers={"Authorization": "Bearer nobody"})
    assert unknown.status == 401
    CountingTokens.asked = 0
    for _ in range(5):
        resp = await client.post("/v1/search", json=query,
                                 headers={"Authorization": f"Bearer {VIEW}"})
        assert resp.status == 200, await resp.json()
    assert CountingTokens.asked == 1  # the answer is cached: one check for five searches
    # without a checker (embedded use) reads stay open
    open_app = make_app(world.runtime, sandbox=sandbox, refresh=False)
    open_app.on_cleanup.clear()
    open_client = await aiohttp_client(open_app)
    assert (await open_client.post("/v1/search", json=query)).status == 200


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


def test_kube_auth_without_credentials_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["worker", "--model", f"{TENANT}/{MODEL}", "--kube-auth"]) == 2
    assert "--kube-auth: no credentials" in capsys.readouterr().err


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
