"""Status assembly: the full status of one object from what the planner found about it.

Purely computational. The planner gathers the facts (routing, policy versions, what
the workers serve, findings); this module turns them into status fields and
conditions, folding the negative-polarity ones into Ready (`conditions.summary`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from controller.api.v1alpha1 import Model, ModelVersion, ReleaseRecord, Resource, RolloutPolicy
from controller.findings import FieldError
from controller.reconcile.conditions import (
    APPLIED,
    CONFLICT,
    DEGRADED,
    POLICY_EXPIRED,
    ROLLBACK_SLO_BREACHED,
    ROLLOUT_HEALTHY,
    VALIDATED,
    Cond,
    merge,
    summary,
)
from controller.records import AnalysisState, ObservedTenant, RouteRow, WorkerState
from controller.routing import RoutingTable, routable
from controller.validation.gates import evaluate_gates, gate_summary


def message(errors: list[FieldError]) -> str:
    return "; ".join(f"{e.path}: {e.message} [{e.rule}]" for e in errors)


def object_status(r: Resource, invalid: list[FieldError], waiting: list[FieldError],
                  facts: Mapping[str, Any], serving: Mapping[tuple[str, str], int],
                  versions_of: Mapping[str, Mapping[str, ModelVersion]],
                  expired_of: Mapping[str, str | None], observed: ObservedTenant,
                  now: datetime) -> dict[str, Any]:
    """The full status of one object: the planner's `facts` about it (routing, policy
    version, `_conditions`), its findings and the domain conditions, folded into
    Ready/Stalled/Reconciling; conditions keep their lastTransitionTime where unchanged."""
    key = (r.kind, r.metadata.name)
    conds = [Cond(VALIDATED, "False" if invalid else "True",
                  "InvalidSpec" if invalid else "Valid", message(invalid))]
    conds.append(Cond(APPLIED, "False" if invalid or waiting else "True",
                      "InvalidSpec" if invalid else "Waiting" if waiting else "Applied",
                      message(waiting)))
    extra: dict[str, Any] = dict(facts)
    if isinstance(r, ModelVersion):
        conflict = [e for e in invalid if e.rule == "version.one-stable"]
        conds.append(Cond(CONFLICT, "True" if conflict else "False",
                          "SecondStable" if conflict else "NoConflict", message(conflict)))
        extra["servingWeight"] = serving.get((r.spec.model_ref, r.spec.version), 0)
    if isinstance(r, Model):
        extra["workersApplied"] = workers_applied(observed.workers.get(r.metadata.name, []),
                                                  extra.get("policyVersion"), now)
        vs = versions_of.get(r.metadata.name, {})
        extra["stableVersion"] = next((sv for sv, v in vs.items()
                                       if v.spec.stage == "STABLE"), None)
        extra["canaryVersions"] = sorted(sv for sv, v in vs.items()
                                         if v.spec.stage == "CANARY")
    if isinstance(r, RolloutPolicy):
        why = expired_of.get(r.metadata.name)
        conds.append(Cond(POLICY_EXPIRED, "True" if why else "False",
                          "OutsideValidity" if why else "InForce", why or ""))
    if isinstance(r, ReleaseRecord):
        gates = evaluate_gates(r.spec)
        extra["gates"] = [g.model_dump(by_alias=True) for g in gates]
        extra["gateSummary"] = gate_summary(gates)
    conds += extra.pop("_conditions", [])
    conds += summary(invalid=message(invalid) or None, waiting=message(waiting) or None,
                     domain=conds)
    previous = observed.statuses.get(key, {})
    generation = r.metadata.generation or 1
    status = {k: v for k, v in extra.items() if v is not None}
    status["observedGeneration"] = generation
    status["conditions"] = merge(previous.get("conditions", []), conds, generation, now)
    return status


def serving_condition(routes: Iterable[RouteRow], policy_version: int,
                      versions: Mapping[str, ModelVersion]) -> Cond:
    """A Model's Degraded condition from the routes its workers serve once the plan is
    applied: traffic on a DEPRECATED version (a policy made invalid by a deprecation is
    not applied, so its last snapshot goes on serving) is Degraded/ServesDeprecated."""
    stale = [f"{x.version} ({x.weight} %)" for x in routes
             if x.weight > 0 and x.version in versions
             and versions[x.version].spec.stage == "DEPRECATED"]
    if not stale:
        return Cond(DEGRADED, "False", "ServesRoutable", "")
    return Cond(DEGRADED, "True", "ServesDeprecated",
                f"its workers route {', '.join(stale)} to DEPRECATED versions (policyVersion "
                f"{policy_version}); route the traffic away in its RolloutPolicy")


def suspended_bindings(bound: Mapping[str, int], routes: Sequence[RouteRow]
                       ) -> dict[str, Any]:
    """Jobs bound to a version the routing does not route (after a rollback, an abort, an
    override or a deprecation): kept, not used, until the routing routes it again.
    `bound`: version → jobs bound to it. Purely computational."""
    served = routable(routes)
    versions = {v: n for v, n in sorted(bound.items()) if n > 0 and v not in served}
    return {"count": sum(versions.values()), "versions": versions}


def governance_status(p: RolloutPolicy, routing: RoutingTable, states: list[AnalysisState],
                      observed: ObservedTenant, bound: Mapping[str, int]) -> dict[str, Any]:
    """Evaluation, canary analysis, suspended bindings (`bound`: version → jobs bound to
    it) and rollback facts for a RolloutPolicy's status."""
    model = p.spec.model_ref
    routed = [w.version for w in p.spec.weights]
    out: dict[str, Any] = {
        "suspendedBindings": suspended_bindings(bound, routing.routes),
        "evaluation": [observed.evaluations[f"{model}/{v}"] for v in routed
                       if f"{model}/{v}" in observed.evaluations],
        "analysis": [{"version": a.version, **v} for a in states
                     for v in a.latest.get("verdicts", [])],
        "abortedVersions": sorted(a.version for a in states if a.aborted),
    }
    conds: list[Cond] = []
    if p.spec.analysis is not None:
        if any(a.aborted for a in states):
            conds.append(Cond(ROLLOUT_HEALTHY, "False", "CanaryAborted", routing.reason))
        elif any(a.latest.get("overall") == "Fail" for a in states):
            conds.append(Cond(ROLLOUT_HEALTHY, "False", "AnalysisFailing", "; ".join(
                a.latest.get("summary", "") for a in states)))
        elif not states or any(a.latest.get("overall") == "InsufficientData"
                               for a in states):
            conds.append(Cond(ROLLOUT_HEALTHY, "Unknown", "InsufficientData", "; ".join(
                a.latest.get("summary", "") for a in states) or "no analysis yet"))
        else:
            conds.append(Cond(ROLLOUT_HEALTHY, "True", "AnalysisPassing", "; ".join(
                a.latest.get("summary", "") for a in states)))
    facts = observed.rollbacks.get(model)
    if facts is not None:
        cycles = None
        if facts.effective_at is not None:
            cycles = round((facts.effective_at - facts.requested_at).total_seconds()
                           / facts.refresh_seconds, 3)
        out["lastRollback"] = {"requestedAt": facts.requested_at.isoformat(),
                               "effectiveAt": (facts.effective_at.isoformat()
                                               if facts.effective_at else None),
                               "cycles": cycles}
        breached = cycles is not None and cycles > 1.0
        conds.append(Cond(ROLLBACK_SLO_BREACHED, "True" if breached else "False",
                          "SlowRollback" if breached else "WithinOneCycle",
                          f"new runs needed {cycles} refresh cycles to reach the STABLE version"
                          if breached else ""))
    out["_conditions"] = conds
    return out


WORKER_STALE_AFTER = timedelta(seconds=60)


def workers_applied(workers: list[WorkerState], policy_version: int | None,
                    now: datetime) -> str | None:
    """'n/m': live workers (reported within a minute) serving the current policyVersion."""
    live = [w for w in workers if now - w.updated_at <= WORKER_STALE_AFTER]
    if not live:
        return None
    applied = sum(1 for w in live if w.applied_policy_version == policy_version)
    return f"{applied}/{len(live)}"
