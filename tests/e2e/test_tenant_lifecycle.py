"""End to end: what a tenant's life does to the store, against the real API server.

A burst of weight changes interleaved with changes to other objects of the tenant ends
with the store routing exactly the last spec, each published routing audited once; a
tenant namespace deleted goes within a minute, its history kept and each object's
deletion audited once; a status field of a newer CRD (Helm never upgrades CRDs) never
takes an object out of the store.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane
from tests.e2e.test_burst import KINDS, ready_now, tenant

pytestmark = pytest.mark.e2e

PASSES = "cadml_operator_tenant_passes_total"


def _apply_ready(cp: ControlPlane, ns: str) -> None:
    cp.kubectl("create", "namespace", ns, check=False)
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(tenant(ns)))

    def ready() -> bool:
        items = json.loads(cp.kubectl("get", KINDS, "-n", ns, "-o", "json").stdout)["items"]
        return len(items) == 5 and all(ready_now(i) for i in items)

    wait_for(ready, timeout=60, what=f"{ns} Ready")


def _patch(cp: ControlPlane, kind: str, ns: str, name: str, spec: dict[str, Any]) -> None:
    cp.kubectl("patch", kind, "-n", ns, name, "--type=merge", "-p",
               json.dumps({"spec": spec}))


def test_a_burst_of_weight_changes_ends_routing_the_last_spec_audited_once(
        control_plane: ControlPlane, operator: Operator) -> None:
    cp, ns = control_plane, "burst-weights"
    _apply_ready(cp, ns)
    last = 0
    for i in range(1, 31):  # 30 weight changes, each a new spec, others' changes between
        last = i
        _patch(cp, "rp", ns, "sim", {"weights": [{"version": "1.1.0", "weight": 100 - last},
                                                 {"version": "1.2.0", "weight": last}]})
        if i % 3 == 0:
            _patch(cp, "model", ns, "sim", {"description": f"change {i}"})
        if i % 5 == 0:
            _patch(cp, "mv", ns, "sim-1-3-0", {"thresholdDefaults": {"similarity": i / 100}})
    gen = get(cp, "rp", ns, "sim")["metadata"]["generation"]
    summary = f"1.1.0={100 - last},1.2.0={last}"
    wait_for(lambda: ready_now(p := get(cp, "rp", ns, "sim")) and
             p["status"]["observedGeneration"] == gen and
             p["status"]["routingSummary"] == summary, timeout=60, what="the last spec")
    routes = operator.rows(
        "SELECT pr.version, pr.weight FROM policy_route pr JOIN policy_snapshot ps ON "
        "ps.id = pr.snapshot_id JOIN model_rollout_policy p ON p.id = ps.policy_id "
        f"WHERE p.tenant_id = '{ns}' AND ps.policy_version = p.policy_version")
    assert sorted(routes) == [("1.1.0", 100 - last), ("1.2.0", last)]
    versions = [v for (v,) in operator.rows(
        "SELECT ps.policy_version FROM policy_snapshot ps JOIN model_rollout_policy p ON "
        f"p.id = ps.policy_id WHERE p.tenant_id = '{ns}' ORDER BY ps.id")]
    assert versions == list(range(1, len(versions) + 1))  # +1 per published change
    rows = operator.rows("SELECT action, object_kind, object_name, details FROM audit_event "
                         f"WHERE tenant_id = '{ns}' ORDER BY seq")
    publishes = [r for r in rows if r[0] == "publish"]
    assert len(publishes) == len(versions)  # one row per published routing, none twice
    changes = [(r[0], r[1], r[2], json.dumps(r[3], sort_keys=True) if not isinstance(
        r[3], str) else r[3]) for r in rows if r[0] in ("update", "publish")]
    assert len(changes) == len(set(changes)), "an audit row written twice"
    print(f"\n30 weight changes + 16 other changes: {len(versions)} routings published, "
          f"{len(rows)} audit rows")


def test_deleting_a_tenant_namespace_finishes_with_history_kept(
        control_plane: ControlPlane, operator: Operator) -> None:
    cp, ns = control_plane, "tenant-gone"
    _apply_ready(cp, ns)
    start = time.monotonic()
    cp.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for(lambda: cp.kubectl("get", "namespace", ns, check=False).returncode != 0,
             timeout=120, every=0.5, what="the namespace gone")
    took = time.monotonic() - start
    print(f"\nnamespace with 5 objects deleted in {took:.1f} s")
    assert took < 60
    deletes = operator.rows("SELECT object_kind, object_name, count(*) FROM audit_event WHERE "
                            f"tenant_id = '{ns}' AND action = 'delete' "
                            "GROUP BY object_kind, object_name")
    assert sorted(deletes) == sorted((d["kind"], d["metadata"]["name"], 1) for d in tenant(ns))
    kept = operator.rows("SELECT count(*) FROM policy_snapshot WHERE "
                         f"tenant_id = '{ns}'")[0][0]
    assert kept >= 1  # the routing history stays


def _with_status_field(crd: dict[str, Any]) -> dict[str, Any]:
    """The RolloutPolicy CRD of a newer release: one more status field."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["status"]["properties"]["shadowComparison"] = {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return crd


def test_a_status_field_of_a_newer_crd_never_takes_the_policy_out_of_the_store(
        control_plane: ControlPlane, operator: Operator) -> None:
    cp, ns = control_plane, "newer-crd"
    _apply_ready(cp, ns)
    path = ROOT / "crds" / "rolloutpolicies.cadml.io.yaml"
    crd = yaml.safe_load(path.read_text())
    before = operator.rows("SELECT policy_version, deleted FROM model_rollout_policy WHERE "
                           f"tenant_id = '{ns}'")
    try:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                   stdin=yaml.safe_dump(_with_status_field(crd)))
        wait_for(lambda: cp.kubectl("patch", "rp", "-n", ns, "sim", "--subresource=status",
                                    "--type=merge", "-p",
                                    '{"status":{"shadowComparison":{"agree":0.97}}}')
                 .returncode == 0 and get(cp, "rp", ns, "sim")["status"]
                 .get("shadowComparison"), timeout=30, what="the newer status field kept")
        # an event of the tenant: a pass reads the policy with the field
        _patch(cp, "model", ns, "sim", {"description": "after the CRD upgrade"})
        gen = get(cp, "model", ns, "sim")["metadata"]["generation"]
        wait_for(lambda: get(cp, "model", ns, "sim")["status"].get("observedGeneration")
                 == gen, timeout=30, what="the tenant passed")
        repairs = operator.metric(PASSES, tenant=ns, trigger="repair")
        wait_for(lambda: operator.metric(PASSES, tenant=ns, trigger="repair") > repairs,
                 timeout=60, what="a periodic repair of the tenant too")
        policy = get(cp, "rp", ns, "sim")
        assert ready_now(policy), policy["status"]["conditions"]
        assert policy["status"]["shadowComparison"] == {"agree": 0.97}
        after = operator.rows("SELECT policy_version, deleted FROM model_rollout_policy "
                              f"WHERE tenant_id = '{ns}'")
        assert after == before and not after[0][1]  # present and untouched
        deletes = operator.rows("SELECT count(*) FROM audit_event WHERE tenant_id = "
                                f"'{ns}' AND action = 'delete'")
        assert deletes == [(0,)]
    finally:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
