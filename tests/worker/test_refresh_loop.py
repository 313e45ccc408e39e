"""The worker's own refresh loop (not a manual `refresh()`): the polling probe on every
store, and PostgreSQL notifications that wake it long before any probe would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from controller.features.sandbox import FeatureSandbox
from controller.records import RouteRow
from controller.search.build import BuildResult
from controller.worker.app import make_app
from tests.stores import Backend
from tests.worker.conftest import MODEL, TENANT, World, build_world


async def _until(done: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `done()` holds (polled every 20 ms); fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if done():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not within {timeout} s")


async def _until_applied(world: World, pv: int, timeout: float) -> float:
    def applied() -> bool:
        snap = world.runtime.snapshot
        return snap is not None and snap.policy_version == pv
    return await _until(applied, timeout, f"policyVersion {pv} applied")


def _counting_refreshes(world: World, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the worker's full refreshes, so a test can wait until its loop has run."""
    calls: list[int] = []
    real = world.runtime.refresh

    def refresh(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls.append(1)
    monkeypatch.setattr(world.runtime, "refresh", refresh)
    return calls


def _notifications() -> float:
    return REGISTRY.get_sample_value("cadml_worker_policy_notifications_total",
                                     {"tenant": TENANT, "model": MODEL}) or 0.0


async def _serving(world: World, aiohttp_client: Any) -> Any:
    return await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1)))


async def test_probe_applies_a_rollback_within_a_quarter_cycle(
        world: World, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite cannot notify: the one-row probe (min(1 s, refreshSeconds / 4)) finds it."""
    refreshes = _counting_refreshes(world, monkeypatch)
    client = await _serving(world, aiohttp_client)
    # the loop's first full refresh is done: only the probe can find what comes next
    await _until(lambda: bool(refreshes), 5.0, "the refresh loop's first refresh")
    pv = world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    took = await _until_applied(world, pv, timeout=5.0)  # one refreshSeconds
    assert took <= 1.0 + 0.5  # the probe period, plus the reload itself
    run = await (await client.post("/v1/search", json={
        "vector": [0.0] * 24, "jobId": "any"})).json()
    assert run["version"] == "1.0.0" and run["policyVersion"] == pv


async def test_postgres_notification_wakes_the_worker_before_any_probe(
        pg_backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult,
        aiohttp_client: Any) -> None:
    # a 60 s cycle and a 30 s probe: only the notification can apply the change quickly
    world = build_world(pg_backend.store, tmp_path, corpus_index, corpus_hnsw,
                        refresh_seconds=60, probe_seconds=30.0)
    before = _notifications()
    client = await _serving(world, aiohttp_client)
    # the listener connected (its connect hint counts as one notification)
    await _until(lambda: _notifications() > before, 10.0, "the listener's connect hint")
    pv = world.publish([RouteRow("1.0.0", 100, True)], source="rollback", refresh_seconds=60)
    took = await _until_applied(world, pv, timeout=10.0)
    assert took < 5.0  # far below the 30 s probe and the 60 s cycle
    run = await (await client.post("/v1/search", json={
        "vector": [0.0] * 24, "jobId": "any"})).json()
    assert run["version"] == "1.0.0" and run["policyVersion"] == pv
    assert _notifications() >= before + 2  # the connect hint, then the publication
    metrics = await (await client.get("/metrics")).text()
    assert 'cadml_worker_policy_notifications_total{model="part-sim",tenant="acme-cad"}' \
        in metrics


async def test_a_refresh_that_keeps_failing_logs_one_line_once(
        world: World, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A model removed from the store under a running worker: the loop keeps serving the
    last snapshot and says so once, in one line, not a traceback per probe."""
    from controller.errors import ConflictError

    calls: list[int] = []

    def refresh(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise ConflictError(f"model {TENANT}/{MODEL} is not in the store")
    monkeypatch.setattr(world.runtime, "refresh", refresh)
    monkeypatch.setattr(world.runtime, "published_version", lambda: -1)  # always due
    with caplog.at_level("WARNING", logger="cadml.worker"):
        await _serving(world, aiohttp_client)
        await _until(lambda: len(calls) >= 3, 10, "three failed refreshes")
    failed = [r for r in caplog.records if "policy refresh failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert "is not in the store" in failed[0].getMessage()
