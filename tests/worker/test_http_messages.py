"""The worker's answers to requests it cannot serve say what is wrong, as JSON, over real
HTTP: empty uploads, a binding without a version, unknown routes and methods, and why
/readyz is not ready."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from controller.worker.app import make_app
from controller.worker.runtime import WorkerRuntime
from tests.worker.conftest import TENANT, World
from tests.worker.test_worker_http import Client, client, sandbox

__all__ = ["client", "sandbox"]  # fixtures shared with the main HTTP tests


def _empty_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("drawing", b"", filename="part.dxf", content_type="application/dxf")
    return form


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "says"), [
    ("POST", "/v1/search", {"data": b"", "headers": {"Content-Type": "application/dxf"}},
     400, "empty_upload", "the request body has 0 bytes"),
    ("POST", "/v1/search", {"data": "form"}, 400, "empty_upload",
     "the 'drawing' part has 0 bytes"),
    ("POST", "/v1/jobs/j-1/binding", {"json": {}}, 400, "bad_request", '"version" field'),
    ("GET", "/v1/nope", {}, 404, "not_found", "no endpoint /v1/nope"),
    ("POST", "/healthz", {}, 405, "method_not_allowed", "POST /healthz: use GET"),
    ("GET", "/v1/search", {}, 405, "method_not_allowed", "use POST"),
])
async def test_requests_it_cannot_serve_get_json_that_says_why(
    world: World, client: Client, method: str, path: str, kwargs: dict[str, Any],
    status: int, code: str, says: str
) -> None:
    if kwargs.get("data") == "form":
        kwargs = {"data": _empty_form()}
    with world.store.transaction(TENANT, "t") as tx:
        before = tx.count_runs()
    resp = await client.request(method, path, **kwargs)
    body = await resp.json()
    assert (resp.status, body["code"]) == (status, code), body
    assert says in body["message"] and {"stage", "context", "timestamp"} <= set(body)
    with world.store.transaction(TENANT, "t") as tx:
        assert tx.count_runs() == before


async def test_readyz_says_why_a_model_is_not_ready(world: World, aiohttp_client: Any) -> None:
    runtime = WorkerRuntime(world.store, replace(world.runtime.settings, model="no-such-model"))
    app = make_app(runtime, refresh=False)
    app.on_cleanup.clear()
    http = await aiohttp_client(app)
    resp = await http.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["ready"] is False
    assert f"{TENANT}/no-such-model" in body["reason"]
