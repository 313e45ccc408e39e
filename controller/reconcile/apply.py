"""Performs a Plan inside one store transaction: rows, snapshots, status and audit together.

Each kind of write goes to the store as one batch (a few statements whatever the number
of objects), in the order the store's constraints need: models before their versions,
versions (in plan order: one leaving STABLE before one entering it) before policies,
policies before their snapshots, and audit events in plan order.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.errors import ConflictError
from controller.reconcile.planner import Plan
from controller.store.audit import AuditAppend
from controller.store.repository import NewSnapshot, StoreTx


def apply_plan(tx: StoreTx, plan: Plan,
               actors: Mapping[tuple[str, str], str] | None = None) -> None:
    """Write every row, snapshot, release, status and audit event of `plan` in `tx`.
    An audit event names the actor of its object from `actors` ((kind, name) → who last
    changed it) where known, else the transaction's actor."""
    tx.upsert_models(plan.models)
    tx.upsert_versions(plan.versions)
    tx.upsert_policies(plan.policies)
    published = tx.publish_snapshots([
        NewSnapshot(snap.policy_name, snap.routes, snap.thresholds, snap.source, snap.reason,
                    snap.refresh_seconds, snap.generation, snap.shadow)
        for snap in plan.snapshots])
    for snap, version in zip(plan.snapshots, published, strict=True):
        if version != snap.policy_version:
            raise ConflictError(f"policy {snap.policy_name}: planned policyVersion "
                                f"{snap.policy_version}, the store gave {version}; "
                                "another writer got there first, reconcile again")
    for model, read, state in plan.steps:
        tx.save_step(model, state, read)
    for release in plan.releases:
        tx.record_release(release)
    tx.write_statuses(plan.statuses)
    tx.delete_statuses(plan.statuses_gone)
    tx.audit_many([AuditAppend(entry.action, entry.kind, entry.name, entry.details,
                               entry.actor or (actors or {}).get((entry.kind, entry.name)))
                   for entry in plan.audit])
