"""One reconcile step for one tenant: validate, observe, plan and apply in one transaction.

Shared by Git mode and the operator; the caller supplies the resources and their
findings, and decides what to do with the returned Plan (print it, patch status,
post events).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from controller import metrics
from controller.api.v1alpha1 import Resource, RolloutPolicy
from controller.errors import CadmlError
from controller.findings import FieldError
from controller.reconcile.apply import apply_plan
from controller.reconcile.planner import Plan, plan_tenant
from controller.store.repository import Store
from controller.validation import Bundle
from controller.validation.cross import check_bundle
from controller.validation.single import check_object


def findings_for(resources: list[Resource], now: datetime) -> list[FieldError]:
    """Single-object and cross-object findings for a set of resources."""
    findings = [e for r in resources for e in check_object(r)]
    return findings + check_bundle(Bundle.of_resources(resources), now)


def reconcile_tenant(store: Store, tenant: str, resources: list[Resource],
                     findings: list[FieldError], now: datetime, actor: str,
                     mode: str = "git",
                     actors: Mapping[tuple[str, str], str] | None = None) -> Plan:
    """Plan and apply one tenant in one transaction. `actor` is who triggered the pass;
    `actors` ((kind, name) → who last changed that object) attribute its audit rows."""
    with metrics.RECONCILE_SECONDS.labels(mode).time():
        try:
            with store.transaction(tenant, actor, snapshot=True) as tx:
                plan = plan_tenant(tenant, resources, findings, tx.observe(), now)
                apply_plan(tx, plan, actors)
        except CadmlError as exc:
            metrics.RECONCILE_ERRORS.labels(mode, exc.reason).inc()
            raise
    metrics.RECONCILES.labels(mode).inc()
    for entry in plan.audit:
        metrics.AUDIT_EVENTS.labels(tenant, entry.action).inc()
    for snap in plan.snapshots:
        metrics.POLICY_VERSION.labels(tenant, snap.model_name).set(snap.policy_version)
    policies = {r.metadata.name: r for r in resources if isinstance(r, RolloutPolicy)}
    for (kind, name), status in plan.computed.items():
        cycles = (status.get("lastRollback") or {}).get("cycles")
        if kind == "RolloutPolicy" and cycles is not None and name in policies:
            metrics.ROLLBACK_CYCLES.labels(tenant, policies[name].spec.model_ref).set(cycles)
    metrics.INVALID_OBJECTS.labels(tenant).set(sum(
        1 for status in plan.computed.values()
        if any(c["type"] == "Stalled" and c["status"] == "True"
               for c in status.get("conditions", []))))
    return plan
