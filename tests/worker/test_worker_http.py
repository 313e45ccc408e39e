"""The worker over real HTTP (aiohttp test server), real store, real indexes and drawings."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from controller.features.identity import extractor_version
from controller.features.sandbox import FeatureSandbox
from controller.records import RouteRow, VersionRow
from controller.search.fetch import sha256_file
from controller.worker.app import make_app
from controller.worker.auth import TokenFile, WriteGuard
from tests.conftest import DXF_CORPUS
from tests.worker.conftest import MODEL, TENANT, World

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def sandbox() -> Any:
    box = FeatureSandbox(2)
    yield box
    box.close()


@pytest.fixture
async def client(world: World, sandbox: FeatureSandbox, aiohttp_client: Any) -> Client:
    app = make_app(world.runtime, sandbox=sandbox, refresh=False,
                   guard=WriteGuard(TokenFile.parse("t-ann ann@acme edit")))
    app.on_cleanup.clear()
    return await aiohttp_client(app, headers={"Authorization": "Bearer t-ann"})


def _vector(world: World, i: int = 0) -> list[float]:
    vectors = np.load(world.stable.manifest_path.parent / "vectors.npy")
    return [float(x) for x in vectors[i]]


async def test_search_by_vector_records_the_run(world: World, client: Client) -> None:
    resp = await client.post("/v1/search", json={"vector": _vector(world, 3), "jobId": "j-1",
                                                  "topK": 5})
    assert resp.status == 200
    body = await resp.json()
    assert body["decision"] == "PENDING_REVIEW" and body["policyVersion"] == 1
    assert body["routeSource"] == "policy" and body["version"] in ("1.0.0", "1.1.0")
    assert len(body["results"]) == 5
    assert body["results"][0]["distance"] == pytest.approx(0, abs=1e-3)
    assert body["thresholds"]["similarity"]["value"] == 0.5
    with world.store.transaction(TENANT, "t") as tx:
        run = tx.run(body["runKey"])
    assert run is not None and run["review_status"] == "PENDING_REVIEW"
    assert run["policy_version"] == 1 and run["route_source"] == "policy"
    assert run["thresholds"]["similarity"]["source"] in ("model", "policy")


async def test_search_by_dxf_upload(world: World, client: Client) -> None:
    data = (DXF_CORPUS / "xclip.dxf").read_bytes()
    form = aiohttp.FormData()
    form.add_field("drawing", data, filename="xclip.dxf", content_type="application/dxf")
    form.add_field("jobId", "upload-1")
    resp = await client.post("/v1/search", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["results"][0]["id"] == "xclip.dxf"  # a drawing finds itself first
    raw = await client.post("/v1/search?jobId=upload-2", data=data,
                            headers={"Content-Type": "application/dxf"})
    assert raw.status == 200 and (await raw.json())["results"][0]["id"] == "xclip.dxf"


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
     "bad_request"),
    ({"json": {"vector": "abc"}}, 400, "bad_vector"),
    ({"json": {"vector": [1.0, float("nan")]}}, 400, "bad_vector"),
    ({"json": {"vector": [0.0] * 24, "topK": 0}}, 400, "bad_top_k"),
    ({"data": b"0\n" * (11 * 1024 * 1024), "headers": {"Content-Type": "application/dxf"}},
     413, "too_large"),
])
async def test_bad_requests_get_json_errors_and_write_nothing(
    world: World, client: Client, kwargs: dict[str, Any], status: int, code: str
) -> None:
    with world.store.transaction(TENANT, "t") as tx:
        before = tx.count_runs()
    resp = await client.post("/v1/search", **kwargs)
    assert resp.status == status
    body = await resp.json()
    assert body["code"] == code and {"stage", "message", "context", "timestamp"} <= set(body)
    with world.store.transaction(TENANT, "t") as tx:
        assert tx.count_runs() == before
    assert (await client.get("/healthz")).status == 200  # the worker is still fine


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"json": {"vector": [1.0, 2.0], "jobId": "dim-1"}}, "dimension_mismatch"),
    ({"data": b"garbage garbage", "params": {"jobId": "dim-1"},
      "headers": {"Content-Type": "application/dxf"}}, "invalid_drawing"),
])
async def test_a_routed_request_that_fails_is_a_failed_run(
    world: World, client: Client, kwargs: dict[str, Any], code: str
) -> None:
    """Issue 12: parse errors and dimension mismatches were answered and forgotten, so
    the version's success_rate never saw them."""
    resp = await client.post("/v1/search", **kwargs)
    assert resp.status == 422
    body = await resp.json()
    version = world.runtime.choose("dim-1")[0].version
    assert body["code"] == code and body["context"]["version"] == version
    with world.store.transaction(TENANT, "t") as tx:
        run = tx.run(body["context"]["runKey"])
    assert run is not None and run["success"] is False and run["error_code"] == code
    assert run["job_key"] == "dim-1" and run["policy_version"] == 1
    assert run["thresholds"]["similarity"]["value"] == 0.5


def test_routing_shares_and_stickiness(world: World) -> None:
    choices = [world.runtime.choose(f"job-{i}")[0].version for i in range(10_000)]
    share = Counter(choices)
    assert abs(share["1.0.0"] / 100 - 90) <= 2 and abs(share["1.1.0"] / 100 - 10) <= 2
    again = [world.runtime.choose(f"job-{i}")[0].version for i in range(10_000)]
    assert again == choices  # a job keeps its version while the policy is unchanged


async def test_batch_search_parallel_and_serial_agree(world: World, client: Client) -> None:
    vectors = np.load(world.stable.manifest_path.parent / "vectors.npy")
    queries = [{"vector": [float(x) for x in vectors[i % len(vectors)]], "jobId": f"b-{i}"}
               for i in range(150)]
    settings = world.runtime.settings
    world.runtime.settings = replace(settings, parallel_batch_threshold=40)
    parallel = await (await client.post("/v1/search/batch", json={"queries": queries,
                                                                   "topK": 3})).json()
    world.runtime.settings = replace(settings, parallel_batch_threshold=1000)
    serial = await (await client.post("/v1/search/batch", json={"queries": queries,
                                                                 "topK": 3})).json()
    strip = [[(r["version"], [h["id"] for h in r["results"]]) for r in x["results"]]
             for x in (parallel, serial)]
    assert strip[0] == strip[1] and len(strip[0]) == 150
    with world.store.transaction(TENANT, "t") as tx:
        assert tx.count_runs() == 300


async def test_binding_beats_policy_and_override_beats_binding(world: World,
                                                               client: Client) -> None:
    job = next(f"job-{i}" for i in range(1000)
               if world.runtime.choose(f"job-{i}")[0].version == "1.0.0")
    resp = await client.post(f"/v1/jobs/{job}/binding", json={"version": "1.1.0"})
    assert resp.status == 200
    assert world.runtime.choose(job)[0].source == "binding"
    run = await (await client.post("/v1/search", json={"vector": _vector(world),
                                                       "jobId": job})).json()
    assert run["version"] == "1.1.0" and run["routeSource"] == "binding"
    world.publish([RouteRow("1.0.0", 100, True, forced=True)], source="override")
    world.runtime.refresh()
    run = await (await client.post("/v1/search", json={"vector": _vector(world),
                                                       "jobId": job})).json()
    assert run["version"] == "1.0.0" and run["routeSource"] == "override"
    missing = await client.post(f"/v1/jobs/{job}/binding", json={"version": "9.9.9"})
    assert missing.status == 404


async def test_rollback_reaches_new_runs_within_one_refresh(world: World,
                                                            client: Client) -> None:
    canary_jobs = [f"job-{i}" for i in range(2000)
                   if world.runtime.choose(f"job-{i}")[0].version == "1.1.0"]
    assert canary_jobs
    pv = world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    world.runtime.refresh()  # what the refresh loop does every refreshSeconds
    for job in canary_jobs[:20]:
        run = await (await client.post("/v1/search", json={"vector": _vector(world),
                                                           "jobId": job})).json()
        assert run["version"] == "1.0.0" and run["policyVersion"] == pv
    with world.store.transaction(TENANT, "t") as tx:
        (state,) = tx.worker_states()[MODEL]
    assert state.applied_policy_version == pv


async def test_human_review_is_recorded_and_audited(world: World, client: Client) -> None:
    run = await (await client.post("/v1/search", json={"vector": _vector(world),
                                                       "jobId": "r-1"})).json()
    no_status = await client.post(f"/v1/runs/{run['runKey']}/review", json={})
    assert no_status.status == 400
    weaken = await client.post(f"/v1/runs/{run['runKey']}/review",
                               json={"status": "APPROVED", "reviewer": "ann",
                                     "controlAllowed": True})
    assert weaken.status == 400
    ok = await client.post(f"/v1/runs/{run['runKey']}/review",
                           json={"status": "REJECTED", "agree": False,
                                 "humanDecision": "no-match"})
    assert ok.status == 200 and (await ok.json())["decision"] == "PENDING_REVIEW"
    with world.store.transaction(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
        last = list(tx.audit_events())[-1]
    assert stored is not None and stored["review_status"] == "REJECTED"
    assert stored["reviewer"] == "ann@acme" and stored["decision"] == "PENDING_REVIEW"
    assert last.action == "review" and last.actor == "reviewer:ann@acme"
    unknown = await client.post("/v1/runs/nope/review", json={"status": "APPROVED",
                                                             "agree": True,
                                                             "reviewer": "ann"})
    assert unknown.status == 404


async def test_degraded_version_serves_identical_results_and_recovers(
    world: World, client: Client
) -> None:
    q = {"vector": _vector(world, 5), "jobId": "d-1", "topK": 5}
    healthy = await (await client.post("/v1/search", json=q)).json()
    index_file = world.stable.manifest_path.parent / "index.faiss"
    saved = index_file.read_bytes()
    index_file.write_bytes(b"\0" * 64)
    world.runtime.versions.clear()  # as after a restart: load again from disk
    world.runtime.refresh()
    ready = await (await client.get("/readyz")).json()
    assert ready["degraded"] and ready["versions"]["1.0.0"].startswith("Degraded")
    degraded = await (await client.post("/v1/search", json=q)).json()
    assert degraded["degraded"] and [h["id"] for h in degraded["results"]] == [
        h["id"] for h in healthy["results"]]
    metrics = await (await client.get("/metrics")).text()
    assert 'cadml_worker_degraded{model="part-sim",tenant="acme-cad",version="1.0.0"} 1.0' \
        in metrics
    lv = world.runtime.versions["1.0.0"]
    assert lv.backoff == 300.0 and lv.next_retry is not None
    assert (await client.post("/admin/recover")).status == 401
    still = await (await client.post("/admin/recover", headers={
        "Authorization": "Bearer s3cret"})).json()
    assert still["recovered"]["1.0.0"].startswith("Degraded")
    assert world.runtime.versions["1.0.0"].manual_until is not None  # auto retry paused
    index_file.write_bytes(saved)
    fixed = await (await client.post("/admin/recover", headers={
        "Authorization": "Bearer s3cret"})).json()
    assert fixed["recovered"]["1.0.0"] == "Ready"
    assert not (await (await client.get("/readyz")).json())["degraded"]


def test_automatic_recovery_backs_off_exponentially(world: World) -> None:
    index_file = world.stable.manifest_path.parent / "index.faiss"
    index_file.write_bytes(b"\0" * 64)
    runtime = world.runtime
    runtime.versions.clear()
    runtime.refresh(now=0.0)
    lv = runtime.versions["1.0.0"]
    assert (lv.backoff, lv.next_retry) == (300.0, 300.0)
    runtime.refresh(now=100.0)  # too early: no attempt
    assert runtime.versions["1.0.0"].next_retry == 300.0
    waits = []
    now = 300.0
    for _ in range(6):
        runtime.refresh(now=now)
        lv = runtime.versions["1.0.0"]
        waits.append(lv.backoff)
        assert lv.next_retry is not None
        now = lv.next_retry
    assert waits == [600.0, 1200.0, 2400.0, 3600.0, 3600.0, 3600.0]


async def test_an_unloadable_artifact_is_retried_with_backoff_not_every_refresh(
        world: World, client: Client, caplog: pytest.LogCaptureFixture) -> None:
    manifest = world.canary.manifest_path
    saved = manifest.read_bytes()
    manifest.unlink()  # the artifact is not there (yet): upload late, wrong mount, …
    runtime = world.runtime
    runtime.versions.clear()
    caplog.clear()
    runtime.refresh(now=0.0)
    assert "1.1.0" not in runtime.versions and "1.1.0" in runtime.load_errors
    for now in (5.0, 10.0, 299.0):  # refreshes before the backoff ends try nothing
        runtime.refresh(now=now)
    attempts = [r for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(attempts) == 1
    runtime.refresh(now=300.0)
    assert runtime.failed["1.1.0"][2] == 600.0  # failed again: the wait doubles
    ready = await (await client.get("/readyz")).json()
    assert "artifact" in ready["loadErrors"]["1.1.0"]
    manifest.write_bytes(saved)  # the artifact arrives; an operator need not wait 600 s
    auth = {"Authorization": "Bearer s3cret"}
    fixed = await (await client.post("/admin/recover", json={"version": "1.1.0"},
                                     headers=auth)).json()
    assert fixed["recovered"]["1.1.0"] == "Ready"
    assert "1.1.0" in runtime.versions and not runtime.load_errors and not runtime.failed


async def test_schedule_tick_endpoint_runs_once_per_window(world: World, client: Client) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    assert (await client.post("/admin/schedule-tick", json={"windowKey": "h1"})).status == 401
    first = await (await client.post("/admin/schedule-tick", json={"windowKey": "h1"},
                                     headers=auth)).json()
    again = await (await client.post("/admin/schedule-tick", json={"windowKey": "h1"},
                                     headers=auth)).json()
    assert first["ran"] is True and again["ran"] is False
    assert "already ran" in again["message"]
    bad = await client.post("/admin/schedule-tick", json={}, headers=auth)
    assert bad.status == 400


async def test_ef_search_is_chosen_per_model_version(world: World, client: Client) -> None:
    """spec.search.efSearch reaches the loaded HNSW index of that version only, and a
    change is applied at the next refresh without a new artifact."""

    def set_ef(ef: int | None) -> None:
        with world.store.transaction(TENANT, "test") as tx:
            row = next(v for v in tx.versions(MODEL) if v.version == "1.1.0")
            tx.upsert_version(replace(row, ef_search=ef))

    async def search_settings() -> dict[str, Any]:
        ready = await (await client.get("/readyz")).json()
        return dict(ready["search"])

    stored_default = (await search_settings())["1.1.0"]["efSearch"]
    set_ef(300)
    world.runtime.refresh()
    settings = await search_settings()
    assert settings["1.1.0"] == {"index": "hnsw", "efSearch": 300}
    assert settings["1.0.0"] == {"index": "flat"}  # the stable (exact) version is untouched
    run = await (await client.post("/v1/search", json={
        "vector": _vector(world, 3), "jobId": "ef-1", "k": 5})).json()
    assert run["results"]
    set_ef(None)  # back to the worker's default (none set here): the artifact's own value
    world.runtime.refresh()
    assert (await search_settings())["1.1.0"]["efSearch"] == stored_default
    with world.store.transaction(TENANT, "t") as tx:
        (state,) = tx.worker_states()[MODEL]
    assert state.detail["search"]["1.1.0"]["efSearch"] == stored_default


async def test_readyz_names_the_extractors_and_flags_an_index_built_by_another(
        world: World, client: Client) -> None:
    ready = await (await client.get("/readyz")).json()
    ours = extractor_version()
    assert ready["extractorVersion"] == ours
    assert ready["artifactExtractors"] == {"1.0.0": ours, "1.1.0": ours}
    assert ready["extractorMismatch"] == []

    manifest = world.canary.manifest_path  # an index built by an older extractor
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "extractorVersion": "x0-0123456789abcdef"}))
    with world.store.transaction(TENANT, "seed") as tx:
        tx.upsert_version(VersionRow("ps-1-1-0", MODEL, "1.1.0", "CANARY", manifest.as_uri(),
                                     "faiss-index", sha256_file(manifest), spec_hash="1.1.0b"))
    world.runtime.refresh()
    ready = await (await client.get("/readyz")).json()
    assert ready["artifactExtractors"]["1.1.0"] == "x0-0123456789abcdef"
    assert ready["extractorMismatch"] == ["1.1.0"]
