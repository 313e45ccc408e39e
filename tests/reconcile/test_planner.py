"""The planner is a pure function: many small cases, no database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.v1alpha1 import KINDS, Resource
from controller.reconcile.conditions import Cond, merge
from controller.reconcile.planner import plan_tenant
from controller.records import ObservedTenant
from controller.routing import effective_routing
from controller.validation import Bundle
from controller.validation.cross import check_bundle
from controller.validation.single import check_object
from tests.conftest import NOW

T = "acme"


def _obj(kind: str, name: str, spec: dict[str, Any], generation: int = 1) -> Resource:
    return KINDS[kind].model_validate({"apiVersion": "cadml.io/v1alpha1", "kind": kind,
                                       "metadata": {"name": name, "namespace": T,
                                                    "generation": generation},
                                       "spec": spec})


def model() -> Resource:
    return _obj("Model", "m", {"modelKey": "m", "provider": "p", "displayName": "M",
                               "thresholdDefaults": {"similarity": 0.8}})


def version(semver: str, stage: str, name: str | None = None) -> Resource:
    return _obj("ModelVersion", name or f"m-{semver}", {
        "modelRef": "m", "version": semver, "stage": stage,
        "artifact": {"uri": f"s3://b/{semver}", "sha256": "a" * 64, "format": "npz"}})


def policy(weights: list[tuple[str, int]], **extra: Any) -> Resource:
    return _obj("RolloutPolicy", "m", {"modelRef": "m", "weights": [
        {"version": v, "weight": w} for v, w in weights], **extra})


EMPTY = ObservedTenant({}, {}, {}, {}, {}, {})


def _plan(resources: list[Resource], observed: ObservedTenant = EMPTY):  # type: ignore[no-untyped-def]
    findings = [e for r in resources for e in check_object(r)]
    findings += check_bundle(Bundle.of_resources(resources), NOW)
    return plan_tenant(T, resources, findings, observed, NOW)


def _observed_after(resources: list[Resource]) -> ObservedTenant:
    """What the store would hold after applying the plan (no database needed)."""
    from controller.records import PolicySnapshot

    plan = _plan(resources)
    snaps = {s.model_name: PolicySnapshot(s.model_name, s.policy_name, s.policy_version,
                                          s.source, s.reason, s.routes, s.thresholds,
                                          s.refresh_seconds, NOW) for s in plan.snapshots}
    return ObservedTenant({m.name: m for m in plan.models}, {v.name: v for v in plan.versions},
                          {p.name: p for p in plan.policies}, snaps,
                          {r.release_id: r.spec_hash for r in plan.releases},
                          {k: s for k, (_, s) in plan.statuses.items()})


BASE = [model(), version("1.0.0", "STABLE"), version("1.1.0", "CANARY"),
        policy([("1.0.0", 90), ("1.1.0", 10)])]


def test_empty_store_gets_everything() -> None:
    plan = _plan(BASE)
    assert [a.action for a in plan.audit] == ["create"] * 4 + ["publish"]
    (snap,) = plan.snapshots
    assert snap.policy_version == 1 and snap.source == "policy"
    assert snap.thresholds["1.1.0"]["similarity"] == {"value": 0.8, "source": "model"}


def test_converged_store_plans_nothing() -> None:
    plan = _plan(BASE, _observed_after(BASE))
    assert not plan.changes and plan.audit == [] and plan.statuses == {}


@pytest.mark.parametrize(("weights", "expect"), [
    ([("1.0.0", 80), ("1.1.0", 20)], "1.0.0=80,1.1.0=20"),
    ([("1.0.0", 100)], "1.0.0=100"),
])
def test_routing_change_publishes_next_policy_version(weights: list[tuple[str, int]],
                                                      expect: str) -> None:
    observed = _observed_after(BASE)
    plan = _plan([*BASE[:3], policy(weights)], observed)
    (snap,) = plan.snapshots
    assert snap.policy_version == 2
    assert ",".join(f"{r.version}={r.weight}" for r in snap.routes) == expect


def test_promotion_deprecates_before_it_promotes() -> None:
    observed = _observed_after(BASE)
    new = [model(), version("1.0.0", "DEPRECATED"), version("1.1.0", "STABLE"),
           policy([("1.1.0", 100)])]
    plan = _plan(new, observed)
    assert [(v.version, v.stage) for v in plan.versions] == [("1.0.0", "DEPRECATED"),
                                                             ("1.1.0", "STABLE")]


def test_invalid_object_is_stalled_and_not_applied() -> None:
    bad = policy([("1.0.0", 90), ("1.1.0", 20)])
    plan = _plan([*BASE[:3], bad])
    assert plan.snapshots == [] and not plan.policies
    _, status = plan.statuses[("RolloutPolicy", "m")]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["reason"] == "InvalidSpec"
    assert "[policy.weights-sum-100]" in conds["Ready"]["message"]
    assert "spec.weights" in conds["Ready"]["message"]
    assert conds["Ready"]["observedGeneration"] == 1


def test_missing_reference_waits_instead_of_failing() -> None:
    plan = _plan([model(), version("1.0.0", "STABLE"), policy([("1.0.0", 90), ("2.0.0", 10)])])
    _, status = plan.statuses[("RolloutPolicy", "m")]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Reconciling"]["status"] == "True" and conds["Stalled"]["status"] == "False"
    assert "policy.version-ref" in conds["Reconciling"]["message"]


def test_second_stable_sets_conflict_condition() -> None:
    plan = _plan([model(), version("1.0.0", "STABLE"), version("1.1.0", "STABLE")])
    _, status = plan.statuses[("ModelVersion", "m-1.1.0")]
    conflict = next(c for c in status["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True" and conflict["reason"] == "SecondStable"
    assert plan.versions == []  # neither STABLE is applied while they conflict


@pytest.mark.parametrize(("extra", "source", "routes"), [
    ({"override": {"version": "1.1.0", "reason": "try it"}}, "override", [("1.1.0", 100)]),
    ({"override": {"version": "1.1.0", "reason": "x",
                   "until": (NOW - timedelta(hours=1)).isoformat()}}, "policy",
     [("1.0.0", 90), ("1.1.0", 10)]),
    ({"validUntil": (NOW - timedelta(days=1)).isoformat()}, "expired", [("1.0.0", 100)]),
    ({"validFrom": (NOW + timedelta(days=1)).isoformat()}, "expired", [("1.0.0", 100)]),
    ({"validFrom": (NOW - timedelta(days=1)).isoformat(),
      "validUntil": (NOW + timedelta(days=1)).isoformat()}, "policy",
     [("1.0.0", 90), ("1.1.0", 10)]),
])
def test_desired_routing_precedence(extra: dict[str, Any], source: str,
                                    routes: list[tuple[str, int]]) -> None:
    p = policy([("1.0.0", 90), ("1.1.0", 10)], **extra)
    stages = {v.spec.version: v.spec.stage for v in BASE[1:3]}  # type: ignore[union-attr]
    got = effective_routing(p, stages, NOW)  # type: ignore[arg-type]
    assert got.source == source
    assert [(r.version, r.weight) for r in got.routes] == routes
    if source == "override":
        assert got.routes[0].forced and not got.routes[0].is_stable


def test_expired_policy_sets_condition() -> None:
    p = policy([("1.0.0", 90), ("1.1.0", 10)],
               validUntil=(NOW - timedelta(days=1)).isoformat())
    plan = _plan([*BASE[:3], p])
    _, status = plan.statuses[("RolloutPolicy", "m")]
    expired = next(c for c in status["conditions"] if c["type"] == "PolicyExpired")
    assert expired["status"] == "True" and expired["reason"] == "OutsideValidity"


def test_drift_in_a_row_is_a_repair() -> None:
    from dataclasses import replace

    observed = _observed_after(BASE)
    name = "m-1.1.0"
    tampered = {**observed.versions, name: replace(observed.versions[name], stage="DRAFT")}
    plan = _plan(BASE, ObservedTenant(observed.models, tampered, observed.policies,
                                      observed.snapshots, observed.releases, observed.statuses))
    (entry,) = plan.audit
    assert entry.action == "repair" and entry.details["fields"] == ["stage"]


def test_spec_change_is_an_update_and_generation_is_stamped() -> None:
    observed = _observed_after(BASE)
    changed = _obj("Model", "m", {"modelKey": "m", "provider": "p", "displayName": "Renamed",
                                  "thresholdDefaults": {"similarity": 0.8}}, generation=2)
    plan = _plan([changed, *BASE[1:]], observed)
    assert [a.action for a in plan.audit] == ["update"]
    gen, status = plan.statuses[("Model", "m")]
    assert gen == 2 and status["observedGeneration"] == 2


@pytest.mark.parametrize(("old", "new", "moves"), [
    (Cond("Ready", "True", "Reconciled"), Cond("Ready", "True", "Reconciled"), False),
    (Cond("Ready", "True", "Reconciled"), Cond("Ready", "False", "InvalidSpec", "x"), True),
    (Cond("Ready", "False", "Waiting", "a"), Cond("Ready", "False", "Waiting", "b"), True),
])
def test_last_transition_time_moves_only_on_change(old: Cond, new: Cond, moves: bool) -> None:
    first = merge([], [old], 1, NOW)
    later = NOW + timedelta(minutes=5)
    second = merge(first, [new], 2, later)
    assert (second[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]) is moves
    assert second[0]["observedGeneration"] == 2


def test_model_status_counts_workers_on_the_current_policy_version() -> None:
    from controller.records import WorkerState

    observed = _observed_after(BASE)
    workers = {"m": [WorkerState("w1", "m", 1, False, NOW - timedelta(seconds=5)),
                     WorkerState("w2", "m", 0, False, NOW - timedelta(seconds=2)),
                     WorkerState("w3", "m", 1, False, NOW - timedelta(minutes=10))]}
    plan = _plan(BASE, ObservedTenant(observed.models, observed.versions, observed.policies,
                                      observed.snapshots, observed.releases,
                                      observed.statuses, workers))
    _, status = plan.statuses[("Model", "m")]
    assert status["workersApplied"] == "1/2"  # w3 is stale, w2 still on policyVersion 0


@pytest.mark.parametrize("old_deleted", [False, True])
def test_a_policy_renamed_or_recreated_under_another_name_carries_on(
        old_deleted: bool) -> None:
    from dataclasses import replace

    observed = _observed_after(BASE)
    if old_deleted:  # `kubectl delete rp m` came first, then the new one is created
        observed.policies["m"] = replace(observed.policies["m"], deleted=True)
    renamed = _obj("RolloutPolicy", "m-rollout", {"modelRef": "m", "weights": [
        {"version": "1.0.0", "weight": 100}]})
    plan = _plan([*BASE[:3], renamed], observed)
    (row,) = plan.policies
    assert (row.name, row.previous_name, row.deleted) == ("m-rollout", "m", False)
    assert [(a.action, a.name) for a in plan.audit] == [("rename", "m-rollout"),
                                                        ("publish", "m-rollout")]
    (snap,) = plan.snapshots
    assert snap.policy_version == 2  # the line continues: workers never see it go back


def test_a_removed_policy_is_deleted_when_nothing_replaces_it() -> None:
    plan = _plan(BASE[:3], _observed_after(BASE))
    (row,) = plan.policies
    assert (row.name, row.deleted, row.previous_name) == ("m", True, None)
