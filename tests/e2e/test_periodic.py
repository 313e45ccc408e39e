"""End to end: the operator's periodic work is one unit per tenant per interval.

Drift repair and canary analysis run without any event: once per interval per tenant,
whatever its object count (an idle tenant of five objects is passed once an interval,
not five times), they make no API write when nothing changed, and the analysis timer
of the running operator aborts a failing canary on its own. The repair interval here is
2 s (`TIMER_INTERVAL`); the analysis interval follows it.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from bench.operator_bench import requests
from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane
from tests.e2e.test_burst import KINDS, ready_now, tenant

pytestmark = pytest.mark.e2e

TIMER_INTERVAL = 2
PASSES = "cadml_operator_tenant_passes_total"
TIMERS = "cadml_operator_timer_runs_total"


def _apply_ready(cp: ControlPlane, ns: str, docs: list[dict[str, Any]]) -> None:
    cp.kubectl("create", "namespace", ns, check=False)
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def ready() -> bool:
        items = json.loads(cp.kubectl("get", KINDS, "-n", ns, "-o", "json").stdout)["items"]
        return len(items) == len(docs) and all(ready_now(i) for i in items)

    wait_for(ready, timeout=60, what=f"{ns} Ready")


def test_an_idle_tenant_is_passed_once_per_interval_whatever_its_object_count(
        control_plane: ControlPlane, operator: Operator) -> None:
    ns = "periodic-idle"
    _apply_ready(control_plane, ns, tenant(ns))
    time.sleep(2 * TIMER_INTERVAL)  # the apply's last events are handled meanwhile
    window = 6 * TIMER_INTERVAL
    passes_at = operator.metric(PASSES, tenant=ns)
    timers_at = operator.metric(TIMERS, tenant=ns, timer="repair")
    requests_at = requests(control_plane)
    time.sleep(window)  # a measuring window: the counts below are what happened in it
    passes = operator.metric(PASSES, tenant=ns) - passes_at
    api = requests(control_plane) - requests_at
    timers = operator.metric(TIMERS, tenant=ns, timer="repair") - timers_at
    intervals = window / TIMER_INTERVAL
    print(f"\n{window} s idle, 5 objects: {passes:.0f} passes, {timers:.0f} repair timer runs, "
          f"API requests {dict(api)}")
    # one periodic run and one pass per interval for the tenant, not one per object
    assert timers <= intervals + 1 and passes <= intervals + 1, (timers, passes)
    assert passes >= intervals - 2  # and the repair does run, without any event
    writes = {k: v for k, v in api.items()
              if k.split()[0] in ("PATCH", "POST", "PUT", "DELETE") and "peerings" not in k}
    assert writes == {}  # nothing changed: no API write


def _analysed(ns: str) -> list[dict[str, Any]]:
    """A Model with a STABLE and a CANARY version and an analysed 70/30 policy."""
    art = {"uri": "s3://m/x/index.faiss", "format": "faiss-index",
           "sha256": "2a0266f1c7b70b43021df6f5aa8d7c4e55d10dd775f19531af874a703aed248e"}

    def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "cadml.io/v1alpha1", "kind": kind,
                "metadata": {"namespace": ns, "name": name}, "spec": spec}

    return [
        obj("Model", "sim", {"modelKey": "sim", "provider": "p", "displayName": "Sim",
                             "workers": {"replicas": 0}}),
        *(obj("ModelVersion", f"sim-{v.replace('.', '-')}", {
            "modelRef": "sim", "version": v, "stage": stage, "artifact": art,
            "featureVersion": "v4"}) for v, stage in (("1.0.0", "STABLE"), ("1.1.0", "CANARY"))),
        obj("RolloutPolicy", "sim", {
            "modelRef": "sim", "weights": [{"version": "1.0.0", "weight": 70},
                                           {"version": "1.1.0", "weight": 30}],
            "analysis": {"metrics": [{"name": "success_rate", "min": 0.9}],
                         "minSampleSize": 5, "failureLimit": 1, "intervalSeconds": 5,
                         "windowSeconds": 3600}}),
    ]


def test_the_operators_own_analysis_timer_aborts_a_failing_canary(
        control_plane: ControlPlane, operator: Operator) -> None:
    """No event after the runs are recorded: only the operator's analysis timer can see
    them, record the measurement, abort the canary and have the pass publish the abort."""
    from controller.records import RunRecord
    from controller.store import Store
    from controller.store.engine import make_engine

    ns = "periodic-analysis"
    _apply_ready(control_plane, ns, _analysed(ns))
    policy = get(control_plane, "rp", ns, "sim")
    assert policy["status"]["routingSummary"] == "1.0.0=70,1.1.0=30"
    store = Store(make_engine(operator.admin_url))
    try:
        with store.transaction(ns, "worker") as tx:  # what the workers record
            tx.record_runs([RunRecord("sim", "1.1.0", 1, "policy", {}, 10.0, success=False,
                                      met_threshold=False,
                                      created_at=datetime.now(UTC) - timedelta(seconds=5))
                            for _ in range(10)])
        recorded = time.monotonic()
        status = wait_for(lambda: (s := get(control_plane, "rp", ns, "sim")["status"])
                          ["routingSummary"] == "1.0.0=100" and s, timeout=60,
                          what="the canary aborted by the analysis timer")
        print(f"\naborted {time.monotonic() - recorded:.1f} s after the runs were recorded")
        healthy = next(c for c in status["conditions"] if c["type"] == "RolloutHealthy")
        assert healthy["status"] == "False" and healthy["reason"] == "CanaryAborted"
        with store.transaction(ns, "t") as tx:
            snap = tx.snapshot("sim", live=True)
            assert snap is not None and snap.source == "analysis-abort"
            (state,) = tx.observe().analysis["sim"]
            assert state.aborted and state.measurements  # the measurement is data
            assert [e.action for e in tx.audit_events()].count("abort") == 1
    finally:
        store.engine.dispose()
    events = control_plane.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "CanaryAborted" in {e.get("reason") for e in json.loads(events)["items"]}


def _refuse_services(cp: ControlPlane, ns: str) -> None:
    """A ValidatingAdmissionPolicy (in the API server itself) that refuses every Service
    in `ns`; in force once a server-side dry run is refused."""
    name = f"refuse-services-{ns}"
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
             {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
              "resources": ["services"]}]},
             "validations": [{"expression": "false", "message": "no Services here"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {
             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}}]))
    wait_for(lambda: cp.kubectl("create", "service", "clusterip", "probe", "--tcp=80", "-n",
                                ns, "--dry-run=server", check=False).returncode != 0,
             timeout=60, what="Services refused")


def test_a_model_whose_service_cannot_be_created_makes_no_status_write_per_repair(
        control_plane: ControlPlane, operator: Operator) -> None:
    """The API server refuses every Service in the namespace (an admission policy). The
    Model's status says so once (`workersError`); each repair tries the worker Service
    again (the refusal may be lifted), and nothing writes the Model again while the
    refusal stays: the window spans more than kopf's one-minute retry of a failed
    handler, which would patch the Model each time."""
    cp, ns = control_plane, "periodic-noservice"
    cp.kubectl("create", "namespace", ns, check=False)
    _refuse_services(cp, ns)
    try:
        cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(tenant(ns)))
        wait_for(lambda: get(cp, "model", ns, "sim").get("status", {}).get("conditions"),
                 timeout=60, what="the Model reconciled")
        time.sleep(2 * TIMER_INTERVAL)  # the apply's last events are handled meanwhile
        window = 32 * TIMER_INTERVAL  # more than a minute
        timers_at = operator.metric(TIMERS, tenant=ns, timer="repair")
        requests_at = requests(cp)
        time.sleep(window)  # a measuring window: the counts below are what happened in it
        api = requests(cp) - requests_at
        timers = operator.metric(TIMERS, tenant=ns, timer="repair") - timers_at
        status = get(cp, "model", ns, "sim")["status"]
        print(f"\n{window} s with the Service refused: {timers:.0f} repairs, API requests "
              f"{dict(api)}; workersError {status.get('workersError')!r}")
        assert "no Services here" in status.get("workersError", "")  # the Model says why
        # the repair does run (a tenant is due at the first round after its interval)
        assert timers >= 0.75 * window / TIMER_INTERVAL
        assert api["APPLY services"] >= timers - 2  # and tries the Service again each time
        model_writes = {k: v for k, v in api.items() if k.endswith(" models")
                        and k.split()[0] in ("PATCH", "APPLY", "PUT", "POST")}
        assert model_writes == {}  # the same refusal: the Model is not written again
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            cp.kubectl("delete", kind, f"refuse-services-{ns}", check=False)
