"""A version whose artifact cannot load stays with that version (issue 12, item 3).

Each artifact below once escaped the loader, stopped the refresh and with it the whole
worker: a fresh worker never became ready, a running one never applied a rollback.
Real artifacts on disk, a real store and a worker over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from controller.features.sandbox import FeatureSandbox
from controller.records import RouteRow
from controller.worker.app import make_app
from controller.worker.runtime import WorkerRuntime
from tests.worker.conftest import MODEL, TENANT, World


def _npy() -> bytes:
    out = io.BytesIO()
    np.save(out, np.zeros((3, 24), dtype=np.float32))
    return out.getvalue()


# name → (bytes of the artifact, format, what /readyz must name: the exception type, or
# the structured code when the loader child recognises the damage itself)
BROKEN: dict[str, tuple[bytes, str, str]] = {
    "one-byte-pickle": (b".", "pickle", "UnpicklingError"),
    "plain-npy-as-npz": (_npy(), "npz", "artifact_corrupt"),
    "manifest-nested-100k": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "faiss-index",
                             "RecursionError"),
    # builtins.range is on the allowlist; range('a') raises TypeError while unpickling
    "allowlisted-pickle-typeerror": (b"cbuiltins\nrange\n(S'a'\ntR.", "pickle", "TypeError"),
}


def _break_canary(world: World, uri: str, sha: str, fmt: str) -> None:
    with world.store.transaction(TENANT, "test") as tx:
        row = next(v for v in tx.versions(MODEL) if v.version == "1.1.0")
        tx.upsert_version(replace(row, artifact_uri=uri, artifact_sha256=sha,
                                  artifact_format=fmt))


def _write(root: Path, name: str, data: bytes) -> tuple[str, str]:
    path = root / f"{name}.bin"
    path.write_bytes(data)
    return path.as_uri(), hashlib.sha256(data).hexdigest()


def _failures(version: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "cadml_worker_version_load_failures":
            continue
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels.get("version") == version and \
                    s.labels.get("tenant") == TENANT:
                total += s.value
    return total


def _fresh(world: World) -> WorkerRuntime:
    return WorkerRuntime(world.store, world.runtime.settings)


async def _client(runtime: WorkerRuntime, aiohttp_client: Any) -> Any:
    app = make_app(runtime, sandbox=FeatureSandbox(1), refresh=False)
    return await aiohttp_client(app)


def _stable_job(runtime: WorkerRuntime) -> str:
    return next(f"job-{i}" for i in range(1000)
                if runtime.choose(f"job-{i}")[0].version == "1.0.0")


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_fresh_worker_with_a_broken_canary_serves_stable(
        world: World, aiohttp_client: Any, case: str) -> None:
    data, fmt, kind = BROKEN[case]
    uri, sha = _write(world.root, case, data)
    _break_canary(world, uri, sha, fmt)
    runtime = _fresh(world)
    before = _failures("1.1.0")
    runtime.refresh(now=0.0)  # raised before: the worker never became ready
    assert "1.0.0" in runtime.versions and "1.1.0" not in runtime.versions
    client = await _client(runtime, aiohttp_client)
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["ready"] is True
    assert kind in body["loadErrors"]["1.1.0"], body["loadErrors"]
    resp = await client.post("/v1/search", json={
        "vector": [0.0] * 24, "jobId": _stable_job(runtime)})
    assert resp.status == 200 and (await resp.json())["version"] == "1.0.0"
    assert _failures("1.1.0") == before + 1
    for now in (1.0, 2.0, 3.0, 10.0):  # refreshes inside the backoff do not load again
        runtime.refresh(now=now)
    assert _failures("1.1.0") == before + 1
    with world.store.transaction(TENANT, "t") as tx:
        (state,) = tx.worker_states()[MODEL]
    assert kind in state.detail["loadErrors"]["1.1.0"]


def test_an_unreadable_uri_is_contained(world: World) -> None:
    _break_canary(world, "file:///proc/self/mem", "0" * 64, "pickle")
    runtime = _fresh(world)
    runtime.refresh(now=0.0)
    assert set(runtime.versions) == {"1.0.0"} and "1.1.0" in runtime.load_errors


async def test_a_running_worker_applies_a_rollback_past_a_broken_canary(
        world: World, aiohttp_client: Any) -> None:
    uri, sha = _write(world.root, "one-byte", b".")
    _break_canary(world, uri, sha, "pickle")
    pv = world.publish([RouteRow("1.0.0", 50, True), RouteRow("1.1.0", 50, False)])
    world.runtime.refresh()
    assert world.runtime.snapshot is not None and world.runtime.snapshot.policy_version == pv
    back = world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    world.runtime.refresh()
    assert world.runtime.snapshot.policy_version == back
    assert set(world.runtime.versions) == {"1.0.0"}


async def test_readyz_is_false_while_stable_is_not_loaded_and_says_why(
        world: World, aiohttp_client: Any) -> None:
    uri, sha = _write(world.root, "one-byte", b".")
    with world.store.transaction(TENANT, "test") as tx:
        row = next(v for v in tx.versions(MODEL) if v.version == "1.0.0")
        tx.upsert_version(replace(row, artifact_uri=uri, artifact_sha256=sha,
                                  artifact_format="pickle"))
    runtime = _fresh(world)
    runtime.refresh(now=0.0)
    assert "1.1.0" in runtime.versions  # the canary is fine and loaded
    client = await _client(runtime, aiohttp_client)
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 503 and body["ready"] is False
    assert "1.0.0" in body["reason"] and "UnpicklingError" in body["reason"]


def test_a_load_failure_is_one_json_log_line(world: World,
                                            caplog: pytest.LogCaptureFixture) -> None:
    uri, sha = _write(world.root, "one-byte", b".")
    _break_canary(world, uri, sha, "pickle")
    caplog.set_level(logging.INFO, logger="cadml.worker.events")
    _fresh(world).refresh(now=0.0)
    failed = [r for r in caplog.records if getattr(r, "event", None) == "version_load_failed"]
    assert len(failed) == 1
    fields = failed[0].fields  # type: ignore[attr-defined]
    # deserialised in the loader child: its code, and the exception's type in the message
    assert fields["version"] == "1.1.0" and fields["error"] == "artifact_load_failed"
    assert "UnpicklingError" in fields["message"]
    from controller.worker.events import JsonLines
    line = json.loads(JsonLines().format(failed[0]))
    assert line["event"] == "version_load_failed" and line["retryInSeconds"] == 300.0
