"""One reconcile step for one tenant: validate, observe, plan and apply in one transaction.

Shared by Git mode and the operator; the caller supplies the resources and their
findings, and decides what to do with the returned Plan (print it, patch status,
post events).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime

from controller import metrics
from controller.api.v1alpha1 import Resource, RolloutPolicy
from controller.errors import CadmlError, ConflictError, StaleWrite
from controller.findings import FieldError
from controller.reconcile.apply import apply_plan
from controller.reconcile.conditions import stalled, with_conditions
from controller.reconcile.planner import Plan, plan_abort, plan_tenant
from controller.records import ObservedTenant
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
                     actors: Mapping[tuple[str, str], str] | None = None,
                     guard: Callable[[Plan, ObservedTenant], None] | None = None,
                     unreadable: Collection[tuple[str, str]] = ()) -> Plan:
    """Plan and apply one tenant in one transaction. `actor` is who triggered the pass;
    `actors` ((kind, name) → who last changed that object) attribute its audit rows;
    `guard` may refuse the plan before anything is written (it raises a CadmlError);
    `unreadable` ((kind, name)) exist but could not be parsed: kept as the store has them."""
    seen: list[int] = []  # the audit sequence of the view the pass was planned from
    with metrics.RECONCILE_SECONDS.labels(mode).time():
        try:
            try:
                with store.transaction(tenant, actor, snapshot=True) as tx:
                    observed = tx.observe()
                    seen.append(tx.audit_seq())
                    plan = plan_tenant(tenant, resources, findings, observed, now, unreadable)
                    if guard is not None:
                        guard(plan, observed)
                    apply_plan(tx, plan, actors)
            except ConflictError as exc:
                raise lost_race(store, tenant, seen, exc) from exc
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


def lost_race(store: Store, tenant: str, seen: list[int],
              exc: ConflictError) -> CadmlError:
    """A unique rule broken by a pass is a lost race when another pass committed changes
    to the tenant after this pass's snapshot (PostgreSQL: two first reconciles insert the
    same rows; the loser waits for the winner, then meets its rows): a StaleWrite, which a
    pass from a fresh view resolves. Otherwise the pass itself breaks it (deterministic)."""
    if not seen:
        return exc
    with store.read(tenant) as tx:
        now_seq = tx.audit_seq()
    if now_seq == seen[0]:
        return exc
    return StaleWrite(f"another pass changed tenant {tenant} while this one was planned "
                      f"from an older view (audit {seen[0]} → {now_seq}): {exc}; a pass from "
                      "the latest view decides")


def publish_aborts(store: Store, tenant: str, now: datetime, actor: str,
                   planner: Callable[[str, ObservedTenant, datetime], Plan] = plan_abort
                   ) -> Plan:
    """Make recorded canary aborts effective where no desired resources are at hand
    (`cadml schedule-tick`): the planner's `plan_abort` over the store's own rows, applied
    in one transaction. A rival pass that published first (it read the same abort) leaves
    nothing to do on the retry. `planner=plan_steps`: where the canary steps stand, alike."""
    for attempt in range(3):
        try:
            with store.transaction(tenant, actor) as tx:
                plan = planner(tenant, tx.observe(), now)
                apply_plan(tx, plan)
            break
        except ConflictError:
            if attempt == 2:
                raise
    for snap in plan.snapshots:
        metrics.POLICY_VERSION.labels(tenant, snap.model_name).set(snap.policy_version)
    return plan


def _generations(observed: ObservedTenant) -> dict[tuple[str, str], int]:
    return ({("Model", n): m.generation for n, m in observed.models.items()}
            | {("ModelVersion", n): v.generation for n, v in observed.versions.items()}
            | {("RolloutPolicy", n): p.generation for n, p in observed.policies.items()})


def stall_tenant(store: Store, tenant: str, resources: list[Resource], error: CadmlError,
                 now: datetime, actor: str, also: Collection[tuple[str, str]] = ()) -> None:
    """After a pass of `tenant` failed and rolled back: mark its objects (`resources`, and
    the stored objects `also` names) Stalled with the error's reason and message, in a
    transaction of its own, so status says why nothing changed. The next pass that
    succeeds computes their conditions afresh."""
    generation: dict[tuple[str, str], int] = {
        (r.kind, r.metadata.name): r.metadata.generation or 1 for r in resources}
    with store.transaction(tenant, actor) as tx:
        previous = tx.statuses()
        stored = _generations(tx.observe()) if set(also) - set(generation) else {}
        for key in sorted(set(generation) | set(also)):
            gen = generation.get(key) or stored.get(key, 1)
            status = with_conditions(previous.get(key, {}), stalled(error.reason, str(error)),
                                     gen, now)
            if status != previous.get(key):
                tx.write_status(key[0], key[1], gen, status)
