"""Performs a Plan inside one store transaction: rows, snapshots, status and audit together."""

from __future__ import annotations

from collections.abc import Mapping

from controller.errors import ConflictError
from controller.reconcile.planner import Plan
from controller.store.repository import StoreTx


def apply_plan(tx: StoreTx, plan: Plan,
               actors: Mapping[tuple[str, str], str] | None = None) -> None:
    """Write every row, snapshot, release, status and audit event of `plan` in `tx`.
    An audit event names the actor of its object from `actors` ((kind, name) → who last
    changed it) where known, else the transaction's actor."""
    for model in plan.models:
        tx.upsert_model(model)
    for version in plan.versions:
        tx.upsert_version(version)
    for policy in plan.policies:
        tx.upsert_policy(policy)
    for snap in plan.snapshots:
        published = tx.publish_snapshot(snap.policy_name, snap.routes, snap.thresholds,
                                        snap.source, snap.reason, snap.refresh_seconds,
                                        generation=snap.generation)
        if published != snap.policy_version:
            raise ConflictError(f"policy {snap.policy_name}: planned policyVersion "
                                f"{snap.policy_version}, the store gave {published}; "
                                "another writer got there first, reconcile again")
    for release in plan.releases:
        tx.record_release(release)
    for (kind, name), (generation, status) in plan.statuses.items():
        tx.write_status(kind, name, generation, status)
    for entry in plan.audit:
        tx.audit(entry.action, entry.kind, entry.name, entry.details,
                 actor=(actors or {}).get((entry.kind, entry.name)))
