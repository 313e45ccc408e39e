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
from collections.abc import Iterator
from contextlib import contextmanager
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


def _uid(cp: ControlPlane, pod: str) -> str:
    return str(get(cp, "pod", NS, pod)["metadata"]["uid"])


def _replica(cp: ControlPlane, workdir: Path, kubeconfig: Path, pod: str, priority: int,
             store_url: str) -> Operator:
    """A replica that says which pod it is, as the chart's downward API does (name,
    namespace and uid of the Pod object, which exists while it starts)."""
    op = Operator(cp, workdir, priority=priority, kubeconfig=kubeconfig, store_url=store_url,
                  env={"POD_NAME": pod, "POD_NAMESPACE": NS, "POD_UID": _uid(cp, pod),
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
        # the dead replica's record goes once stale (peers.FRESH_SECONDS since its last
        # refresh: nothing tells a dead replica from one cut off from its pod sooner)
        took = _handles_a_change(cp, ns, "after a restart in a new pod", timeout=30)
        print(f"restarted in a new pod: reconciling {took:.1f} s after the change")
        peers = json.loads(cp.kubectl("get", "clusterkopfpeering", "cadml", "-o", "json")
                           .stdout).get("status") or {}
        assert not any("cadml-operator-a/" in p for p in peers), peers  # the gone pod's
    finally:
        for op in running:
            op.stop()


def _peer_records(cp: ControlPlane) -> dict[str, Any]:
    out = cp.kubectl("get", "clusterkopfpeering", "cadml", "-o", "json", check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def _record(cp: ControlPlane, pod: str) -> dict[str, Any] | None:
    """The peering record of the replica in `pod` (its identity names the pod), if any."""
    return next((v for k, v in _peer_records(cp).items()
                 if k.startswith(f"pod/{NS}/{pod}/") or k == f"pod/{NS}/{pod}"), None)


@contextmanager
def _active_and_standby(cp: ControlPlane, ns: str, pods: tuple[str, str], kubeconfig: Path,
                        tmp_path_factory: Any) -> Iterator[tuple[Operator, Operator]]:
    """The chart's two replicas, in `pods`: the first active (the highest priority) with
    the tenant `ns` reconciled, the second standing by (its record beside the active
    one's, kopf pauses it); both stopped at the end."""
    cp.clear_admission()  # an earlier module's webhooks would refuse with no one serving
    store_url = f"sqlite:///{tmp_path_factory.mktemp(f'{ns}-store') / 'store.db'}"
    running: list[Operator] = []
    try:
        for pod in pods:
            _pod(cp, pod)
        for pod, priority in zip(pods, (TOP, 1), strict=True):
            running.append(_replica(cp, tmp_path_factory.mktemp(pod), kubeconfig, pod,
                                    priority, store_url))
            if priority == TOP:
                _reconciled_tenant(cp, ns)
        wait_for(lambda: _record(cp, pods[1]), timeout=60, every=0.2,
                 what="the standby's peering record")
        assert _record(cp, pods[0])
        yield running[0], running[1]
    finally:
        for op in running:
            op.stop()


def test_a_standby_takes_over_within_seconds_when_the_active_replica_is_killed(
        control_plane: ControlPlane, operator_kubeconfig: Path,
        tmp_path_factory: Any) -> None:
    """Two replicas (the chart's): the active one is SIGKILLed and its pod object deleted
    (as the kubelet and the ReplicaSet do). The standby, paused in its favour, must not
    wait for the dead replica's peering record to expire (60 s): it takes over within
    seconds, and the dead replica's record is gone."""
    cp, ns = control_plane, "peering-standby"
    active_pod, standby_pod = "cadml-operator-c", "cadml-operator-d"
    with _active_and_standby(cp, ns, (active_pod, standby_pod), operator_kubeconfig,
                             tmp_path_factory) as (active, _):
        active.stop(kill=True)  # SIGKILL: its record stays, alive for 60 s
        cp.kubectl("delete", "pod", "-n", NS, active_pod, "--grace-period=0", "--force",
                   check=False)  # and its pod is gone for good
        took = _handles_a_change(cp, ns, "after the active replica died", timeout=30)
        print(f"\nstandby took over: reconciling {took:.1f} s after the change")
        assert not _record(cp, active_pod)


def test_a_live_active_replica_whose_pod_object_was_deleted_keeps_its_record(
        control_plane: ControlPlane, operator_kubeconfig: Path,
        tmp_path_factory: Any) -> None:
    """Two replicas; the active one's Pod object is force-deleted while its process runs
    on (a node cut off from the control plane: the Pod is gone from the API, the process
    still reaches the API server and refreshes its peering record). The standby must not
    remove that record, or two replicas would operate at once. The positive signal that
    the standby had its chances: the active replica refreshed its record later than the
    freshness window after its Pod went (the standby looks every 3 s meanwhile)."""
    from datetime import UTC, datetime, timedelta

    from controller.operator.peers import FRESH_SECONDS

    cp, ns = control_plane, "peering-partition"
    active_pod, standby_pod = "cadml-operator-e", "cadml-operator-f"
    with _active_and_standby(cp, ns, (active_pod, standby_pod), operator_kubeconfig,
                             tmp_path_factory) as (_, standby):
        cp.kubectl("delete", "pod", "-n", NS, active_pod, "--grace-period=0", "--force")
        gone_at = datetime.now(UTC)
        missing: list[float] = []  # moments the active record was absent

        def refreshed_past_the_window() -> bool:
            record = _record(cp, active_pod)
            if record is None:
                missing.append(time.monotonic())
                return False
            seen = datetime.fromisoformat(record["lastseen"])
            return seen > gone_at + timedelta(seconds=FRESH_SECONDS + 6)

        wait_for(refreshed_past_the_window, timeout=120, every=0.3,
                 what="the active replica's record refreshed past the freshness window")
        assert missing == [], f"the live active replica's record was removed {len(missing)}x"
        log = standby.log.read_text(errors="replace")
        assert "Resuming operations" not in log  # the standby never operated beside it
        took = _handles_a_change(cp, ns, "while the active replica's pod is gone", timeout=30)
        print(f"\nthe live active replica still reconciles: {took:.1f} s")


def test_the_heartbeat_never_puts_back_a_record_removed_after_its_read(
        control_plane: ControlPlane, operator_kubeconfig: Path) -> None:
    """The operating replica's heartbeat reads the peering object, then writes its own
    record. kopf removes that record when the replica shuts down; a removal between the
    read and the write was put back by the write (a merge patch), and the standby then
    waited for a dead replica's record to go stale. The write now carries the
    resourceVersion it read: the API server refuses it (409) and nothing is written. Run
    as the operator's own account (its RBAC), against the real API server."""
    from datetime import UTC, datetime

    from kubernetes import client, config

    from controller.operator import kube

    # its own client from the operator's kubeconfig (kubernetes reads $KUBECONFIG once,
    # when first imported: no process-wide configuration is touched)
    api = config.new_client_from_config(config_file=str(operator_kubeconfig))
    me = f"pod/{NS}/heartbeat-test/uid-1"
    record = {"priority": 5, "lastseen": datetime.now(UTC).isoformat(), "lifetime": 60}
    control_plane.kubectl("patch", "clusterkopfpeering", "cadml", "--type", "merge", "-p",
                          json.dumps({"status": {me: record}}))
    peering = kube.Peering(client.CustomObjectsApi(api), client.CoreV1Api(api), "cadml", ())
    try:
        (_, read), = peering.statuses()  # the heartbeat's read
        assert me in read
        # kopf's shutdown removes the record between the read and the heartbeat's write
        control_plane.kubectl("patch", "clusterkopfpeering", "cadml", "--type", "merge",
                              "-p", json.dumps({"status": {me: None}}))
        assert peering.touch(None, me, {**read[me], "lastseen": "later"}) is False
        assert me not in _peer_records(control_plane)  # not put back
        # read again (the record gone: no heartbeat); a write onto what was read applies
        control_plane.kubectl("patch", "clusterkopfpeering", "cadml", "--type", "merge",
                              "-p", json.dumps({"status": {me: record}}))
        peering.statuses()
        assert peering.touch(None, me, {**record, "lastseen": "now"}) is True
        assert _peer_records(control_plane)[me]["lastseen"] == "now"
    finally:
        control_plane.kubectl("patch", "clusterkopfpeering", "cadml", "--type", "merge",
                              "-p", json.dumps({"status": {me: None}}))
