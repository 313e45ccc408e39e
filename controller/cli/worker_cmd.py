"""`cadml worker`: the CAD similarity worker of one model."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from pathlib import Path
from typing import Any

from controller.cli._common import add_parser, positive_int, positive_seconds, tcp_port
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
                              "topK": 10}: 1..10000 queries; one result or error each
  POST /v1/jobs/JOB/binding   {"version": "1.2.0"}: pin a job to a CANARY/STABLE version
  POST /v1/runs/RUN/review    {"status": "APPROVED" | "REJECTED", "agree": true | false,
                              "humanDecision": ...}
  POST /admin/recover         reload degraded versions now (Bearer $CADML_ADMIN_TOKEN)
  GET  /healthz (503 while runs cannot be recorded: a commit pending past
                              --run-commit-timeout, or the run writer stopped),
       /readyz (why not ready, per version), /metrics (Prometheus)

Drawings are parsed in sandboxed processes (--cpu-seconds each); beyond
--max-concurrent-uploads uploads answer 429 busy. Every routed request is a run,
failed ones included. Logs are JSON lines on stderr, one per event (policy applied,
version loaded / failed / degraded / recovered, review, binding; each request at
--log-level debug).

Reviews and bindings need 'Authorization: Bearer TOKEN'. In a cluster (--kube-auth)
the API server checks the token (TokenReview) and whether its user may create
models/reviews or models/bindings on the Model (SubjectAccessReview; the chart's
cadml-edit role grants both). Outside one, --auth-token-file FILE holds lines
'TOKEN USER [edit|view]'. The reviewer recorded is that user, never a header.
Without either, writes are refused (401) unless --insecure-local is given on a
loopback --host (they are then recorded as user 'insecure-local'). With a checker,
searches and look-ups need a token too (get on the Model: cadml-view, or a 'view'
line); without one they are open. Answers are cached 30 s per token and action.
"""

EXAMPLES = """\
cadml worker --model acme-cad/assembly-match --insecure-local
cadml worker --model acme-cad/assembly-match --port 9000 --auth-token-file tokens.txt
curl -s -H 'Content-Type: application/dxf' --data-binary @part.dxf \\
  'http://127.0.0.1:9000/v1/search?jobId=job-42&topK=5'
"""


def register(sub: Any) -> None:
    p = add_parser(sub, "worker", help="serve similarity search for one model",
                   description=HELP, examples=EXAMPLES)
    p.add_argument("--model", required=True, metavar="TENANT/MODEL",
                   help="the model to serve: its namespace (tenant) and name")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--port", type=tcp_port, default=8080, help="TCP port to listen on")
    p.add_argument("--host", default="127.0.0.1",
                   help="listen address (default 127.0.0.1: this machine only; in a pod, "
                        "0.0.0.0)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--auth-token-file", metavar="FILE",
                      help="tokens the worker accepts: lines 'TOKEN USER [edit|view]' (edit: "
                           "read, review and bind; view: read)")
    auth.add_argument("--kube-auth", action="store_true",
                      help="check tokens with the Kubernetes API server (TokenReview "
                           "+ SubjectAccessReview); in-cluster config, else $KUBECONFIG")
    auth.add_argument("--insecure-local", action="store_true",
                      help="accept writes without a token; only on a loopback --host")
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for --kube-auth")
    p.add_argument("--pickle-mode", type=_pickle_mode,
                   default=os.environ.get("CADML_PICKLE_MODE", "whitelist"),
                   help="whitelist (default; exact module.name pairs only) or audit "
                        "(the same allowlist, plus an audit event with the opcode census of "
                        "every scanned pickle, refused ones included)")
    p.add_argument("--backoff", type=positive_seconds, default=300.0, metavar="S",
                   help="first recovery retry of a degraded index, seconds (default 300, "
                        "doubling up to --backoff-max)")
    p.add_argument("--backoff-max", type=positive_seconds, default=3600.0, metavar="S",
                   help="longest wait between recovery retries, seconds")
    p.add_argument("--max-upload-bytes", type=positive_int, default=20 * 1024 * 1024,
                   metavar="N",
                   help="refuse request bodies larger than N bytes, HTTP 413 (default: 20 MiB)")
    p.add_argument("--cpu-seconds", type=positive_seconds, default=10.0, metavar="S",
                   help="CPU time one drawing may take to parse (default 10 s); beyond it "
                        "the upload is answered 422 time_limit and its parser is replaced")
    p.add_argument("--max-concurrent-uploads", type=positive_int, default=8, metavar="N",
                   help="drawing uploads read or parsed at once (default 8); beyond it "
                        "429 busy with Retry-After")
    p.add_argument("--artifact-cache", metavar="DIR",
                   help="where http(s) artifacts are downloaded to, by sha256 "
                        "(default $CADML_ARTIFACT_CACHE, else $CADML_HOME/artifacts, else "
                        "~/.cache/cadml/artifacts)")
    p.add_argument("--artifact-max-bytes", type=positive_int, default=4 * 1024**3, metavar="N",
                   help="refuse a downloaded artifact file larger than this (default 4 GiB)")
    p.add_argument("--loader-memory-bytes", type=positive_int, default=2 * 1024**3,
                   metavar="N",
                   help="address space of the child process that deserialises pickle and "
                        "npz artifacts (default 2 GiB)")
    p.add_argument("--loader-cpu-seconds", type=positive_seconds, default=60.0, metavar="S",
                   help="CPU time that child may take (default 60 s)")
    p.add_argument("--hnsw-ef-search", type=positive_int, metavar="N",
                   help="HNSW search depth for versions whose spec.search sets none "
                        "(default: the index's own)")
    p.add_argument("--run-commit-timeout", type=positive_seconds, metavar="S",
                   default=os.environ.get("CADML_RUN_COMMIT_TIMEOUT", "10"),
                   help="the most a request waits for its run to be committed (default 10 s, "
                        "or $CADML_RUN_COMMIT_TIMEOUT); beyond it the request answers 503 "
                        "run_not_recorded, and while a commit stays pending longer /healthz "
                        "and /readyz fail (the liveness probe restarts a wedged worker)")
    p.add_argument("--run-recorder", type=_recorder, metavar="{process,thread}",
                   default=os.environ.get("CADML_RUN_RECORDER", "process"),
                   help="where run records are committed: 'process' (default, or "
                        "$CADML_RUN_RECORDER), a recorder process of the worker's own, so "
                        "that the inserts do not take the serving process's CPU lock (the "
                        "GIL); 'thread', inside the worker process (one process less; "
                        "fewer requests a second). An in-memory SQLite store always "
                        "records in the worker process")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default=os.environ.get("CADML_LOG_LEVEL", "info"),
                   help="JSON-lines log on stderr, one line per event; debug adds one per "
                        "request (default info)")
    p.set_defaults(handler=run)


def _recorder(value: str) -> str:
    from controller.worker.recorder import RUN_RECORDERS

    if value not in RUN_RECORDERS:
        raise argparse.ArgumentTypeError(f"{value!r}: choose {' or '.join(RUN_RECORDERS)} "
                                         "(also $CADML_RUN_RECORDER)")
    return value


def _pickle_mode(value: str) -> str:
    from controller.search.pickle_scan import UnsafeArtifact, check_mode

    try:
        return check_mode(value)
    except UnsafeArtifact as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    import logging

    from aiohttp import web

    from controller.errors import UsageError
    from controller.store.open import open_store
    from controller.worker.app import make_app
    from controller.worker.auth import (
        Checker,
        KubernetesReviews,
        TokenFile,
        WriteGuard,
        listen_problem,
    )
    from controller.worker.runtime import WorkerRuntime, WorkerSettings

    tenant, _, model = args.model.partition("/")
    if not tenant or not model:
        raise UsageError(f"--model {args.model!r}: use TENANT/MODEL, e.g. acme-cad/part-match")
    checker: Checker | None = None
    if args.auth_token_file:
        checker = TokenFile.read(Path(args.auth_token_file))
    elif args.kube_auth:
        checker = KubernetesReviews.connect(args.kubeconfig)
    problem = listen_problem(args.host, args.insecure_local)
    if problem:
        raise UsageError(problem)
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
        max_upload_bytes=args.max_upload_bytes, cpu_seconds=args.cpu_seconds,
        max_concurrent_uploads=args.max_concurrent_uploads, artifact_cache=args.artifact_cache,
        artifact_max_bytes=args.artifact_max_bytes,
        loader_memory_bytes=args.loader_memory_bytes,
        loader_cpu_seconds=args.loader_cpu_seconds, hnsw_ef_search=args.hnsw_ef_search,
        run_commit_timeout=args.run_commit_timeout, run_recorder=args.run_recorder)
    guard = WriteGuard(checker, insecure_local=args.insecure_local)
    listener = _listen(args.host, args.port)  # before any work: a busy port fails first
    _json_logs(args.log_level)
    # request logs are at debug: aiohttp's access log writes one line per request at info
    access = logging.getLogger("aiohttp.access") if args.log_level == "debug" else None
    web.run_app(make_app(WorkerRuntime(store, settings), guard=guard), sock=listener,
                print=None, access_log=access)
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
