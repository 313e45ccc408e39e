"""Canary steps in the operator's handlers (issue 16): the tenant pass walks the plan and
publishes the step's weight; `cadml rollout … --cluster` is an annotation the mutating
webhook stamps with the authenticated user and the pass applies once, auditing that
user; the analysis timer passes a timed pause. Real bodies (the examples), a real store;
no API server (tests/e2e runs the same handlers under kopf)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from controller.operator.handlers import analyse_tenant, stamp_changed_by
from controller.steps import COMMAND_ANNOTATION, Command, command_annotation
from tests.operator.test_handlers import Cluster, cluster  # noqa: F401  (the fixture)

KEY = ("RolloutPolicy", "part-similarity")
STEPS = [{"setWeight": 2}, {"pause": {}}, {"setWeight": 5}, {"pause": {"duration": "60s"}}]


def _stepped(c: Cluster) -> dict[str, Any]:
    body = c.bodies[KEY]
    body["spec"] = {**body["spec"], "strategy": {"steps": STEPS}}
    body["spec"].pop("analysis")  # the example's own analysis would need runs
    return body


def _command(c: Cluster, action: str, claimed: str, authenticated: str) -> None:
    """`cadml rollout ACTION --cluster` as the API server admits it: the CLI's merge patch,
    then the mutating webhook's stamp."""
    old = c.bodies[KEY]
    sent = command_annotation(Command(action, claimed, f"{action}-{datetime.now(UTC)}"))
    new = {**old, "metadata": {**old["metadata"], "annotations": {
        **old["metadata"].get("annotations", {}), **sent["metadata"]["annotations"]}}}
    patch = kopf.Patch()
    stamp_changed_by(body=kopf.Body(new), old=kopf.Body(old), patch=patch,
                     operation="UPDATE", userinfo={"username": authenticated})
    new["metadata"]["annotations"].update(dict(patch.get("metadata", {}).get(
        "annotations", {})))
    c.bodies[KEY] = new


def _pass(c: Cluster) -> dict[str, Any]:
    """One tenant pass; the policy's status as the API server holds it after the patch."""
    c.handle(*KEY)
    return c.bodies[KEY]["status"]  # type: ignore[no-any-return]


def _steps_audit(c: Cluster) -> list[Any]:
    with c.memo["store"].read("acme-cad") as tx:
        return [e for e in tx.audit_events() if e.action == "step"]


def test_pass_walks_to_the_pause_and_a_stamped_resume_moves_it_once(
        cluster: Cluster) -> None:  # noqa: F811
    _stepped(cluster)
    status = _pass(cluster)
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        1, "Paused", 2)
    assert status["routingSummary"] == "1.1.0=98,1.2.0=2"

    _command(cluster, "resume", claimed="mallory", authenticated="alice@acme")
    stamped = json.loads(cluster.bodies[KEY]["metadata"]["annotations"][COMMAND_ANNOTATION])
    assert stamped["user"] == "alice@acme"  # the CLI's claim is replaced
    status = _pass(cluster)
    assert (status["currentStepIndex"], status["stepPhase"], status["canaryWeight"]) == (
        3, "Paused", 5)
    (resumed,) = [e for e in _steps_audit(cluster) if e.details.get("command") == "resume"]
    assert resumed.actor == "k8s:alice@acme"
    # the annotation stays on the object: later passes never apply it twice
    assert dict(cluster.handle(*KEY)) == {}
    assert len(_steps_audit(cluster)) == 2

    # the analysis timer passes the 60 s pause once it elapsed, and says so
    later = datetime.now(UTC) + timedelta(minutes=2)
    analyse_tenant(kopf.Memo({**cluster.memo, "clock": lambda: later}),
                   str(cluster.bodies[KEY]["metadata"]["namespace"]), cluster.indexes())
    assert any(reason == "CanaryStep" and "ReadyToPromote" in message
               for _, reason, message in cluster.events)
    status = _pass(cluster)
    assert status["stepPhase"] == "ReadyToPromote"
    assert status["routingSummary"] == "1.1.0=90,1.2.0=10"
    ready = next(c for c in status["conditions"] if c["type"] == "ReadyToPromote")
    assert ready["status"] == "True"


def test_abort_annotation_routes_all_to_stable_and_stalls(cluster: Cluster) -> None:  # noqa: F811
    _stepped(cluster)
    cluster.handle(*KEY)
    _command(cluster, "abort", claimed="bob", authenticated="bob@acme")
    status = _pass(cluster)
    assert status["stepPhase"] == "Aborted" and status["routingSummary"] == "1.1.0=100"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["RolloutHealthy"]["reason"] == "CanaryAborted"
    assert conds["Stalled"]["status"] == "True" and conds["Ready"]["status"] == "False"
    assert status["stepVerdicts"][-1]["by"] == "bob@acme"
    _command(cluster, "retry", claimed="bob", authenticated="bob@acme")
    status = _pass(cluster)
    assert (status["stepPhase"], status["routingSummary"]) == ("Paused", "1.1.0=98,1.2.0=2")


def test_a_resume_annotation_under_a_hold_is_read_once_and_refused(
        cluster: Cluster) -> None:  # noqa: F811
    """A held walk (here an override in force; the policy-wide analysis's abort holds it
    alike) refuses `cadml rollout resume --cluster`: the pause no traffic saw is not
    passed, no audit row says it was, and the annotation is not applied later when the
    hold ends (read once, by its id). Failed before: the resume passed the pause."""
    body = _stepped(cluster)
    assert _pass(cluster)["stepPhase"] == "Paused"
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body["spec"] = {**body["spec"], "override": {"version": "1.1.0", "reason": "incident",
                                                 "until": until}}
    held = _pass(cluster)
    assert held["routingSummary"] == "1.1.0=100"
    _command(cluster, "resume", claimed="alice", authenticated="alice@acme")
    status = _pass(cluster)
    assert (status["currentStepIndex"], status["stepPhase"]) == (1, "Paused")
    assert status["stepStartedAt"] == held["stepStartedAt"]
    assert not [e for e in _steps_audit(cluster) if e.details.get("command") == "resume"]
    body = cluster.bodies[KEY]
    body["spec"] = {k: v for k, v in body["spec"].items() if k != "override"}
    status = _pass(cluster)
    assert (status["currentStepIndex"], status["stepPhase"], status["routingSummary"]) == (
        1, "Paused", "1.1.0=98,1.2.0=2")
