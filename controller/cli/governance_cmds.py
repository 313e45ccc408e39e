"""`cadml evaluate`, `compare`, `schedule-tick`, `rollback` and `promote`: the governance
loop."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

from controller.cli._common import TIME_HELP, add_parser, parse_span, parse_time, write_json
from controller.cli.store_cmds import OUTPUT_HELP, STORE_HELP
from controller.errors import UsageError

WINDOW_HELP = "length of the window ending at --now: a number and s, m, h, d or w"
NOW_HELP = f"end of the window: {TIME_HELP} (default: now)"
REASON_HELP = "why: written into the commit message and the audit trail (required)"
ACTOR_HELP = "who asks, for the commit message and audit (default: the local user)"


def _model_arg(text: str) -> tuple[str, str]:
    tenant, _, model = text.partition("/")
    if not tenant or not model:
        raise UsageError(f"{text!r}: use TENANT/MODEL, e.g. acme-cad/part-match")
    return tenant, model


def register(sub: Any) -> None:
    e = add_parser(sub, "evaluate", help="recompute evaluation metrics per version and window",
                   description="success_rate, review_override_rate and p95_latency_ms per "
                               "CANARY/STABLE version over a window, written to the store "
                               "(and so into RolloutPolicy status). With --dry-run, print "
                               "them and write nothing (the store must exist). A --model or "
                               "--tenant that is not in the store is an error (exit 2).",
                   examples="cadml evaluate --window 1h\n"
                            "cadml evaluate --tenant acme-cad --model assembly-match "
                            "--window 7d --now -1d --dry-run")
    e.add_argument("--store", help=STORE_HELP)
    e.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    e.add_argument("--model", action="append", help="model (repeatable; default: all)")
    e.add_argument("--job", help="only runs of this job (default: all jobs)")
    e.add_argument("--window", default="1h", help=WINDOW_HELP)
    e.add_argument("--now", metavar="TIME", help=NOW_HELP)
    e.add_argument("--dry-run", action="store_true",
                   help="compute and print; write nothing, create no store")
    e.add_argument("--output", "-o", choices=("text", "json"), default="text", help=OUTPUT_HELP)
    e.set_defaults(handler=_evaluate)

    c = add_parser(sub, "compare", help="two or more versions side by side",
                   description="Compare versions of one model on the minimum metric set "
                               "(success rate, review override rate, p95 latency, runs, "
                               "reviewed runs) over one window. Reads only.",
                   examples="cadml compare acme-cad/assembly-match --versions 1.1.0,1.2.0\n"
                            "cadml compare acme-cad/assembly-match --shadow -o json\n"
                            "cadml compare acme-cad/assembly-match --versions 1.1.0,1.2.0 "
                            "--window 7d -o markdown")
    c.add_argument("model", metavar="TENANT/MODEL", help="the model's namespace and name")
    c.add_argument("--versions",
                   help="comma-separated spec.versions, at least two, e.g. 1.1.0,1.2.0")
    c.add_argument("--shadow", action="store_true",
                   help="instead: the shadow comparison (spec.shadow) per shadow version: "
                        "overlap@10 and RBO (mean, median, p10), the share under 0.5, the "
                        "queries that changed most, and the top-1 score statistics of a "
                        "feature-version change (with warnings)")
    c.add_argument("--changed", type=int, default=10, metavar="N",
                   help="with --shadow: how many of the queries that changed most to list")
    c.add_argument("--window", default="1h", help=WINDOW_HELP)
    c.add_argument("--now", metavar="TIME", help=NOW_HELP)
    c.add_argument("--store", help=STORE_HELP)
    c.add_argument("--output", "-o", choices=("text", "json", "markdown"), default="text",
                   help=OUTPUT_HELP)
    c.set_defaults(handler=_compare)

    t = add_parser(sub, "schedule-tick", help="run the due evaluation and analysis once per window",
                   description="Driven by an external cron (the chart's CronJob): the "
                               "first trigger for a window key evaluates and analyses; "
                               "repeats in the same window do nothing and say so.",
                   examples="cadml schedule-tick --window-key $(date -u +%Y-%m-%dT%H)")
    t.add_argument("--window-key", required=True, metavar="KEY",
                   help="names the window, so a repeat does nothing: e.g. 2026-11-22T12 for "
                        "an hourly schedule")
    t.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    t.add_argument("--window", default="1h", help=WINDOW_HELP)
    t.add_argument("--now", metavar="TIME", help=NOW_HELP)
    t.add_argument("--store", help=STORE_HELP)
    t.add_argument("--output", "-o", choices=("text", "json"), default="text", help=OUTPUT_HELP)
    t.set_defaults(handler=_tick)

    r = add_parser(sub, "rollback", help="point a model's policy back at a STABLE version",
                   description="With --repo: edit the policy in the Git working tree and "
                               "commit (reason and actor in the message; the commit needs a "
                               "Git identity: user.name/user.email, or --author). With "
                               "--cluster: patch the live policy with an override "
                               "(emergency; needs --to and a kubeconfig) and mark that Git "
                               "must follow. History is never rewritten.",
                   examples="cadml rollback acme-cad/assembly-match --reason 'p95 doubled' "
                            "--repo .\n"
                            "cadml rollback acme-cad/assembly-match --to 1.1.0 --reason "
                            "'outage' --cluster")
    r.add_argument("model", metavar="TENANT/MODEL", help="the model's namespace and name")
    r.add_argument("--to", metavar="VERSION",
                   help="version to route to (default with --repo: the current STABLE; "
                        "required with --cluster)")
    r.add_argument("--reason", required=True, help=REASON_HELP)
    r.add_argument("--actor", default=None, help=ACTOR_HELP)
    r.add_argument("--author", metavar="'NAME <EMAIL>'",
                   help="Git author and committer of the commit (default: Git's user.name "
                        "and user.email; refused if neither is set)")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", metavar="PATH", help="Git working tree to commit to")
    where.add_argument("--cluster", action="store_true",
                       help="patch the live RolloutPolicy (needs --to and a kubeconfig)")
    r.add_argument("--output", "-o", choices=("text", "json"), default="text", help=OUTPUT_HELP)
    r.set_defaults(handler=_rollback)

    p = add_parser(sub, "promote", help="make a CANARY version the STABLE one, in Git",
                   description="Edit the Git working tree and commit, in one commit: the "
                               "version becomes STABLE, the current STABLE becomes "
                               "DEPRECATED, and the policy gives the new stable the old "
                               "one's and this canary's traffic (other canaries keep "
                               "theirs). The result is validated first (one STABLE per "
                               "model key, release gates, …); nothing is committed if it "
                               "breaks a rule, or if Git has no identity and --author is "
                               "not given.",
                   examples="cadml promote acme-cad/assembly-match --version 1.2.0 "
                            "--reason 'canary passed 7d'")
    p.add_argument("model", metavar="TENANT/MODEL", help="the model's namespace and name")
    p.add_argument("--version", required=True, metavar="VERSION",
                   help="the CANARY's spec.version")
    p.add_argument("--reason", required=True, help=REASON_HELP)
    p.add_argument("--actor", default=None, help=ACTOR_HELP)
    p.add_argument("--author", metavar="'NAME <EMAIL>'",
                   help="Git author and committer of the commit (default: Git's user.name "
                        "and user.email; refused if neither is set)")
    p.add_argument("--repo", metavar="PATH", default=".", help="Git working tree")
    p.add_argument("--store", help=STORE_HELP + "; read when the policy has canary steps (they "
                   "must have passed: ReadyToPromote) or a policy-wide analysis (it must "
                   "not have aborted the canary; without any store, a warning)")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text", help=OUTPUT_HELP)
    p.set_defaults(handler=_promote)


def _known(what: str, asked: list[str] | None, known: list[str], where: str) -> None:
    """A name the user typed that is not in the store is an error, never 'nothing found'."""
    missing = [a for a in asked or [] if a not in known]
    if missing:
        raise UsageError(f"{what} {', '.join(missing)}: not in {where} (known: "
                         f"{', '.join(known) or 'none'})")


def _evaluate(args: argparse.Namespace) -> int:
    from controller.governance import evaluate
    from controller.store.open import open_store

    now, window = parse_time(args.now), parse_span(args.window, "--window")
    store = open_store(args.store, create=not args.dry_run)
    tenants = store.tenants()
    _known("--tenant", args.tenant, tenants, "the store")
    rows = []
    seen: set[str] = set()
    for tenant in args.tenant or tenants:
        with (store.read(tenant, "cadml-evaluate") if args.dry_run
              else store.transaction(tenant, "cadml-evaluate")) as tx:
            names = tx.model_names()
            seen.update(names)
            models = [m for m in args.model if m in names] if args.model else None
            if models == []:
                continue
            for ev in evaluate(tx, now, window, models, args.job, write=not args.dry_run):
                rows.append({"tenant": tenant, "model": ev.model, "version": ev.version,
                             "windowStart": ev.start.isoformat(),
                             "windowEnd": ev.end.isoformat(), **ev.metrics.as_dict()})
    _known("--model", args.model, sorted(seen), "any tenant evaluated")
    if args.output == "json":
        write_json(rows)
    else:
        for row in rows:
            print(_line(row))
        if not rows:
            print("nothing to evaluate: no CANARY or STABLE version")
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
    if args.shadow:
        from controller.cli.shadow_cmd import compare_shadow

        return compare_shadow(args, tenant, model, lambda tx: _known(
            "model", [f"{tenant}/{model}"], [f"{tenant}/{m}" for m in tx.model_names()],
            f"the store's tenant {tenant}"))
    versions = [v.strip() for v in (args.versions or "").split(",") if v.strip()]
    if len(versions) < 2:
        raise UsageError("--versions needs at least two versions (or --shadow)")
    store = open_store(args.store, create=False)
    now, window = parse_time(args.now), parse_span(args.window, "--window")
    rows = []
    with store.read(tenant, "cadml-compare") as tx:
        _known("model", [f"{tenant}/{model}"], [f"{tenant}/{m}" for m in tx.model_names()],
               f"the store's tenant {tenant}")
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
    now, window = parse_time(args.now), parse_span(args.window, "--window")
    results = [schedule_tick(store, tenant, args.window_key, now, window)
               for tenant in args.tenant or store.tenants()]
    if args.output == "json":
        write_json([{"tenant": r.tenant, "windowKey": r.window_key, "ran": r.ran,
                     "evaluated": len(r.evaluated),
                     "analysis": [{"policy": a.policy, "version": a.version,
                                   "verdict": a.overall, "failures": a.failures,
                                   "aborted": a.aborted_now, "summary": a.summary}
                                  for a in r.analysed],
                     "steps": [{"policy": s.policy, "stepIndex": s.after.index,
                                "phase": s.after.phase, "summary": s.summary}
                               for s in r.stepped if s.moved]} for r in results])
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
        for s in r.stepped:
            if s.moved:
                print(f"  {s.policy} steps: {s.summary}")
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

    def store_allows(spec: dict[str, Any]) -> None:
        """The store's word on the promotion, read whenever there is a store (its policy
        may still carry an abort Git no longer shows). Only with no store at all — none
        given, none in CADML_STORE_URL, no embedded default file — does Git alone decide:
        refused for steps (they must have passed), a warning for a policy-wide analysis."""
        from controller.stepping import promotion_refusal
        from controller.store.engine import ENV_URL, resolve_url, sqlite_file
        from controller.store.open import open_store

        default = sqlite_file(resolve_url(None))
        if not (args.store or os.environ.get(ENV_URL)) and default is not None \
                and not default.exists() and "strategy" not in spec:
            if "analysis" in spec:
                print(f"cadml promote: no store (none given, no {default}) to read the "
                      f"policy-wide analysis of {tenant}/{model} from; give --store to "
                      "check that it did not abort the canary", file=sys.stderr)
            return
        # a store given but missing, empty or outdated is an error, never "no store"
        with open_store(args.store, create=False).read(tenant, "cadml-promote") as tx:
            why = promotion_refusal(tx, model, spec, args.version)
        if why is not None:
            raise UsageError(f"cannot promote {tenant}/{model} {args.version}: {why}")
    result = promote_in_repo(args.repo, tenant, model, args.version, args.reason,
                             args.actor or getpass.getuser(), author=args.author,
                             gate=store_allows)
    _print_commit(args, result, f"promote {tenant}/{model} {result.target} to STABLE")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    tenant, model = _model_arg(args.model)
    actor = args.actor or getpass.getuser()
    if args.repo:
        from controller.rollback import rollback_in_repo

        result = rollback_in_repo(args.repo, tenant, model, args.to, args.reason, actor,
                                  author=args.author)
        _print_commit(args, result, f"rollback {tenant}/{model} to {result.target}")
        return 0
    from controller.rollback import cluster_patch

    if not args.to:
        raise UsageError("--cluster needs --to VERSION (the live cluster is not read here)")
    patch = cluster_patch(args.to, args.reason, actor, datetime.now(UTC))
    name = patch_live_policy(tenant, model, patch)
    print(f"patched RolloutPolicy {tenant}/{name}: override → {args.to}. Git must follow: "
          f"run `cadml rollback {args.model} --to {args.to} --repo PATH` and merge it.")
    return 0


def patch_live_policy(tenant: str, model: str, patch: dict[str, Any],
                      check: Callable[[dict[str, Any]], None] | None = None) -> str:
    """Merge-patch the live RolloutPolicy of `tenant/model` (kubeconfig); its name. `check`
    sees the live object first and may refuse (raise) before anything is written."""
    from kubernetes import client, config

    config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.CustomObjectsApi()
    listed: Any = api.list_namespaced_custom_object("cadml.io", "v1alpha1", tenant,
                                                    "rolloutpolicies")
    policies: list[dict[str, Any]] = listed["items"]
    match = [p for p in policies if p["spec"].get("modelRef") == model]
    if not match:
        raise UsageError(f"no RolloutPolicy for {tenant}/{model} in the cluster")
    name: str = match[0]["metadata"]["name"]
    if check is not None:
        check(match[0])
    api.patch_namespaced_custom_object("cadml.io", "v1alpha1", tenant, "rolloutpolicies",
                                       name, patch)
    return name
