"""A model with a STABLE version and no RolloutPolicy routes 100 % to STABLE (source
`default`): removing the policy must not take the model offline (issue 10, item 4). Real
store, real planner, a real worker runtime over real faiss artifacts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from controller.api.v1alpha1 import KINDS, Resource
from controller.reconcile.step import findings_for, reconcile_tenant
from tests.worker.conftest import MODEL, TENANT, World


def _obj(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return KINDS[kind].model_validate({"apiVersion": "cadml.io/v1alpha1", "kind": kind,
                                       "metadata": {"name": name, "namespace": TENANT,
                                                    "generation": 1}, "spec": spec})


def _desired(world: World, with_policy: bool) -> list[Resource]:
    out = [_obj("Model", MODEL, {"modelKey": MODEL, "provider": "acme", "displayName": "P",
                                 "thresholdDefaults": {"similarity": 0.5}})]
    for name, semver, stage, art in (("ps-1-0-0", "1.0.0", "STABLE", world.stable),
                                     ("ps-1-1-0", "1.1.0", "CANARY", world.canary)):
        out.append(_obj("ModelVersion", name, {
            "modelRef": MODEL, "version": semver, "stage": stage, "artifact": {
                "uri": art.manifest_path.as_uri(), "sha256": art.manifest_sha256,
                "format": "faiss-index"}}))
    if with_policy:
        out.append(_obj("RolloutPolicy", MODEL, {"modelRef": MODEL, "weights": [
            {"version": "1.0.0", "weight": 50}, {"version": "1.1.0", "weight": 50}]}))
    return out


def _pass(world: World, resources: list[Resource]) -> dict[str, Any]:
    now = datetime.now(UTC)
    plan = reconcile_tenant(world.store, TENANT, resources, findings_for(resources, now), now,
                            "test")
    return plan.computed[("Model", MODEL)]


def test_removing_the_policy_keeps_the_stable_version_served(world: World) -> None:
    assert _pass(world, _desired(world, with_policy=True))["routeSource"] == "policy"
    world.runtime.refresh()
    vectors = np.random.default_rng(7).random((40, 24), dtype=np.float32)
    jobs = [f"job-{i}" for i in range(40)]
    before = world.runtime.search(vectors, jobs, k=3)
    assert {o.version for o in before} == {"1.0.0", "1.1.0"}  # the 50/50 split is live

    status = _pass(world, _desired(world, with_policy=False))
    assert status["routeSource"] == "default" and status["routingSummary"] == "1.0.0=100"
    assert "activePolicy" not in status
    world.runtime.refresh()
    after = world.runtime.search(vectors, jobs, k=3)
    assert {(o.version, o.route_source) for o in after} == {("1.0.0", "default")}
    assert {o.policy_version for o in after} == {before[0].policy_version}  # the line goes on
    assert after[0].thresholds["similarity"]["source"] == "model"
    ok, detail = world.runtime.ready()
    assert ok and detail["versions"] == {"1.0.0": "Ready"}  # the canary is let go
