"""`cadml db`, `cadml audit verify` and `cadml history`: the runtime store from the shell."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import lookup_cmds
from controller.cli._common import parse_time, write_json
from controller.store.engine import make_engine, resolve_url
from controller.store.migrate import (
    current_revision,
    grant_runtime_role,
    head_revision,
    upgrade,
)
from controller.store.open import open_store

STORE_HELP = ("store URL (default: $CADML_STORE_URL, else the embedded SQLite file "
              "~/.local/share/cadml/cadml.db; CADML_HOME moves it)")


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="create or upgrade the runtime store schema",
                        description="Schema migrations of the runtime store (Alembic).")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dbsub.add_parser("upgrade", help="upgrade the store to the newest schema")
    up.add_argument("--store", help=STORE_HELP)
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.add_argument("--app-role", default="cadml_app",
                    help="PostgreSQL role the runtime connects as; granted access, subject "
                         "to row-level security (default: cadml_app)")
    up.set_defaults(handler=_upgrade)
    cur = dbsub.add_parser("current", help="print the store's schema revision")
    cur.add_argument("--store", help=STORE_HELP)
    cur.set_defaults(handler=_current)

    audit = sub.add_parser("audit", help="read or check the hash-chained audit trail")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = asub.add_parser("verify", help="walk each tenant's chain; name the first row "
                                            "altered or removed (exit 1)")
    verify.add_argument("--store", help=STORE_HELP)
    verify.add_argument("--tenant", action="append",
                        help="tenant to check (repeatable; default: every tenant visible)")
    verify.add_argument("--output", "-o", choices=("text", "json"), default="text")
    verify.set_defaults(handler=_verify)
    lookup_cmds.register_audit_log(asub)

    hist = sub.add_parser("history", help="what was STABLE and how traffic was split at a time")
    hist.add_argument("--at", required=True, metavar="TIME", help="ISO 8601 time")
    hist.add_argument("--store", help=STORE_HELP)
    hist.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    hist.add_argument("--output", "-o", choices=("text", "json"), default="text")
    hist.set_defaults(handler=_history)


def _upgrade(args: argparse.Namespace) -> int:
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


def _current(args: argparse.Namespace) -> int:
    rev = current_revision(make_engine(resolve_url(args.store)))
    head = head_revision()
    print(f"{rev or 'empty'} (head: {head})")
    return 0 if rev == head else 1


def _verify(args: argparse.Namespace) -> int:
    store = open_store(args.store)
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
    at = parse_time(args.at)
    store = open_store(args.store)
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
                gone = tx.deleted_at("Model", model, at)
                if gone is not None:  # the model was out of service at that moment
                    row.update(stable=None, routing={}, source="deleted", since=gone)
                elif (gone := tx.deleted_at("RolloutPolicy", snap.policy_name, at)):
                    # no policy: the default route, all traffic on the STABLE version
                    row.update(routing={snap.stable_version: 100} if snap.stable_version
                               else {}, source="default", since=gone)
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
