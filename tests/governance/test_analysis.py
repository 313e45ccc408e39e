"""Canary analysis is data; the planner is the only snapshot writer.

Analysis records measurements (taken once per `intervalSeconds`, bounded history) keyed by
(model, version, policy spec hash), and the abort as state and audit; the planner reads
that state and publishes the 100 % STABLE snapshot. Real planner and store on SQLite and
PostgreSQL; the operator's analysis timer and `cadml schedule-tick` as users drive them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from controller.api.v1alpha1 import KINDS, Resource
from controller.governance import AnalysisOutcome, analyse_policies
from controller.operator.handlers import analyse_tenant, index_by_namespace
from controller.operator.settings import OperatorSettings
from controller.operator.tenantqueue import TenantQueue
from controller.reconcile.planner import Plan
from controller.reconcile.step import findings_for, reconcile_tenant
from controller.records import AnalysisState, PolicySnapshot, RunRecord
from controller.store import Store
from tests.conftest import NOW
from tests.stores import Backend

TENANT = "acme"
STABLE, CANARY = "1.0.0", "1.1.0"


def _obj(kind: str, name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "cadml.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": TENANT, "generation": generation,
                         "uid": f"uid-{kind}-{name}"},
            "spec": spec, "status": {}}


def bodies(model: str = "m", policy: str | None = None,
           weights: tuple[int, int] = (70, 30), failure_limit: int = 1,
           interval: int = 60) -> list[dict[str, Any]]:
    """A model with a STABLE and a CANARY version and an analysed policy, as API bodies."""
    def version(semver: str, stage: str) -> dict[str, Any]:
        return _obj("ModelVersion", f"{model}-{semver.replace('.', '-')}", {
            "modelRef": model, "version": semver, "stage": stage,
            "artifact": {"uri": f"s3://b/{model}/{semver}", "sha256": "a" * 64,
                         "format": "npz"}})
    return [
        _obj("Model", model, {"modelKey": model, "provider": "p", "displayName": model.title(),
                              "thresholdDefaults": {"similarity": 0.8}}),
        version(STABLE, "STABLE"), version(CANARY, "CANARY"),
        _obj("RolloutPolicy", policy or f"{model}-policy", {
            "modelRef": model,
            "weights": [{"version": STABLE, "weight": weights[0]},
                        {"version": CANARY, "weight": weights[1]}],
            "analysis": {"metrics": [{"name": "success_rate", "min": 0.9}],
                         "minSampleSize": 5, "failureLimit": failure_limit,
                         "intervalSeconds": interval, "windowSeconds": 3600}}),
    ]


def resources(docs: list[dict[str, Any]]) -> list[Resource]:
    return [KINDS[d["kind"]].model_validate(d) for d in docs]


def reconcile(store: Store, docs: list[dict[str, Any]], now: datetime = NOW) -> Plan:
    res = resources(docs)
    return reconcile_tenant(store, TENANT, res, findings_for(res, now), now, "test")


def runs(store: Store, model: str = "m", ok: bool = False, n: int = 10,
         at: datetime = NOW - timedelta(minutes=1)) -> None:
    with store.transaction(TENANT, "worker") as tx:
        tx.record_runs([RunRecord(model, CANARY, 1, "policy", {}, 10.0, success=ok,
                                  met_threshold=ok, created_at=at) for _ in range(n)])


def analyse(store: Store, now: datetime) -> list[AnalysisOutcome]:
    with store.transaction(TENANT, "canary-analysis") as tx:
        return analyse_policies(tx, now)


def snapshot(store: Store, model: str = "m") -> PolicySnapshot:
    with store.transaction(TENANT, "t") as tx:
        snap = tx.snapshot(model)
    assert snap is not None
    return snap


def states(store: Store, model: str = "m") -> list[AnalysisState]:
    with store.transaction(TENANT, "t") as tx:
        return tx.observe().analysis.get(model, [])


def routes(snap: PolicySnapshot) -> list[tuple[str, int]]:
    return [(r.version, r.weight) for r in snap.routes]


def test_analysis_records_the_abort_and_the_planner_publishes_it(store: Store) -> None:
    docs = bodies()
    reconcile(store, docs)
    runs(store)
    before = snapshot(store).policy_version
    (outcome,) = analyse(store, NOW)
    assert outcome.aborted_now and outcome.overall == "Fail"
    # nothing was published in the analysis transaction: only state and audit
    assert snapshot(store).policy_version == before
    (state,) = states(store)
    assert state.aborted and state.failures == 1 and state.version == CANARY
    (measured,) = state.measurements
    assert measured["overall"] == "Fail" and measured["at"] == NOW.isoformat()
    assert measured["verdicts"][0]["observed"] == 0.0
    assert measured["verdicts"][0]["bound"] == "min 0.9"
    with store.transaction(TENANT, "t") as tx:
        (abort,) = [e for e in tx.audit_events() if e.action == "abort"]
        assert tx.verify_audit() is None
    assert abort.details["version"] == CANARY and abort.details["verdicts"][0]["result"] == "Fail"
    # the next pass publishes the abort
    plan = reconcile(store, docs)
    assert [s.source for s in plan.snapshots] == ["analysis-abort"]
    snap = snapshot(store)
    assert snap.policy_version == before + 1 and snap.source == "analysis-abort"
    assert routes(snap) == [(STABLE, 100)] and "canary 1.1.0 aborted" in snap.reason
    assert not reconcile(store, docs).snapshots  # and holds it


def test_a_measurement_waits_for_the_interval(store: Store) -> None:
    reconcile(store, bodies(failure_limit=3, interval=60))
    runs(store)
    assert [o.failures for o in analyse(store, NOW)] == [1]
    for seconds in (10, 59):  # inside the interval: nothing recorded, nothing counted
        assert analyse(store, NOW + timedelta(seconds=seconds)) == []
    (state,) = states(store)
    assert len(state.measurements) == 1 and state.failures == 1
    assert [o.failures for o in analyse(store, NOW + timedelta(seconds=60))] == [2]
    (state,) = states(store)
    assert len(state.measurements) == 2 and not state.aborted


def test_measurement_history_is_bounded(store: Store) -> None:
    from controller.evaluation import MEASUREMENT_HISTORY

    reconcile(store, bodies(interval=5))
    runs(store, ok=True)
    for i in range(MEASUREMENT_HISTORY + 5):
        (outcome,) = analyse(store, NOW + timedelta(seconds=5 * i))
        assert outcome.overall == "Pass"
    (state,) = states(store)
    assert len(state.measurements) == MEASUREMENT_HISTORY
    assert state.measurements[0]["at"] == (NOW + timedelta(seconds=25)).isoformat()
    assert state.measurements[-1]["at"] == (
        NOW + timedelta(seconds=5 * (MEASUREMENT_HISTORY + 4))).isoformat()


def _abort(store: Store, docs: list[dict[str, Any]]) -> None:
    reconcile(store, docs)
    runs(store)
    assert [o.aborted_now for o in analyse(store, NOW)] == [True]
    reconcile(store, docs)
    assert snapshot(store).source == "analysis-abort"


def test_a_renamed_policy_keeps_its_abort(store: Store) -> None:
    _abort(store, bodies(policy="m-policy"))
    renamed = bodies(policy="m-rollout")  # the same spec under another name
    plan = reconcile(store, renamed)
    assert not plan.snapshots
    snap = snapshot(store)
    assert snap.source == "analysis-abort" and routes(snap) == [(STABLE, 100)]
    assert snap.policy_name == "m-rollout"
    status = plan.computed[("RolloutPolicy", "m-rollout")]
    assert status["abortedVersions"] == [CANARY]
    # nor is it reset: the aborted canary is not measured again under the new name
    assert analyse(store, NOW + timedelta(hours=1)) == []
    assert not reconcile(store, renamed).snapshots


def test_a_new_spec_clears_the_abort(store: Store) -> None:
    _abort(store, bodies())
    changed = bodies(weights=(80, 20))
    plan = reconcile(store, changed)
    assert [s.source for s in plan.snapshots] == ["policy"]
    assert routes(snapshot(store)) == [(STABLE, 80), (CANARY, 20)]
    assert plan.computed[("RolloutPolicy", "m-policy")]["abortedVersions"] == []


def test_an_edit_unrelated_to_the_canary_keeps_its_abort(store: Store) -> None:
    """Session-4 review: the abort was keyed by the whole spec, so changing refreshSeconds
    (or a threshold) sent 30 % of the traffic back to the failed canary."""
    _abort(store, bodies())
    for field, value in (("refreshSeconds", 10),
                         ("thresholds", {"similarity": 0.9})):
        edited = bodies()
        edited[-1]["spec"][field] = value
        reconcile(store, edited)
        snap = snapshot(store)
        assert snap.source == "analysis-abort" and routes(snap) == [(STABLE, 100)], field
    assert analyse(store, NOW + timedelta(hours=1)) == []  # not measured again either


def test_schedule_tick_makes_an_abort_effective_at_once(
        backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    store = backend.store
    docs = bodies()
    reconcile(store, docs)
    runs(store)
    before = snapshot(store).policy_version
    assert main(["schedule-tick", "--window-key", "w1", "--tenant", TENANT, "--store",
                 backend.app_url, "--now", NOW.isoformat(), "-o", "json"]) == 0
    (tick,) = json.loads(capsys.readouterr().out)
    assert [(a["version"], a["aborted"]) for a in tick["analysis"]] == [(CANARY, True)]
    snap = snapshot(store)  # published by the planner right after the tick committed
    assert snap.policy_version == before + 1 and snap.source == "analysis-abort"
    assert routes(snap) == [(STABLE, 100)]
    # the full pass agrees with what was published: nothing more to publish
    assert not reconcile(store, docs).snapshots
    with store.transaction(TENANT, "t") as tx:
        assert tx.verify_audit() is None
        assert [e.action for e in tx.audit_events()].count("publish") == 2


class Cluster:
    """What kopf hands the timer: the bodies, the four indexes, and a memo with a clock."""

    def __init__(self, store: Store, docs: list[dict[str, Any]]) -> None:
        self.bodies = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        self.now = NOW
        self.events: list[tuple[str, str, str]] = []
        self.memo = kopf.Memo(store=store, settings=OperatorSettings(store_url="sqlite://"),
                              post_event=lambda body, reason, message: self.events.append(
                                  (body["metadata"]["name"], reason, message)),
                              finalized={}, clock=lambda: self.now,
                              tenants=TenantQueue())

    def indexes(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        plural = {"Model": "models", "ModelVersion": "modelversions",
                  "RolloutPolicy": "rolloutpolicies", "ReleaseRecord": "releaserecords"}
        out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for b in self.bodies.values():
            for ns, value in index_by_namespace(namespace=TENANT, body=kopf.Body(b)).items():
                out[f"{plural[b['kind']]}_by_ns"][ns].append(value)
        return out

    def timer(self) -> None:
        """The operator's periodic analysis of the tenant (one run for all its policies)."""
        analyse_tenant(self.memo, TENANT, self.indexes())


def test_two_analysed_policies_do_not_double_count(store: Store) -> None:
    """One analysis run per tenant and interval covers every analysed policy once: with
    two analysed policies in the tenant, a failing canary is aborted after failureLimit
    intervals, not fewer, even when the run comes twice in one interval."""
    docs = bodies("a", failure_limit=3) + bodies("b", failure_limit=3)
    reconcile(store, docs)
    start = datetime.now(UTC)  # the wall clock's neighbourhood, as a live operator sees it
    runs(store, "a", at=start - timedelta(minutes=1))
    runs(store, "b", at=start - timedelta(minutes=1))
    cluster = Cluster(store, docs)
    for interval in range(2):
        cluster.now = start + timedelta(seconds=60 * interval)
        cluster.timer()
        cluster.timer()  # again within the interval: records nothing
    for model in ("a", "b"):
        assert snapshot(store, model).source == "policy"
        (state,) = states(store, model)
        assert state.failures == 2 and not state.aborted
    cluster.now = start + timedelta(seconds=120)
    cluster.timer()
    for model in ("a", "b"):
        (state,) = states(store, model)
        assert state.failures == 3 and state.aborted
        # the run passed the tenant: the abort is in force at once
        snap = snapshot(store, model)
        assert snap.source == "analysis-abort" and routes(snap) == [(STABLE, 100)]
        assert (f"{model}-policy", "CanaryAborted") in [(n, r) for n, r, _ in cluster.events]
