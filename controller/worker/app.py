"""The worker's HTTP API (aiohttp). Handlers parse and answer; `WorkerRuntime` does the work.

Errors are JSON `{code, stage, message, context, timestamp}`:
    400 bad_request / bad_top_k / bad_vector / empty_upload
    401 unauthenticated / writes_disabled   403 forbidden (writes: controller.worker.auth)
    404 not_found (run, version, route, unknown endpoint)   405 method_not_allowed
    409 not_routable (binding to a version the effective policy does not route)
    409 bound_elsewhere (binding a job bound to a version of another model)
    413 too_large   415 unsupported_media_type / unsupported_content_encoding
    422 invalid_drawing & friends (time_limit, parser_crash), dimension_mismatch
    429 busy (more drawing uploads in flight than allowed; Retry-After)
    503 no_policy / version_unavailable / not_ready
    503 run_not_recorded (the run could not be committed within --run-commit-timeout, or
        the run writer stopped; retryable, Retry-After): never answered as served
A malformed request never crashes the worker or leaves a half-written run. A request
refused before routing (4xx on the request itself, no policy) is not a run; every
routed one is, failed ones included (version not loaded, unparseable drawing, time
limit, dimension mismatch): its error's context names the runKey and the version the
job was sent to, so evaluation counts it against that version. A run is committed
before its answer is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller import metrics
from controller.errors import CadmlError, NotFound
from controller.features import InvalidDrawing
from controller.features.sandbox import FeatureSandbox, SandboxLimits
from controller.records import PolicySnapshot
from controller.routing import binding_state, routable
from controller.search.artifacts import ArtifactError
from controller.worker import codec
from controller.worker.auth import (
    BINDINGS,
    GUARD,
    READS,
    REVIEWS,
    WriteGuard,
    identity,
    requires,
)
from controller.worker.events import emit
from controller.worker.runtime import Route, SearchOutcome, WorkerError, WorkerRuntime
from controller.worker.runwriter import PipeWriter, RunWriter
from controller.worker.shadow import Mirrored, ShadowMirror, wanted

log = logging.getLogger("cadml.worker")
RUNTIME = web.AppKey("runtime", WorkerRuntime)
SANDBOX = web.AppKey("sandbox", FeatureSandbox)
WRITER = web.AppKey("writer", RunWriter)
MIRROR = web.AppKey("mirror", ShadowMirror)
UPLOADS = web.AppKey("uploads", list)  # one entry per drawing upload in flight
JSON_ON_LOOP_BYTES = 64 * 1024  # larger JSON bodies are decoded in a thread
RETRY_AFTER_SECONDS = 1
REVIEW_STATUSES = ("APPROVED", "REJECTED")


def _answer(body: Any) -> web.Response:
    """A search answer (the hot path): JSON encoded by `codec` (orjson when installed)."""
    return web.Response(body=codec.dumps(body), content_type="application/json",
                        charset="utf-8")


def error_body(code: str, stage: str, message: str, context: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    return {"code": code, "stage": stage, "message": message, "context": context or {},
            "timestamp": datetime.now(UTC).isoformat()}


def _fail(status: int, code: str, stage: str, message: str,
          context: dict[str, Any] | None = None) -> web.Response:
    return web.json_response(error_body(code, stage, message, context), status=status)


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        return await _refuse_compressed(request)
    try:
        return await handler(request)
    except (WorkerError, InvalidDrawing) as exc:
        s = request.app[RUNTIME].settings
        metrics.WORKER_ERRORS.labels(s.tenant, s.model, exc.code).inc()
        resp = _fail(exc.status, **exc.as_json())
        retry_after = getattr(exc, "retry_after", RETRY_AFTER_SECONDS if exc.status == 429
                              else None)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp
    except ArtifactError as exc:
        s = request.app[RUNTIME].settings
        metrics.WORKER_ERRORS.labels(s.tenant, s.model, exc.code).inc()
        return _fail(503, **exc.as_json())
    except NotFound as exc:
        return _fail(404, "not_found", "request", str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return _fail(413, "too_large", "upload", str(exc))
    except web.HTTPMethodNotAllowed as exc:  # the README promises JSON errors everywhere
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _fail(405, "method_not_allowed", "request",
                     f"{request.method} {request.path}: use {allowed}",
                     {"allowed": sorted(exc.allowed_methods)})
    except web.HTTPNotFound:
        return _fail(404, "not_found", "request", f"no endpoint {request.path}; see "
                     "`cadml worker --help` for the endpoints")
    except web.HTTPException:
        raise
    except CadmlError as exc:
        log.warning("request failed: %s", exc)
        return _fail(503 if exc.retryable else 500, exc.reason, "store", str(exc))
    except Exception:
        log.exception("unexpected error")
        return _fail(500, "internal", "worker", "unexpected error; see the worker log")


async def _refuse_compressed(request: web.Request) -> web.StreamResponse:
    """Compressed bodies are refused before the handler reads a byte, and the connection is
    closed once the answer is out: aiohttp would otherwise go on reading (and inflating)
    the rest of the body for its 10 s lingering time."""
    resp = _fail(415, "unsupported_content_encoding", "request",
                 "compressed request bodies are not accepted; send the body as is")
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    request.protocol.force_close()
    return resp


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        if len(raw) > JSON_ON_LOOP_BYTES:
            body = await asyncio.get_running_loop().run_in_executor(None, codec.loads, raw)
        else:
            body = codec.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise WorkerError(f"request body is not JSON: {exc}", code="bad_request",
                          stage="request", status=400) from None
    if not isinstance(body, dict):
        raise WorkerError("request body must be a JSON object", code="bad_request",
                          stage="request", status=400)
    return body


def _vector(value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        arr = np.zeros(0, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise WorkerError("vector must be a non-empty list of finite numbers",
                          code="bad_vector", stage="request", status=400)
    return arr


def _int(value: Any, default: int, name: str) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise WorkerError(f"{name} must be an integer", code="bad_request", stage="request",
                          status=400) from None


JOB_KEY_MAX = 256  # the store's job_key column
HUMAN_DECISION_MAX = 32  # and its human_decision


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _controls(text: str) -> bool:
    """Whether `text` holds control characters (a newline forging a line of `cadml runs`,
    a terminal escape sequence run by whoever reads it)."""
    if text.isascii():  # the usual id: printable <=> none of \x00-\x1f, \x7f
        return not text.isprintable()
    # a lone surrogate ("\\ud800" in JSON) is no character: no store or hash can encode it
    return _CONTROL.search(text) is not None or _SURROGATE.search(text) is not None


def _job(value: Any) -> str:
    """A request's job id (a fresh one when none is given); too long for the store, or
    with control characters: 400."""
    job = str(value or uuid.uuid4().hex)
    if len(job) > JOB_KEY_MAX or _controls(job):
        raise WorkerError(f"jobId must be at most {JOB_KEY_MAX} characters, none of them "
                          "control characters or lone surrogates", code="bad_request",
                          stage="request", status=400,
                          context={"field": "jobId", "limit": JOB_KEY_MAX})
    return job


def _served(request: web.Request) -> tuple[str, str]:
    """The (tenant, model) this worker serves: what a request through it acts on."""
    s = request.app[RUNTIME].settings
    return s.tenant, s.model


@contextlib.contextmanager
def _upload_slot(request: web.Request) -> Any:
    """A per-worker limit on drawing uploads in flight, decided before the body is read."""
    app, s = request.app, request.app[RUNTIME].settings
    in_flight = app[UPLOADS]
    if len(in_flight) >= s.max_concurrent_uploads:
        raise WorkerError(f"{len(in_flight)} drawing uploads are in flight, the most this "
                          "worker takes at once; retry after a moment", code="busy",
                          stage="upload", status=429,
                          context={"limit": s.max_concurrent_uploads})
    token = object()
    in_flight.append(token)
    gauge = metrics.WORKER_UPLOADS.labels(s.tenant, s.model)
    gauge.set(len(in_flight))
    try:
        yield
    finally:
        in_flight.remove(token)
        gauge.set(len(in_flight))


def _not_empty(data: bytes, what: str) -> bytes:
    if not data:
        raise WorkerError(f"empty upload: {what} has 0 bytes; send the DXF file's content",
                          code="empty_upload", stage="upload", status=400)
    return data


SearchRequest = tuple[str, int, "np.ndarray | bytes"]  # job id, topK, vector or drawing
DRAWING_TYPES = ("application/dxf", "image/vnd.dxf", "application/octet-stream")
UPLOAD_TYPES = frozenset(("multipart/form-data", *DRAWING_TYPES))  # a drawing: an upload slot


async def _search_request(request: web.Request, runtime: WorkerRuntime, ctype: str
                          ) -> SearchRequest:
    """Read and check a search request (not a run yet: nothing is routed)."""
    params: dict[str, Any] = dict(request.query) if request.query_string else {}
    payload: np.ndarray | bytes
    if ctype == "application/json":
        body = await _json(request)
        params.update(body)
        payload = _vector(body.get("vector"))
    elif ctype == "multipart/form-data":
        reader = await request.multipart()
        data: bytes | None = None
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "drawing":
                data = bytes(await part.read(decode=False))
            elif part.name in ("jobId", "topK"):
                params[part.name] = (await part.text()).strip()
        if data is None:
            raise WorkerError("multipart upload needs a 'drawing' file part",
                              code="bad_request", stage="request", status=400)
        payload = _not_empty(data, "the 'drawing' part")
    elif ctype in DRAWING_TYPES:
        payload = _not_empty(await request.read(), "the request body")
    else:
        raise WorkerError(f"unsupported content type {ctype!r}; send application/json "
                          "(vector), multipart/form-data (drawing) or application/dxf",
                          code="unsupported_media_type", stage="request", status=415)
    k = runtime.top_k(_int(params.get("topK"), runtime.settings.default_top_k, "topK"))
    return _job(params.get("jobId")), k, payload


def _served_error(outcome: SearchOutcome) -> WorkerError:
    """The error a failed run answers with: its own, naming the run and the version."""
    exc = outcome.error
    status = getattr(exc, "status", 503 if isinstance(exc, ArtifactError) else 500)
    return WorkerError(str(exc), code=outcome.error_code or "internal",
                       stage=exc.stage if exc is not None else "search", status=status,
                       context={**(exc.context if exc is not None else {}),
                                "runKey": outcome.run_key, "version": outcome.version,
                                "jobId": outcome.job_id, "routeSource": outcome.route_source,
                                "policyVersion": outcome.policy_version})


@requires(READS, _served)
async def search(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ctype = request.content_type
    if ctype in UPLOAD_TYPES:
        with _upload_slot(request):
            return await _search(request, ctype, started)
    return await _search(request, ctype, started)


async def _search(request: web.Request, ctype: str, started: float) -> web.Response:
    app = request.app  # a property lookup each time: once per request
    runtime = app[RUNTIME]
    job_id, k, payload = await _search_request(request, runtime, ctype)
    route = runtime.route(job_id)
    outcome, vector = await _serve(app, runtime, route, payload, k, started)
    await app[WRITER].write([outcome])
    if outcome.error is not None:
        raise _served_error(outcome)
    return await _answer_then_mirror(request, _answer(outcome.as_json()),
                                     [(route, outcome, payload, vector)], k)


async def _answer_then_mirror(request: web.Request, resp: web.Response,
                              served: list[tuple[Route, SearchOutcome, np.ndarray | bytes,
                                                 np.ndarray | None]], k: int) -> web.Response:
    """Send the answer; then offer a copy of each request the shadow wants (spec.shadow)
    to the mirror's queue, which never waits."""
    copies = [Mirrored(o.run_key, o.job_id, shadow, payload, k,
                       tuple((h.id, h.score) for h in o.hits), vector, _feature_version(r))
              for r, o, payload, vector in served if (shadow := wanted(r, o)) is not None]
    if copies:
        await resp.prepare(request)
        await resp.write_eof()
        mirror = request.app[MIRROR]
        for copy in copies:
            mirror.offer(copy)
    return resp


def _feature_version(route: Route) -> str | None:
    lv = route.loaded
    return None if lv is None else lv.artifact.feature_version or lv.row.feature_version


async def _serve(app: web.Application, runtime: WorkerRuntime, route: Route,
                 payload: np.ndarray | bytes, k: int, started: float
                 ) -> tuple[SearchOutcome, np.ndarray | None]:
    """Features (for a drawing), then the search: a failure of either is a failed run.
    With the outcome, the vector searched (None: none was)."""
    parse_ms = None
    if isinstance(payload, bytes):
        if route.loaded is None:
            return runtime.failure(route, runtime.unavailable(route), started), None
        t0 = time.perf_counter()
        try:
            features = await app[SANDBOX].extract_async(
                payload, _feature_version(route) or "v4")
        except InvalidDrawing as exc:
            return runtime.failure(route, exc, started,
                                   (time.perf_counter() - t0) * 1000.0), None
        parse_ms = (time.perf_counter() - t0) * 1000.0
        vector = features.vector
    else:
        vector = payload
    if route.loaded is None:  # nothing to search: no need to leave the event loop
        return runtime.failure(route, runtime.unavailable(route), started, parse_ms), None
    if route.loaded.inline:
        (outcome,) = runtime.search_routed([route], [vector], k, started, parse_ms)
        return outcome, vector
    (outcome,) = await asyncio.get_running_loop().run_in_executor(
        None, runtime.search_routed, [route], [vector], k, started, parse_ms)
    return outcome, vector


def _route_queries(runtime: WorkerRuntime, queries: list[Any]
                   ) -> tuple[list[dict[str, Any] | None], list[tuple[int, Route, np.ndarray]]]:
    """Each query checked and routed: (answers so far — the refused ones —, routed ones)."""
    answers: list[dict[str, Any] | None] = [None] * len(queries)
    routed: list[tuple[int, Route, np.ndarray]] = []
    for i, q in enumerate(queries):
        job = str((q.get("jobId") if isinstance(q, dict) else None) or uuid.uuid4().hex)
        try:
            job = _job(job)
            vector = _vector(q.get("vector") if isinstance(q, dict) else None)
        except WorkerError as exc:  # refused before routing: an error, not a run
            answers[i] = {"jobId": job, "error": exc.as_json()}
            continue
        routed.append((i, runtime.route(job), vector))
    return answers, routed


@requires(READS, _served)
async def search_batch(request: web.Request) -> web.StreamResponse:
    """One result or one error per query, in order; every routed query is a run."""
    started = time.perf_counter()
    runtime = request.app[RUNTIME]
    if request.content_type != "application/json":
        raise WorkerError("batch search takes application/json", code="unsupported_media_type",
                          stage="request", status=415)
    body = await _json(request)
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries or len(queries) > 10_000:
        raise WorkerError("queries must be a list of 1..10000 {vector, jobId}",
                          code="bad_request", stage="request", status=400)
    k = runtime.top_k(_int(body.get("topK"), runtime.settings.default_top_k, "topK"))
    loop = asyncio.get_running_loop()
    step = runtime.settings.parallel_batch_threshold
    # a large batch (up to 10,000 vectors) is checked off the event loop
    answers, routed = _route_queries(runtime, queries) if len(queries) <= step else \
        await loop.run_in_executor(None, _route_queries, runtime, queries)
    # faiss releases the GIL: above the threshold, chunks search in parallel threads
    found = await asyncio.gather(*(loop.run_in_executor(
        None, runtime.search_routed, [r for _, r, _ in routed[i:i + step]],
        [v for _, _, v in routed[i:i + step]], k, started) for i in range(0, len(routed), step)))
    outcomes = [o for part in found for o in part]
    if outcomes:  # every query refused before routing: no run to record (or to wait for)
        await request.app[WRITER].write(outcomes)
    s = runtime.settings
    for (i, _, _), o in zip(routed, outcomes, strict=True):
        if o.error is not None:
            metrics.WORKER_ERRORS.labels(s.tenant, s.model, o.error.code).inc()
        answers[i] = o.as_json()
    return await _answer_then_mirror(
        request, _answer({"results": answers}),
        [(r, o, v, v) for (_, r, v), o in zip(routed, outcomes, strict=True)], k)


@requires(BINDINGS, _served)
async def bind_job(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    job = _job(request.match_info["job"])
    body = await _json(request)
    version = str(body.get("version") or "")
    if not version:
        raise WorkerError('a binding needs a "version" field: {"version": "1.2.0"}',
                          code="bad_request", stage="request", status=400,
                          context={"field": "version"})
    s = runtime.settings
    user = identity(request).user

    def bind() -> dict[str, Any]:
        with runtime.store.transaction(s.tenant, user) as tx:
            rows = {v.version: v for v in tx.versions(s.model)}
            row = rows.get(version)
            if row is None:
                raise NotFound(f"model {s.model} has no version {version!r}")
            bound = tx.job_binding(job)  # one binding per job and tenant: not another model's
            if bound is not None and bound["model"] != s.model:
                raise WorkerError(
                    f"job {job} is bound to model {bound['model']} (version "
                    f"{bound['version']}); delete that binding through a worker of "
                    f"{bound['model']} first", code="bound_elsewhere", stage="binding",
                    status=409, context={"jobId": job, "model": bound["model"],
                                         "version": bound["version"]})
            snap = tx.serving_snapshot(s.model)
            _require_routable(version, row.stage, snap)
            snapshot = {"policyVersion": snap.policy_version if snap else None,
                        "thresholds": (snap.thresholds.get(version, {}) if snap else {})}
            tx.bind_job(job, row.name, snapshot)
            tx.audit("bind", "ModelVersion", row.name, {"job": job})
        runtime.bindings[job] = version
        emit("job_bound", job=job, version=version)
        return {"jobId": job, "version": version, "runtimeSnapshot": snapshot}

    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, bind))


def _require_routable(version: str, stage: str, snap: PolicySnapshot | None) -> None:
    """A binding holds only while the effective routing routes to its version: binding to
    any other is refused (it would be suspended at once)."""
    routed = sorted(routable(snap.routes)) if snap else []
    if version in routed:
        return
    source = snap.source if snap else "none"
    raise WorkerError(
        f"version {version} ({stage}) is not routed by the effective policy (source "
        f"{source}, routes {', '.join(routed) or 'none'}); bind to a routed version, or "
        "give this version a weight in the RolloutPolicy first", code="not_routable",
        stage="binding", status=409,
        context={"version": version, "stage": stage, "routable": routed,
                 "routeSource": source, "policyVersion": snap.policy_version if snap else None})


def _binding_view(runtime: WorkerRuntime, found: dict[str, Any]) -> dict[str, Any]:
    """A stored binding with its state under the routing this worker serves now."""
    snap = runtime.snapshot
    state = binding_state(found["version"], snap.routes if snap else ())
    reason = "" if state == "active" else (
        f"version {found['version']} is not routed by policyVersion "
        f"{snap.policy_version if snap else None} (source {snap.source if snap else 'none'}): "
        "the job is served by the policy until it routes to the version again")
    return {**{k: v for k, v in found.items() if k != "versionName"}, "state": state,
            "reason": reason, "policyVersion": snap.policy_version if snap else None}


@requires(READS, _served)
async def get_binding(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    job, s = request.match_info["job"], runtime.settings

    def read() -> dict[str, Any] | None:
        with runtime.store.read(s.tenant, f"binding:{job}") as tx:
            return tx.job_binding(job)

    found = await asyncio.get_running_loop().run_in_executor(None, read)
    if found is None or found["model"] != s.model:
        raise NotFound(f"job {job} has no binding to a version of model {s.model}")
    return web.json_response(_binding_view(runtime, found))


@requires(BINDINGS, _served)
async def delete_binding(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    job, s = request.match_info["job"], runtime.settings
    user = identity(request).user

    def delete() -> dict[str, Any]:
        with runtime.store.transaction(s.tenant, user) as tx:
            found = tx.job_binding(job)
            if found is None or found["model"] != s.model:
                raise NotFound(f"job {job} has no binding to a version of model {s.model}")
            tx.unbind_job(job)
            tx.audit("unbind", "ModelVersion", found["versionName"], {"job": job})
        runtime.bindings.pop(job, None)
        emit("job_unbound", job=job, version=found["version"])
        return {"jobId": job, "version": found["version"], "deleted": True}

    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, delete))


@requires(READS, _served)
async def get_run(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    run_key, s = request.match_info["run"], runtime.settings

    def read() -> dict[str, Any] | None:
        with runtime.store.read(s.tenant, "run-lookup") as tx:
            return tx.run_view(run_key)

    found = await asyncio.get_running_loop().run_in_executor(None, read)
    if found is None or found["model"] != s.model:  # as bindings: this worker's model only
        raise NotFound(f"run {run_key} is not a run of model {s.model}")
    return web.json_response(found)


@requires(REVIEWS, _served)
async def review_run(request: web.Request) -> web.StreamResponse:
    """The reviewer is the authenticated caller; a `reviewer` field or an X-Reviewer
    header is not an identity and is ignored."""
    runtime = request.app[RUNTIME]
    run_key = request.match_info["run"]
    body = await _json(request)
    status = str(body.get("status") or "")
    reviewer = identity(request).user
    if status not in REVIEW_STATUSES:
        raise WorkerError(f"status must be one of {', '.join(REVIEW_STATUSES)}",
                          code="bad_request", stage="review", status=400)
    if "controlAllowed" in body or "decision" in body:
        raise WorkerError("the AI decision stays PENDING_REVIEW; only status, reviewer and "
                          "humanDecision can be set", code="bad_request", stage="review",
                          status=400)
    agree = body.get("agree")
    if not isinstance(agree, bool):
        raise WorkerError("agree (true or false) is required: did the reviewer agree with the "
                          "AI's suggestion? It decides review_override_rate",
                          code="bad_request", stage="review", status=400)
    human = body.get("humanDecision")
    if human is not None and (not isinstance(human, str) or len(human) > HUMAN_DECISION_MAX
                              or _controls(human)):
        raise WorkerError(f"humanDecision must be a label of at most {HUMAN_DECISION_MAX} "
                          "characters (such as 'no-match')", code="bad_request",
                          stage="review", status=400,
                          context={"field": "humanDecision", "limit": HUMAN_DECISION_MAX})
    s = runtime.settings

    def review() -> dict[str, Any]:
        with runtime.store.transaction(s.tenant, f"reviewer:{reviewer}") as tx:
            found = tx.run_view(run_key)  # the write was authorized on this model only
            if found is None or found["model"] != s.model:
                raise NotFound(f"run {run_key} is not a run of model {s.model}")
            tx.review_run(run_key, status, reviewer, None if human is None else str(human),
                          agree)
            tx.audit("review", "ModelRun", run_key, {"status": status, "reviewer": reviewer,
                                                     "agree": agree, "humanDecision": human})
        emit("run_reviewed", run=run_key, status=status, agree=agree, reviewer=reviewer)
        return {"runKey": run_key, "status": status, "agree": agree, "humanDecision": human,
                "reviewStatus": status, "reviewer": reviewer, "decision": "PENDING_REVIEW"}

    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, review))


async def recover(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    token = runtime.settings.admin_token
    if not token:
        raise web.HTTPNotFound()
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _fail(401, "unauthorized", "admin", "a valid admin token is required")
    body = await _json(request) if request.can_read_body else {}
    versions = [str(body["version"])] if body.get("version") else sorted(
        {v for v, lv in runtime.versions.items() if lv.degraded} | set(runtime.failed))
    loop = asyncio.get_running_loop()
    results = {}
    for version in versions:
        lv = await loop.run_in_executor(None, runtime.recover, version)
        if lv is None:
            error = runtime.load_errors.get(version)
            results[version] = f"NotLoaded: {error}" if error else "missing"
        else:
            results[version] = "Degraded: " + lv.degraded if lv.degraded else "Ready"
    return web.json_response({"recovered": results})


async def schedule_tick(request: web.Request) -> web.Response:
    """The cron's endpoint: evaluation and canary analysis once per window key."""
    from controller.governance import schedule_tick as tick

    runtime = request.app[RUNTIME]
    token = runtime.settings.admin_token
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not token:
        raise web.HTTPNotFound()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _fail(401, "unauthorized", "admin", "a valid admin token is required")
    body = await _json(request)
    key = str(body.get("windowKey") or "").strip()
    if not key:
        raise WorkerError("windowKey is required", code="bad_request", stage="request",
                          status=400)
    result = await asyncio.get_running_loop().run_in_executor(
        None, tick, runtime.store, runtime.settings.tenant, key, datetime.now(UTC))
    return web.json_response({
        "tenant": result.tenant, "windowKey": key, "ran": result.ran,
        "message": "done" if result.ran else f"window {key} already ran; nothing to do",
        "aborted": [a.version for a in result.analysed if a.aborted_now]})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: fails while no run can be recorded (the writer's thread ended, or a commit
    has been pending longer than --run-commit-timeout), so a wedged worker is restarted."""
    trouble = request.app[WRITER].problem()
    if trouble is not None:
        return _fail(503, trouble.code, "worker", trouble.message, trouble.context)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ok, detail = request.app[RUNTIME].ready()
    trouble = request.app[WRITER].problem()
    if trouble is not None:  # searches would answer 503 run_not_recorded: take no traffic
        ok, detail = False, {**detail, "reason": "; ".join(
            filter(None, [detail.get("reason"), f"runs cannot be recorded: {trouble.message}"])),
            "runWriter": {"code": trouble.code, "message": trouble.message, **trouble.context}}
    return web.json_response({"ready": ok, **detail,
                              "shadow": request.app[MIRROR].snapshot()},
                             status=200 if ok else 503)


async def metrics_endpoint(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _refresher(app: web.Application) -> AsyncIterator[None]:
    """Full refresh every refreshSeconds, and at once when the store notifies a change
    (PostgreSQL LISTEN/NOTIFY). In between, a one-row probe of the published
    policyVersion (by default four times per cycle) is the safety net that also covers
    SQLite and notifications lost while the listener reconnects."""
    runtime = app[RUNTIME]
    s = runtime.settings
    ev = asyncio.get_running_loop()
    wake = asyncio.Event()

    def notified(_payload: str) -> None:
        metrics.WORKER_NOTIFICATIONS.labels(s.tenant, s.model).inc()
        ev.call_soon_threadsafe(wake.set)

    listener = runtime.store.listen(s.tenant, s.model, notified)

    async def loop() -> None:
        last_full = -1e9
        last_error = ""  # a known failure is logged once, as one line, until it changes
        while True:
            snap = runtime.snapshot
            period = float(snap.refresh_seconds) if snap else 1.0
            try:
                now = ev.time()
                due = wake.is_set() or now - last_full >= period
                wake.clear()
                if not due and snap is not None:
                    published = await ev.run_in_executor(None, runtime.published_version)
                    due = published != snap.policy_version
                if due:
                    await ev.run_in_executor(None, runtime.refresh)
                    last_full = now
            except CadmlError as exc:
                if str(exc) != last_error:
                    log.warning("policy refresh failed (%s); serving the last snapshot", exc)
                last_error = str(exc)
            except Exception:
                log.exception("policy refresh failed; serving the last snapshot")
            else:
                last_error = ""
            probe = s.probe_seconds if s.probe_seconds is not None else min(1.0, period / 4)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=probe)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if listener is not None:
        await ev.run_in_executor(None, listener.stop)
    app[SANDBOX].close()


async def _run_writer(app: web.Application) -> AsyncIterator[None]:
    recorder = app[RUNTIME].recorder
    if recorder is not None:  # started before the first request: it imports for ~1 s
        await asyncio.get_running_loop().run_in_executor(None, recorder.start)
    app[WRITER].start()
    app[MIRROR].start()
    yield
    await app[MIRROR].stop()
    await app[WRITER].stop()
    if recorder is not None:
        await asyncio.get_running_loop().run_in_executor(None, recorder.close)


def make_app(runtime: WorkerRuntime, sandbox: FeatureSandbox | None = None,
             refresh: bool = True, guard: WriteGuard | None = None) -> web.Application:
    """`guard` checks reviews and bindings; without one every write is refused."""
    s = runtime.settings
    app = web.Application(middlewares=[errors], client_max_size=s.max_upload_bytes)
    app[RUNTIME] = runtime
    app[GUARD] = guard or WriteGuard()
    app[UPLOADS] = []
    app[WRITER] = RunWriter(runtime.record, s.run_linger_seconds, s.run_commit_timeout) \
        if runtime.recorder is None else \
        PipeWriter(runtime.recorder, runtime.run_rows, runtime.recorded, s.run_commit_timeout)
    app[MIRROR] = ShadowMirror(runtime, lambda: app[SANDBOX], busy=lambda: bool(app[UPLOADS]))
    app[SANDBOX] = sandbox or FeatureSandbox(
        s.sandbox_workers, SandboxLimits(cpu_seconds=s.cpu_seconds,
                                         max_bytes=s.max_upload_bytes),
        max_pending=s.max_concurrent_uploads)
    app.cleanup_ctx.append(_run_writer)
    app.router.add_post("/v1/search", search)
    app.router.add_post("/v1/search/batch", search_batch)
    app.router.add_post("/v1/jobs/{job}/binding", bind_job)
    app.router.add_get("/v1/jobs/{job}/binding", get_binding)
    app.router.add_delete("/v1/jobs/{job}/binding", delete_binding)
    app.router.add_get("/v1/runs/{run}", get_run)
    app.router.add_post("/v1/runs/{run}/review", review_run)
    app.router.add_post("/admin/recover", recover)
    app.router.add_post("/admin/schedule-tick", schedule_tick)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    if refresh:
        app.cleanup_ctx.append(_refresher)
    return app
