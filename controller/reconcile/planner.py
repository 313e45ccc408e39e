"""The planner: desired resources + observed store → a plan of rows, snapshots, audit and status.

Purely computational and level-triggered: it looks at the whole tenant every time
and never at what event woke it. No kopf, SQLAlchemy, faiss or ezdxf here; the
operator and Git mode both call `plan_tenant` and perform the plan with an
adapter (`controller.reconcile.apply`).

Invalid objects are not applied: they get a Stalled/InvalidSpec status naming the
field and rule. Objects whose references are not there yet (rules in
`FIXABLE_LATER`) wait with a Reconciling condition. Everything else converges:
rows that differ from the desired ones are written (a difference the spec did
not cause is a drift repair), objects gone from the desired state are marked
deleted, never removed, and a policy whose effective routing changed gets a new
snapshot with policy_version + 1. The status of each object is assembled from what the
planner found by `controller.reconcile.status`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controller import steps
from controller.api.v1alpha1 import (
    GROUP,
    KINDS,
    VERSION,
    Model,
    ModelVersion,
    ReleaseRecord,
    Resource,
    RolloutPolicy,
)
from controller.evaluation import judges
from controller.findings import FieldError
from controller.reconcile.status import governance_status, object_status, serving_condition
from controller.records import (
    AnalysisState,
    ModelRow,
    ObservedTenant,
    PolicyRow,
    PolicySnapshot,
    ReleaseRow,
    RouteRow,
    ShadowRoute,
    StepState,
    VersionRow,
)
from controller.routing import (
    RoutingTable,
    effective_routing,
    effective_thresholds,
    layered_thresholds,
    override_active,
    stable_only,
)
from controller.shadow import published_shadow, shadow_route, shadow_status, shadow_text
from controller.validation.cross import FIXABLE_LATER
from controller.validation.parse import ref_of
from controller.validation.single import check_transition


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: str
    kind: str
    name: str
    details: dict[str, Any]
    actor: str | None = None  # who asked, where not who last changed the object


@dataclass(frozen=True, slots=True)
class SnapshotPlan:
    policy_name: str
    model_name: str
    policy_version: int
    routes: tuple[RouteRow, ...]
    thresholds: dict[str, Any]
    source: str
    reason: str
    refresh_seconds: int
    generation: int = 0  # of the policy the snapshot was planned from (the store's guard)
    shadow: ShadowRoute | None = None  # spec.shadow in force


@dataclass
class Plan:
    tenant: str
    models: list[ModelRow] = field(default_factory=list)
    versions: list[VersionRow] = field(default_factory=list)
    policies: list[PolicyRow] = field(default_factory=list)
    snapshots: list[SnapshotPlan] = field(default_factory=list)
    releases: list[ReleaseRow] = field(default_factory=list)
    statuses: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    computed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # every status
    audit: list[AuditEntry] = field(default_factory=list)
    transitions: list[FieldError] = field(default_factory=list)  # broken against the store
    # (kind, name) whose stored status goes: no object and no row has that name any more
    statuses_gone: list[tuple[str, str]] = field(default_factory=list)
    # (model, the canary walk as read, as planned): written compare-and-set
    steps: list[tuple[str, StepState | None, StepState]] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        """True when the store's rows must change (status-only plans do not count)."""
        return bool(self.models or self.versions or self.policies or self.snapshots
                    or self.releases or self.steps)

    def summary_lines(self) -> list[str]:
        lines = [f"{a.action} {a.kind} {self.tenant}/{a.name}"
                 + (f": {a.details['summary']}" if "summary" in a.details else "")
                 for a in self.audit]
        return lines


def spec_hash(resource: Resource) -> str:
    body = resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _generation(resource: Resource) -> int:
    return resource.metadata.generation or 1


def renames(desired: Mapping[str, Hashable], stored: Mapping[str, tuple[Hashable, bool]],
            keep: set[str]) -> dict[str, str]:
    """new name → old name: each desired object the store does not know by name whose
    identity (`desired`: name → identity) a stored row has under a name no longer wanted
    (`stored`: name → (identity, deleted); `keep`: every name still desired, applied or
    not). Live rows are taken before soft-deleted ones. The store's identity survives
    renames: history stays with the row, and the unique rules never see two rows."""
    out: dict[str, str] = {}
    for name, identity in sorted(desired.items()):
        if name in stored:
            continue
        old = next((o for o, (oid, deleted) in sorted(stored.items(), key=lambda kv: kv[1][1])
                    if oid == identity and o not in keep and o not in out.values()), None)
        if old is not None:
            out[name] = old
    return out


def retire(desired: Mapping[str, Hashable], stored: Mapping[str, Any],
           identity: Callable[[Any], Hashable]) -> tuple[dict[str, Any], list[Any]]:
    """Soft-deleted rows that hold a desired name under another identity (a version name
    used again for another semver, a policy name for another model) keep their history
    under a tombstone name `name~identity`, and the name goes to the new object: a row's
    identity never changes, so its runs and evaluations stay its own. Returns the stored
    rows as they will be named, and the renames that retire them (write these first)."""
    out = dict(stored)
    moves = []
    for name, ident in desired.items():
        row = stored.get(name)
        if row is None or not row.deleted or identity(row) == ident:
            continue
        tomb = f"{name}~{_tomb_suffix(identity(row))}"
        moved = replace(row, name=tomb, previous_name=name)
        del out[name]
        out[tomb] = replace(row, name=tomb)
        moves.append(moved)
    return out, moves


def _tomb_suffix(ident: Hashable) -> str:
    parts = ident if isinstance(ident, tuple) else (ident,)
    return "~".join(str(x) for x in parts)[:60]


def _retire_entry(kind: str, row: Any) -> AuditEntry:
    return AuditEntry("retire-name", kind, row.name, {
        "summary": f"the deleted {row.previous_name} keeps its history as {row.name}; its "
                   "name goes to a new object", "previousName": row.previous_name})


def _rename_entry(kind: str, new: str, old: str, spec_hash_: str, what: str) -> AuditEntry:
    return AuditEntry("rename", kind, new, {
        "summary": f"renamed from {old}; {what} carry on", "previousName": old,
        "specHash": spec_hash_})


_BOOKKEEPING = ("uid", "spec")  # written with a row, never a difference of their own


def _comparable(row: Any) -> Any:
    return None if row is None else replace(row, **{
        f: None for f in _BOOKKEEPING if f in row.__dataclass_fields__
        and not (f == "spec" and isinstance(row, PolicyRow))})


def _change(kind: str, name: str, observed: Any, desired: Any) -> AuditEntry | None:
    """An audit entry for writing `desired` over `observed`, or None when equal (which
    incarnation wrote a row, and a version's applied spec, are not differences)."""
    observed, desired_cmp = _comparable(observed), _comparable(desired)
    if observed == desired_cmp:
        return None
    if observed is None:
        return AuditEntry("create", kind, name, {"specHash": desired.spec_hash})
    if getattr(desired, "deleted", False):
        return AuditEntry("delete", kind, name, {"summary": "removed from the desired state; "
                                                            "history kept"})
    if getattr(observed, "deleted", False):  # back after a deletion (a tenant re-added)
        return AuditEntry("restore", kind, name, {
            "specHash": desired.spec_hash,
            "summary": "back in the desired state; its history carries on"})
    if observed.spec_hash == desired.spec_hash:
        fields = [f for f in desired.__dataclass_fields__
                  if getattr(observed, f) != getattr(desired_cmp, f)]
        return AuditEntry("repair", kind, name, {"summary": "drift repaired: "
                                                            + ", ".join(fields),
                                                 "fields": fields})
    details: dict[str, Any] = {"specHash": desired.spec_hash}
    if isinstance(desired, VersionRow) and isinstance(observed, VersionRow) \
            and observed.stage != desired.stage:
        details["summary"] = f"stage {observed.stage} → {desired.stage}"
    return AuditEntry("update", kind, name, details)


def _model_row(m: Model) -> ModelRow:
    s = m.spec
    return ModelRow(name=m.metadata.name, model_key=s.model_key, provider=s.provider,
                    display_name=s.display_name, description=s.description,
                    threshold_defaults=dict(s.threshold_defaults),
                    worker_replicas=s.workers.replicas, generation=_generation(m),
                    spec_hash=spec_hash(m), review_control_allowed=s.review.control_allowed,
                    review_default_decision=s.review.default_decision, uid=m.metadata.uid)


def _version_row(v: ModelVersion) -> VersionRow:
    s = v.spec
    return VersionRow(name=v.metadata.name, model_name=s.model_ref, version=s.version,
                      stage=s.stage, artifact_uri=s.artifact.uri,
                      artifact_format=s.artifact.format, artifact_sha256=s.artifact.sha256,
                      feature_version=s.feature_version,
                      threshold_defaults=dict(s.threshold_defaults),
                      generation=_generation(v), spec_hash=spec_hash(v),
                      ef_search=s.search.ef_search if s.search else None, uid=v.metadata.uid,
                      spec=v.spec.model_dump(mode="json", by_alias=True, exclude_none=True))


def _policy_row(p: RolloutPolicy) -> PolicyRow:
    return PolicyRow(name=p.metadata.name, model_name=p.spec.model_ref,
                     spec=p.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                     refresh_seconds=p.spec.refresh_seconds, generation=_generation(p),
                     spec_hash=spec_hash(p), uid=p.metadata.uid)


def _release_row(r: ReleaseRecord) -> ReleaseRow:
    return ReleaseRow(name=r.metadata.name, release_id=r.spec.release_id,
                      git_sha=r.spec.git_sha, model_version_name=r.spec.artifacts.model_ref,
                      risk_level=r.spec.risk_level,
                      spec=r.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                      spec_hash=spec_hash(r))


def abort_reason(aborted: list[AnalysisState]) -> str:
    return "; ".join(f"canary {a.version} aborted: {a.latest.get('summary', '')}"
                     for a in sorted(aborted, key=lambda a: a.version))


def abort_routing(stable: str, aborted: list[AnalysisState]) -> RoutingTable:
    """All traffic on the STABLE version while canary analysis holds an abort."""
    return stable_only(stable, "analysis-abort", abort_reason(aborted))


def _thresholds(model: Model | None, versions: dict[str, ModelVersion],
                policy: RolloutPolicy, routes: tuple[RouteRow, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in routes:
        eff = effective_thresholds(model, versions.get(r.version), policy)
        out[r.version] = {k: {"value": t.value, "source": t.source} for k, t in eff.items()}
    return out


def _stored_resource(kind: str, tenant: str, name: str, spec: dict[str, Any]) -> Resource | None:
    """The object as the store last applied it, for the CRD's transition rules; None where
    the row cannot be read as one (written under an older schema)."""
    try:
        return KINDS[kind].model_validate({"apiVersion": "cadml.io/v1alpha1", "kind": kind,
                                           "metadata": {"name": name, "namespace": tenant},
                                           "spec": spec})
    except ValueError:
        return None


def store_transitions(resources: list[Resource], observed: ObservedTenant,
                      model_now: Mapping[str, str] | None = None) -> list[FieldError]:
    """The CRD's transition rules (stage moves, identity and artifact immutability, a
    policy's model) between what the store applied and the desired objects of the same
    name: what the API server checks with `oldSelf` and `cadml diff` checks between two
    commits, so Git mode and diff give the same verdict. A version renamed in this pass
    is judged against the live row it takes over (its identity, under a new name), so a
    rename cannot carry a new artifact onto a served version. A version re-created after
    its deletion (same semver, any name) resurrects the soft-deleted row and its history:
    that is a create (no stage rule), but the artifact it served stays its own
    (version.artifact-immutable; a new artifact is a new semver). Judged against the spec the
    store applied, never against columns a drift may have changed; only where the spec
    changed (a row altered behind the controller's back is drift, repaired)."""
    model_now = model_now or {}
    names = {(r.kind, r.metadata.name) for r in resources}
    by_identity: dict[tuple[str, str], list[VersionRow]] = defaultdict(list)
    for o in observed.versions.values():
        by_identity[(model_now.get(o.model_name, o.model_name), o.version)].append(o)
    errors: list[FieldError] = []
    for r in resources:
        name, tenant = r.metadata.name, r.metadata.namespace or ""
        old: Resource | None = None
        if isinstance(r, ModelVersion):
            v = _row_taken_over(r, observed, by_identity, names, model_now)
            if v is not None and v.spec_hash != spec_hash(r):
                # the spec last applied; rows written before 0012 have only their columns
                applied = dict(v.spec) if v.spec else {
                    "version": v.version, "stage": v.stage,
                    "artifact": {"uri": v.artifact_uri, "format": v.artifact_format,
                                 **({"sha256": v.artifact_sha256} if v.artifact_sha256 else {})},
                    "featureVersion": v.feature_version}
                applied["modelRef"] = model_now.get(v.model_name, v.model_name)
                old = _stored_resource("ModelVersion", tenant, name, applied)
                if old is not None and v.deleted:
                    # a re-creation is a create (no stage rule), but the row it resurrects
                    # served traffic with its artifact: a semver's artifact never changes
                    errors += [e for e in check_transition(old, r)
                               if e.rule == "version.artifact-immutable"]
                    continue
        elif isinstance(r, RolloutPolicy):
            p = observed.policies.get(name)
            if p is not None and not p.deleted and p.spec_hash != spec_hash(r):
                old = _stored_resource("RolloutPolicy", tenant, name, p.spec)
        if old is not None:
            errors += check_transition(old, r)
    return errors


def _row_taken_over(r: ModelVersion, observed: ObservedTenant,
                    by_identity: Mapping[tuple[str, str], list[VersionRow]],
                    names: Collection[tuple[str, str]],
                    model_now: Mapping[str, str]) -> VersionRow | None:
    """The stored row a desired version is written over: its own name's row of the same
    identity (model, semver), else (a rename, or a re-creation under another name) the row
    of its identity no desired object holds, a live one before a soft-deleted one, as
    `renames` picks it. None for a new identity. `by_identity`: the stored rows by
    (model as desired now, semver)."""
    wanted = (r.spec.model_ref, r.spec.version)
    own = observed.versions.get(r.metadata.name)
    if own is not None and (not own.deleted or
                            (model_now.get(own.model_name, own.model_name), own.version)
                            == wanted):
        return own
    candidates = [o for o in by_identity.get(wanted, [])
                  if ("ModelVersion", o.name) not in names]
    return min(candidates, key=lambda o: o.deleted, default=None)


def _unreadable_stables(versions: list[ModelVersion], observed: ObservedTenant,
                        unreadable: set[tuple[str, str]],
                        model_now: Mapping[str, str]) -> list[FieldError]:
    """One STABLE per model counts the versions this operator cannot read: their rows stay
    as stored, so a STABLE row of one makes a desired STABLE of another semver a second
    STABLE — refused on that object (Conflict), never left to the store's unique index
    (which would fail the whole tenant's pass)."""
    held = {(model_now.get(v.model_name, v.model_name), v.version): n
            for n, v in observed.versions.items()
            if ("ModelVersion", n) in unreadable and not v.deleted and v.stage == "STABLE"}
    errors = []
    for v in versions:
        if v.spec.stage != "STABLE":
            continue
        for (model, semver), name in held.items():
            if model == v.spec.model_ref and semver != v.spec.version:
                errors.append(FieldError(
                    "version.one-stable", "spec.stage",
                    f"ModelVersion {v.metadata.namespace}/{name} ({semver}) is STABLE in the "
                    "store and this operator cannot read its spec (a newer CRD?): only one "
                    "STABLE per model; upgrade the operator or fix that object first",
                    obj=ref_of(v)))
    return errors


def plan_tenant(
    tenant: str,
    resources: list[Resource],
    findings: list[FieldError],
    observed: ObservedTenant,
    now: datetime,
    unreadable: Collection[tuple[str, str]] = (),
) -> Plan:
    """`unreadable` ((kind, name)): objects that exist but could not be read (a spec with
    fields of a newer CRD). They are present: their rows, routes and snapshots stay as
    the store holds them, neither deleted nor rewritten, and no rename takes them over."""
    plan = Plan(tenant)
    present = {(r.kind, r.metadata.name) for r in resources} | set(unreadable)

    def present_names(kind: str) -> set[str]:
        return {name for k, name in present if k == kind}
    by_obj: dict[tuple[str, str], list[FieldError]] = defaultdict(list)
    for f in findings:
        if f.severity == "error" and f.obj.namespace == tenant:
            by_obj[(f.obj.kind, f.obj.name)].append(f)

    def invalid_of(r: Resource) -> list[FieldError]:
        return [e for e in by_obj.get((r.kind, r.metadata.name), [])
                if e.rule not in FIXABLE_LATER]

    def waiting_of(r: Resource) -> list[FieldError]:
        return [e for e in by_obj.get((r.kind, r.metadata.name), []) if e.rule in FIXABLE_LATER]

    def ok(r: Resource) -> bool:
        return not by_obj.get((r.kind, r.metadata.name))

    models = {r.metadata.name: r for r in resources if isinstance(r, Model)}
    versions = [r for r in resources if isinstance(r, ModelVersion)]
    policies = [r for r in resources if isinstance(r, RolloutPolicy)]
    releases = [r for r in resources if isinstance(r, ReleaseRecord)]
    applied_models = {n for n, m in models.items() if ok(m)}

    # ---- rows: models, then versions leaving STABLE before any version entering it
    desired_models = {n: _model_row(models[n]) for n in sorted(applied_models)}
    obs_models, retired = retire({n: m.model_key for n, m in desired_models.items()},
                                 observed.models, lambda m: m.model_key)
    for row in retired:
        plan.models.append(row)
        plan.audit.append(_retire_entry("Model", row))
    model_renamed = renames({n: m.model_key for n, m in desired_models.items()},
                            {n: (m.model_key, m.deleted) for n, m in obs_models.items()},
                            present_names("Model"))
    model_now = {old: new for new, old in model_renamed.items()}  # stored name → desired

    def stored_model(name: str) -> str:
        """The name the store keeps a desired model's rows under (its old one if renamed)."""
        return model_renamed.get(name, name)

    for name, mrow in desired_models.items():
        if name in model_renamed:
            plan.models.append(replace(mrow, previous_name=model_renamed[name]))
            plan.audit.append(_rename_entry("Model", name, model_renamed[name],
                                            mrow.spec_hash, "its versions, policy and runs"))
        elif entry := _change("Model", name, obs_models.get(name), mrow):
            plan.models.append(mrow)
            plan.audit.append(entry)
    # transition rules against what the store applied (renamed objects against the row
    # they take over); an object breaking one is not applied
    plan.transitions = store_transitions(resources, observed, model_now)
    for f in plan.transitions:
        by_obj[(f.obj.kind, f.obj.name)].append(f)
    for f in _unreadable_stables(versions, observed, set(unreadable), model_now):
        by_obj[(f.obj.kind, f.obj.name)].append(f)
    applied_versions = [v for v in versions if ok(v) and v.spec.model_ref in applied_models]
    versions_of: dict[str, dict[str, ModelVersion]] = defaultdict(dict)
    for v in applied_versions:
        versions_of[v.spec.model_ref][v.spec.version] = v
    declared = {(v.spec.model_ref, v.spec.version) for v in versions}
    for p in policies:  # a policy routes only to versions this pass applies
        routed = [(f"spec.weights[{i}].version", w.version) for i, w in enumerate(p.spec.weights)]
        if p.spec.override is not None:
            routed.append(("spec.override.version", p.spec.override.version))
        for path, semver in routed:
            if ok(p) and (p.spec.model_ref, semver) in declared and \
                    semver not in versions_of.get(p.spec.model_ref, {}):
                by_obj[(p.kind, p.metadata.name)].append(FieldError(
                    "policy.version-ref", path, f"version {semver} is not applied (see its "
                    "own status); the policy waits for it", obj=ref_of(p)))
    desired_versions = {v.metadata.name: _version_row(v) for v in applied_versions}

    def version_id(v: VersionRow) -> tuple[str, str]:
        return model_now.get(v.model_name, v.model_name), v.version

    obs_versions, retired = retire({n: (v.model_name, v.version)
                                    for n, v in desired_versions.items()},
                                   observed.versions, version_id)
    version_changes: list[tuple[VersionRow, AuditEntry]] = [
        (replace(row, model_name=version_id(row)[0]), _retire_entry("ModelVersion", row))
        for row in retired]
    version_renamed = renames(
        {n: (v.model_name, v.version) for n, v in desired_versions.items()},
        {n: (version_id(v), v.deleted) for n, v in obs_versions.items()},
        present_names("ModelVersion"))
    for name, vrow in desired_versions.items():
        if name in version_renamed:
            version_changes.append((replace(vrow, previous_name=version_renamed[name]),
                                    _rename_entry("ModelVersion", name, version_renamed[name],
                                                  vrow.spec_hash, "its runs and routes")))
        elif entry := _change("ModelVersion", name, obs_versions.get(name), vrow):
            version_changes.append((vrow, entry))
    for name, old in obs_versions.items():
        if name not in desired_versions and not old.deleted and \
                name not in version_renamed.values() and \
                ("ModelVersion", name) not in present:
            gone = VersionRow(**{**_asdict(old), "deleted": True,
                                 # its model may be renamed in this very pass
                                 "model_name": model_now.get(old.model_name, old.model_name),
                                 "stage": "DEPRECATED" if old.stage == "STABLE" else old.stage})
            version_changes.append((gone, AuditEntry("delete", "ModelVersion", name, {
                "summary": f"removed from the desired state (was {old.stage}); history kept"})))
    version_changes.sort(key=lambda pair: pair[0].stage == "STABLE" and not pair[0].deleted)
    for vrow, entry in version_changes:
        plan.versions.append(vrow)
        plan.audit.append(entry)

    # ---- policies and their snapshots
    status_extra: dict[tuple[str, str], dict[str, Any]] = {}
    expired_of: dict[str, str | None] = {}
    serving: dict[tuple[str, str], int] = {}  # (model, semver) → weight
    desired_policies = {p.metadata.name: p.spec.model_ref for p in policies
                        if ok(p) and p.spec.model_ref in applied_models}
    obs_policies, retired = retire(desired_policies, observed.policies,
                                   lambda o: model_now.get(o.model_name, o.model_name))
    for row in retired:
        plan.policies.append(replace(row, model_name=model_now.get(row.model_name,
                                                                   row.model_name)))
        plan.audit.append(_retire_entry("RolloutPolicy", row))
    renamed = renames(desired_policies,
                      {n: (model_now.get(o.model_name, o.model_name), o.deleted)
                       for n, o in obs_policies.items()},
                      present_names("RolloutPolicy"))
    for p in policies:
        if not ok(p) or p.spec.model_ref not in applied_models:
            continue
        prow = _policy_row(p)
        old_name = renamed.get(prow.name)
        if old_name is not None:  # one policy under a new name: policyVersion continues
            prow = replace(prow, previous_name=old_name)
            plan.policies.append(prow)
            plan.audit.append(_rename_entry("RolloutPolicy", prow.name, old_name,
                                            prow.spec_hash, "its snapshots and policyVersion"))
        elif entry := _change("RolloutPolicy", p.metadata.name,
                              obs_policies.get(prow.name), prow):
            plan.policies.append(prow)
            plan.audit.append(entry)
        vs = versions_of[p.spec.model_ref]
        # analysis state is keyed by model and spec, never by the policy's or model's name
        p_spec, p_hash = prow.spec, prow.spec_hash
        states = [a for a in observed.analysis.get(stored_model(p.spec.model_ref), [])
                  if judges(a.spec_hash, p_spec, p_hash)]
        aborted = [a for a in states if a.aborted]
        routing = effective_routing(p, {sv: v.spec.stage for sv, v in vs.items()}, now,
                                    abort_reason(aborted) if aborted else None)
        stepped = _walk_steps(plan, p, p_spec, routing,
                              observed.steps.get(stored_model(p.spec.model_ref)), now)
        routing = stepped.get("_routing", routing)
        routing = replace(routing, shadow=shadow_route(p, vs, routing))
        expired_of[p.metadata.name] = routing.expired
        thresholds = _thresholds(models.get(p.spec.model_ref), vs, p, routing.routes)
        pv = _publish(plan, p.metadata.name, p.spec.model_ref,
                      # a renamed model's line: its snapshots are stored under the old name
                      observed.snapshots.get(stored_model(p.spec.model_ref)), routing,
                      thresholds, p.spec.refresh_seconds, _generation(p))
        for route in routing.routes:
            serving[(p.spec.model_ref, route.version)] = route.weight
        stable_route = next((x.version for x in routing.routes if x.is_stable), None)
        eff = thresholds.get(stable_route or "", {})
        status_extra[("RolloutPolicy", p.metadata.name)] = {
            "policyVersion": pv,
            "routing": [{"version": x.version, "weight": x.weight,
                         "stage": vs[x.version].spec.stage if x.version in vs else None}
                        for x in routing.routes],
            "routingSummary": _summary(routing.routes),
            "shadow": shadow_status(p, vs, routing),
            "effectiveThresholds": {k: {"value": f"{v['value']:g}", "source": v["source"]}
                                    for k, v in eff.items()},
        }
        status_extra[("Model", p.spec.model_ref)] = {
            "activePolicy": p.metadata.name, "policyVersion": pv, "routeSource": routing.source,
            "routingSummary": _summary(routing.routes)}
        status_extra[("RolloutPolicy", p.metadata.name)].update(
            governance_status(p, routing, states, observed,
                              observed.bindings.get(stored_model(p.spec.model_ref), {})))
        if "facts" in stepped:
            extra_p = status_extra[("RolloutPolicy", p.metadata.name)]
            extra_p.update(stepped["facts"])
            mine = {c.type for c in stepped["conds"]}  # an abort of the steps says so itself
            extra_p["_conditions"] = [*(c for c in extra_p.get("_conditions", [])
                                        if c.type not in mine), *stepped["conds"]]
    for name, old_p in obs_policies.items():
        if not old_p.deleted and name not in renamed.values() and \
                ("RolloutPolicy", name) not in present:
            plan.policies.append(PolicyRow(**{**_asdict(old_p), "deleted": True, "model_name":
                                              model_now.get(old_p.model_name,
                                                            old_p.model_name)}))
            plan.audit.append(AuditEntry("delete", "RolloutPolicy", name, {
                "summary": "removed from the desired state; snapshots kept"}))
    # a live policy not applied in this pass (invalid, waiting, unreadable) still routes:
    # its workers serve its last snapshot, and its model's status says so
    live_policy = {model_now.get(row.model_name, row.model_name): row.name for row in
                   {**observed.policies, **{x.name: x for x in plan.policies}}.values()
                   if not row.deleted}
    for name in sorted(applied_models - {k[1] for k in status_extra if k[0] == "Model"}):
        snap = observed.snapshots.get(stored_model(name))
        if name in live_policy and snap is not None:
            for route in snap.routes:
                serving[(name, route.version)] = route.weight
            status_extra[("Model", name)] = {
                "activePolicy": live_policy[name], "policyVersion": snap.policy_version,
                "routeSource": snap.source, "routingSummary": _summary(snap.routes)}
            continue
        # no RolloutPolicy: the workers route 100 % to the STABLE version (source default)
        routing = effective_routing(None, {sv: v.spec.stage
                                           for sv, v in versions_of[name].items()}, now)
        for route in routing.routes:
            serving[(name, route.version)] = route.weight
        status_extra[("Model", name)] = {"routeSource": routing.source,
                                         "routingSummary": _summary(routing.routes)}
    for name in sorted(applied_models):
        # what its workers serve once the plan is applied: the snapshot planned now, else
        # the stored one; with no live policy, only its STABLE version
        served: SnapshotPlan | PolicySnapshot | None = next(
            (x for x in plan.snapshots if x.model_name == name),
            observed.snapshots.get(stored_model(name)))
        extra = status_extra.setdefault(("Model", name), {})
        extra["_conditions"] = [serving_condition(
            served.routes if served is not None and name in live_policy else (),
            served.policy_version if served is not None else 0, versions_of[name])]
    for name, old_m in obs_models.items():
        if ("Model", name) not in present and not old_m.deleted and \
                name not in model_renamed.values():
            plan.models.append(ModelRow(**{**_asdict(old_m), "deleted": True}))
            plan.audit.append(AuditEntry("delete", "Model", name, {
                "summary": "removed from the desired state; history kept"}))

    # ---- release records: append-only
    for rr in releases:
        if not ok(rr):
            continue
        rel = _release_row(rr)
        if observed.releases.get(rel.release_id) != rel.spec_hash:
            if rel.release_id in observed.releases:
                by_obj[("ReleaseRecord", rr.metadata.name)].append(FieldError(
                    "release.immutable", "spec", "the store holds this release with other "
                    "content; release records are immutable"))
                continue
            plan.releases.append(rel)
            plan.audit.append(AuditEntry("record", "ReleaseRecord", rr.metadata.name, {
                "summary": f"release {rel.release_id} of {rel.model_version_name}",
                "releaseId": rel.release_id}))

    # ---- status of every desired object
    for res in resources:
        key = (res.kind, res.metadata.name)
        status = object_status(res, invalid_of(res), waiting_of(res), status_extra.get(key, {}),
                               serving, versions_of, expired_of, observed, now)
        plan.computed[key] = status
        if status != observed.statuses.get(key, {}):
            plan.statuses[key] = (_generation(res), status)
    plan.statuses_gone = gone_statuses(present, observed, plan)
    return plan


def gone_statuses(present: Collection[tuple[str, str]], observed: ObservedTenant,
                  plan: Plan) -> list[tuple[str, str]]:
    """The stored statuses of names that left: neither a present object nor a row of the
    store once `plan` is applied (the old name of a rename or a retired name, a name only a
    refused pass had, a release record removed from the desired state). A soft-deleted
    row keeps its last status: `cadml status` shows it deleted, history kept."""
    moved = {(kind, row.previous_name) for kind, rows in (
        ("Model", plan.models), ("ModelVersion", plan.versions),
        ("RolloutPolicy", plan.policies)) for row in rows if row.previous_name}
    rows = {(kind, name) for kind, stored in (
        ("Model", observed.models), ("ModelVersion", observed.versions),
        ("RolloutPolicy", observed.policies)) for name in stored}
    keep = set(present) | (rows - moved)
    return sorted(key for key in observed.statuses if key not in keep)


def _walk_steps(plan: Plan, p: RolloutPolicy, spec: Mapping[str, Any], routing: RoutingTable,
                state: StepState | None, now: datetime) -> dict[str, Any]:
    """A policy with canary steps: walk them (`controller.steps`), plan the new state and
    its audit row, and return the routing to publish (`_routing`), the status facts and
    conditions. {} for a policy without steps."""
    strategy = p.spec.strategy
    if strategy is None:
        return {}
    command = steps.parse_command(p.metadata.annotations.get(steps.COMMAND_ANNOTATION))
    routed, new = steps.step_routing(spec, strategy.steps, routing, state, now, command)
    if new != state:
        plan.steps.append((p.spec.model_ref, state, new))
        said = steps.change_summary(strategy.steps, state, new)
        if said is not None:
            # a command that applied left a verdict naming its user (a refused one not)
            applied = command is not None and any(
                v.get("by") == command.user for v in new.verdicts
                if state is None or v not in state.verdicts)
            plan.audit.append(AuditEntry("step", "RolloutPolicy", p.metadata.name, {
                "summary": said, "stepIndex": new.index, "phase": new.phase,
                **({"user": command.user, "command": command.action} if applied and command
                   else {})}, f"k8s:{command.user}" if applied and command else None))
    guard = routing.reason if routing.source == "analysis-abort" else None  # spec.analysis
    return {"_routing": routed, "facts": steps.status_facts(new, routed),
            "conds": steps.step_conditions(strategy.steps, new, guard)}


def _summary(routes: tuple[RouteRow, ...]) -> str:
    return ",".join(f"{x.version}={x.weight}" for x in routes)


def _publish(plan: Plan, policy_name: str, model: str, current: PolicySnapshot | None,
             routing: RoutingTable, thresholds: dict[str, Any], refresh_seconds: int,
             generation: int) -> int:
    """Plan a snapshot with policy_version + 1 (and its audit) when the routing differs
    from the current snapshot; the policyVersion in force once the plan is applied."""
    pv = current.policy_version if current else 0
    if current is not None and (current.routes, current.thresholds, current.refresh_seconds,
                                current.source, current.reason, current.shadow) == (
            routing.routes, thresholds, refresh_seconds, routing.source, routing.reason,
            routing.shadow):
        return pv
    pv += 1
    plan.snapshots.append(SnapshotPlan(policy_name, model, pv, routing.routes, thresholds,
                                       routing.source, routing.reason, refresh_seconds,
                                       generation, routing.shadow))
    shadow_note = "" if current is not None and current.shadow == routing.shadow else (
        f"; {shadow_text(current.shadow if current else None)} → "
        f"{shadow_text(routing.shadow)}" if current is not None or routing.shadow else "")
    plan.audit.append(AuditEntry("publish", "RolloutPolicy", policy_name, {
        "summary": f"policyVersion {pv}: " + snapshot_change(
            current, routing.routes, thresholds, refresh_seconds, routing.source,
            routing.reason) + shadow_note,
        "policyVersion": pv, "source": routing.source}))
    return pv


def snapshot_change(current: PolicySnapshot | None, routes: tuple[RouteRow, ...],
                    thresholds: dict[str, Any], refresh_seconds: int, source: str,
                    reason: str) -> str:
    """What a new snapshot changes, for its audit summary and the reconcile output: the
    routes (always shown), then each threshold value, the refresh period and the route
    source that differ from the current snapshot (and its new reason), so a thresholds-only
    change says so."""
    routing = f"{_summary(current.routes) if current else '-'} → {_summary(routes)}"
    if current is None or current.routes == routes:
        routing = f"routes {_summary(routes)} (unchanged)" if current else routing
    changes = [routing]
    if current is not None:
        for version in sorted(set(current.thresholds) | set(thresholds)):
            old, new = current.thresholds.get(version, {}), thresholds.get(version, {})
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    changes.append(f"threshold {key} of {version} "
                                   + _threshold_change(old.get(key), new.get(key)))
        if current.refresh_seconds != refresh_seconds:
            changes.append(f"refreshSeconds {current.refresh_seconds} → {refresh_seconds}")
        if current.source != source:
            changes.append(f"source {current.source} → {source}")
        if current.reason != reason and reason:
            changes.append(f"because {reason}")
    return "; ".join(changes) + f" ({source})"


def _threshold_change(was: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """`0.84 → 0.86`; with the source of each value where that changed too."""
    def value(e: dict[str, Any] | None, with_source: bool) -> str:
        if e is None:
            return "-"
        return f"{e['value']:g}" + (f" ({e['source']})" if with_source else "")
    sources = (was or {}).get("source") != (now or {}).get("source")
    return f"{value(was, sources)} → {value(now, sources)}"


def plan_abort(tenant: str, observed: ObservedTenant, now: datetime) -> Plan:
    """The abort snapshots the store's own rows call for, where no desired resources are at
    hand (`cadml schedule-tick` right after recording an abort). For each live policy whose
    canary analysis aborted under its stored spec: the snapshot `plan_tenant` publishes for
    it (the same `abort_routing`, reason, thresholds, refresh and audit), and nothing else,
    so the next full pass finds it in place. Where the rows cannot say (an active override
    wins, no STABLE version, no thresholds of it in force) it leaves it to that pass."""
    plan = Plan(tenant)
    for row in observed.policies.values():
        aborted = [a for a in observed.analysis.get(row.model_name, [])
                   if judges(a.spec_hash, row.spec, row.spec_hash) and a.aborted]
        current = observed.snapshots.get(row.model_name)
        stable = next((v.version for v in observed.versions.values()
                       if v.model_name == row.model_name and v.stage == "STABLE"
                       and not v.deleted), None)
        if row.deleted or not aborted or current is None or stable is None \
                or stable not in current.thresholds:
            continue
        try:
            policy = RolloutPolicy.model_validate({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy",
                "metadata": {"name": row.name, "namespace": tenant}, "spec": row.spec})
        except ValueError:  # a row written under an older schema: the full pass decides
            continue
        if override_active(policy, now):
            continue
        _publish(plan, row.name, row.model_name, current, abort_routing(stable, aborted),
                 {stable: current.thresholds[stable]}, row.refresh_seconds, row.generation)
    return plan


def plan_steps(tenant: str, observed: ObservedTenant, now: datetime) -> Plan:
    """The snapshots the canary steps in the store call for, where no desired resources are
    at hand (`cadml schedule-tick`, `cadml rollout` in Git mode, right after they moved a
    walk): for each live policy with steps, the routing `plan_tenant` publishes for it
    (`steps.step_routing` over `effective_routing` of its stored spec and the stages of
    its model's rows). Where those cannot say
    (a row under an older schema, a version gone) it leaves it to the next full pass.
    Thresholds layer the rows' defaults and the policy's, as `effective_thresholds` does."""
    plan = Plan(tenant)
    for row in observed.policies.values():
        current = observed.snapshots.get(row.model_name)
        if row.deleted or current is None or "strategy" not in row.spec:
            continue
        try:
            policy = RolloutPolicy.model_validate({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "RolloutPolicy",
                "metadata": {"name": row.name, "namespace": tenant}, "spec": row.spec})
        except ValueError:
            continue
        stages = {v.version: v.stage for v in observed.versions.values()
                  if v.model_name == row.model_name and not v.deleted}
        aborted = [a for a in observed.analysis.get(row.model_name, [])
                   if judges(a.spec_hash, row.spec, row.spec_hash) and a.aborted]
        routing = effective_routing(policy, stages, now,
                                    abort_reason(aborted) if aborted else None)
        stepped = _walk_steps(plan, policy, row.spec, routing,
                              observed.steps.get(row.model_name), now)
        routing = stepped["_routing"]
        model, by_semver = observed.models.get(row.model_name), {
            v.version: v for v in observed.versions.values()
            if v.model_name == row.model_name and not v.deleted}
        if model is None or any(r.version not in by_semver for r in routing.routes):
            continue
        sh = by_semver.get(policy.spec.shadow.version) if policy.spec.shadow else None
        routing = replace(routing, shadow=sh and published_shadow(
            policy, sh.stage, sh.artifact_sha256, routing))
        thresholds = {r.version: {k: {"value": t.value, "source": t.source}
                                  for k, t in layered_thresholds(
                                      model.threshold_defaults,
                                      (r.version, by_semver[r.version].threshold_defaults),
                                      policy.spec.thresholds).items()}
                      for r in routing.routes}
        _publish(plan, row.name, row.model_name, current, routing, thresholds,
                 row.refresh_seconds, row.generation)
    return plan


def _asdict(row: Any) -> dict[str, Any]:
    return {f: getattr(row, f) for f in row.__dataclass_fields__}
