"""Benchmark: inserting run records through the repository vs raw SQLAlchemy Core executemany.

Run: python -m bench.store_bench [--runs N] [--batch B] [--pg URL]
SQLite always; PostgreSQL when --pg (or CADML_TEST_PG_URL) names an admin URL, in a
fresh database. Prints rows/s of each path and the ratio repository/raw (target >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import insert, text

from bench.scratch import pg_store, sqlite_store
from controller.records import ModelRow, RunRecord, VersionRow
from controller.store import Store
from controller.store import tables as t


def _seed(store: Store) -> tuple[int, int]:
    with store.transaction("bench", "bench") as tx:
        mid = tx.upsert_model(ModelRow("m", "m", "p", "M", spec_hash="h"))
        vid = tx.upsert_version(VersionRow("m-1", "m", "1.0.0", "STABLE", "s3://x", "npz",
                                              "a" * 64, spec_hash="h"))
    return mid, vid


def _runs(n: int) -> list[RunRecord]:
    now = datetime.now(UTC)
    return [RunRecord("m", "1.0.0", 1, "policy", {"similarity": {"value": 0.8,
                                                                 "source": "model"}},
                      12.5 + i % 7, i % 10 != 0, i % 3 != 0, job_key=f"job-{i}",
                      ai_suggestion="match", created_at=now) for i in range(n)]


def measure(store: Store, runs: int, batch: int, repeat: int = 3) -> tuple[float, float]:
    """Best of `repeat` alternating rounds of each path, fresh rows every round."""
    mid, vid = _seed(store)
    best_repo = best_raw = float("inf")
    for _ in range(repeat):
        t_raw, t_repo = _round(store, runs, batch, mid, vid)
        best_raw, best_repo = min(best_raw, t_raw), min(best_repo, t_repo)
    return runs / best_repo, runs / best_raw


def _round(store: Store, runs: int, batch: int, mid: int, vid: int) -> tuple[float, float]:
    records = _runs(runs)

    def repo() -> None:
        for i in range(0, runs, batch):
            with store.transaction("bench", "bench") as tx:
                tx.record_runs(records[i:i + batch])

    rows = [{"tenant_id": "bench", "run_key": uuid.uuid4().hex, "model_id": mid,
             "model_version_id": vid, "job_key": r.job_key, "policy_version": 1,
             "route_source": "policy", "thresholds": r.thresholds, "decision": "PENDING_REVIEW",
             "ai_suggestion": r.ai_suggestion, "review_status": "PENDING_REVIEW",
             "latency_ms": r.latency_ms, "success": r.success, "met_threshold": r.met_threshold,
             "error_code": None, "created_at": r.created_at} for r in records]

    def raw() -> None:
        for i in range(0, runs, batch):
            with store.engine.begin() as conn:
                if store.dialect == "postgresql":
                    conn.execute(text("SELECT set_config('app.tenant_id', 'bench', true)"))
                conn.execute(insert(t.model_run), rows[i:i + batch])

    start = time.perf_counter()
    raw()
    t_raw = time.perf_counter() - start
    start = time.perf_counter()
    repo()
    t_repo = time.perf_counter() - start
    return t_raw, t_repo


def report(name: str, repo_rate: float, raw_rate: float) -> None:
    print(f"{name:10s} repository {repo_rate:10,.0f} rows/s   raw executemany "
          f"{raw_rate:10,.0f} rows/s   ratio {repo_rate / raw_rate:.2f} (target >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pg", default=os.environ.get("CADML_TEST_PG_URL"))
    args = parser.parse_args()
    with sqlite_store() as store:
        report("sqlite", *measure(store, args.runs, args.batch))
    if args.pg:
        with pg_store(args.pg) as store:
            report("postgresql", *measure(store, args.runs, args.batch))
    else:
        print("postgresql skipped (no --pg / CADML_TEST_PG_URL)")


if __name__ == "__main__":
    main()
