"""The worker's own refresh loop (not a manual `refresh()`): the polling probe on every
store, and PostgreSQL notifications that wake it long before any probe would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from controller.features.sandbox import FeatureSandbox
from controller.records import RouteRow
from controller.search.build import BuildResult
from controller.worker.app import make_app
from tests.stores import Backend
from tests.worker.conftest import World, build_world


async def _until_applied(world: World, pv: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        snap = world.runtime.snapshot
        if snap is not None and snap.policy_version == pv:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"policyVersion {pv} not applied within {timeout} s")


async def _serving(world: World, aiohttp_client: Any) -> Any:
    return await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1)))


async def test_probe_applies_a_rollback_within_a_quarter_cycle(world: World,
                                                               aiohttp_client: Any) -> None:
    """SQLite cannot notify: the one-row probe (min(1 s, refreshSeconds / 4)) finds it."""
    client = await _serving(world, aiohttp_client)
    await asyncio.sleep(0.1)
    pv = world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    took = await _until_applied(world, pv, timeout=5.0)  # one refreshSeconds
    assert took <= 1.0 + 0.5  # the probe period, plus the reload itself
    run = await (await client.post("/v1/search", json={
        "vector": [0.0] * 24, "jobId": "any"})).json()
    assert run["version"] == "1.0.0" and run["policyVersion"] == pv


async def test_postgres_notification_wakes_the_worker_before_any_probe(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult,
        aiohttp_client: Any) -> None:
    if backend.kind != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; the SQLite worker polls (case above)")
    # a 60 s cycle and a 30 s probe: only the notification can apply the change quickly
    world = build_world(backend.store, tmp_path, corpus_index, corpus_hnsw,
                        refresh_seconds=60, probe_seconds=30.0)
    client = await _serving(world, aiohttp_client)
    await asyncio.sleep(1.0)  # the listener connects
    pv = world.publish([RouteRow("1.0.0", 100, True)], source="rollback", refresh_seconds=60)
    took = await _until_applied(world, pv, timeout=10.0)
    assert took < 5.0  # far below the 30 s probe and the 60 s cycle
    run = await (await client.post("/v1/search", json={
        "vector": [0.0] * 24, "jobId": "any"})).json()
    assert run["version"] == "1.0.0" and run["policyVersion"] == pv
    metrics = await (await client.get("/metrics")).text()
    assert 'cadml_worker_policy_notifications_total{model="part-sim",tenant="acme-cad"}' \
        in metrics
