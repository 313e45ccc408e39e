"""Benchmark: Git-mode reconcile (first pass and no-op pass) vs validation, by size and history.

Run: python -m bench.reconcile_bench [--scale 1000,4000,16000] [--history RUNS,ROLLBACKS]
                                     [--history-resources N] [--store URL]
Scale: for each size N, builds a Git repository of N generated resources (models, a
STABLE and a CANARY version each, a policy) and times `cadml validate --git-ref HEAD`,
a first reconcile into an empty store and a no-op pass, printed as ms/resource so
growth is visible. Targets: first reconcile <= 4x validation, no-op pass <= 2x.
History: one tenant (--history-resources, default 100: every model in the pass carries
history) is reconciled, then seeded straight into the tables (bulk SQL, not through the
repository) with RUNS runs and ROLLBACKS rollback snapshots spread over its models, plus
a year of daily evaluations per version and 1,000 dead worker incarnations; the no-op
pass (and the observe read alone) is timed against the same pass on an empty history.
Target: 1,000,000 runs and 100 rollbacks cost at most 1.2x the empty history.
--store URL: an admin URL of a PostgreSQL server (a fresh database per measurement) or
a SQLite file URL prefix; default a fresh SQLite file per measurement.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from bench.scratch import pg_store, sqlite_store
from bench.validate_bench import generate
from controller.reconcile.gitmode import reconcile_repo
from controller.sources import collect_git
from controller.store import Store
from controller.validation import validate_files

MAX = 8 * 1024 * 1024
TENANT = "tenant-000"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
                        "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com",
                        "PATH": "/usr/bin:/bin:/usr/local/bin"})


def _repo(root: Path, resources: int) -> int:
    root.mkdir()
    n = generate(root, resources)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "bench")
    return n


@contextmanager
def _store(url: str | None) -> Iterator[Store]:
    if url and url.startswith("postgresql"):
        with pg_store(url) as store:
            yield store
    else:
        with sqlite_store() as store:
            yield store


def _best(repeat: int, fn: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _noop(store: Store, repo: Path) -> None:
    again = reconcile_repo(store, str(repo), "HEAD", [], MAX)
    assert again.ok and not again.changed, "the pass was not a no-op"


def _observe(store: Store) -> None:
    read = getattr(store, "read", None)  # the read-only path, where the store has one
    with (read(TENANT, "bench") if read else store.transaction(TENANT, "bench")) as tx:
        tx.observe()


def _validate(repo: Path) -> None:
    files, _ = collect_git(str(repo), "HEAD", [], MAX)
    assert validate_files(files, datetime.now(UTC)).ok


# ---------------------------------------------------------------- scale


def scale(sizes: list[int], url: str | None, repeat: int) -> None:
    print("resources  validate ms/res  first ms/res  no-op ms/res  first/validate  "
          "no-op/validate")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp, _store(url) as store:
            repo = Path(tmp) / "repo"
            n = _repo(repo, size)

            t_validate = _best(repeat, lambda: _validate(repo))  # noqa: B023
            start = time.perf_counter()
            first = reconcile_repo(store, str(repo), "HEAD", [], MAX)
            t_first = time.perf_counter() - start
            assert first.ok and first.changed
            t_noop = _best(repeat, lambda: _noop(store, repo))  # noqa: B023
        per = 1000.0 / n
        print(f"{n:9d}  {t_validate * per:14.3f}  {t_first * per:12.3f}  {t_noop * per:12.3f}  "
              f"{t_first / t_validate:13.2f}x  {t_noop / t_validate:13.2f}x")


# ---------------------------------------------------------------- history


def _series(conn: Connection, n: int) -> str:
    """A row source of i = 1..n in either dialect."""
    if conn.dialect.name == "postgresql":
        return f"(SELECT generate_series(1, {n}) AS i) AS s"
    return (f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
            "SELECT i FROM s) AS s")


def seed_history(store: Store, runs: int, rollbacks: int) -> None:
    """Append history to every model of TENANT behind the repository's back: per model, its
    share of ROLLBACKS rollback snapshots followed by one snapshot equal to the current one
    (so the desired state is unchanged and the next pass is a no-op), its share of RUNS
    runs across the whole history, daily evaluations per version for a year, and dead
    worker rows; timestamps lie in the past, in policy_version order."""
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    pg = store.dialect == "postgresql"

    def fmt(at: datetime) -> str:
        return at.isoformat() if pg else at.strftime("%Y-%m-%d %H:%M:%S.%f")

    start_s = fmt(start)
    json_param = "CAST(:th AS json)" if pg else ":th"
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": TENANT})
        policies = conn.execute(text(
            "SELECT p.id, p.model_id, p.policy_version FROM model_rollout_policy p "
            "WHERE p.tenant_id = :t ORDER BY p.id"), {"t": TENANT}).all()
        versions = conn.execute(text(
            "SELECT id, model_id FROM model_version WHERE tenant_id = :t AND stage = 'STABLE'"),
            {"t": TENANT}).all()
        all_versions = conn.execute(text(
            "SELECT id FROM model_version WHERE tenant_id = :t"), {"t": TENANT}).scalars().all()
        stable = {int(mid): int(vid) for vid, mid in versions}
        per_model_runs = runs // len(policies)
        for idx, (policy_id, model_id, pv) in enumerate(policies):
            k = rollbacks // len(policies) + (1 if idx < rollbacks % len(policies) else 0)
            last = pv + k + 1
            current = conn.execute(text(
                "SELECT id, thresholds, refresh_seconds FROM policy_snapshot WHERE "
                "tenant_id = :t AND policy_id = :p AND policy_version = :v"),
                {"t": TENANT, "p": policy_id, "v": pv}).one()
            step = (now - start) / (k + 2)
            for j in range(1, k + 2):
                source = "rollback" if j <= k else "policy"
                new_id = conn.execute(text(
                    "INSERT INTO policy_snapshot (tenant_id, policy_id, model_id, "
                    "policy_version, source, reason, thresholds, refresh_seconds, created_at) "
                    f"VALUES (:t, :p, :m, :v, :s, 'bench', {json_param}, :r, :c) RETURNING id"),
                    {"t": TENANT, "p": policy_id, "m": model_id, "v": pv + j, "s": source,
                     "th": current.thresholds if isinstance(current.thresholds, str)
                     else _json(current.thresholds),
                     "r": current.refresh_seconds, "c": fmt(start + step * j)}).scalar_one()
                conn.execute(text(
                    "INSERT INTO policy_route (tenant_id, snapshot_id, model_version_id, "
                    "version, weight, is_stable, forced) SELECT tenant_id, :n, "
                    "model_version_id, version, weight, is_stable, forced FROM policy_route "
                    "WHERE tenant_id = :t AND snapshot_id = :o"),
                    {"t": TENANT, "n": new_id, "o": current.id})
            conn.execute(text("UPDATE model_rollout_policy SET policy_version = :v "
                              "WHERE id = :p"), {"v": last, "p": policy_id})
            # run i of this model: time start + i/N of the year, under the snapshot then current
            conn.execute(text(
                "INSERT INTO model_run (tenant_id, run_key, model_id, model_version_id, job_key, "
                "policy_version, route_source, thresholds, decision, review_status, latency_ms, "
                "success, met_threshold, created_at) "
                f"SELECT :t, 'h-' || :m || '-' || i, :m, :v, 'job-' || (i % 1000), "
                f":pv + (i * ({k} + 2)) / ({per_model_runs} + 1), 'policy', '{{}}', "
                "'PENDING_REVIEW', 'PENDING_REVIEW', 12.5, true, true, "
                f"{_ts_expr(store.dialect)} FROM {_series(conn, per_model_runs)}"),
                {"t": TENANT, "m": model_id, "v": stable[int(model_id)], "pv": pv,
                 "start": start_s, "span": (now - start).total_seconds() / (per_model_runs + 1)})
        for vid in all_versions:
            conn.execute(text(
                "INSERT INTO evaluation (tenant_id, model_version_id, job_key, window_start, "
                "window_end, success_rate, review_override_rate, p95_latency_ms, sample_size, "
                f"reviewed_sample_size, created_at) SELECT :t, :v, '', "
                f"{_day_expr(store.dialect, 'i - 1')}, {_day_expr(store.dialect, 'i')}, 0.9, "
                f"0.1, 20.0, 100, 10, {_day_expr(store.dialect, 'i')} FROM {_series(conn, 365)}"),
                {"t": TENANT, "v": vid, "start": start_s})
        mid = policies[0][1]
        conn.execute(text(
            "INSERT INTO worker_state (tenant_id, worker_id, model_id, applied_policy_version, "
            "degraded, detail, updated_at) SELECT :t, 'dead-' || i, :m, 1, false, '{}', "
            f"{_day_expr(store.dialect, 'i % 300')} FROM {_series(conn, 1000)}"),
            {"t": TENANT, "m": mid, "start": start_s})
    if store.dialect == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _ts_expr(dialect: str) -> str:
    """created_at of run i: start + i * span seconds."""
    if dialect == "postgresql":
        return "CAST(:start AS timestamptz) + make_interval(secs => i * CAST(:span AS float))"
    return "strftime('%Y-%m-%d %H:%M:%f', :start, '+' || (i * :span) || ' seconds')"


def _day_expr(dialect: str, days: str) -> str:
    if dialect == "postgresql":
        return f"CAST(:start AS timestamptz) + make_interval(days => {days})"
    return f"strftime('%Y-%m-%d %H:%M:%f', :start, '+' || ({days}) || ' days')"


def history(runs: int, rollbacks: int, resources: int, url: str | None, repeat: int) -> None:
    results: dict[str, tuple[float, float]] = {}
    for label, seeded in (("empty", False), ("history", True)):
        with tempfile.TemporaryDirectory() as tmp, _store(url) as store:
            repo = Path(tmp) / "repo"
            n = _repo(repo, resources)
            assert reconcile_repo(store, str(repo), "HEAD", [], MAX).changed
            if seeded:
                start = time.perf_counter()
                seed_history(store, runs, rollbacks)
                print(f"seeded {runs:,} runs and {rollbacks} rollbacks into {TENANT} "
                      f"({n} resources) in {time.perf_counter() - start:.1f} s")
            reconcile_repo(store, str(repo), "HEAD", [], MAX)  # status catches up
            results[label] = (_best(repeat, lambda: _noop(store, repo)),  # noqa: B023
                              _best(repeat, lambda: _observe(store)))
    (e_pass, e_obs), (h_pass, h_obs) = results["empty"], results["history"]
    print(f"no-op pass, empty history: {e_pass * 1000:9.2f} ms   observe {e_obs * 1000:8.2f} ms")
    print(f"no-op pass, {runs:,} runs, {rollbacks} rollbacks: {h_pass * 1000:9.2f} ms   "
          f"observe {h_obs * 1000:8.2f} ms")
    print(f"ratio history/empty: pass {h_pass / e_pass:.2f}x (target <= 1.2x), "
          f"observe {h_obs / e_obs:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="1000,4000,16000",
                        help="resource counts, comma-separated ('' to skip)")
    parser.add_argument("--history", metavar="RUNS,ROLLBACKS",
                        help="also time the no-op pass with this much history vs none")
    parser.add_argument("--history-resources", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", help="PostgreSQL admin URL (default: fresh SQLite files)")
    args = parser.parse_args()
    print(f"store: {'postgresql' if (args.store or '').startswith('postgresql') else 'sqlite'}")
    sizes = [int(s) for s in args.scale.split(",") if s.strip()]
    if sizes:
        scale(sizes, args.store, args.repeat)
    if args.history:
        runs, rollbacks = (int(x) for x in args.history.split(","))
        history(runs, rollbacks, args.history_resources, args.store, args.repeat)


if __name__ == "__main__":
    main()
