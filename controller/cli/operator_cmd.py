"""`cadml run`: the kopf operator."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli._common import add_parser, positive_seconds, tcp_port
from controller.cli.store_cmds import STORE_HELP

HELP = """\
Run the operator in a cluster: validate and reconcile Models, ModelVersions,
RolloutPolicies and ReleaseRecords into the runtime store, keep each Model's
worker Deployment and Service, write status and events, repair drift on a timer,
and (with --webhook-host) serve the admission webhooks: the validating one
refuses what no later object can fix, the mutating one stamps cadml.io/changed-by
with the authenticated user for the audit trail. Several replicas elect a leader
through kopf peering (--peering).

Settings are read once here, from flags and the environment (CADML_STORE_URL,
CADML_WORKER_IMAGE, CADML_NAMESPACES, CADML_TIMER_INTERVAL, CADML_PEERING,
CADML_WEBHOOK_HOST, CADML_WEBHOOK_PORT; CADML_WEBHOOK_CERT, CADML_WEBHOOK_KEY and
CADML_WEBHOOK_CA for a mounted certificate such as cert-manager's, else a
self-signed one is made at start; CADML_WEBHOOK_FAILURE_POLICY Fail (default) or
Ignore). Needs the 'operator' extra: pip install 'cadml[operator]', and a cluster
(in-cluster service account, or KUBECONFIG / ~/.kube/config).
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "run", help="run the kopf operator (in a cluster)", description=HELP,
                   examples="cadml run --namespace acme-cad\n"
                            "cadml run --peering cadml --webhook-host cadml.cadml-system.svc")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--namespace", action="append", dest="namespaces",
                   help="watch only this namespace (repeatable; default: all)")
    p.add_argument("--peering", help="kopf peering name for leader election between replicas "
                                     "(needs kopf's peering CRDs and the named object, as the "
                                     "chart installs; default: standalone)")
    p.add_argument("--webhook-host", help="serve the admission webhook; the API server calls "
                                          "https://HOST:PORT (default: no webhook)")
    p.add_argument("--webhook-port", type=tcp_port,
                   help="port of the admission webhook (default $CADML_WEBHOOK_PORT, else 9443)")
    p.add_argument("--timer-interval", type=positive_seconds,
                   help="drift-repair interval, seconds (default $CADML_TIMER_INTERVAL, "
                        "else 60); canary analysis runs at it too unless "
                        "$CADML_ANALYSIS_INTERVAL is set")
    p.add_argument("--liveness", help="liveness endpoint (default http://0.0.0.0:8081/healthz)")
    p.add_argument("--metrics-port", type=tcp_port,
                   help="Prometheus /metrics port (default $CADML_METRICS_PORT, else 9090)")
    p.add_argument("--no-workers", action="store_true",
                   help="do not create worker Deployments/Services (store-only mode)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from controller.operator.run import run_operator
    from controller.operator.settings import OperatorSettings
    from controller.store.engine import resolve_url

    settings = OperatorSettings.from_env(
        store_url=resolve_url(args.store) if args.store else None,
        namespaces=tuple(args.namespaces) if args.namespaces else None,
        peering=args.peering, webhook_host=args.webhook_host, webhook_port=args.webhook_port,
        timer_interval=args.timer_interval, liveness=args.liveness,
        metrics_port=args.metrics_port)
    run_operator(settings, apply_workers=not args.no_workers)
    return 0
