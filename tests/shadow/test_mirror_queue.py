"""The mirror's queue on a real store and runtime (the world of the worker tests: a STABLE
flat and a CANARY HNSW index of the corpus): copies whose shadow was withdrawn while they
waited are skipped, not recorded as failures of the version; comparisons made are
recorded even when the worker stops before their batch was due."""

from __future__ import annotations

import asyncio

import numpy as np

from controller.features.sandbox import FeatureSandbox
from controller.records import RouteRow, ShadowRoute
from controller.worker.runtime import WorkerRuntime
from controller.worker.shadow import Mirrored, ShadowMirror
from tests.waiting import until
from tests.worker.conftest import MODEL, TENANT, World

ROUTES = [RouteRow("1.0.0", 90, True), RouteRow("1.1.0", 10, False)]


def _publish(world: World, shadow: ShadowRoute | None) -> None:
    with world.store.transaction(TENANT, "test") as tx:
        tx.publish_snapshot(MODEL, ROUTES, {}, "policy", shadow=shadow)
    world.runtime.refresh()


def _copy(runtime: WorkerRuntime, run_key: str, version: str) -> Mirrored:
    vector = runtime.versions["1.0.0"].artifact.vectors[0]
    return Mirrored(run_key, f"job-{run_key}", version, np.asarray(vector), 10, ())


def _served_run(world: World) -> str:
    (outcome,) = world.runtime.search(world.runtime.versions["1.0.0"].artifact.vectors[:1],
                                      ["job-x"], 10)
    return outcome.run_key


async def test_withdrawn_shadow_skips_and_stop_records_what_was_compared(world: World
                                                                         ) -> None:
    _publish(world, ShadowRoute("1.1.0", 100))
    sandbox = FeatureSandbox(1)
    mirror = ShadowMirror(world.runtime, lambda: sandbox)
    mirror.start()
    try:
        kept = _served_run(world)
        assert mirror.offer(_copy(world.runtime, kept, "1.1.0"))
        # compared, waiting for its batch: stopping the worker records it
        async def compared() -> bool:
            return bool(mirror.snapshot()["pending"])
        await until(compared, 10.0)
        await mirror.stop()
        assert mirror.snapshot()["recorded"] == 1
        mirror = ShadowMirror(world.runtime, lambda: sandbox)
        mirror.start()
        _publish(world, None)  # withdrawn before the copy is taken up
        assert mirror.offer(_copy(world.runtime, _served_run(world), "1.1.0"))
        await asyncio.wait_for(mirror.idle.wait(), 10)
        assert mirror.snapshot()["skipped"] == 1
    finally:
        await mirror.stop()
        sandbox.close()
    with world.store.read(TENANT, "test") as tx:
        rows = tx.shadow_runs(MODEL)
    assert [(r["run_key"], r["error_code"]) for r in rows] == [(kept, None)]
    assert rows[0]["overlap_at_10"] is not None
