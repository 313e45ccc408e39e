"""`cadml runs` and `cadml audit log`: read what happened, never change it.

Both open the store read-only: it must exist at the head revision (nothing is created
or migrated; a missing store is an error, exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from controller.cli._common import TIME_HELP, add_parser, parse_time, write_json
from controller.errors import UsageError

if TYPE_CHECKING:
    from controller.store.repository import Store

# RunFilter outcomes (controller.store.repository.RUN_OUTCOMES; a test keeps them equal):
# listed here so that building the parser imports no SQLAlchemy
RUN_OUTCOMES = ("met", "below-threshold", "failed")

STORE_HELP = ("store URL (default: $CADML_STORE_URL, else the embedded SQLite file); "
              "read only, it must exist")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    p.add_argument("--since", metavar="TIME", help=f"at or after this time: {TIME_HELP}")
    p.add_argument("--until", metavar="TIME", help=f"before this time: {TIME_HELP}")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="at most N per tenant, the newest (default: 100)")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text",
                   help="output format")
    p.add_argument("--json", dest="output", action="store_const", const="json",
                   help="same as --output json")


def register(sub: Any) -> None:
    p = add_parser(sub, "runs", help="list recorded runs (read only)",
                   description="Runs the workers recorded: version, policyVersion, route "
                               "source, binding, thresholds, outcome, review. Reads only: the "
                               "store must exist (nothing is created or migrated).",
                   examples="cadml runs --tenant acme-cad --model part-similarity --since -2h\n"
                            "cadml runs --job job-42 --json\n"
                            "cadml runs --outcome failed --version 1.4.0")
    _common(p)
    p.add_argument("--model", help="model name")
    p.add_argument("--version", help="version (semver)")
    p.add_argument("--job", help="job id")
    p.add_argument("--outcome", choices=RUN_OUTCOMES,
                   help="met (succeeded and met its thresholds), below-threshold, failed")
    p.set_defaults(handler=runs)


def register_audit_log(asub: Any) -> None:
    p = add_parser(asub, "log", help="list audit events (read only)",
                   description="The hash-chained audit trail, filtered; `cadml audit verify` "
                               "checks it. Reads only: the store must exist.",
                   examples="cadml audit log --tenant acme-cad --action rollback --since -7d\n"
                            "cadml audit log --object ModelVersion/ps-1-1-0 --json")
    _common(p)
    p.add_argument("--object", metavar="[KIND/]NAME",
                   help="the object: its name, or kind/name (e.g. ModelVersion/ps-1-1-0)")
    p.add_argument("--action", help="e.g. create, update, bind, unbind, review, abort")
    p.add_argument("--actor", help="who, exactly as recorded (e.g. git:…, reviewer:ann)")
    p.set_defaults(handler=audit_log)


def _window(args: argparse.Namespace) -> dict[str, Any]:
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--since {args.since} is not before --until {args.until}")
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    return {"since": since, "until": until}


def _each_tenant(args: argparse.Namespace,
                 read: Callable[[Store, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from controller.store.open import open_store

    store = open_store(args.store, create=False)
    try:
        return [row for tenant in args.tenant or store.tenants() for row in read(store, tenant)]
    finally:
        store.dispose()


def runs(args: argparse.Namespace) -> int:
    from controller.store.repository import RunFilter

    f = RunFilter(model=args.model, version=args.version, job=args.job, outcome=args.outcome,
                  **_window(args))

    def read(store: Store, tenant: str) -> list[dict[str, Any]]:
        with store.read(tenant, "runs") as tx:
            return [{"tenant": tenant, **r} for r in tx.runs(f, limit=args.limit)]

    rows = _each_tenant(args, read)
    if args.output == "json":
        write_json(rows)
        return 0
    for r in rows:
        binding = f" binding={r['binding']}" if r["binding"] else ""
        error = f" error={r['errorCode']}" if r["errorCode"] else ""
        print(f"{r['createdAt']}  {r['tenant']}/{r['model']} {r['version']:<10} "
              f"run={r['runKey']} job={r['jobId'] or '-'} policy=v{r['policyVersion']} "
              f"route={r['routeSource']}{binding} {r['outcome']}{error} "
              f"{r['latencyMs']:.1f}ms review={r['reviewStatus']}")
    if not rows:
        print("no runs match")
    return 0


def audit_log(args: argparse.Namespace) -> int:
    from controller.store.repository import AuditFilter

    kind, _, name = (args.object or "").rpartition("/")
    f = AuditFilter(object_kind=kind or None, object_name=name or None, action=args.action,
                    actor=args.actor, **_window(args))

    def read(store: Store, tenant: str) -> list[dict[str, Any]]:
        with store.read(tenant, "audit-log") as tx:
            return [{k: v for k, v in asdict(e).items() if k not in ("prev_hash", "hash")}
                    | {"hash": e.hash} for e in tx.audit_events(f, limit=args.limit)]

    rows = _each_tenant(args, read)
    if args.output == "json":
        write_json(rows)
        return 0
    for e in rows:
        print(f"{e['at']}  {e['tenant']} #{e['seq']} {e['actor']}: {e['action']} "
              f"{e['object_kind']}/{e['object_name']} {e['details'] or ''}".rstrip())
    if not rows:
        print("no audit events match")
    return 0
