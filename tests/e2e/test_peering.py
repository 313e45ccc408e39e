"""End to end: after a SIGKILL, the restarted operator reconciles at once.

A killed replica leaves its kopf peering record behind (alive for the peering lifetime,
60 s). kopf pauses a replica while a live peer of a higher priority is recorded, and
every replica draws its priority at start. So a replica restarted in the same pod (the
kubelet restarts the container) must recognise its own record, and one started in a new
pod must not wait for the record of a pod that no longer exists. The replicas run as
the chart's ServiceAccount with the chart's RBAC; their Pod objects exist as in a
cluster (no kubelet here, so they never run: the operators are local processes that
say which pod they are, as the chart's downward API does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane
from tests.e2e.test_burst import tenant

pytestmark = pytest.mark.e2e

NS = "cadml-system"
TOP = 2**31 - 1  # the killed replica drew the highest priority: the worst case


def _pod(cp: ControlPlane, name: str) -> None:
    cp.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
        "spec": {"automountServiceAccountToken": False,
                 "containers": [{"name": "operator", "image": "cadml:test"}]}}))


def _replica(cp: ControlPlane, workdir: Path, kubeconfig: Path, pod: str, priority: int,
             store_url: str) -> Operator:
    op = Operator(cp, workdir, priority=priority, kubeconfig=kubeconfig, store_url=store_url,
                  env={"POD_NAME": pod, "POD_NAMESPACE": NS,
                       # the webhooks (on loopback) are not what this shows: a dead
                       # replica's must not refuse the changes below
                       "CADML_WEBHOOK_FAILURE_POLICY": "Ignore"})
    op.start()
    return op


def _reconciled_tenant(cp: ControlPlane, ns: str) -> None:
    cp.kubectl("create", "namespace", ns, check=False)
    cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(tenant(ns)))
    wait_for(lambda: get(cp, "model", ns, "sim").get("status", {}).get("conditions"),
             timeout=90, what="the tenant reconciled")


def _handles_a_change(cp: ControlPlane, ns: str, text: str, timeout: float) -> float:
    """Seconds until the operator reconciles a spec change (observedGeneration)."""
    start = time.monotonic()
    cp.kubectl("patch", "model", "-n", ns, "sim", "--type=merge", "-p",
               json.dumps({"spec": {"description": text}}))
    gen = get(cp, "model", ns, "sim")["metadata"]["generation"]
    wait_for(lambda: get(cp, "model", ns, "sim")["status"].get("observedGeneration") == gen,
             timeout=timeout, every=0.2, what=f"the change {text!r} reconciled")
    return time.monotonic() - start


def test_a_killed_operator_restarted_in_its_pod_or_a_new_one_reconciles_at_once(
        control_plane: ControlPlane, operator_kubeconfig: Path,
        tmp_path_factory: Any) -> None:
    cp, ns = control_plane, "peering-restart"
    cp.clear_admission()  # an earlier module's webhooks would refuse with no one serving
    store_url = f"sqlite:///{tmp_path_factory.mktemp('peering-store') / 'store.db'}"
    for pod in ("cadml-operator-a", "cadml-operator-b"):
        _pod(cp, pod)
    first = _replica(cp, tmp_path_factory.mktemp("replica-a"), operator_kubeconfig,
                     "cadml-operator-a", TOP, store_url)
    running: list[Operator] = [first]
    try:
        _reconciled_tenant(cp, ns)
        first.stop(kill=True)  # SIGKILL: its peering record stays, alive for 60 s
        # the kubelet restarts the container in the same pod, which draws a new priority
        again = _replica(cp, tmp_path_factory.mktemp("replica-a2"), operator_kubeconfig,
                         "cadml-operator-a", 1, store_url)
        running.append(again)
        took = _handles_a_change(cp, ns, "after a restart in the same pod", timeout=20)
        print(f"\nrestarted in its pod: reconciling {took:.1f} s after the change")
        again.stop(kill=True)
        cp.kubectl("delete", "pod", "-n", NS, "cadml-operator-a", "--grace-period=0",
                   "--force", check=False)  # the pod is gone; a new one replaces it
        new = _replica(cp, tmp_path_factory.mktemp("replica-b"), operator_kubeconfig,
                       "cadml-operator-b", 1, store_url)
        running.append(new)
        took = _handles_a_change(cp, ns, "after a restart in a new pod", timeout=20)
        print(f"restarted in a new pod: reconciling {took:.1f} s after the change")
        peers = json.loads(cp.kubectl("get", "clusterkopfpeering", "cadml", "-o", "json")
                           .stdout).get("status") or {}
        assert not any("cadml-operator-a" in p for p in peers), peers  # the gone pod's
    finally:
        for op in running:
            op.stop()


def _peer_records(cp: ControlPlane) -> dict[str, Any]:
    out = cp.kubectl("get", "clusterkopfpeering", "cadml", "-o", "json", check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def test_a_standby_takes_over_within_seconds_when_the_active_replica_is_killed(
        control_plane: ControlPlane, operator_kubeconfig: Path,
        tmp_path_factory: Any) -> None:
    """Two replicas (the chart's): the active one is SIGKILLed and its pod object deleted
    (as the kubelet and the ReplicaSet do). The standby, paused in its favour, must not
    wait for the dead replica's peering record to expire (60 s): it takes over within
    seconds, and the dead replica's record is gone."""
    cp, ns = control_plane, "peering-standby"
    cp.clear_admission()  # an earlier module's webhooks would refuse with no one serving
    store_url = f"sqlite:///{tmp_path_factory.mktemp('standby-store') / 'store.db'}"
    active_pod, standby_pod = "cadml-operator-c", "cadml-operator-d"
    for pod in (active_pod, standby_pod):
        _pod(cp, pod)
    active = _replica(cp, tmp_path_factory.mktemp("replica-c"), operator_kubeconfig,
                      active_pod, TOP, store_url)
    running: list[Operator] = [active]
    try:
        _reconciled_tenant(cp, ns)
        standby = _replica(cp, tmp_path_factory.mktemp("replica-d"), operator_kubeconfig,
                           standby_pod, 1, store_url)
        running.append(standby)
        # the standby is up: its record sits beside the active one's (kopf pauses it)
        wait_for(lambda: f"pod/{NS}/{standby_pod}" in _peer_records(cp), timeout=60,
                 every=0.2, what="the standby's peering record")
        assert f"pod/{NS}/{active_pod}" in _peer_records(cp)
        active.stop(kill=True)  # SIGKILL: its record stays, alive for 60 s
        cp.kubectl("delete", "pod", "-n", NS, active_pod, "--grace-period=0", "--force",
                   check=False)  # and its pod is gone for good
        took = _handles_a_change(cp, ns, "after the active replica died", timeout=30)
        print(f"\nstandby took over: reconciling {took:.1f} s after the change")
        assert f"pod/{NS}/{active_pod}" not in _peer_records(cp)
    finally:
        for op in running:
            op.stop()
