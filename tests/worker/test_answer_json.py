"""Every answer the worker sends is strict JSON, the same bytes with orjson or without it.

A query far from every stored vector overflows float32 in the squared-L2 distance. faiss
then answers "no result" (id -1), but the exact numpy search of a Degraded version
answered those rows with a distance of `inf` (or NaN: `inf - inf` where it expands the
square), which json wrote as `Infinity`/`NaN` (not JSON) and orjson as `null` (a result
without a distance). Such a row is no match: it is not answered, as faiss would not.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from controller.features.sandbox import FeatureSandbox
from controller.records import RouteRow
from controller.worker.app import make_app
from tests.worker.conftest import EDITOR, World, editor_guard
from tests.worker.jsonchecks import strict_json


@pytest.mark.parametrize("index", ["faiss", "degraded"])
@pytest.mark.parametrize("path, body", [
    ("/v1/search", {"vector": [1e19] * 24, "jobId": "far-away", "topK": 5}),
    ("/v1/search/batch", {"queries": [{"vector": [1e19] * 24, "jobId": "far-away"},
                                      {"vector": [-3e18] * 24, "jobId": "far-too"}],
                          "topK": 5}),
])
async def test_a_query_that_overflows_the_distance_answers_strict_json(
        codec_backend: str, world: World, aiohttp_client: Any, path: str,
        body: dict[str, Any], index: str) -> None:
    world.publish([RouteRow("1.0.0", 100, True)])
    if index == "degraded":  # the faiss file is unreadable: the exact numpy search serves
        (world.stable.manifest_path.parent / "index.faiss").write_bytes(b"\0" * 64)
        world.runtime.versions.clear()
    world.runtime.refresh()
    assert world.runtime.versions["1.0.0"].degraded is None if index == "faiss" else \
        world.runtime.versions["1.0.0"].degraded
    client = await aiohttp_client(make_app(world.runtime, sandbox=FeatureSandbox(1),
                                           refresh=False, guard=editor_guard()), headers=EDITOR)
    resp = await client.post(path, json=body)
    raw = await resp.read()
    assert resp.status == 200, raw
    answer = strict_json(raw)
    runs = answer["results"] if path.endswith("batch") else [answer]
    for run in runs:
        for hit in run["results"]:
            assert isinstance(hit["distance"], float) and math.isfinite(hit["distance"]), hit
            assert isinstance(hit["score"], float) and math.isfinite(hit["score"]), hit
