"""End to end: a Model's worker Deployment is written by server-side apply, against the
real API server (its field ownership decides what an apply removes and what it leaves
to another manager). The operator's repair timer is out of the way (10 minutes), so the
only writes are the ones a Model change causes and the ones these tests make."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import yaml

from controller.operator.kube import WorkerApplier
from controller.operator.settings import OperatorSettings
from controller.operator.workers import FIELD_MANAGER, owned_fields
from tests.e2e.conftest import Operator, get, wait_for
from tests.e2e.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

TIMER_INTERVAL = 600  # read by the operator fixture
NS = "worker-apply"
DEPLOYMENT = "cadml-worker-sim"


def _model(resources: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cadml.io/v1alpha1", "kind": "Model",
            "metadata": {"namespace": NS, "name": "sim"},
            "spec": {"modelKey": "sim", "provider": "cadml", "displayName": "Sim",
                     "review": {"controlAllowed": False, "defaultDecision": "PENDING_REVIEW"},
                     "workers": {"replicas": 1, "resources": resources}}}


def _container(cp: ControlPlane) -> dict[str, Any]:
    dep = get(cp, "deployment", NS, DEPLOYMENT)
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


class Counting:
    """A kubernetes client API object whose calls are counted by verb (read_/patch_/…)."""

    def __init__(self, api: Any, counts: Counter[str]) -> None:
        self.api, self.counts = api, counts

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[name.split("_", 1)[0]] += 1
            return method(*args, **kwargs)
        return call


@pytest.fixture(scope="module")
def workers(control_plane: ControlPlane, operator: Operator) -> ControlPlane:
    control_plane.kubectl("create", "namespace", NS, check=False)
    control_plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_model(
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}})))
    wait_for(lambda: _container(control_plane)["resources"].get("limits"), timeout=60,
             what="the worker Deployment, applied by the operator")
    return control_plane


def _applier(cp: ControlPlane, counts: Counter[str]) -> WorkerApplier:
    """The operator's applier in this process, as cluster-admin, its calls counted."""
    from kubernetes import client, config

    api = config.new_client_from_config(str(cp.kubeconfig))  # type: ignore[no-untyped-call]
    return WorkerApplier(Counting(client.AppsV1Api(api), counts),
                         Counting(client.CoreV1Api(api), counts),
                         api.sanitize_for_serialization)


def _apply(cp: ControlPlane, applier: WorkerApplier) -> None:
    model = json.loads(cp.kubectl("get", "model", "-n", NS, "sim", "-o", "json").stdout)
    applier(model, OperatorSettings(store_url="sqlite://"))  # the operator's defaults


def test_an_idle_model_costs_two_reads_and_no_write(workers: ControlPlane) -> None:
    """What the operator applied, the API server serves with defaults and canonical
    quantities; comparing only the fields the operator owns finds nothing to write."""
    counts: Counter[str] = Counter()
    applier = _applier(workers, counts)
    for _ in range(3):
        _apply(workers, applier)
    assert dict(counts) == {"read": 6}, dict(counts)
    owned = owned_fields(json.loads(workers.kubectl(
        "get", "deployment", "-n", NS, DEPLOYMENT, "-o", "json", "--show-managed-fields").stdout))
    assert "f:spec" in owned  # the operator's fields are owned by server-side apply
    print(f"\n{FIELD_MANAGER} owns: {json.dumps(owned)}")


def test_a_hand_added_env_var_is_repaired_or_left_alone_not_patched_forever(
        workers: ControlPlane) -> None:
    """`kubectl set env` adds a variable the operator does not apply: it is kubectl's field
    (server-side apply leaves it to its owner), so it stays and costs no write, on every
    pass after it. Before server-side apply the applier saw the env list differ and
    PATCHed on every timer forever (a strategic merge kept the variable)."""
    workers.kubectl("set", "env", "-n", NS, f"deployment/{DEPLOYMENT}", "DEBUG=1")
    counts: Counter[str] = Counter()
    applier = _applier(workers, counts)
    for _ in range(3):
        _apply(workers, applier)
    env = {e["name"]: e.get("value") for e in _container(workers)["env"]}
    assert env["DEBUG"] == "1" and "CADML_STORE_URL" in env
    assert counts["patch"] == 0, dict(counts)
    workers.kubectl("set", "env", "-n", NS, f"deployment/{DEPLOYMENT}", "HOME=/elsewhere")
    _apply(workers, applier)  # a variable the operator applies, changed by hand: repaired
    env = {e["name"]: e.get("value") for e in _container(workers)["env"]}
    assert env["HOME"] == "/tmp" and counts["patch"] == 1, (env, dict(counts))


def test_removing_a_resource_limit_from_the_model_reaches_the_deployment(
        workers: ControlPlane) -> None:
    """Removing `limits.memory` from the Model's `spec.workers.resources` removes it from
    the Deployment (the operator owned that field and no longer applies it). Before, the
    desired `limits: {}` was a subset of anything: no write, the old limit forever."""
    workers.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_model(
        {"requests": {"cpu": "250m", "memory": "512Mi"}})))
    wait_for(lambda: "limits" not in _container(workers)["resources"]
             or "memory" not in _container(workers)["resources"]["limits"],
             timeout=30, every=0.3, what="the memory limit removed from the Deployment")
    assert _container(workers)["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
