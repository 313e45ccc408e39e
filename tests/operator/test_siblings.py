"""A pass writes the status of every object of the tenant it changed, not only the
triggering one's (kopf patches that one; the others go through `memo.patch_status`)."""

from __future__ import annotations

from typing import Any

from tests.operator.test_handlers import Cluster, cluster  # noqa: F401 - the fixture


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_an_object_that_arrived_before_its_model_is_ready_when_the_model_arrives(
        cluster: Cluster) -> None:  # noqa: F811
    writes: list[tuple[str, str, str, dict[str, Any]]] = []

    def patch_status(ns: str, kind: str, name: str, changes: dict[str, Any]) -> None:
        writes.append((ns, kind, name, changes))
        status = cluster.bodies[(kind, name)]["status"]
        status.update({k: v for k, v in changes.items() if v is not None})

    cluster.memo["patch_status"] = patch_status
    model = cluster.bodies.pop(("Model", "part-similarity"))
    others = [k for k in cluster.bodies if k[0] != "Model"
              and cluster.bodies[k]["metadata"]["namespace"] == "acme-cad"]
    stable = ("ModelVersion", "part-similarity-1-1-0")
    cluster.handle(*stable)  # its status is written by the pass (in pass order)
    status = cluster.bodies[stable]["status"]
    assert _ready(status)["status"] == "False" and "does not exist" in _ready(status)["message"]
    cluster.bodies[("Model", "part-similarity")] = model
    cluster.handle("Model", "part-similarity")  # only the Model's event
    assert _ready(cluster.bodies[stable]["status"])["status"] == "True"
    written = {(kind, name) for _, kind, name, _ in writes}
    # the pass writes every status it changed, the Model's it covered included
    assert stable in written and ("Model", "part-similarity") in written
    assert all(_ready(cluster.bodies[k]["status"])["status"] == "True" for k in others
               if k[0] == "ModelVersion" and "rc" not in k[1]), writes
    writes.clear()
    cluster.handle("Model", "part-similarity")
    assert writes == []  # nothing changed: no write


def test_a_models_worker_fields_are_kept(cluster: Cluster) -> None:  # noqa: F811
    writes: list[dict[str, Any]] = []
    cluster.memo["patch_status"] = lambda ns, kind, name, changes: writes.append(
        {"kind": kind, **changes})
    cluster.bodies[("Model", "part-similarity")]["status"]["workersReady"] = "2/2"
    cluster.handle("RolloutPolicy", "part-similarity")
    model = [w for w in writes if w["kind"] == "Model"]
    assert model and all("workersReady" not in w for w in model)


def test_a_pass_from_an_index_that_has_not_seen_the_last_sibling_write_still_repairs_it(
        cluster: Cluster) -> None:  # noqa: F811
    """kopf's index learns of a status write only when its watch event arrives. Pass P
    (policy 90/10 → 50/50) writes 1.2.0's servingWeight 50; the policy goes back to
    90/10 and pass P2 runs before the watch event of P's write, from an index that still
    says 10. P2 computes 10: the status must say 10 afterwards (the operator remembers
    what it wrote until the index has seen it), and an idle pass once the index caught up
    writes nothing."""
    import kopf

    from controller.operator.handlers import on_change

    for kind, name in list(cluster.bodies):
        cluster.handle(kind, name)
    writes: list[tuple[str, str, dict[str, Any]]] = []

    def patch_status(ns: str, kind: str, name: str, changes: dict[str, Any]) -> None:
        writes.append((kind, name, changes))
        status = cluster.bodies[(kind, name)]["status"]
        status.update({k: v for k, v in changes.items() if v is not None})

    cluster.memo["patch_status"] = patch_status
    version = ("ModelVersion", "part-similarity-1-2-0")
    policy = cluster.bodies[("RolloutPolicy", "part-similarity")]
    stale = cluster.indexes()  # the index before P's write reaches it
    policy["spec"]["weights"] = [{"version": "1.1.0", "weight": 50},
                                 {"version": "1.2.0", "weight": 50}]
    policy["metadata"]["generation"] = 2
    cluster.handle("RolloutPolicy", "part-similarity")
    assert cluster.bodies[version]["status"]["servingWeight"] == 50
    policy["spec"]["weights"] = [{"version": "1.1.0", "weight": 90},
                                 {"version": "1.2.0", "weight": 10}]
    policy["metadata"]["generation"] = 3
    patch = kopf.Patch()
    on_change(body=kopf.Body(policy), patch=patch, memo=cluster.memo, **stale)
    policy["status"].update(dict(patch.get("status", {})))  # what kopf does with its patch
    assert cluster.bodies[version]["status"]["servingWeight"] == 10, writes
    writes.clear()
    cluster.handle("Model", "part-similarity")  # the index has caught up: nothing to write
    assert writes == []


def test_a_handlers_late_patch_does_not_undo_a_newer_passs_status(
        cluster: Cluster) -> None:  # noqa: F811
    """Under load kopf applies a handler's patch some time after its pass: a version that
    arrived before its Model is passed (P1: Waiting), the Model arrives and its pass (P2)
    writes the version Ready, and only then is the version handler's own patch applied.
    The version must stay Ready. Before, the handler patched P1's status (Waiting) after
    P2's write, and the version said Waiting until its repair timer (seen on the real API
    server: 200 tenants all Ready one timer interval after the apply)."""
    import kopf

    from controller.operator.handlers import on_change

    cluster.memo["patch_status"] = cluster.patch_status
    model = cluster.bodies.pop(("Model", "part-similarity"))
    stable = ("ModelVersion", "part-similarity-1-1-0")
    late = kopf.Patch()
    on_change(body=kopf.Body(cluster.bodies[stable]), patch=late, memo=cluster.memo,
              **cluster.indexes())  # P1; kopf has not applied `late` yet
    cluster.bodies[("Model", "part-similarity")] = model
    cluster.handle("Model", "part-similarity")  # P2
    assert _ready(cluster.bodies[stable]["status"])["status"] == "True"
    cluster.merge_status(*stable, dict(late.get("status", {})))  # kopf, late
    assert _ready(cluster.bodies[stable]["status"])["status"] == "True"
