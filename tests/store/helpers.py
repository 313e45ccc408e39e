"""Small builders for store tests."""

from __future__ import annotations

from controller.records import ModelRow, PolicyRow, RouteRow, VersionRow
from controller.store import Store


def seed_model(store: Store, tenant: str = "acme", model: str = "part-sim",
               stable: str = "1.0.0", canary: str | None = "1.1.0") -> int:
    """A model with a STABLE (and a CANARY) version and a published policy; returns its
    policy_version."""
    with store.transaction(tenant, "seed") as tx:
        tx.upsert_model(ModelRow(model, model, "acme-ml", model.title(), spec_hash="m1"))
        tx.audit("create", "Model", model)
        tx.upsert_version(VersionRow(f"{model}-{stable}", model, stable, "STABLE",
                                     "s3://b/s", "npz", "a" * 64, spec_hash="v1"))
        routes = [RouteRow(stable, 100, True)]
        if canary:
            tx.upsert_version(VersionRow(f"{model}-{canary}", model, canary, "CANARY",
                                         "s3://b/c", "npz", "b" * 64, spec_hash="v2"))
            routes = [RouteRow(stable, 90, True), RouteRow(canary, 10, False)]
        tx.upsert_policy(PolicyRow(model, model, {"weights": []}, 5, 1, "p1"))
        pv = tx.publish_snapshot(model, routes, {"similarity": {"value": 0.8,
                                                               "source": "model"}}, "policy")
        tx.audit("publish", "RolloutPolicy", model, {"policyVersion": pv})
    return pv
