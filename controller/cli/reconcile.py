"""`cadml reconcile` (Git mode, the embedded default) and `cadml status`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from controller.cli._common import add_parser, write_json
from controller.cli.store_cmds import OUTPUT_HELP, STORE_HELP
from controller.yamlio import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    from datetime import datetime

    from controller.reconcile.gitmode import ReconcileResult
    from controller.store.repository import StoreTx

HELP = """\
Reconcile the cadml resources of a Git repository into the runtime store, with no
cluster: read the tree at --ref (no checkout), validate everything, and apply
nothing if any rule fails; otherwise write models, versions, policy snapshots
(policyVersion + 1 on every effective routing change), release records, each
object's status and the audit trail, tenant by tenant in one transaction each.
Running it again on the same commit changes nothing. Rows changed behind the
controller's back are restored and audited as repairs.

PREFIXes limit the pass to the tenants that have objects under them; the other
tenants are not touched. A PREFIX that selects no YAML file is an error (exit 2,
nothing changed), never "this part of the repository is now empty".

Pruning is explicit: a pass that would delete a whole tenant (gone from Git) or
more than half of a tenant's live models, versions and policies, or anything at
all in a pass scoped by PREFIXes (it did not read the rest of the tenant), is
refused for that tenant unless --prune is given, and prints what it would delete.

Never backwards: a tenant is reconciled only from the commit already applied to it or
one that descends from it: not an older one, not a diverged branch, not a clone that
lacks the applied commit (a stale clone: fetch first). Going back is a new commit
(git revert); after a history rewrite, --allow-older accepts the ref once.

Failure is contained: a tenant whose pass fails (a conflict in the store, a
refused prune) is rolled back alone and its objects become Stalled with the
reason (see `cadml status`); the other tenants still apply, and the exit code
says that one failed.

The store is the embedded SQLite file unless --store / CADML_STORE_URL say
otherwise. `cadml status` prints what was reconciled.

exit codes: 0 reconciled · 1 invalid input (nothing applied), or a tenant refused
or in conflict (the others applied) · 2 usage, I/O or store error (a PREFIX that
selects nothing included)
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "reconcile",
                   help="reconcile a Git repository into the store (no cluster)",
                   description=HELP,
                   examples="cadml reconcile --repo .\n"
                            "cadml reconcile --repo . tenants/acme-cad --ref origin/main\n"
                            "cadml reconcile --repo . --watch --interval 30")
    p.add_argument("--repo", required=True, metavar="PATH", help="Git repository")
    p.add_argument("paths", nargs="*", metavar="PREFIX",
                   help="only these folders inside the repository (default: all)")
    p.add_argument("--ref", default="HEAD", help="Git ref to reconcile")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--watch", action="store_true",
                   help="keep polling the ref like a GitOps agent (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=10.0, metavar="S",
                   help="seconds between passes with --watch")
    p.add_argument("--prune", action="store_true",
                   help="allow deleting a whole tenant, or more than half of a tenant's "
                        "objects, in one pass, or any deletion in a PREFIX-scoped pass "
                        "(refused otherwise)")
    p.add_argument("--allow-older", action="store_true",
                   help="reconcile even if the store holds a newer commit than REF, or one "
                        "this clone does not have (after a history rewrite)")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text", help=OUTPUT_HELP)
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="N",
                   help="refuse files larger than N bytes")
    p.set_defaults(handler=run)

    s = add_parser(sub, "status", help="print reconciled objects and their conditions",
                   description="Status of every reconciled object, like `kubectl get`: "
                               "Ready, and why not. Reads only: a missing store is an error "
                               "that says how to create one.",
                   examples="cadml status\ncadml status --tenant acme-cad -o json")
    s.add_argument("--store", help=STORE_HELP)
    s.add_argument("--tenant", action="append", help="tenant (repeatable; default: all)")
    s.add_argument("--output", "-o", choices=("text", "json"), default="text", help=OUTPUT_HELP)
    s.set_defaults(handler=status)


def _print(result: ReconcileResult, output: str, store_url: str, quiet_if_same: bool) -> None:
    if output == "json":
        write_json({"commit": result.commit, "valid": result.ok, "changed": result.changed,
                    "findings": [f.as_dict() for f in result.findings],
                    "tenants": [{"tenant": p.tenant, "changes": p.summary_lines()}
                                for p in result.plans],
                    "failed": [f.as_dict() for f in result.failures]})
        return
    if not result.ok:
        for f in result.findings:
            print(f.render())
        print(f"INVALID: commit {result.commit[:12]} not applied; the store keeps its "
              "previous state")
        return
    if quiet_if_same and not result.changed and not result.failures:
        return
    print(f"reconciled {result.commit[:12]}: {result.resources} resources into {store_url}")
    for plan in result.plans:
        lines = plan.summary_lines()
        print(f"  {plan.tenant}: " + ("no change" if not lines else f"{len(lines)} change(s)"))
        for line in lines:
            print(f"    {line}")
    for failure in result.failures:
        print(f"  {failure.tenant}: FAILED ({failure.reason}): {failure.message}")
        for kind, name in failure.would_delete:
            print(f"    would delete {kind} {failure.tenant}/{name}")
    for f in result.findings:  # warnings only at this point
        print(f.render())
    if result.failures:
        print(f"FAILED: {len(result.failures)} tenant(s) not applied: "
              + ", ".join(f.tenant for f in result.failures), file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from controller.reconcile.gitmode import reconcile_repo, watch
    from controller.store.open import open_store

    store = open_store(args.store)
    url = store.engine.url.render_as_string(hide_password=True)
    if args.watch:
        def report(result: ReconcileResult) -> None:
            _print(result, args.output, url, quiet_if_same=True)
            sys.stdout.flush()

        try:
            watch(store, args.repo, args.ref, args.paths, args.max_bytes, args.interval,
                  report, prune=args.prune, allow_older=args.allow_older)
        except KeyboardInterrupt:
            return 0
        return 0
    result = reconcile_repo(store, args.repo, args.ref, args.paths, args.max_bytes,
                            prune=args.prune, allow_older=args.allow_older)
    _print(result, args.output, url, quiet_if_same=False)
    return result.exit_code


def _step_text(step: dict[str, Any] | None, shadow: dict[str, Any] | None) -> str:
    text = "" if not step else (f" step={step['index'] + 1} {step['phase']} "
                                f"canary={step['canaryWeight']}%")
    if shadow:
        mean = shadow["meanOverlapAt10"]
        text += (f" shadow={shadow['version']}@{shadow['percent']}% runs={shadow['runs']}"
                 + ("" if mean is None else f" overlap@10={mean:.2f}"))
    return text


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def _published(tx: StoreTx) -> dict[tuple[str, str], dict[str, Any]]:
    """The routing each model's workers serve now, as published (an abort, an override, the
    default route), for its Model and its RolloutPolicy: the statuses are the last
    reconcile's view and lag behind what a schedule tick publishes."""
    from controller.reconcile.status import suspended_bindings

    out: dict[tuple[str, str], dict[str, Any]] = {}
    bound = tx.bound_jobs()
    walked = tx.step_states()
    for model in tx.model_names():
        snap = tx.serving_snapshot(model)
        if snap is None:
            continue
        suspended = suspended_bindings(bound.get(model, {}), snap.routes)["versions"]
        step = walked.get(model)
        view = {"policyVersion": snap.policy_version, "source": snap.source,
                "suspendedBindings": suspended,
                "reason": snap.reason, "routing": ",".join(
                    f"{r.version}={r.weight}" for r in snap.routes),
                "since": snap.created_at.isoformat(),
                "step": step and {"index": step.index, "phase": step.phase,
                                  "canaryWeight": sum(r.weight for r in snap.routes
                                                      if not r.is_stable)},
                "shadow": snap.shadow and _shadow_view(tx, model, snap.shadow.version,
                                                       snap.shadow.percent, snap.created_at)}
        out[("Model", model)] = view
        if snap.policy_name:
            out[("RolloutPolicy", snap.policy_name)] = view
    return out


def _shadow_view(tx: StoreTx, model: str, version: str, percent: int,
                 since: datetime) -> dict[str, Any]:
    """The shadow published, with its shadow runs since it was (and their mean overlap@10,
    a failed shadow search counting 0, as analysis counts it)."""
    from controller.evaluation import Metrics, with_shadow

    m = with_shadow(Metrics(None, None, None, 0, 0), [
        r["overlap_at_10"] for r in tx.shadow_runs(model, since=since, version=version)])
    return {"version": version, "percent": percent, "runs": m.shadow_sample_size,
            "meanOverlapAt10": m.shadow_overlap_at_10}


def status(args: argparse.Namespace) -> int:
    from controller.store.open import open_store

    store = open_store(args.store, create=False)
    rows: list[dict[str, Any]] = []
    for tenant in args.tenant or store.tenants():
        with store.read(tenant, "status") as tx:
            deleted = tx.deleted_objects()
            published = _published(tx)
            for (kind, name), found in sorted(tx.statuses().items()):
                rows.append({"tenant": tenant, "kind": kind, "name": name, "status": found,
                             "deleted": (kind, name) in deleted,
                             "published": published.get((kind, name))})
    if args.output == "json":
        write_json(rows)
        return 0
    header = f"{'NAMESPACE':<14} {'KIND':<14} {'NAME':<34} {'READY':<6} {'DETAIL'}"
    print(header)
    for r in rows:
        st: dict[str, Any] = r["status"]
        ready = _cond(st, "Ready")
        pub: dict[str, Any] = r["published"] or {
            "policyVersion": st.get("policyVersion", "-"),
            "source": st.get("routeSource", "-"), "routing": st.get("routingSummary", "")}
        detail: str = {
            "Model": f"stable={st.get('stableVersion') or '-'} "
                     f"policy={pub['policyVersion']} route={pub['source']}",
            "ModelVersion": f"weight={st.get('servingWeight', 0)}",
            "RolloutPolicy": f"v{pub['policyVersion']} {pub['routing']}"
                             + (f" ({pub['source']})" if pub["source"] != "policy" else "")
                             + _step_text(pub.get("step"), pub.get("shadow"))
                             + "".join(f" suspended-bindings={v}:{n}" for v, n in
                                       sorted(pub.get("suspendedBindings", {}).items())),
            "ReleaseRecord": st.get("gateSummary", ""),
        }.get(r["kind"], "")
        if r["deleted"]:  # its last status is history: the object is gone
            print(f"{r['tenant']:<14} {r['kind']:<14} {r['name']:<34} {'-':<6} "
                  "deleted (history kept)")
            continue
        if ready.get("status") != "True" and ready.get("message"):
            detail += f"  ({ready.get('reason')}: {ready['message']})"
        print(f"{r['tenant']:<14} {r['kind']:<14} {r['name']:<34} "
              f"{ready.get('status', '?'):<6} {detail}")
    if not rows:
        print("nothing reconciled yet in "
              + store.engine.url.render_as_string(hide_password=True))
    return 0
