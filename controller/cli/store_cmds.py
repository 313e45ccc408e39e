"""`cadml db`, `cadml audit verify` and `cadml history`: the runtime store from the shell."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from controller.cli import lookup_cmds
from controller.cli._common import TIME_HELP, add_parser, parse_time, write_json
from controller.errors import UsageError

STORE_HELP = ("store URL: sqlite:///PATH or postgresql://USER@HOST/DB (default: "
              "$CADML_STORE_URL, else the embedded SQLite file ~/.local/share/cadml/cadml.db; "
              "CADML_HOME moves it)")
OUTPUT_HELP = "output format"


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="create or upgrade the runtime store schema",
                        description="Schema migrations of the runtime store (Alembic).")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = add_parser(dbsub, "upgrade", help="create the store, or upgrade it to the newest schema",
                    description="Create the store's tables, or migrate them to --revision "
                                "(expand-only migrations: running workers keep working). "
                                "On PostgreSQL, also grant the runtime role its access "
                                "under row-level security.",
                    examples="cadml db upgrade\n"
                             "cadml db upgrade --store postgresql://cadml@db/cadml")
    up.add_argument("--store", help=STORE_HELP)
    up.add_argument("--revision", default="head", help="target revision")
    up.add_argument("--app-role", default="cadml_app",
                    help="PostgreSQL role the runtime connects as; granted access, subject "
                         "to row-level security")
    up.set_defaults(handler=_upgrade)
    gt = add_parser(
        dbsub, "grant-tenant", help="bind a PostgreSQL role to one tenant (a worker's credential)",
        description="Grant ROLE what a worker needs and bind it to TENANT: row-level "
                    "security then keeps it to that tenant's rows whatever app.tenant_id it "
                    "sets (a RESTRICTIVE policy keyed on current_user). Run as the owner, "
                    "after `cadml db upgrade`. The role must exist (CREATE ROLE ROLE LOGIN "
                    "PASSWORD '…' NOSUPERUSER NOBYPASSRLS), own nothing and belong to no "
                    "other role. Give the tenant's workers a store URL with this role "
                    "(the operator's CADML_WORKER_STORE_SECRET); the shared runtime role "
                    "keeps serving the operator.",
        examples="cadml db grant-tenant acme-cad --role cadml_acme --store postgresql://owner@db/cadml")
    gt.add_argument("tenant", metavar="TENANT", help="the tenant (its namespace)")
    gt.add_argument("--role", required=True, help="the tenant's own PostgreSQL role")
    gt.add_argument("--store", help=STORE_HELP)
    gt.add_argument("--shared-role", default="cadml_app",
                    help="the operator's shared runtime role, which is never bound")
    gt.set_defaults(handler=_grant_tenant)
    cur = add_parser(dbsub, "current", help="print the store's schema revision",
                     description="Print the store's schema revision and the newest one this "
                                 "cadml knows; exit 1 if they differ (run `cadml db upgrade`). "
                                 "Creates nothing.",
                     examples="cadml db current --store sqlite:///./cadml.db")
    cur.add_argument("--store", help=STORE_HELP)
    cur.set_defaults(handler=_current)

    audit = sub.add_parser("audit", help="read or check the hash-chained audit trail",
                           description="The audit trail of the runtime store: `log` reads it, "
                                       "`verify` checks its hash chain.")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = add_parser(asub, "verify", help="walk each tenant's chain; name the first row "
                                             "altered or removed (exit 1)",
                        description="Recompute each tenant's hash chain of audit rows and "
                                    "name the first row altered, inserted or removed "
                                    "(exit 1). Reads only: a missing store is an error.",
                        examples="cadml audit verify\ncadml audit verify --tenant acme-cad "
                                 "-o json")
    verify.add_argument("--store", help=STORE_HELP)
    verify.add_argument("--tenant", action="append",
                        help="tenant to check (repeatable; default: every tenant visible)")
    verify.add_argument("--output", "-o", choices=("text", "json"), default="text",
                        help=OUTPUT_HELP)
    verify.set_defaults(handler=_verify)
    lookup_cmds.register_audit_log(asub)

    hist = add_parser(sub, "history", help="what was STABLE and how traffic was split at a time",
                      description="For each model: the STABLE version, the traffic split, the "
                                  "policyVersion and where the routing came from, as they "
                                  "were at TIME (deleted models say when). Reads only.",
                      examples="cadml history --at now\ncadml history --at -2h --tenant "
                               "acme-cad\ncadml history --at 2026-11-22T12:00Z -o json")
    hist.add_argument("--at", required=True, metavar="TIME", help=TIME_HELP)
    hist.add_argument("--store", help=STORE_HELP)
    hist.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    hist.add_argument("--output", "-o", choices=("text", "json"), default="text",
                      help=OUTPUT_HELP)
    hist.set_defaults(handler=_history)


def _upgrade(args: argparse.Namespace) -> int:
    from controller.store.engine import make_engine, resolve_url
    from controller.store.migrate import (
        current_revision,
        grant_runtime_role,
        head_revision,
        upgrade,
    )

    engine = make_engine(resolve_url(args.store))
    before = current_revision(engine)
    upgrade(engine, args.revision, app_role=args.app_role)
    after = current_revision(engine)
    print(f"store schema: {before or 'empty'} → {after}" if before != after
          else f"store schema already at {after}")
    if engine.dialect.name == "postgresql" and after == head_revision():
        grant_runtime_role(engine, args.app_role)
        print(f"runtime role {args.app_role}: granted (row-level security applies to it)")
    return 0


def _grant_tenant(args: argparse.Namespace) -> int:
    from controller.store.engine import make_engine, resolve_url
    from controller.store.migrate import current_revision, grant_tenant_role, head_revision

    engine = make_engine(resolve_url(args.store))
    if current_revision(engine) != head_revision():
        raise UsageError("the store is not at the newest schema: run `cadml db upgrade` first")
    new = grant_tenant_role(engine, args.tenant, args.role, args.shared_role)
    print(f"role {args.role}: {'bound to' if new else 'already bound to'} tenant "
          f"{args.tenant}; it reads and writes no other tenant")
    return 0


def _current(args: argparse.Namespace) -> int:
    from controller.errors import StoreMissing
    from controller.store.engine import make_engine, resolve_url, sqlite_file
    from controller.store.migrate import current_revision, head_revision
    from controller.store.open import HOW_TO_CREATE

    url = resolve_url(args.store)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise StoreMissing(f"no store at {path}: {HOW_TO_CREATE}")
    rev = current_revision(make_engine(url, create_dirs=False))
    head = head_revision()
    print(f"{rev or 'empty'} (head: {head})")
    return 0 if rev == head else 1


def _verify(args: argparse.Namespace) -> int:
    from controller.store.open import open_store

    store = open_store(args.store, create=False)
    tenants = args.tenant or store.tenants()
    results = []
    for tenant in tenants:
        problem = store.verify_audit(tenant)
        results.append((tenant, problem))
    if args.output == "json":
        write_json([{"tenant": t, "ok": p is None, "seq": p.seq if p else None,
                     "problem": p.problem if p else None} for t, p in results])
    else:
        for tenant, problem in results:
            print(problem.render() if problem else f"tenant {tenant}: audit chain intact")
        if not results:
            print("no audit history")
    return 1 if any(p for _, p in results) else 0


def _history(args: argparse.Namespace) -> int:
    from controller.store.open import open_store

    at = parse_time(args.at, "--at")
    store = open_store(args.store, create=False)
    tenants = args.tenant or store.tenants()
    out: list[dict[str, Any]] = []
    for tenant in tenants:
        with store.read(tenant, "history") as tx:
            for model in tx.model_names():
                snap = tx.snapshot(model, at=at)
                if snap is None:
                    continue
                row = {"tenant": tenant, "model": model, "stable": snap.stable_version,
                       "routing": {r.version: r.weight for r in snap.routes},
                       "policyVersion": snap.policy_version, "source": snap.source,
                       "since": snap.created_at.isoformat()}
                model_was = tx.existence_at("Model", model, at)
                policy_was = tx.existence_at("RolloutPolicy", snap.policy_name, at)
                if model_was and model_was[0] == "delete":  # out of service at that moment
                    row.update(stable=None, routing={}, source="deleted", since=model_was[1])
                elif policy_was and policy_was[0] == "delete":
                    # no policy: the default route, all traffic on the STABLE version
                    row.update(routing={snap.stable_version: 100} if snap.stable_version
                               else {}, source="default", since=policy_was[1])
                else:  # served since its snapshot, or since it came back after a deletion
                    row["since"] = max([snap.created_at.isoformat()] + [
                        was[1] for was in (model_was, policy_was)
                        if was and was[0] == "restore"], key=datetime.fromisoformat)
                out.append(row)
    if args.output == "json":
        write_json(out)
    else:
        print(f"as of {at.isoformat()}:")
        for row in out:
            if row["source"] == "deleted":
                print(f"  {row['tenant']}/{row['model']}: deleted at {row['since']} "
                      "(history kept)")
                continue
            routing = ", ".join(f"{v} {w}%" for v, w in row["routing"].items())
            print(f"  {row['tenant']}/{row['model']}: STABLE {row['stable'] or '-'}; {routing} "
                  f"(policy v{row['policyVersion']}, {row['source']}, since {row['since']})")
        if not out:
            print("  no policy was in force")
    return 0
