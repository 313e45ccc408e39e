"""Fail closed on what cannot be parsed: an object the operator cannot read stays in the store.

A CRD newer than the operator (Helm never upgrades CRDs, an upgrade rolls the operator
later) lets the API server hold fields this version does not know. In status they are
ignored; in spec they make the object unreadable, and an unreadable object is present:
its rows, routes and snapshots stay as they are and its own status says
Stalled/Unparseable with the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.records import ObservedTenant
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from tests.operator.test_handlers import Cluster

TENANT = "acme-cad"
POLICY = ("RolloutPolicy", "part-similarity")


@pytest.fixture(name="cluster")
def _cluster(tmp_path: Path) -> Cluster:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'op.db'}"))
    upgrade(store.engine)
    return Cluster(store)


def _observed(cluster: Cluster) -> ObservedTenant:
    with cluster.memo["store"].read(TENANT) as tx:
        observed: ObservedTenant = tx.observe()
    return observed


def _reconciled(cluster: Cluster) -> ObservedTenant:
    for kind, name in list(cluster.bodies):
        if cluster.bodies[(kind, name)]["metadata"]["namespace"] == TENANT:
            cluster.handle(kind, name)
    return _observed(cluster)


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_an_unknown_status_field_is_ignored(cluster: Cluster) -> None:
    before = _reconciled(cluster)
    policy = cluster.bodies[POLICY]
    policy["status"]["fieldFromANewerCRD"] = {"anything": 1}
    policy["status"]["routing"][0]["newerRouteField"] = "x"  # nested, too
    cluster.handle("Model", "part-similarity")  # a sibling's pass sees the policy too
    cluster.handle(*POLICY)
    after = _observed(cluster)
    assert not after.policies["part-similarity"].deleted
    assert after.snapshots["part-similarity"] == before.snapshots["part-similarity"]
    assert _cond(policy["status"], "Ready")["status"] == "True"


def test_an_unparseable_spec_keeps_the_object_and_its_routing(cluster: Cluster) -> None:
    before = _reconciled(cluster)
    policy = cluster.bodies[POLICY]
    policy["spec"]["trafficMirroring"] = {"percent": 5}  # a field of a newer CRD
    policy["metadata"]["generation"] = 2
    cluster.handle("Model", "part-similarity")
    patch = cluster.handle(*POLICY)
    after = _observed(cluster)
    assert after.policies == before.policies  # live and untouched
    assert after.snapshots == before.snapshots  # the workers route as before
    stalled = _cond(policy["status"], "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "Unparseable")
    assert "spec.trafficMirroring" in stalled["message"]
    assert _cond(policy["status"], "Ready")["reason"] == "Unparseable"
    assert policy["status"]["policyVersion"] == 1  # the rest of its status stays
    assert "status" in patch
    again = cluster.handle(*POLICY)
    assert dict(again) == {}  # said once


def test_an_unparseable_model_keeps_its_versions_and_policy(cluster: Cluster) -> None:
    before = _reconciled(cluster)
    model = cluster.bodies[("Model", "part-similarity")]
    model["spec"]["gpu"] = True
    cluster.handle(*POLICY)
    cluster.handle("ModelVersion", "part-similarity-1-1-0")
    cluster.handle("Model", "part-similarity")
    after = _observed(cluster)
    assert (after.models, after.versions, after.policies, after.snapshots) == (
        before.models, before.versions, before.policies, before.snapshots)
    assert _cond(model["status"], "Stalled")["reason"] == "Unparseable"


def test_an_unparseable_object_that_is_deleted_goes(cluster: Cluster) -> None:
    _reconciled(cluster)
    cluster.bodies[POLICY]["spec"]["trafficMirroring"] = {"percent": 5}
    cluster.handle(*POLICY)
    del cluster.bodies[POLICY]
    cluster.handle("Model", "part-similarity")
    assert _observed(cluster).policies["part-similarity"].deleted
