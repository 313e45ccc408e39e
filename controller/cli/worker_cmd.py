"""`cadml worker`: the CAD similarity worker of one model."""

from __future__ import annotations

import argparse
import os
from typing import Any

from controller.cli.store_cmds import STORE_HELP

HELP = """\
Serve similarity search for one model over HTTP. The worker re-reads the model's
policy snapshot every refreshSeconds, loads the versions it routes to (artifact
sha256 verified; file:// or http(s):// URIs, downloads cached by sha256; pickles
scanned first), routes each job by a hash of its id into
the weight buckets (manual override > job binding > policy), and records every
run with its version, policyVersion and thresholds, as PENDING_REVIEW.

Endpoints: POST /v1/search (application/json {vector, jobId, topK} | multipart
'drawing' | application/dxf), POST /v1/search/batch, POST /v1/jobs/JOB/binding,
POST /v1/runs/RUN/review, POST /admin/recover (Bearer CADML_ADMIN_TOKEN),
GET /healthz, /readyz, /metrics. Every routed request is a run, failed ones included.
Logs are JSON lines on stderr, one per event (policy applied, version loaded / failed
/ degraded / recovered, review, binding; each request at --log-level debug).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="serve similarity search for one model",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="TENANT/MODEL")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="0.0.0.0")  # in-pod server
    p.add_argument("--pickle-mode", choices=("whitelist", "blacklist", "audit"),
                   default=os.environ.get("CADML_PICKLE_MODE", "whitelist"))
    p.add_argument("--backoff", type=float, default=300.0, metavar="S",
                   help="first recovery retry of a degraded index (default 300 s, x2, <= 3600)")
    p.add_argument("--backoff-max", type=float, default=3600.0, metavar="S")
    p.add_argument("--max-upload-bytes", type=int, default=20 * 1024 * 1024)
    p.add_argument("--artifact-cache", metavar="DIR",
                   help="where http(s) artifacts are downloaded to, by sha256 "
                        "(default $CADML_ARTIFACT_CACHE, else $CADML_HOME/artifacts, else "
                        "~/.cache/cadml/artifacts)")
    p.add_argument("--artifact-max-bytes", type=int, default=4 * 1024**3,
                   help="refuse a downloaded artifact file larger than this (default 4 GiB)")
    p.add_argument("--hnsw-ef-search", type=int, metavar="N",
                   help="HNSW search depth for versions whose spec.search sets none")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default=os.environ.get("CADML_LOG_LEVEL", "info"),
                   help="JSON-lines log on stderr, one line per event; debug adds one per "
                        "request (default info)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from controller.errors import UsageError
    from controller.store.open import open_store
    from controller.worker.app import make_app
    from controller.worker.runtime import WorkerRuntime, WorkerSettings

    tenant, _, model = args.model.partition("/")
    if not tenant or not model:
        raise UsageError("--model takes TENANT/MODEL")
    store = open_store(args.store)
    settings = WorkerSettings(
        tenant=tenant, model=model, store_url=str(store.engine.url),
        pickle_mode=args.pickle_mode, backoff_initial=args.backoff,
        backoff_max=args.backoff_max, admin_token=os.environ.get("CADML_ADMIN_TOKEN") or None,
        max_upload_bytes=args.max_upload_bytes, artifact_cache=args.artifact_cache,
        artifact_max_bytes=args.artifact_max_bytes, hnsw_ef_search=args.hnsw_ef_search)
    _json_logs(args.log_level)
    web.run_app(make_app(WorkerRuntime(store, settings)), host=args.host, port=args.port,
                print=None)
    return 0


def _json_logs(level: str) -> None:
    """Every log record of the worker as one JSON line on stderr."""
    import logging

    from controller.worker.events import JsonLines

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
