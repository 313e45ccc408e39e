"""`cadml evaluate`, `compare`, `schedule-tick`, `rollback` and `promote`: the governance
loop."""

from __future__ import annotations

import argparse
import getpass
import re
from datetime import timedelta
from typing import Any

from controller.cli._common import parse_time, write_json
from controller.cli.store_cmds import STORE_HELP
from controller.errors import UsageError

_SPAN = re.compile(r"^(\d+)([smhd])$")


def parse_window(text: str) -> timedelta:
    match = _SPAN.match(text.strip())
    if not match:
        raise UsageError(f"window {text!r}: use a number and s, m, h or d (e.g. 15m, 1h)")
    n, unit = int(match.group(1)), match.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def _model_arg(text: str) -> tuple[str, str]:
    tenant, _, model = text.partition("/")
    if not tenant or not model:
        raise UsageError(f"{text!r}: use TENANT/MODEL")
    return tenant, model


def register(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="recompute evaluation metrics per version and window",
                       description="success_rate, review_override_rate and p95_latency_ms per "
                                   "CANARY/STABLE version over a window, written to the "
                                   "store (and so into RolloutPolicy status).")
    e.add_argument("--store", help=STORE_HELP)
    e.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    e.add_argument("--model", action="append", help="model (repeatable; default: all)")
    e.add_argument("--job", help="only runs of this job")
    e.add_argument("--window", default="1h", help="window ending now (default 1h)")
    e.add_argument("--now", help="end of the window (ISO 8601; default now)")
    e.add_argument("--output", "-o", choices=("text", "json"), default="text")
    e.set_defaults(handler=_evaluate)

    c = sub.add_parser("compare", help="two or more versions side by side",
                       description="Compare versions of one model on the minimum metric set.")
    c.add_argument("model", metavar="TENANT/MODEL")
    c.add_argument("--versions", required=True, help="comma-separated, e.g. 1.1.0,1.2.0")
    c.add_argument("--window", default="1h")
    c.add_argument("--now")
    c.add_argument("--store", help=STORE_HELP)
    c.add_argument("--output", "-o", choices=("text", "json", "markdown"), default="text")
    c.set_defaults(handler=_compare)

    t = sub.add_parser("schedule-tick", help="run the due evaluation and analysis once per window",
                       description="Driven by an external cron (the chart's CronJob): the "
                                   "first trigger for a window key evaluates and analyses; "
                                   "repeats in the same window do nothing and say so.")
    t.add_argument("--window-key", required=True, metavar="KEY",
                   help="e.g. 2026-11-22T12 for an hourly schedule")
    t.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    t.add_argument("--window", default="1h")
    t.add_argument("--now")
    t.add_argument("--store", help=STORE_HELP)
    t.add_argument("--output", "-o", choices=("text", "json"), default="text")
    t.set_defaults(handler=_tick)

    r = sub.add_parser("rollback", help="point a model's policy back at a STABLE version",
                       description="With --repo: edit the policy in the Git working tree and "
                                   "commit (reason and actor in the message). With --cluster: "
                                   "patch the live policy with an override (emergency) and "
                                   "mark that Git must follow. History is never rewritten.")
    r.add_argument("model", metavar="TENANT/MODEL")
    r.add_argument("--to", metavar="VERSION",
                   help="version to route to (default: the current STABLE)")
    r.add_argument("--reason", required=True)
    r.add_argument("--actor", default=None, help="who (default: the local user)")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", metavar="PATH", help="Git working tree to commit to")
    where.add_argument("--cluster", action="store_true", help="patch the live RolloutPolicy")
    r.add_argument("--output", "-o", choices=("text", "json"), default="text")
    r.set_defaults(handler=_rollback)

    p = sub.add_parser("promote", help="make a CANARY version the STABLE one, in Git",
                       description="Edit the Git working tree and commit, in one commit: the "
                                   "version becomes STABLE, the current STABLE becomes "
                                   "DEPRECATED, and the policy gives the new stable the old "
                                   "one's and this canary's traffic (other canaries keep "
                                   "theirs). The result is validated first (one STABLE per "
                                   "model key, release gates, …); nothing is committed if it "
                                   "breaks a rule.")
    p.add_argument("model", metavar="TENANT/MODEL")
    p.add_argument("--version", required=True, metavar="VERSION",
                   help="the CANARY's spec.version")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", default=None, help="who (default: the local user)")
    p.add_argument("--repo", metavar="PATH", default=".", help="Git working tree (default .)")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(handler=_promote)


def _evaluate(args: argparse.Namespace) -> int:
    from controller.governance import evaluate
    from controller.store.open import open_store

    store = open_store(args.store)
    now, window = parse_time(args.now), parse_window(args.window)
    rows = []
    for tenant in args.tenant or store.tenants():
        with store.transaction(tenant, "cadml-evaluate") as tx:
            for ev in evaluate(tx, now, window, args.model, args.job):
                rows.append({"tenant": tenant, "model": ev.model, "version": ev.version,
                             "windowStart": ev.start.isoformat(),
                             "windowEnd": ev.end.isoformat(), **ev.metrics.as_dict()})
    if args.output == "json":
        write_json(rows)
    else:
        for row in rows:
            print(_line(row))
        if not rows:
            print("nothing to evaluate")
    return 0


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.1f}%" if pct else f"{v:.1f}"


def _line(row: dict[str, Any]) -> str:
    return (f"{row['tenant']}/{row['model']} {row['version']}: success "
            f"{_fmt(row['successRate'], True)}, review override "
            f"{_fmt(row['reviewOverrideRate'], True)}, p95 "
            f"{_fmt(row['p95LatencyMs'])} ms (n={row['sampleSize']}, reviewed "
            f"{row['reviewedSampleSize']})")


def _compare(args: argparse.Namespace) -> int:
    from controller.evaluation import compute
    from controller.store.open import open_store

    tenant, model = _model_arg(args.model)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    if len(versions) < 2:
        raise UsageError("--versions needs at least two versions")
    store = open_store(args.store)
    now, window = parse_time(args.now), parse_window(args.window)
    rows = []
    with store.read(tenant, "cadml-compare") as tx:
        known = {v.version for v in tx.versions(model)}
        for v in versions:
            if v not in known:
                raise UsageError(f"model {tenant}/{model} has no version {v}")
            m = compute(tx.run_facts(model, now - window, now, version=v))
            rows.append({"tenant": tenant, "model": model, "version": v, **m.as_dict()})
    if args.output == "json":
        write_json({"window": args.window, "end": now.isoformat(), "versions": rows})
    elif args.output == "markdown":
        print(f"### {tenant}/{model}, last {args.window}\n")
        print("| version | success rate | review override rate | p95 latency (ms) | runs "
              "| reviewed |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['version']} | {_fmt(r['successRate'], True)} | "
                  f"{_fmt(r['reviewOverrideRate'], True)} | {_fmt(r['p95LatencyMs'])} | "
                  f"{r['sampleSize']} | {r['reviewedSampleSize']} |")
    else:
        print(f"{tenant}/{model}, window {args.window} ending {now.isoformat()}")
        print(f"{'VERSION':<14} {'SUCCESS':>9} {'OVERRIDE':>9} {'P95 MS':>9} {'RUNS':>7} "
              f"{'REVIEWED':>9}")
        for r in rows:
            print(f"{r['version']:<14} {_fmt(r['successRate'], True):>9} "
                  f"{_fmt(r['reviewOverrideRate'], True):>9} {_fmt(r['p95LatencyMs']):>9} "
                  f"{r['sampleSize']:>7} {r['reviewedSampleSize']:>9}")
    return 0


def _tick(args: argparse.Namespace) -> int:
    from controller.governance import schedule_tick
    from controller.store.open import open_store

    store = open_store(args.store)
    now, window = parse_time(args.now), parse_window(args.window)
    results = [schedule_tick(store, tenant, args.window_key, now, window)
               for tenant in args.tenant or store.tenants()]
    if args.output == "json":
        write_json([{"tenant": r.tenant, "windowKey": r.window_key, "ran": r.ran,
                     "evaluated": len(r.evaluated),
                     "analysis": [{"policy": a.policy, "version": a.version,
                                   "verdict": a.overall, "failures": a.failures,
                                   "aborted": a.aborted_now, "summary": a.summary}
                                  for a in r.analysed]} for r in results])
        return 0
    for r in results:
        if not r.ran:
            print(f"{r.tenant}: window {r.window_key} already ran; nothing to do")
            continue
        print(f"{r.tenant}: window {r.window_key}: evaluated {len(r.evaluated)} versions")
        for a in r.analysed:
            flag = "  ABORTED" if a.aborted_now else ""
            print(f"  {a.policy} canary {a.version}: {a.overall} (failures {a.failures}){flag}"
                  f" — {a.summary}")
    return 0


def _print_commit(args: argparse.Namespace, result: Any, what: str) -> None:
    if args.output == "json":
        write_json({"commit": result.commit, "target": result.target,
                    "files": result.files, "changes": result.changes})
        return
    print(f"committed {result.commit[:12]}: {what}")
    for change in result.changes:
        print(f"  {change}")
    print("push it (or open a pull request); Argo CD / `cadml reconcile` applies it")


def _promote(args: argparse.Namespace) -> int:
    from controller.rollback import promote_in_repo

    tenant, model = _model_arg(args.model)
    result = promote_in_repo(args.repo, tenant, model, args.version, args.reason,
                             args.actor or getpass.getuser())
    _print_commit(args, result, f"promote {tenant}/{model} {result.target} to STABLE")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    tenant, model = _model_arg(args.model)
    actor = args.actor or getpass.getuser()
    if args.repo:
        from controller.rollback import rollback_in_repo

        result = rollback_in_repo(args.repo, tenant, model, args.to, args.reason, actor)
        _print_commit(args, result, f"rollback {tenant}/{model} to {result.target}")
        return 0
    from controller.rollback import cluster_patch

    if not args.to:
        raise UsageError("--cluster needs --to VERSION (the live cluster is not read here)")
    patch = cluster_patch(args.to, args.reason, actor, datetime.now(UTC))
    from kubernetes import client, config

    config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.CustomObjectsApi()
    listed: Any = api.list_namespaced_custom_object("cadml.io", "v1alpha1", tenant,
                                                    "rolloutpolicies")
    policies: list[dict[str, Any]] = listed["items"]
    match = [p for p in policies if p["spec"].get("modelRef") == model]
    if not match:
        raise UsageError(f"no RolloutPolicy for {tenant}/{model} in the cluster")
    name = match[0]["metadata"]["name"]
    api.patch_namespaced_custom_object("cadml.io", "v1alpha1", tenant, "rolloutpolicies",
                                       name, patch)
    print(f"patched RolloutPolicy {tenant}/{name}: override → {args.to}. Git must follow: "
          f"run `cadml rollback {args.model} --to {args.to} --repo PATH` and merge it.")
    return 0
