"""Benchmark: what the operator costs at scale, on the real API server (not asserted).

Run: python -m bench.operator_bench [--tenants 100,200] [--timer 60] [--window 120]
                                    [--store URL | --pg]
Needs the test control plane: export CADML_CONTROLPLANE_BIN=$(tests/controlplane/build.sh
| tail -1). It starts kube-apiserver + etcd + kube-controller-manager (garbage collector)
and `cadml run` as in tests/e2e (cluster-admin, webhooks on loopback, a SQLite store
unless --store; --pg: a fresh PostgreSQL database on $CADML_TEST_PG_URL, migrated, the
operator connected as the runtime role under row-level security, dropped at the end),
then, in one run:

1. baseline: the operator idle with no tenant, for --window seconds;
2. for each count in --tenants: the tenants still missing are applied at once (5 objects
   each, referrers before their Model, 8 kubectl clients in parallel), the time from the
   end of the apply until every object is Ready and the duplicate `create` audit rows
   are printed; then, after one timer interval to settle, the operator idles for
   --window seconds.

Per idle window: API requests per minute (the API server's own `apiserver_request_total`,
WATCH excluded, for the resources the operator touches: cadml.io, Deployments,
Services, Events, kopf peerings; the controller-manager's garbage collector only
watches those), per Model per minute, operator CPU seconds per minute, RSS and peak RSS
(/proc); ratios to the baseline. Targets (issue 11): all Ready within 10 s of the apply,
no duplicate audit row, idle at most one request per Model per minute and no PATCH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.e2e.conftest import Operator, install_crds
from tests.e2e.controlplane import ControlPlane, find_binaries
from tests.e2e.test_burst import KINDS, ready_now, tenant

RESOURCES = {"models", "modelversions", "rolloutpolicies", "releaserecords", "deployments",
             "services", "events", "clusterkopfpeerings", "kopfpeerings"}
_SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def requests(cp: ControlPlane) -> Counter[str]:
    """The API server's request counters for the operator's resources, by verb and
    resource ("GET deployments")."""
    out: Counter[str] = Counter()
    for line in cp.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        found = _SAMPLE.match(line)
        if found is None:
            continue
        labels = dict(_LABEL.findall(found.group("labels")))
        if labels.get("resource") in RESOURCES and labels.get("verb") != "WATCH":
            out[f'{labels["verb"]} {labels["resource"]}'] += int(float(found.group("value")))
    return out


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system CPU seconds so far
    rss_mib: float
    peak_mib: float


def usage(pid: int) -> Usage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return Usage((int(fields[11]) + int(fields[12])) / ticks,
                 int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)


@dataclass(frozen=True)
class Idle:
    tenants: int
    per_min: Counter[str]
    cpu_per_min: float
    rss_mib: float
    peak_mib: float

    @property
    def total(self) -> float:
        return float(sum(self.per_min.values()))

    @property
    def patches(self) -> float:
        return float(sum(v for k, v in self.per_min.items() if k.startswith("PATCH")))


def idle(cp: ControlPlane, pid: int, tenants: int, window: float) -> Idle:
    before, used = requests(cp), usage(pid)
    time.sleep(window)
    after, now = requests(cp), usage(pid)
    scale = 60.0 / window
    per_min = Counter({verb: round((after[verb] - before[verb]) * scale, 1)
                       for verb in after if after[verb] != before[verb]})
    return Idle(tenants, per_min, (now.cpu_s - used.cpu_s) * scale, now.rss_mib,
                now.peak_mib)


def apply(cp: ControlPlane, op: Operator, namespaces: list[str]) -> tuple[float, float, int]:
    """Apply the tenants at once: (apply s, all Ready s after it, duplicate create rows)."""
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
         for ns in namespaces]))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:  # several clients at once, as Argo CD
        list(pool.map(lambda ns: cp.kubectl("apply", "-f", "-",
                                            stdin=yaml.safe_dump_all(tenant(ns))), namespaces))
    applied = time.monotonic()
    wanted = set(namespaces)
    deadline = applied + 600
    while time.monotonic() < deadline:
        items = [i for i in json.loads(cp.kubectl("get", KINDS, "-A", "-o", "json").stdout)
                 ["items"] if i["metadata"]["namespace"] in wanted]
        if len(items) == 5 * len(namespaces) and all(ready_now(i) for i in items):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("not all Ready within 600 s:\n" + op.tail())
    ready = time.monotonic()
    rows = op.rows("SELECT count(*) FROM audit_event WHERE action = 'create' "
                   "GROUP BY tenant_id, object_kind, object_name HAVING count(*) > 1")
    return applied - start, ready - applied, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", default="100,200")
    parser.add_argument("--timer", type=float, default=60.0,
                        help="the operator's repair timer interval (its default: 60 s)")
    parser.add_argument("--window", type=float, default=120.0, help="idle seconds measured")
    parser.add_argument("--store", default=None, help="the operator's store URL")
    parser.add_argument("--pg", action="store_true",
                        help="a fresh PostgreSQL database on $CADML_TEST_PG_URL")
    args = parser.parse_args()
    counts = [int(n) for n in args.tenants.split(",")]
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("set CADML_CONTROLPLANE_BIN (tests/controlplane/build.sh | tail -1)")
    work = Path(tempfile.mkdtemp(prefix="cadml-operator-bench-"))
    cp = ControlPlane(binaries, work / "controlplane")
    database, store_url, admin_url = None, args.store, None
    if args.pg:
        database, store_url, admin_url = pg_store()
    cp.start()
    op: Operator | None = None
    try:
        install_crds(cp)
        op = Operator(cp, work / "operator", store_url=store_url, admin_url=admin_url,
                      timer_interval=args.timer)
        (work / "operator").mkdir()
        op.start()
        assert op.proc is not None
        pid = op.proc.pid
        print(f"real kube-apiserver, operator pid {pid}, timer {args.timer:.0f} s, "
              f"idle window {args.window:.0f} s, store "
              f"{'PostgreSQL' if args.pg else store_url or 'SQLite'}", flush=True)
        results = [idle(cp, pid, 0, args.window)]
        done = 0
        for count in counts:
            namespaces = [f"bench-{i:04d}" for i in range(done, count)]
            took, ready, dups = apply(cp, op, namespaces)
            done = count
            print(f"{count} tenants ({5 * count} objects): apply {took:.1f} s, all Ready "
                  f"{ready:.1f} s after it, duplicate create rows {dups}", flush=True)
            time.sleep(args.timer)  # the apply's churn passes; timers reach steady state
            results.append(idle(cp, pid, count, args.window))
        base, first = results[0], results[min(1, len(results) - 1)]
        print("\ntenants  req/min  req/min/Model  PATCH/min  CPU s/min  RSS MiB  peak MiB"
              "  RSS-base MiB/tenant  req/first  CPU/first   requests by verb and resource")
        for r in results:
            n = r.tenants or float("nan")
            print(f"{r.tenants:7d} {r.total:8.1f} {r.total / n:14.2f} {r.patches:10.1f}"
                  f" {r.cpu_per_min:10.2f} {r.rss_mib:8.1f} {r.peak_mib:9.1f}"
                  f" {(r.rss_mib - base.rss_mib) / n:20.3f}"
                  f" {r.total / max(first.total, 1e-9):10.2f}"
                  f" {r.cpu_per_min / max(first.cpu_per_min, 1e-9):10.2f}"
                  f"   {dict(sorted(r.per_min.items()))}")
        print("(base: the operator idle with no tenant, same run; first: the first tenant "
              "count)")
    finally:
        if op is not None:
            op.stop()
        cp.stop()
        if database is not None:
            from tests.stores import drop_pg_database

            drop_pg_database(database)


def pg_store() -> tuple[str, str, str]:
    """(database, runtime URL, owner URL) of a fresh, migrated PostgreSQL database."""
    from sqlalchemy.engine import make_url

    from controller.store.engine import make_engine
    from controller.store.migrate import upgrade
    from tests.stores import APP_ROLE, PG_URL, new_pg_database

    if not PG_URL:
        raise SystemExit("--pg needs CADML_TEST_PG_URL (.ci/start-postgres)")
    database = new_pg_database(None)
    owner = make_url(PG_URL).set(database=database)
    engine = make_engine(owner.render_as_string(False))
    with engine.begin() as c:
        c.exec_driver_sql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') "
            f"THEN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; END IF; END $$")
    upgrade(engine, app_role=APP_ROLE)
    engine.dispose()
    return (database, owner.set(username=APP_ROLE, password=None).render_as_string(False),
            owner.render_as_string(False))


if __name__ == "__main__":
    main()
