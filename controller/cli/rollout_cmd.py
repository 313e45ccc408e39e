"""`cadml rollout resume|abort|retry TENANT/MODEL`: a user's word on a canary's steps."""

from __future__ import annotations

import argparse
import getpass
import uuid
from datetime import UTC, datetime
from typing import Any

from controller.cli._common import add_parser, parse_time, write_json
from controller.cli.governance_cmds import ACTOR_HELP, NOW_HELP, _model_arg
from controller.cli.store_cmds import OUTPUT_HELP, STORE_HELP
from controller.errors import StaleWrite, UsageError

WHAT = {"resume": "continue past the pause the canary waits at",
        "abort": "stop the canary: all traffic on STABLE until a retry or a new plan",
        "retry": "start an aborted plan again at step 0"}

DESCRIPTION = {
    "resume": "Refused unless the plan waits at a pause; a timed pause also passes by "
              "itself once its duration elapsed. Refused while the walk is held (an "
              "override, or an abort by the policy-wide analysis).",
    "abort": "The plan stays aborted (status stepPhase Aborted, Ready False) until a "
             "retry or a new plan in Git.",
    "retry": "Refused unless the plan is aborted, and while the policy-wide analysis "
             "(spec.analysis) has aborted the canary: only a change of spec.weights or "
             "spec.analysis in Git (a new plan) lifts that."}


def register(sub: Any) -> None:
    r = add_parser(sub, "rollout", help="resume, abort or retry a canary's steps",
                   description="A user's word on the canary steps of a model's RolloutPolicy "
                               "(spec.strategy.steps). Git mode (default): written to the "
                               "store with an audit row naming --actor, and the routing "
                               "published at once. With --cluster: an annotation on the live "
                               "RolloutPolicy that the operator applies once and audits with "
                               "the user who set it. The spec in Git never changes; a command "
                               "that does not apply now (resume when not paused, retry when "
                               "not aborted) is refused and writes nothing (exit 2).",
                   examples="cadml rollout resume acme-cad/part-match\n"
                            "cadml rollout abort acme-cad/part-match --cluster\n"
                            "cadml rollout retry acme-cad/part-match --store sqlite:///cadml.db")
    verbs = r.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in WHAT.items():
        v = add_parser(verbs, action, help=text,
                       description=f"{text[0].upper()}{text[1:]}. {DESCRIPTION[action]}",
                       examples=f"cadml rollout {action} acme-cad/part-match --actor alice\n"
                                f"cadml rollout {action} acme-cad/part-match --cluster")
        v.add_argument("model", metavar="TENANT/MODEL", help="the model's namespace and name")
        v.add_argument("--actor", default=None,
                       help=ACTOR_HELP + "; with --cluster the webhook names the "
                       "authenticated user instead")
        v.add_argument("--store", help=STORE_HELP + " (Git mode)")
        v.add_argument("--cluster", action="store_true",
                       help="annotate the live RolloutPolicy for the operator (kubeconfig)")
        v.add_argument("--now", metavar="TIME", help=NOW_HELP)
        v.add_argument("--output", "-o", choices=("text", "json"), default="text",
                       help=OUTPUT_HELP)
        v.set_defaults(handler=_rollout)


def _rollout(args: argparse.Namespace) -> int:
    from controller.steps import (
        HELD_REFUSED,
        READY_TO_PROMOTE,
        Command,
        command_annotation,
        phase_refusal,
    )

    tenant, model = _model_arg(args.model)
    command = Command(args.action, args.actor or getpass.getuser(),
                      f"{datetime.now(UTC).isoformat()}/{uuid.uuid4().hex[:8]}")
    if args.cluster:
        from controller.cli.governance_cmds import patch_live_policy

        def applies(live: dict[str, Any]) -> None:
            """Refuse what the live status says cannot apply (nothing is annotated)."""
            status, spec = live.get("status") or {}, live.get("spec") or {}
            if "strategy" not in spec:
                raise UsageError(f"RolloutPolicy {tenant}/{live['metadata']['name']} has no "
                                 "spec.strategy.steps")
            why = phase_refusal(str(status.get("stepPhase") or "Progressing"),
                                int(status.get("currentStepIndex") or 0), args.action)
            guard = next((c for c in status.get("conditions") or []
                          if c.get("type") == READY_TO_PROMOTE
                          and c.get("reason") == "CanaryAborted"), None)
            if guard is not None and args.action in HELD_REFUSED:
                why = (f"{guard.get('message', '')}; only a change of spec.weights or "
                       "spec.analysis in Git (a new plan) lifts it")
            if why is not None:
                raise UsageError(f"cannot {args.action} {tenant}/{model}: {why} (as its "
                                 "live status says)")
        name = patch_live_policy(tenant, model, command_annotation(command), applies)
        out = {"tenant": tenant, "model": model, "policy": name, "action": args.action,
               "user": command.user, "via": "annotation"}
        if args.output == "json":
            write_json(out)
        else:
            print(f"annotated RolloutPolicy {tenant}/{name}: {args.action} by {command.user}; "
                  "the operator applies it on its next pass")
        return 0
    from controller.reconcile.planner import plan_steps
    from controller.reconcile.step import publish_aborts
    from controller.stepping import command_store
    from controller.store.open import open_store

    store = open_store(args.store, create=False)
    now = parse_time(args.now)
    try:
        with store.transaction(tenant, command.user) as tx:
            outcome = command_store(tx, model, command, now)
    except StaleWrite as exc:  # not retried: a fresh view could apply it to a later step
        raise UsageError(f"cannot {args.action} {tenant}/{model}: another command or pass "
                         "moved its canary steps while this one was read; nothing written. "
                         f"See `cadml status --tenant {tenant}` and run it again if it "
                         "still applies") from exc
    plan = publish_aborts(store, tenant, now, command.user, plan_steps)
    after = outcome.after
    out = {"tenant": tenant, "model": model, "policy": outcome.policy, "action": args.action,
           "user": command.user, "stepIndex": after.index, "phase": after.phase,
           "policyVersion": plan.snapshots[-1].policy_version if plan.snapshots else None,
           "summary": outcome.summary}
    if args.output == "json":
        write_json(out)
    else:
        print(f"{tenant}/{model} ({outcome.policy}): {args.action} by {command.user}: "
              f"{outcome.summary}")
        for line in plan.summary_lines():
            print(f"  {line}")
    return 0
