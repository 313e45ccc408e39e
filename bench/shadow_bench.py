"""Served latency with and without shadow mirroring, in the same run.

Run: python -m bench.shadow_bench [--rounds 4] [--requests 100] [--concurrency 2]
                                  [--percent 100] [--payload drawing|vector]

A real worker (aiohttp on a local port, run recording in SQLite) serves a STABLE v4
index of the corpus; the shadow version is a v3 index of the corpus (drawings: each
mirrored upload is parsed again for v3) or an HNSW v4 index (vectors). Rounds alternate
shadow off / on (a new snapshot each time, applied by a refresh); after each round the
mirror queue is drained, so an "off" round carries no shadow work. The client measures
each served request's latency; p50 and p99 of each mode and their ratio (on / off) are
printed, with the shadow runs recorded and dropped. Client and worker share this
machine's cores (2 here): what shadow work costs the served path shows up as the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.worker_bench import _free_port, _serve
from tests.corpus import DXF_CORPUS


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(np.ceil(q * len(ordered))) - 1)]


async def _round(port: int, payloads: list[Any], requests: int, concurrency: int,
                 tag: str) -> list[float]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/search"
    lat: list[float] = []
    per = requests // concurrency

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        for i in range(per):
            p = payloads[(c * per + i) % len(payloads)]
            job = f"{tag}-{c}-{i}"
            t0 = time.perf_counter()
            if isinstance(p, bytes):
                resp = await session.post(f"{url}?jobId={job}", data=p,
                                          headers={"Content-Type": "application/dxf"})
            else:
                resp = await session.post(url, json={"vector": p, "jobId": job})
            async with resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            lat.append((time.perf_counter() - t0) * 1000.0)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session, c) for c in range(concurrency)))
    return lat


async def _drained(port: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                stats: dict[str, Any] = (await resp.json())["shadow"]
            if stats["queued"] == 0 and stats["pending"] == 0:
                return stats
            await asyncio.sleep(0.05)


def run(rounds: int, requests: int, concurrency: int, percent: int, payload: str) -> None:
    from controller.features.sandbox import FeatureSandbox
    from controller.records import ModelRow, PolicyRow, RouteRow, ShadowRoute, VersionRow
    from controller.search.build import build_index
    from controller.store import Store
    from controller.store.engine import make_engine
    from controller.store.migrate import upgrade
    from controller.worker.app import make_app
    from controller.worker.runtime import WorkerRuntime, WorkerSettings

    with tempfile.TemporaryDirectory() as tmp:
        stable = build_index(DXF_CORPUS, Path(tmp) / "v4")
        shadow = (build_index(DXF_CORPUS, Path(tmp) / "v3", feature_version="v3")
                  if payload == "drawing" else
                  build_index(DXF_CORPUS, Path(tmp) / "hnsw", kind="hnsw"))
        store = Store(make_engine(f"sqlite:///{tmp}/w.db"))
        upgrade(store.engine)
        with store.transaction("t", "bench") as tx:
            tx.upsert_model(ModelRow("m", "m", "p", "M", spec_hash="h"))
            for name, semver, stage, art, fv in (
                    ("m-1", "1.0.0", "STABLE", stable, "v4"),
                    ("m-2", "2.0.0", "DRAFT", shadow, "v3" if payload == "drawing" else "v4")):
                tx.upsert_version(VersionRow(name, "m", semver, stage,
                                             art.manifest_path.as_uri(), "faiss-index",
                                             art.manifest_sha256, feature_version=fv,
                                             spec_hash="h"))
            tx.upsert_policy(PolicyRow("m", "m", {}, 5, 1, "h"))

        def publish(on: bool) -> None:
            with store.transaction("t", "bench") as tx:
                tx.publish_snapshot("m", [RouteRow("1.0.0", 100, True)], {}, "policy",
                                    shadow=ShadowRoute("2.0.0", percent) if on else None)
            runtime.refresh()

        runtime = WorkerRuntime(store, WorkerSettings("t", "m", "sqlite://"))
        publish(False)
        payloads: list[Any] = (
            [p.read_bytes() for p in sorted(DXF_CORPUS.glob("*.dxf"))]
            if payload == "drawing" else
            [[float(x) for x in v] for v in np.load(stable.manifest_path.parent /
                                                    "vectors.npy")])
        app = make_app(runtime, sandbox=FeatureSandbox(2), refresh=False)
        port, ready, stop = _free_port(), threading.Event(), threading.Event()
        server = threading.Thread(target=_serve, args=(app, port, ready, stop), daemon=True)
        server.start()
        ready.wait(30)
        lat: dict[bool, list[float]] = {False: [], True: []}
        asyncio.run(_round(port, payloads, min(requests, 20), concurrency, "warm"))
        for r in range(rounds * 2):
            on = r % 2 == 1
            publish(on)
            lat[on] += asyncio.run(_round(port, payloads, requests, concurrency, f"r{r}"))
            asyncio.run(_drained(port))  # the next round starts with no shadow work left
        stats = asyncio.run(_drained(port))
        stop.set()
        server.join(30)
        with store.read("t", "bench") as tx:
            shadow_runs = tx.shadow_runs("m")
    off_p50, off_p99 = _pct(lat[False], 0.5), _pct(lat[False], 0.99)
    on_p50, on_p99 = _pct(lat[True], 0.5), _pct(lat[True], 0.99)
    failed = sum(1 for s in shadow_runs if s["error_code"])
    print(f"payload {payload}, {rounds} rounds x {requests} requests per mode, concurrency "
          f"{concurrency}, shadow {percent} %")
    print(f"  without shadow: p50 {off_p50:.2f} ms  p99 {off_p99:.2f} ms  (n={len(lat[False])})")
    print(f"  with shadow:    p50 {on_p50:.2f} ms  p99 {on_p99:.2f} ms  (n={len(lat[True])})")
    print(f"  ratio on/off:   p50 {on_p50 / off_p50:.2f}x  p99 {on_p99 / off_p99:.2f}x")
    print(f"  shadow runs recorded {len(shadow_runs)} (failed {failed}), offered "
          f"{stats['offered']}, dropped {stats['dropped']}, errors {stats['errors']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--percent", type=int, default=100)
    p.add_argument("--payload", choices=("drawing", "vector"), default="drawing")
    a = p.parse_args()
    run(a.rounds, a.requests, a.concurrency, a.percent, a.payload)


if __name__ == "__main__":
    main()
