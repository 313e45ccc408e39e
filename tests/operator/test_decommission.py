"""Decommissioning a model: the Model goes first (its workers with it), then its versions.
Its only STABLE version cannot go while the Model's workers serve it, policy or not."""

from __future__ import annotations

import kopf
import pytest

from controller.operator.handlers import on_delete, on_version_delete
from tests.operator.test_handlers import Cluster, cluster  # noqa: F401 - the fixture


def test_the_only_stable_version_goes_after_its_model(cluster: Cluster) -> None:  # noqa: F811
    for kind, name in list(cluster.bodies):
        cluster.handle(kind, name)
    policy = cluster.bodies.pop(("RolloutPolicy", "part-similarity"))
    on_delete(body=kopf.Body(policy), memo=cluster.memo, **cluster.indexes())
    stable = cluster.bodies[("ModelVersion", "part-similarity-1-1-0")]
    assert stable["spec"]["stage"] == "STABLE"
    # no policy: the default route serves STABLE, and so do the workers
    with pytest.raises(kopf.TemporaryError, match="only STABLE version of Model"):
        on_version_delete(body=kopf.Body(stable), memo=cluster.memo, **cluster.indexes())
    model = cluster.bodies[("Model", "part-similarity")]
    model["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:00Z"  # being deleted: enough
    on_version_delete(body=kopf.Body(stable), memo=cluster.memo, **cluster.indexes())
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        last = list(tx.audit_events())[-1]
        assert (last.action, last.object_name) == ("delete", "part-similarity-1-1-0")


def test_a_renamed_stable_version_can_go_while_its_model_exists(
        cluster: Cluster) -> None:  # noqa: F811
    for kind, name in list(cluster.bodies):
        cluster.handle(kind, name)
    old = cluster.bodies[("ModelVersion", "part-similarity-1-1-0")]
    cluster.bodies[("ModelVersion", "part-similarity-v1-1-0")] = {
        **old, "metadata": {**old["metadata"], "name": "part-similarity-v1-1-0",
                            "uid": "uid-renamed"}, "status": {}}
    on_version_delete(body=kopf.Body(old), memo=cluster.memo, **cluster.indexes())
