"""`cadml worker`: the CAD similarity worker of one model."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from typing import Any

from controller.cli._common import add_parser, positive_int
from controller.cli.store_cmds import STORE_HELP

HELP = """\
Serve similarity search for one model over HTTP. The worker re-reads the model's
policy snapshot every refreshSeconds, loads the versions it routes to (artifact
sha256 verified; file:// or http(s):// URIs, downloads cached by sha256; pickles
scanned first), routes each job by a hash of its id into
the weight buckets (manual override > job binding > policy), and records every
run with its version, policyVersion and thresholds, as PENDING_REVIEW.

The model must already be in the store (`cadml reconcile`, or the operator): the
worker does not create or migrate a store, and exits (code 2) if the model is unknown.
Needs the 'worker' extra: pip install 'cadml[worker]'.

Endpoints (errors are JSON {code, stage, message, context, timestamp}, unknown
routes 404 and wrong methods 405 included):
  POST /v1/search             application/json {"vector": [...], "jobId": "J", "topK": 10}
                              | multipart/form-data parts 'drawing' (the DXF file),
                                'jobId', 'topK'
                              | application/dxf raw body; jobId and topK as query
                                parameters: /v1/search?jobId=J&topK=5
                              topK: 1..100 (default 10); no jobId: a random one
  POST /v1/search/batch       {"queries": [{"vector": [...], "jobId": "J"}, ...],
                              "topK": 10}: 1..10000 queries
  POST /v1/jobs/JOB/binding   {"version": "1.2.0"}: pin a job to a CANARY/STABLE version
  POST /v1/runs/RUN/review    {"status": "APPROVED" | "REJECTED", ...}
  POST /admin/recover         reload degraded versions now (Bearer $CADML_ADMIN_TOKEN)
  GET  /healthz, /readyz (why not ready, per version), /metrics (Prometheus)
"""

EXAMPLES = """\
cadml worker --model acme-cad/assembly-match
cadml worker --model acme-cad/assembly-match --port 9000 --host 127.0.0.1
curl -s -H 'Content-Type: application/dxf' --data-binary @part.dxf \\
  'http://127.0.0.1:9000/v1/search?jobId=job-42&topK=5'
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "worker", help="serve similarity search for one model",
                   description=HELP, examples=EXAMPLES)
    p.add_argument("--model", required=True, metavar="TENANT/MODEL",
                   help="the model to serve: its namespace (tenant) and name")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    p.add_argument("--host", default="0.0.0.0",  # in-pod server
                   help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--pickle-mode", choices=("whitelist", "blacklist", "audit"),
                   default=os.environ.get("CADML_PICKLE_MODE", "whitelist"),
                   help="how pickled artifacts are screened before loading "
                        "(default: $CADML_PICKLE_MODE, else whitelist)")
    p.add_argument("--backoff", type=float, default=300.0, metavar="S",
                   help="first recovery retry of a degraded index, seconds (default 300, "
                        "doubling up to --backoff-max)")
    p.add_argument("--backoff-max", type=float, default=3600.0, metavar="S",
                   help="longest wait between recovery retries, seconds")
    p.add_argument("--max-upload-bytes", type=positive_int, default=20 * 1024 * 1024,
                   metavar="N",
                   help="refuse request bodies larger than N bytes, HTTP 413 (default: 20 MiB)")
    p.add_argument("--artifact-cache", metavar="DIR",
                   help="where http(s) artifacts are downloaded to, by sha256 "
                        "(default $CADML_ARTIFACT_CACHE, else $CADML_HOME/artifacts, else "
                        "~/.cache/cadml/artifacts)")
    p.add_argument("--artifact-max-bytes", type=positive_int, default=4 * 1024**3, metavar="N",
                   help="refuse a downloaded artifact file larger than this (default 4 GiB)")
    p.add_argument("--hnsw-ef-search", type=positive_int, metavar="N",
                   help="HNSW search depth for versions whose spec.search sets none "
                        "(default: the index's own)")
    p.set_defaults(handler=run)


def _listen(host: str, port: int) -> socket.socket:
    from controller.errors import UsageError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise UsageError(f"cannot listen on {host}:{port}: the port is in use; stop what "
                         "holds it or pick another --port") from None


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from controller.errors import UsageError
    from controller.store.open import open_store
    from controller.worker.app import make_app
    from controller.worker.runtime import WorkerRuntime, WorkerSettings

    tenant, _, model = args.model.partition("/")
    if not tenant or not model:
        raise UsageError(f"--model {args.model!r}: use TENANT/MODEL, e.g. acme-cad/part-match")
    store = open_store(args.store, create=False)
    shown = store.engine.url.render_as_string(hide_password=True)
    with store.read(tenant, "cadml-worker") as tx:
        known = tx.model_names()
    if model not in known:
        has = f"it has {', '.join(known)}" if known else "it has no model in that tenant"
        raise UsageError(f"--model {args.model}: no such model in store {shown} ({has}); "
                         "reconcile it first (`cadml reconcile --repo PATH`) or fix --model")
    settings = WorkerSettings(
        tenant=tenant, model=model,
        store_url=store.engine.url.render_as_string(hide_password=False),
        pickle_mode=args.pickle_mode, backoff_initial=args.backoff,
        backoff_max=args.backoff_max, admin_token=os.environ.get("CADML_ADMIN_TOKEN") or None,
        max_upload_bytes=args.max_upload_bytes, artifact_cache=args.artifact_cache,
        artifact_max_bytes=args.artifact_max_bytes, hnsw_ef_search=args.hnsw_ef_search)
    listener = _listen(args.host, args.port)  # before any work: a busy port fails first
    web.run_app(make_app(WorkerRuntime(store, settings)), sock=listener)
    return 0
