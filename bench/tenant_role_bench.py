"""Benchmark: the cost of the per-tenant role policy (migration 0013) on PostgreSQL reads.

Run: python -m bench.tenant_role_bench --store ADMIN_URL [--rows 200000] [--repeat 15]
                                       [--rounds 3]
A fresh database: ROWS schedule_tick rows over two tenants, a role bound to one of them
(`grant_tenant_role`); `SELECT count(*)` of one tenant's rows is timed (median) as the
shared runtime role and as the bound role, with the RESTRICTIVE policy and without it,
in alternating rounds. Target: at most 1.2x for the shared role (the operator's
path: one InitPlan per statement and a parameter test per row); a bound role pays one
more comparison per row scanned (measured 1.5x on this full-scan count, 2 loaded cores).
The database and the role are removed afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from controller.store.engine import make_engine
from controller.store.migrate import grant_runtime_role, grant_tenant_role, upgrade

APP, BOUND_ROLE = "cadml_app", "cadml_bench_tenant"


def _median_ms(url: URL, role: str, repeat: int) -> tuple[int, float]:
    engine = create_engine(url.set(username=role, password=None))
    times, rows = [], 0
    try:
        for _ in range(repeat):
            with engine.begin() as c:
                c.execute(text("SELECT set_config('app.tenant_id', 'acme', true)"))
                start = time.perf_counter()
                rows = int(c.execute(text("SELECT count(*) FROM schedule_tick")).scalar_one())
                times.append(time.perf_counter() - start)
    finally:
        engine.dispose()
    return rows, statistics.median(times[2:]) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", required=True, help="admin URL of a PostgreSQL server")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    server = make_url(args.store)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"cadml_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
        for role in (APP, BOUND_ROLE):
            c.execute(text(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname "
                           f"= '{role}') THEN CREATE ROLE {role} LOGIN NOSUPERUSER "
                           "NOBYPASSRLS; END IF; END $$"))
    url = server.set(database=name)
    owner = make_engine(url.render_as_string(False))
    try:
        upgrade(owner)
        grant_runtime_role(owner, APP)
        grant_tenant_role(owner, "acme", BOUND_ROLE)
        with owner.begin() as c:  # the superuser admin is not subject to RLS
            c.execute(text(
                "INSERT INTO schedule_tick (tenant_id, window_key, result, created_at) "
                "SELECT CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END, 'w' || g, '{}', "
                "now() FROM generate_series(1, :n) g"), {"n": args.rows})
            c.execute(text("ANALYZE schedule_tick"))
        with owner.connect() as c:  # the policy as the migration wrote it
            bound = str(c.execute(text(
                "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = "
                "'tenant_role_binding' AND polrelid = 'schedule_tick'::regclass")).scalar_one())
        # alternate with and without the policy so that cache warm-up and the machine's
        # load fall on both sides alike
        measured: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for label in ("policy", "no policy"):
                with owner.begin() as c:
                    c.execute(text("DROP POLICY IF EXISTS tenant_role_binding ON "
                                   "schedule_tick"))
                    if label == "policy":
                        c.execute(text(f"CREATE POLICY tenant_role_binding ON schedule_tick "
                                       f"AS RESTRICTIVE USING ({bound}) WITH CHECK ({bound})"))
                for role in (APP, BOUND_ROLE):
                    rows, ms = _median_ms(url, role, args.repeat)
                    measured.setdefault((label, role), []).append(ms)
                    print(f"round {round_} {label:10s} {role:20s} rows={rows} "
                          f"median={ms:.1f} ms")
        for role in (APP, BOUND_ROLE):
            with_, without = (statistics.median(measured[label, role])
                              for label in ("policy", "no policy"))
            print(f"{role}: {with_:.1f} ms with the policy, {without:.1f} ms without: "
                  f"{with_ / without:.2f}x")
    finally:
        owner.dispose()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            c.execute(text(f"DROP ROLE IF EXISTS {BOUND_ROLE}"))
        admin.dispose()


if __name__ == "__main__":
    main()
