"""kopf handlers: load → validate → plan → apply → write status once, only if it changed.

`build_registry(settings)` registers every handler on a fresh registry, so the
settings are read once at start-up and nothing happens at import. Create,
update, resume and the periodic drift repair (one loop for all tenants,
`PeriodicDriver`, not a timer per object) all funnel into `tenant_pass`, one
level-triggered pass over the whole tenant (the four `*_by_ns` indexes hold the
cluster's view of it). Handlers are sync functions: kopf runs them in its
thread pool, so store I/O never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf

from controller import metrics
from controller.api.v1alpha1 import GROUP, KINDS, VERSION, Resource
from controller.errors import CadmlError, ConflictError, StaleWrite
from controller.operator import kube
from controller.operator.certs import self_signed
from controller.operator.periodic import PeriodicDriver
from controller.operator.settings import OperatorSettings
from controller.operator.tenantqueue import TenantQueue
from controller.operator.webhook import ServiceWebhookServer, parse_service
from controller.operator.workers import WORKER_LABELS, indexed_worker
from controller.reconcile.conditions import stalled, with_conditions
from controller.reconcile.planner import Plan
from controller.reconcile.step import findings_for, reconcile_tenant
from controller.store.repository import Store
from controller.validation import admission_errors
from controller.validation.parse import parse_body

PLURALS = {cls.plural: kind for kind, cls in KINDS.items()}
INDEXES = tuple(f"{plural}_by_ns" for plural in PLURALS)
FINALIZER = "cadml.io/finalizer"
CHANGED_BY = "cadml.io/changed-by"
DELETE_REQUESTED = "delete-requested"
UNPARSEABLE = "Unparseable"  # the reason an object this operator cannot read stalls with
FINALIZED = "finalized"  # memo key: uid → when its deletion finalizer completed
BODY_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
kubernetes_worker_applier = kube.kubernetes_worker_applier  # start-up's memo.apply_workers


INDEXED_ANNOTATIONS = f"{GROUP}/"  # the annotations a pass reads (changed-by, rollback-reason)


def index_by_namespace(**kwargs: Any) -> dict[str, dict[str, Any]]:
    """The object as passes see it, trimmed to what they read (the index holds every
    object of every tenant in memory): metadata without `managedFields`' field sets (only
    who managed it how, for `actor_of`) and without annotations other than cadml.io's
    (kubectl's last-applied-configuration is a second copy of the object). An object
    being deleted shows the generation its spec was written at: the API server bumps
    `generation` once when it sets `deletionTimestamp` (the spec is unchanged), and a
    pass that ran before the finalizer would otherwise write that bump into the store as
    drift ("repair: generation")."""
    namespace: str = kwargs["namespace"]
    body: kopf.Body = kwargs["body"]
    metadata = {k: v for k, v in body.metadata.items()
                if k not in ("managedFields", "annotations")}
    if body.metadata.get("managedFields"):
        metadata["managedFields"] = [{"manager": m.get("manager"), "operation":
                                      m.get("operation")} for m in body.metadata["managedFields"]]
    annotations = {k: v for k, v in (body.metadata.get("annotations") or {}).items()
                   if k.startswith(INDEXED_ANNOTATIONS)}
    if annotations:
        metadata["annotations"] = annotations
    if metadata.get("deletionTimestamp") and int(metadata.get("generation") or 0) > 1:
        metadata["generation"] = int(metadata["generation"]) - 1
    return {namespace: {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                        "metadata": metadata, "spec": dict(body.spec),
                        "status": dict(body.status)}}


WORKER_INDEXES = {"Deployment": "worker_deployments", "Service": "worker_services"}
WORKER_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "services"))


def index_worker(**kwargs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """A worker Deployment or Service by (namespace, name), trimmed (`indexed_worker`)."""
    return {(str(kwargs["namespace"]), str(kwargs["name"])): indexed_worker(kwargs["body"])}


def tenant_bodies(namespace: str, indexes: Mapping[str, Any],
                  current: Mapping[str, Any] | None = None,
                  without: tuple[str, str] | None = None,
                  gone: Collection[str] = ()) -> list[dict[str, Any]]:
    """The tenant as the indexes see it, with `current` (fresher than the index) in place
    of its indexed copy, `without` (kind, name) left out, and objects whose finalizer has
    completed (`gone`, by uid) left out even while a stale index still holds them."""
    bodies: dict[tuple[str, str], dict[str, Any]] = {}
    for name in INDEXES:
        index = indexes.get(name)
        if index is not None and namespace in index:
            for b in index[namespace]:
                if b["metadata"].get("uid") not in gone:
                    bodies[(b["kind"], b["metadata"]["name"])] = dict(b)
    if current is not None:
        bodies[(current["kind"], current["metadata"]["name"])] = {
            k: current.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
    if without is not None:
        bodies.pop(without, None)
    return list(bodies.values())


def parse_bodies(bodies: Iterable[Mapping[str, Any]]) -> list[Resource]:
    return read_bodies(bodies)[0]


def read_bodies(bodies: Iterable[Mapping[str, Any]]
                ) -> tuple[list[Resource], dict[tuple[str, str], str]]:
    """The resources, and the objects that could not be read ((kind, name) → why: the
    fields and rules, e.g. a spec field of a CRD newer than this operator). Those are
    present, not gone: a pass keeps them as the store has them (fail closed)."""
    out, unreadable = [], {}
    for body in bodies:
        result = parse_body(dict(body))
        if result.loaded is not None:
            out.append(result.loaded.resource)
        elif not result.foreign:
            key = (str(body.get("kind")), str((body.get("metadata") or {}).get("name")))
            unreadable[key] = _refusal(result.errors)
    return out, unreadable


def changed_by(operation: str, new: Mapping[str, Any], old: Mapping[str, Any] | None,
               username: str) -> str | None:
    """What the `cadml.io/changed-by` annotation must say once this request is admitted:
    the authenticated user who created the object or last changed its spec. A request
    that leaves the spec alone (the operator's finalizers, a label, someone typing the
    annotation by hand) keeps the previous value, so the annotation cannot be forged
    or dropped while the webhook runs. None: no value to keep (leave it absent)."""
    if operation == "CREATE" or old is None or new.get("spec") != old.get("spec"):
        return username or "unknown"
    previous = ((old.get("metadata") or {}).get("annotations") or {}).get(CHANGED_BY)
    return None if previous is None else str(previous)


def actor_of(body: Mapping[str, Any]) -> str:
    """Who changed the object last: the authenticated user the mutating webhook stamped,
    else (webhook off) the last field manager (kubectl, argocd, …)."""
    stamped = ((body.get("metadata") or {}).get("annotations") or {}).get(CHANGED_BY)
    if stamped:
        return f"k8s:{stamped}"
    managed = (body.get("metadata") or {}).get("managedFields") or []
    managers = [m.get("manager", "?") for m in managed if m.get("operation") == "Update"]
    return f"k8s:{managers[-1] if managers else 'unknown'}"


def _without_nulls(value: Any) -> Any:
    """The value as the API server stores it: a null field inside a status object is
    pruned (merge-patch null = absent), so comparing with it would differ forever."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields to patch: those that differ (None removes a field)."""
    desired = {k: _without_nulls(v) for k, v in desired.items()}
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired and not k.startswith("kopf")})
    return patch


def finalized_uids(memo: Mapping[str, Any], body: Mapping[str, Any] | None = None
                   ) -> set[str]:
    """Objects whose deletion finalizer completed in the last 10 minutes (uids). kopf's
    indexes drop an object only when its DELETED event arrives; a pass that ran in
    between would write the object back into the store. With `body`, record it first."""
    finalized: dict[str, float] | None = memo.get(FINALIZED)
    if finalized is None:
        return set()
    now = time.monotonic()
    if body is not None:
        finalized[str((body.get("metadata") or {}).get("uid"))] = now
    for uid, at in list(finalized.items()):
        if now - at > 600:
            finalized.pop(uid, None)
    return set(finalized)


@dataclass(frozen=True)
class PassRequest:
    """One event's share of a tenant pass: the object's body, fresher than its indexed
    copy, or None to leave it out (its finalizer); and who its audit rows name. No kind
    (`REPAIR`): the periodic repair's share, which changes nothing in the view."""
    kind: str
    name: str
    body: Mapping[str, Any] | None
    actor: str


def tenant_pass(store: Store, namespace: str, indexes: Mapping[str, Any],
                requests: Sequence[PassRequest]) -> Plan:
    """One pass over the tenant as the indexes see it when it starts, with the bodies of
    the events it covers (`requests`, coalesced by the tenant queue) in place of their
    indexed copies, and the objects being finalized left out."""
    now = datetime.now(UTC)
    events = [r for r in requests if r.kind]  # the others are the periodic repair's
    metrics.OPERATOR_PASSES.labels(namespace, "event" if events else "repair").inc()
    bodies = {(str(b["kind"]), str(b["metadata"]["name"])): b for b in tenant_bodies(
        namespace, indexes, gone=finalized_uids(indexes.get("memo") or {}))}
    for r in events:
        if r.body is None:
            bodies.pop((r.kind, r.name), None)
        else:
            bodies[(r.kind, r.name)] = {k: r.body.get(k) for k in BODY_FIELDS}
    resources, unreadable = read_bodies(list(bodies.values()))
    actors = {key: actor_of(b) for key, b in bodies.items()}
    actors.update({(r.kind, r.name): r.actor for r in events if r.body is None})
    return reconcile_tenant(store, namespace, resources, findings_for(resources, now), now,
                            requests[0].actor, mode="operator", actors=actors,
                            unreadable=unreadable)


def unparseable_status(body: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The status of an object this operator cannot read: what it had, Stalled/Unparseable
    with the fields and rules; None when it can be read."""
    result = parse_body(dict(body))
    if result.loaded is not None or result.foreign:
        return None
    return with_conditions(dict(body.get("status") or {}),
                           stalled(UNPARSEABLE, _refusal(result.errors)),
                           int((body.get("metadata") or {}).get("generation") or 1), now)


def queued_pass(memo: MutableMapping[str, Any], body: Mapping[str, Any],
                indexes: Mapping[str, Any], *, leave_out: bool = False,
                actor: str | None = None) -> Plan:
    """The plan of a tenant pass that covers this event: one pass per tenant at a time,
    events that arrive while it runs coalesced into one more (`TenantQueue`). Whichever
    handler finds the tenant idle runs the pass for all the events waiting on it. With
    `memo.patch_status` the pass writes the status of every object it changed, the
    ones it covers included, so status writes land in pass order (a handler's own patch
    of an older plan could land after a newer pass's write and undo it)."""
    meta = body["metadata"]
    request = PassRequest(str(body.get("kind")), str(meta["name"]),
                          None if leave_out else body, actor or actor_of(body))
    return submit_pass(memo, str(meta["namespace"]), request, indexes)


REPAIR = PassRequest("", "", None, "repair")  # the periodic driver's share of a pass


def submit_pass(memo: MutableMapping[str, Any], namespace: str, request: PassRequest,
                indexes: Mapping[str, Any]) -> Plan:
    """`request` into the tenant's queue (`queued_pass`); the plan of the pass covering it."""
    queue: TenantQueue[PassRequest, Plan] = memo["tenants"]

    def run(requests: list[PassRequest]) -> Plan:
        plan = tenant_pass(memo["store"], namespace, indexes, requests)
        if memo.get("patch_status"):
            covered = {(r.kind, r.name): dict(r.body.get("status") or {})
                       for r in requests if r.body is not None}
            patch_siblings(memo["patch_status"], namespace, indexes, plan, covered,
                           memo.setdefault(WRITTEN, {}))
        return plan

    return queue.submit(namespace, request, run)


# Model status fields the worker applier owns
WORKER_FIELDS = ("workersReady", "workersError")
WRITTEN = "status_written"  # memo: (namespace, kind, name) → the status a pass last wrote


def sibling_patches(bodies: Iterable[Mapping[str, Any]], plan: Plan,
                    covered: Mapping[tuple[str, str], Mapping[str, Any]],
                    written: Mapping[tuple[str, str], Mapping[str, Any]] | None = None
                    ) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, status changes) of every object of the tenant (`bodies`, the indexed
    view) whose status this plan changes. The changes are taken against every view of
    the status the operator has: the indexed one and the one a pass last wrote there
    (`written`; the index learns of that write only when its watch event arrives), and
    for an object the pass covers (`covered`), its handler's event body. Fields the
    worker applier adds to a Model are kept as they are."""
    out = []
    for b in bodies:
        key = (str(b.get("kind")), str(b["metadata"]["name"]))
        if key not in plan.computed or b["metadata"].get("deletionTimestamp"):
            continue
        views = [dict(b.get("status") or {})]
        if written and key in written:
            views.append(dict(written[key]))
        if key in covered:
            views.append(dict(covered[key]))
        changes: dict[str, Any] = {}
        for view in views:
            changes.update(status_changes(view, plan.computed[key]))
        changes = {k: v for k, v in changes.items()
                   if not (key[0] == "Model" and k in WORKER_FIELDS)}
        if changes:
            out.append((*key, changes))
    return out


def patch_siblings(patch_status: Any, namespace: str, indexes: Mapping[str, Any], plan: Plan,
                   covered: Mapping[tuple[str, str], Mapping[str, Any]],
                   written: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """Write the status a pass computed for the tenant's objects (`sibling_patches`): an
    object that arrived before its reference is Ready as soon as the reference arrives,
    not at its own timer, and no write is lost to a handler that diffs against an older
    body. `written` remembers each write until the index has caught up with it. The plan
    is committed already: a failed write is logged, and the tenant's next pass (an
    event's or the periodic repair's) writes it later."""
    bodies = tenant_bodies(namespace, indexes)
    for b in bodies:  # the index has seen the write: it is the view again
        key = (namespace, str(b.get("kind")), str(b["metadata"]["name"]))
        if written.get(key) == dict(b.get("status") or {}):
            written.pop(key, None)
    mine = {(k, n): v for (ns, k, n), v in list(written.items()) if ns == namespace}
    indexed = {(str(b.get("kind")), str(b["metadata"]["name"])): dict(b.get("status") or {})
               for b in bodies}
    for kind, name, changes in sibling_patches(bodies, plan, covered, mine):
        try:
            patch_status(namespace, kind, name, changes)
        except Exception:  # any client error: the tenant's next pass writes it
            logging.getLogger(__name__).warning(
                "status of %s %s/%s not written", kind, namespace, name, exc_info=True)
            continue
        status = {**indexed[(kind, name)], **changes}  # the merge patch, as the server does
        written[(namespace, kind, name)] = {k: v for k, v in status.items() if v is not None}


def _post_events(body: kopf.Body, plan: Plan, post: Any) -> None:
    name = body.metadata.name
    for entry in plan.audit:
        if entry.kind == body.get("kind") and entry.name == name:
            post(body, reason=entry.action.title(),
                 message=str(entry.details.get("summary", entry.action)))


RACE_RETRIES = 3  # passes from a fresh view before a conflict counts as deterministic


def retry_delay(retry: int | None) -> float:
    """Seconds before kopf retries a pass that failed on a transient store error."""
    return float(min(15 * 2 ** min(retry or 0, 10), 600))


# The handlers take only keyword arguments (kopf passes many; each picks what it needs).
# memo carries what start-up built: store, settings, post_event, apply_workers.

def on_change(**kwargs: Any) -> None:
    """Create, update and resume: one pass over the whole tenant."""
    body: kopf.Body = kwargs["body"]
    patch: kopf.Patch = kwargs["patch"]
    memo: kopf.Memo = kwargs["memo"]
    try:
        plan = queued_pass(memo, body, kwargs)
    except CadmlError as exc:
        retry = int(kwargs.get("retry") or 0)
        if isinstance(exc, StaleWrite | ConflictError) and retry < RACE_RETRIES:
            # built from an older view than the store's, or a unique rule lost to a
            # concurrent pass of the tenant: a pass from the latest view decides, soon
            raise kopf.TemporaryError(str(exc), delay=1) from exc
        if exc.retryable:  # the store is away: back off, 15 s doubling up to 10 min
            raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from exc
        # Deterministic (a unique rule the same pass breaks again): say so on the object and
        # stop retrying this event. The tenant is passed again by the periodic repair and by
        # any event of any of its objects, so fixing the cause in Git is enough.
        stalled_status = with_conditions(dict(body.status), stalled(exc.reason, str(exc)),
                                         int(body.metadata.get("generation") or 1),
                                         datetime.now(UTC))
        patch.status.update(status_changes(dict(body.status), stalled_status))
        raise kopf.PermanentError(str(exc)) from exc
    computed = plan.computed.get((str(body.get("kind")), str(body.metadata.name)))
    status = computed or unparseable_status(body, datetime.now(UTC)) or {}
    if body.get("kind") == "Model" and memo.get("apply_workers"):
        indexed = {kind: kwargs.get(index) for kind, index in WORKER_INDEXES.items()}
        status = {**status, **apply_workers(memo, body, indexed)}
    changes = status_changes(dict(body.status), status)
    if computed is not None and memo.get("patch_status"):
        # the pass wrote what it computed (in pass order); the workers' fields are ours
        changes = {k: v for k, v in changes.items() if k in WORKER_FIELDS}
    if changes:  # written once, and only when something changed
        patch.status.update(changes)
    _post_events(body, plan, memo.get("post_event") or kopf.info)


def apply_workers(memo: Mapping[str, Any], body: Mapping[str, Any],
                  indexed: Mapping[str, Any]) -> dict[str, Any]:
    """The Model's workers applied (`memo.apply_workers`): its worker status fields. A
    refusal the Model did not say yet is logged once, in a line; its status says it."""
    fields: dict[str, Any] = memo["apply_workers"](body, memo["settings"], indexed)
    refused = fields.get("workersError")
    if refused and refused != (body.get("status") or {}).get("workersError"):
        meta = body.get("metadata") or {}
        logging.getLogger(__name__).warning(
            "workers of Model %s/%s not applied (tried again every repair): %s",
            meta.get("namespace"), meta.get("name"), refused)
    return fields


def repair_tenant(memo: MutableMapping[str, Any], namespace: str,
                  indexes: Mapping[str, Any]) -> Plan:
    """The periodic drift repair of one tenant (`PeriodicDriver`, once per interval when
    no pass of it finished meanwhile): a pass from the current view, which writes the
    statuses it changed (`patch_siblings`); an object it cannot read says
    Stalled/Unparseable; each Model's workers are compared with the indexed ones and
    applied only where they differ. Nothing changed: no API write."""
    metrics.OPERATOR_TIMER_RUNS.labels(namespace, "repair").inc()
    plan = submit_pass(memo, namespace, REPAIR, indexes)
    patch = memo.get("patch_status")
    now = datetime.now(UTC)
    workers = {kind: indexes.get(index) for kind, index in WORKER_INDEXES.items()}
    for body in tenant_bodies(namespace, indexes, gone=finalized_uids(memo)):
        meta, current = body["metadata"], dict(body.get("status") or {})
        if meta.get("deletionTimestamp") or patch is None:
            continue
        key = (str(body.get("kind")), str(meta["name"]))
        changes: dict[str, Any] = {}
        if key not in plan.computed:
            changes.update(status_changes(current, unparseable_status(body, now) or current))
        if key[0] == "Model" and key in plan.computed and memo.get("apply_workers"):
            try:
                fields = apply_workers(memo, body, workers)
            except Exception:  # any client error: the next interval tries again
                logging.getLogger(__name__).warning(
                    "workers of Model %s/%s not applied", namespace, key[1], exc_info=True)
                fields = {}
            changes.update({k: v for k, v in fields.items() if current.get(k) != v})
        if changes:
            patch(namespace, *key, changes)
    return plan


def analyse_tenant(memo: MutableMapping[str, Any], namespace: str,
                   indexes: Mapping[str, Any]) -> list[Any]:
    """The periodic canary analysis of one tenant: each analysed policy's canaries are
    measured when their `intervalSeconds` have passed (earlier calls record nothing). An
    abort is recorded as analysis state and announced on the policy; a tenant pass then
    publishes it at once (the planner is the only snapshot writer). A policy with canary
    steps: the analysis step it waits on is measured and a timed pause that elapsed passes
    (`stepping.walk_policies`), then the tenant pass publishes the step's weight.
    `memo.clock` (tests) stands in for the wall clock. The outcomes, one per measurement
    taken."""
    from controller.governance import analyse_policies
    from controller.stepping import walk_policies

    policies = {str(b["metadata"]["name"]): b for b in tenant_bodies(namespace, indexes)
                if b.get("kind") == "RolloutPolicy" and _analysed(b.get("spec") or {})}
    if not policies:
        return []
    metrics.OPERATOR_TIMER_RUNS.labels(namespace, "analysis").inc()
    now = memo["clock"]() if "clock" in memo else datetime.now(UTC)
    with memo["store"].transaction(namespace, "canary-analysis") as tx:
        outcomes = analyse_policies(tx, now)
        # canary steps: the analysis step due, timed pauses that elapsed
        moved = [s for s in walk_policies(tx, now) if s.moved]
    aborted = [o for o in outcomes if o.aborted_now]
    if aborted or moved:
        post: Any = memo.get("announce") or memo.get("post_event") or kopf.info
        for o in aborted:
            if o.policy in policies:
                post(policies[o.policy], reason="CanaryAborted", message=o.summary)
        for m in moved:
            if m.policy in policies:
                post(policies[m.policy], reason="CanaryStep", message=m.summary or "")
        repair_tenant(memo, namespace, indexes)
    return outcomes


def _analysed(spec: Mapping[str, Any]) -> bool:
    """Whether the periodic analysis has anything to do for a policy of this spec."""
    return bool(spec.get("analysis") or spec.get("strategy"))


def tenants_in(indexes: Mapping[str, Any]) -> set[str]:
    """The namespaces the indexes hold any cadml object of (the tenants)."""
    changing: RuntimeError | None = None
    for _ in range(3):
        try:
            return {str(ns) for name in INDEXES for ns in list(indexes.get(name) or ())}
        except RuntimeError as exc:  # an index changed while it was read: read it again
            changing = exc
    # not "no tenants": the periodic driver would forget them all (a failed round instead)
    raise RuntimeError(f"the indexes kept changing while read: {changing}")


def periodic_driver(memo: MutableMapping[str, Any], indexes: Mapping[str, Any],
                    settings: OperatorSettings) -> PeriodicDriver:
    """The operator's one periodic loop over the tenants the indexes know."""
    queue: TenantQueue[PassRequest, Plan] = memo["tenants"]
    return PeriodicDriver(
        tenants=lambda: tenants_in(indexes), finished=queue.finished_at,
        repair=lambda ns: repair_tenant(memo, ns, indexes),
        analyse=lambda ns: analyse_tenant(memo, ns, indexes),
        interval=settings.timer_interval, analysis_interval=settings.analysis_interval,
        active=memo.get("operating") or (lambda: True), workers=settings.periodic_workers)


def successor(body: Mapping[str, Any], bodies: Iterable[Mapping[str, Any]]) -> str | None:
    """The ModelVersion that takes over `body`'s semver once it goes, or None: one of the
    same model and version under another name, valid and not being deleted itself. That
    is a rename (`kubectl apply --prune` and Argo CD create the new name before pruning
    the old one); the store carries the row, its routes and history over to the new name."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    for other in bodies:
        ometa, ospec = other.get("metadata") or {}, other.get("spec") or {}
        if other.get("kind") == "ModelVersion" and ometa.get("name") != meta.get("name") \
                and not ometa.get("deletionTimestamp") \
                and (ospec.get("modelRef"), ospec.get("version")) == \
                (spec.get("modelRef"), spec.get("version")) \
                and parse_body(dict(other)).loaded is not None:
            return str(ometa.get("name"))
    return None


def serves_workers(body: Mapping[str, Any], bodies: Iterable[Mapping[str, Any]]) -> bool:
    """Whether `body` is the only STABLE version of a Model that exists and is not being
    deleted (the Model's workers serve it, by policy or by the default route)."""
    spec = body.get("spec") or {}
    if spec.get("stage") != "STABLE":
        return False
    model, others = spec.get("modelRef"), list(bodies)
    if any(o.get("kind") == "ModelVersion" and (o.get("spec") or {}).get("modelRef") == model
           and (o.get("spec") or {}).get("stage") == "STABLE"
           and (o.get("metadata") or {}).get("name") != (body.get("metadata") or {}).get("name")
           and not (o.get("metadata") or {}).get("deletionTimestamp") for o in others):
        return False
    return any(o.get("kind") == "Model" and (o.get("metadata") or {}).get("name") == model
               and not (o.get("metadata") or {}).get("deletionTimestamp") for o in others)


def model_going(model: str, bodies: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the Model `model` or a RolloutPolicy of it is being deleted (what keeps a
    version from going is then going itself)."""
    for o in bodies:
        meta, spec = o.get("metadata") or {}, o.get("spec") or {}
        if meta.get("deletionTimestamp") and (
                (o.get("kind") == "Model" and meta.get("name") == model)
                or (o.get("kind") == "RolloutPolicy" and spec.get("modelRef") == model)):
            return True
    return False


def on_version_delete(**kwargs: Any) -> None:
    """Finalizer: a version its RolloutPolicy still routes traffic to cannot go, nor the
    only STABLE version of a Model that exists (its workers serve it, policy or not),
    unless another object of the same semver takes it over (a rename); otherwise the store
    marks it deleted (history kept) and audits it. A model is taken out of service by
    deleting the Model (its workers are garbage-collected), then its versions."""
    body: kopf.Body = kwargs["body"]
    memo: kopf.Memo = kwargs["memo"]
    store: Store = memo["store"]
    ns, name = str(body.metadata.namespace), str(body.metadata.name)
    model, semver = body.spec.get("modelRef"), body.spec.get("version")
    with store.transaction(ns, "finalizer") as tx:
        snap = tx.snapshot(model, live=True) if model else None
    weight = next((r.weight for r in snap.routes if r.version == semver), 0) if snap else 0
    bodies = tenant_bodies(ns, kwargs, gone=finalized_uids(memo))
    # what holds the version may itself be going (a namespace deleted at once): look again
    # soon rather than at the usual pace of a user's change
    soon = 1 if model_going(str(model), bodies) else None
    if snap is not None and weight > 0 and successor(body, bodies) is None:
        raise kopf.TemporaryError(
            f"ModelVersion {ns}/{name} still receives {weight}% of traffic (policyVersion "
            f"{snap.policy_version}); route it away first (or give its semver to a new object, "
            "a rename), then the deletion completes",
            delay=soon or 30)
    if serves_workers(body, bodies) and successor(body, bodies) is None:
        raise kopf.TemporaryError(
            f"ModelVersion {ns}/{name} is the only STABLE version of Model {model}, whose "
            "workers serve it; delete the Model first (its workers go with it), then the "
            "deletion completes", delay=soon or 10)
    finalized_uids(memo, body)  # from now on no pass may write it back
    _retire(store, body, kwargs)


def on_delete(**kwargs: Any) -> None:
    """Finalizer for Models and RolloutPolicies: marked deleted in the store, audited."""
    body: kopf.Body = kwargs["body"]
    finalized_uids(kwargs["memo"], body)  # from now on no pass may write it back
    _retire(kwargs["memo"]["store"], body, kwargs)


def _retire(store: Store, body: kopf.Body, kwargs: Mapping[str, Any]) -> None:
    """The finalizer's pass: the tenant without this object. Several finalizers (a prune
    deletes many objects at once) race on one tenant; the pass that loses is requeued at
    once like the other handlers' (kopf's default for an unexpected error is 60 s); a
    store that is away is retried with on_change's back-off."""
    try:
        queued_pass(kwargs["memo"], body, kwargs, leave_out=True,
                    actor=deleted_by(store, body))
    except StaleWrite as exc:
        raise kopf.TemporaryError(str(exc), delay=1) from exc
    except CadmlError as exc:
        if exc.retryable:
            raise kopf.TemporaryError(str(exc), delay=retry_delay(kwargs.get("retry"))) from exc
        raise


def record_delete_request(**kwargs: Any) -> None:
    """DELETE passes the validating webhook: the only moment the API server says who asked.
    The request is audited (never on dry-run) so the finalizer's `delete` row can name the
    same user. A store that cannot take the row refuses the deletion (retry later) rather
    than let it go unaudited."""
    body: kopf.Body = kwargs["body"]
    if kwargs.get("dryrun") or body.metadata.get("deletionTimestamp"):
        return  # a dry run, or a repeated DELETE of an object already being deleted
    user = str((kwargs.get("userinfo") or {}).get("username") or "unknown")
    kind, name, uid = str(body.get("kind")), str(body.metadata.name), str(body.metadata.uid)
    try:
        with kwargs["memo"]["store"].transaction(str(body.metadata.namespace),
                                                 f"k8s:{user}") as tx:
            # the API server may call a webhook again for the same request (a retried
            # connection): one row per object, the first requester's
            if tx.last_audit_actor(kind, name, DELETE_REQUESTED, uid=uid) is None:
                tx.audit(DELETE_REQUESTED, kind, name,
                         {"uid": uid, "summary": f"deletion requested by {user}"})
    except CadmlError as exc:
        raise kopf.AdmissionError(f"the deletion cannot be audited now ({exc}); retry",
                                  code=503) from exc


def deleted_by(store: Store, body: Mapping[str, Any]) -> str:
    """Who asked for this object's deletion (its audited request), else who last changed it."""
    meta = body.get("metadata") or {}
    with store.transaction(str(meta.get("namespace")), "finalizer") as tx:
        requested = tx.last_audit_actor(str(body.get("kind")), str(meta.get("name")),
                                        DELETE_REQUESTED, uid=str(meta.get("uid")))
    return requested or actor_of(body)


def validate(**kwargs: Any) -> None:
    """The admission webhook: refuse what no later object can fix (DESIGN §3)."""
    body: kopf.Body = kwargs["body"]
    old: kopf.Body | None = kwargs.get("old")
    if kwargs.get("operation") == "DELETE":
        record_delete_request(**kwargs)
        return
    new = parse_body(dict(body))
    if new.loaded is None:
        raise kopf.AdmissionError(_refusal(new.errors), code=422)
    before = parse_body(dict(old)).loaded if old else None
    # an object being deleted is going: it does not hold a rule against its replacement
    # (a STABLE version replaced in one sync; the old one's finalizer then lets it go)
    existing = parse_bodies(b for b in admission_tenant(str(body.metadata.namespace), kwargs)
                            if not (b.get("metadata") or {}).get("deletionTimestamp"))
    errors = admission_errors(new.loaded.resource, before.resource if before else None,
                              existing, datetime.now(UTC))
    if errors:
        raise kopf.AdmissionError(_refusal(errors), code=422)


def admission_tenant(namespace: str, kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tenant a change is judged against: read live where the operator runs (every
    replica answers admission, a standby's indexes are empty), else the indexes. A tenant
    that cannot be read refuses the change (retry later) rather than admit it unchecked."""
    reader = kwargs["memo"].get("admission_tenant")
    if reader is None:
        return tenant_bodies(namespace, kwargs)
    try:
        return reader(namespace)  # type: ignore[no-any-return]
    except Exception as exc:  # the API server's error, whatever its client raised
        raise kopf.AdmissionError(f"the tenant {namespace} cannot be read now ({exc}); "
                                  f"retry", code=503) from exc


def stamp_changed_by(**kwargs: Any) -> None:
    """The mutating webhook: record who changed the spec, for the audit trail's actor, and
    who sent a canary-step command (`cadml rollout … --cluster`): the authenticated user
    replaces the one the command names, so the audit of a resume/abort/retry cannot be
    forged."""
    from controller.steps import COMMAND_ANNOTATION, stamp_command

    operation = str(kwargs.get("operation"))
    if operation not in ("CREATE", "UPDATE"):
        return
    body: kopf.Body = kwargs["body"]
    old: kopf.Body | None = kwargs.get("old")
    userinfo = kwargs.get("userinfo") or {}
    username = str(userinfo.get("username") or "")
    value = changed_by(operation, body, old, username)
    patch: kopf.Patch = kwargs["patch"]
    if body.metadata.annotations.get(CHANGED_BY) != value:
        patch.metadata.annotations[CHANGED_BY] = value
    command = body.metadata.annotations.get(COMMAND_ANNOTATION)
    before = old.metadata.annotations.get(COMMAND_ANNOTATION) if old is not None else None
    stamped = stamp_command(command, username) if command != before else None
    if stamped is not None and stamped != command:
        patch.metadata.annotations[COMMAND_ANNOTATION] = stamped


def _refusal(errors: Iterable[Any]) -> str:
    return "; ".join(f"{e.path}: {e.message} [{e.rule}]" for e in errors)


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    ignore_failures = settings.webhook_failure_policy == "Ignore"
    for plural in PLURALS:
        kopf.index(GROUP, VERSION, plural, id=f"{plural}_by_ns",
                   registry=registry)(index_by_namespace)
        for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
            on(GROUP, VERSION, plural, id="reconcile", registry=registry)(on_change)
        # persistent: a stopping replica leaves its webhooks in place (kopf removes the
        # others on exit, and a standby would not put them back); admission never lapses
        kopf.on.validate(GROUP, VERSION, plural, id=f"validate-{plural}", side_effects=True,
                         ignore_failures=ignore_failures, persistent=True,
                         registry=registry)(validate)
        kopf.on.mutate(GROUP, VERSION, plural, id=f"changed-by-{plural}",
                       operations=["CREATE", "UPDATE"], ignore_failures=ignore_failures,
                       persistent=True, registry=registry)(stamp_changed_by)
    # the live worker Deployments and Services, from the watch: an idle Model's repair
    # judges them without a request (`WorkerApplier` reads what is not indexed yet)
    for (group, version, plural), index in zip(WORKER_RESOURCES, WORKER_INDEXES.values(),
                                               strict=True):
        kopf.index(group, version, plural, id=index, labels=dict(WORKER_LABELS),
                   registry=registry)(index_worker)
    kopf.on.delete(GROUP, VERSION, "modelversions", id="retire",
                   registry=registry)(on_version_delete)
    for plural in ("models", "rolloutpolicies"):
        kopf.on.delete(GROUP, VERSION, plural, id="retire", registry=registry)(on_delete)

    # A registry of our own has none of kopf's default activities: log in explicitly
    # (in-cluster service account, else $KUBECONFIG) through the kubernetes client.
    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.startup(registry=registry)
    def configure(**kwargs: Any) -> None:
        kopf_settings: kopf.OperatorSettings = kwargs["settings"]
        kopf_settings.persistence.finalizer = FINALIZER
        kopf_settings.posting.level = logging.INFO
        if settings.webhook_host:
            host = settings.webhook_url_host or settings.webhook_host
            if settings.webhook_cert and settings.webhook_key:  # mounted (e.g. cert-manager)
                certfile, pkeyfile = Path(settings.webhook_cert), Path(settings.webhook_key)
            else:
                certfile, pkeyfile = self_signed([host], Path(tempfile.mkdtemp(prefix="cadml-")))
            server: dict[str, Any] = dict(
                addr="0.0.0.0", port=settings.webhook_port,  # in-pod server
                host=host, certfile=str(certfile), pkeyfile=str(pkeyfile),
                cafile=settings.webhook_ca)  # None: the serving certificate is the bundle
            kopf_settings.admission.server = ServiceWebhookServer(
                service=parse_service(settings.webhook_service), **server) \
                if settings.webhook_service else kopf.WebhookServer(**server)
            # one name for both configurations kopf manages (validating and mutating)
            kopf_settings.admission.managed = f"admission.{GROUP}"

    @kopf.on.startup(registry=registry)
    def status_writer(**kwargs: Any) -> None:
        """Siblings' status goes through the kubernetes client (kopf patches only the
        object whose handler runs); a memo that brings its own (tests) keeps it."""
        memo: kopf.Memo = kwargs["memo"]
        if "patch_status" not in memo:
            memo["patch_status"] = kube.kubernetes_status_patcher()

    @kopf.on.startup(registry=registry)
    async def start_periodic(**kwargs: Any) -> None:
        """Drift repair and canary analysis: one loop for every tenant (`PeriodicDriver`),
        reading the same live indexes the handlers get."""
        memo: kopf.Memo = kwargs["memo"]
        indexes = {k: v for k, v in kwargs.items() if k in INDEXES
                   or k in WORKER_INDEXES.values()}
        driver = periodic_driver(memo, indexes, settings)
        memo["periodic"] = asyncio.create_task(driver.run(), name="cadml periodic driver")

    @kopf.on.cleanup(registry=registry)
    async def stop_periodic(**kwargs: Any) -> None:
        task: asyncio.Task[None] | None = kwargs["memo"].get("periodic")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.probe(id="store", registry=registry)
    def store_probe(**kwargs: Any) -> str:
        store: Store = kwargs["memo"]["store"]
        store.tenants()
        return "ok"

    return registry
