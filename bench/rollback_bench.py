"""Benchmark: time-to-rollback — policy change → first run on the STABLE version.

Run: python -m bench.rollback_bench [--trials 30] [--refresh 2] [--pg ADMIN_URL]
A real worker (HTTP, its own refresh loop) serves a model from a SQLite store (it
probes the published policyVersion) and, with --pg, from PostgreSQL (it is also
notified by LISTEN/NOTIFY).
Each trial publishes a 50/50 canary snapshot, waits until a canary job and a job
bound to the canary (one the weights alone would send to STABLE) are served by the
canary, then publishes the rollback and polls with both jobs until each run comes
back on STABLE (the bound job's binding suspended). Prints p50/p99 of the elapsed
times as a ratio of refreshSeconds (target: p99 <= 1.0, within one cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.scratch import pg_store, sqlite_store
from bench.worker_bench import _free_port, _serve
from controller.search.build import BuildResult
from controller.store import Store
from tests.corpus import DXF_CORPUS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--refresh", type=int, default=2, help="refreshSeconds of the policy")
    parser.add_argument("--pg", default=os.environ.get("CADML_TEST_PG_URL"),
                        help="also measure on PostgreSQL (admin URL; a scratch database), "
                             "where the worker is notified (LISTEN/NOTIFY)")
    args = parser.parse_args()

    from controller.search.build import build_index

    with tempfile.TemporaryDirectory() as tmp:
        art = build_index(DXF_CORPUS, Path(tmp) / "idx")
        with sqlite_store() as store:
            report_jobs("sqlite (probe only)", measure(store, art, args.trials, args.refresh),
                        args.refresh)
        if args.pg:
            with pg_store(args.pg) as store:
                report_jobs("postgresql (notified)",
                            measure(store, art, args.trials, args.refresh), args.refresh)
        else:
            print("postgresql skipped (no --pg / CADML_TEST_PG_URL)")


def report_jobs(label: str, by_job: dict[str, list[float]], refresh: int) -> None:
    for kind, ratios in by_job.items():
        report(f"{label}, {kind} job", ratios, refresh)


def measure(store: Store, art: BuildResult, trials: int, refresh: int
            ) -> dict[str, list[float]]:
    from controller.records import ModelRow, PolicyRow, RouteRow, VersionRow
    from controller.worker.app import make_app
    from controller.worker.runtime import WorkerRuntime, WorkerSettings

    with store.transaction("t", "bench") as tx:
        tx.upsert_model(ModelRow("m", "m", "p", "M", spec_hash="h"))
        for name, semver, stage in (("m-1", "1.0.0", "STABLE"), ("m-2", "1.1.0", "CANARY")):
            tx.upsert_version(VersionRow(name, "m", semver, stage, art.manifest_path.as_uri(),
                                         "faiss-index", art.manifest_sha256, spec_hash=semver))
        tx.upsert_policy(PolicyRow("m", "m", {}, refresh, 1, "h"))
        tx.publish_snapshot("m", [RouteRow("1.0.0", 100, True)], {}, "policy",
                            refresh_seconds=refresh)
    runtime = WorkerRuntime(store, WorkerSettings("t", "m", str(store.engine.url),
                                                  worker_id="bench"))
    runtime.refresh()
    canary_job = next(f"job-{i}" for i in range(1000) if _bucket(f"job-{i}") >= 50)
    bound_job = next(f"job-{i}" for i in range(1000) if _bucket(f"job-{i}") < 50)
    with store.transaction("t", "bench") as tx:
        tx.bind_job(bound_job, "m-2", {})
    port, ready, stop = _free_port(), threading.Event(), threading.Event()
    thread = threading.Thread(target=_serve, args=(make_app(runtime), port, ready, stop),
                              daemon=True)
    thread.start()
    ready.wait(10)
    vector = [float(x) for x in np.load(art.manifest_path.parent / "vectors.npy")[0]]
    try:
        return asyncio.run(_trials(store, port, vector, {"canary": canary_job,
                                                          "bound": bound_job}, trials, refresh))
    finally:
        stop.set()
        thread.join(10)


def report(label: str, ratios: list[float], refresh: int) -> None:
    ratios = sorted(ratios)
    p50 = statistics.median(ratios)
    p99 = ratios[min(len(ratios) - 1, int(0.99 * len(ratios)))]
    print(f"{label}: time-to-rollback over {len(ratios)} trials, refreshSeconds={refresh}: "
          f"p50 {p50:.3f}, p99 {p99:.3f}, max {ratios[-1]:.3f} cycles (target p99 <= 1.0)")


def _bucket(job: str) -> float:
    from controller.routing import bucket

    return bucket(job)


async def _trials(store: object, port: int, vector: list[float], jobs: dict[str, str],
                  trials: int, refresh: int) -> dict[str, list[float]]:
    import aiohttp

    from controller.records import RouteRow

    url = f"http://127.0.0.1:{port}/v1/search"
    ratios: dict[str, list[float]] = {kind: [] for kind in jobs}
    rng = random.Random(20261122)

    async def version(session: aiohttp.ClientSession, job: str) -> str:
        async with session.post(url, json={"vector": vector, "jobId": job, "topK": 1}) as r:
            body = await r.json()
            return str(body.get("version"))

    async def until(session: aiohttp.ClientSession, job: str, wanted: str,
                    deadline: float | None = None) -> float:
        while await version(session, job) != wanted:
            assert deadline is None or time.monotonic() < deadline, f"{job} never on {wanted}"
            await asyncio.sleep(0.01)
        return time.monotonic()

    def publish(routes: list[RouteRow], source: str) -> None:
        with store.transaction("t", "bench") as tx:  # type: ignore[attr-defined]
            tx.publish_snapshot("m", routes, {}, source, refresh_seconds=refresh)

    async with aiohttp.ClientSession() as session:
        for _ in range(trials):
            publish([RouteRow("1.0.0", 50, True), RouteRow("1.1.0", 50, False)], "policy")
            deadline = time.monotonic() + 5 * refresh
            for job in jobs.values():
                await until(session, job, "1.1.0", deadline)
            await asyncio.sleep(rng.uniform(0, refresh))  # rollbacks land at any loop phase
            start = time.monotonic()
            publish([RouteRow("1.0.0", 100, True)], "rollback")
            done = await asyncio.gather(*(until(session, job, "1.0.0")
                                          for job in jobs.values()))
            for kind, at in zip(jobs, done, strict=True):
                ratios[kind].append((at - start) / refresh)
    return ratios


if __name__ == "__main__":
    main()
