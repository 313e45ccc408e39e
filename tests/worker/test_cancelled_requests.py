"""A request that stops waiting (client gone, a timeout) must not stop the worker."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from controller.features.sandbox import FeatureSandbox
from controller.worker.app import WRITER, make_app
from tests.worker.conftest import EDITOR, World, editor_guard


async def test_a_search_succeeds_after_a_waiter_was_cancelled(world: World,
                                                              aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1),
                                           refresh=False, guard=editor_guard()), headers=EDITOR)
    vector = np.load(world.stable.manifest_path.parent / "vectors.npy")[0]
    outcomes = world.runtime.search(vector[None, :], ["gone"], 3, record=False)
    waiter = asyncio.create_task(client.app[WRITER].write(outcomes))
    await asyncio.sleep(0)  # queued: the writer will commit it after it stopped waiting
    waiter.cancel()
    resp = await asyncio.wait_for(client.post("/v1/search", json={
        "vector": [float(x) for x in vector], "jobId": "next"}), 10)
    assert resp.status == 200 and (await resp.json())["jobId"] == "next"
    assert (await client.get("/healthz")).status == 200
    with world.store.read("acme-cad") as tx:
        assert tx.count_runs() == 2  # the cancelled request's run was recorded too
