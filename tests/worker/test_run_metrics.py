"""Each recorded run counts once in the request counter and the latency histogram."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from tests.worker.conftest import MODEL, TENANT, World


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"tenant": TENANT, "model": MODEL, **labels}) or 0.0


def test_a_batch_of_runs_counts_each_run_by_version_and_route(world: World) -> None:
    rt = world.runtime
    vector = np.load(world.stable.manifest_path.parent / "vectors.npy")[0]
    jobs = [f"metric-job-{i}" for i in range(40)]
    routes = [rt.route(j) for j in jobs]
    by_version: dict[str, int] = {}
    for r in routes:
        by_version[r.choice.version] = by_version.get(r.choice.version, 0) + 1
    assert len(by_version) == 2  # the 90/10 policy sends some of the 40 jobs to the canary
    before = {v: (_sample("cadml_worker_requests_total", version=v, route="policy"),
                  _sample("cadml_run_latency_seconds_count", version=v)) for v in by_version}
    rt.record(rt.search_routed(routes, [vector] * len(jobs), 5, 0.0))
    after = {v: (_sample("cadml_worker_requests_total", version=v, route="policy"),
                 _sample("cadml_run_latency_seconds_count", version=v)) for v in by_version}
    assert {v: (after[v][0] - before[v][0], after[v][1] - before[v][1])
            for v in by_version} == {v: (float(n), float(n)) for v, n in by_version.items()}
