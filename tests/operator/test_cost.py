"""What an idle operator costs: API requests made by the Model handler against a counting
fake of the kubernetes client (the `kubernetes.client` API classes the worker applier
builds are replaced; the handler, the planner and the store are real)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, TypeVar

import kopf
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller.operator.handlers import kubernetes_worker_applier
from tests.operator.test_handlers import Cluster, cluster  # noqa: F401 - the fixture


class FakeServer:
    """Deployments and Services as the API server keeps them: what was written plus the
    fields it adds (defaults, resourceVersion, status). Counts requests by verb."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()

    def _served(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        served = copy.deepcopy(obj)
        served["metadata"].update(resourceVersion="7", managedFields=[{"manager": "x"}])
        if kind == "Deployment":
            served["spec"].update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
            for c in served["spec"]["template"]["spec"]["containers"]:
                c.update(terminationMessagePath="/dev/termination-log",
                         imagePullPolicy="IfNotPresent")
                c["readinessProbe"].update(timeoutSeconds=1, failureThreshold=3)
            ready = served["spec"]["replicas"]
            served["status"] = {"replicas": ready, "readyReplicas": ready}
        else:
            served["spec"].update(clusterIP="10.0.0.7", type="ClusterIP")
            for p in served["spec"]["ports"]:
                p["protocol"] = "TCP"
        return served

    def api(self, kind: str) -> Any:
        server = self

        class Api:
            def read(self, name: str, ns: str, **_: Any) -> Any:
                server.requests["GET"] += 1
                if (kind, ns, name) not in server.objects:
                    raise ApiException(status=404)
                return _Obj(copy.deepcopy(server.objects[(kind, ns, name)]))

            def create(self, ns: str, body: dict[str, Any], **_: Any) -> Any:
                server.requests["POST"] += 1
                served = server._served(kind, body)
                server.objects[(kind, ns, body["metadata"]["name"])] = served
                return _Obj(copy.deepcopy(served))

            def patch(self, name: str, ns: str, body: dict[str, Any], **_: Any) -> Any:
                server.requests["PATCH"] += 1
                served = server._served(kind, body)
                server.objects[(kind, ns, name)] = served
                return _Obj(copy.deepcopy(served))

        return Api()


T = TypeVar("T")


class _Obj(dict[str, Any]):
    """A served object: a dict (what `sanitize_for_serialization` passes through) that
    also answers `to_dict()` like the client's models."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    return install(monkeypatch, FakeServer())


def install(monkeypatch: pytest.MonkeyPatch, fake: T) -> T:
    """Serve the kubernetes client's Deployment and Service calls from `fake`."""
    dep, svc = fake.api("Deployment"), fake.api("Service")  # type: ignore[attr-defined]

    class Apps:
        read_namespaced_deployment = staticmethod(dep.read)
        read_namespaced_deployment_status = staticmethod(dep.read)
        create_namespaced_deployment = staticmethod(dep.create)
        patch_namespaced_deployment = staticmethod(dep.patch)

    class Core:
        read_namespaced_service = staticmethod(svc.read)
        create_namespaced_service = staticmethod(svc.create)
        patch_namespaced_service = staticmethod(svc.patch)

    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "AppsV1Api", Apps)
    monkeypatch.setattr(client, "CoreV1Api", Core)
    return fake


def _model_event(cluster: Cluster) -> None:  # noqa: F811 - the fixture's type
    patch = kopf.Patch()
    from controller.operator.handlers import on_repair

    on_repair(body=kopf.Body(cluster.bodies[("Model", "part-similarity")]), patch=patch,
              memo=cluster.memo, **cluster.indexes())
    status = cluster.bodies[("Model", "part-similarity")]["status"]
    status.update({k: v for k, v in dict(patch.get("status", {})).items() if v is not None})


def test_an_idle_models_timer_makes_no_api_write(cluster: Cluster,  # noqa: F811
                                                 server: FakeServer) -> None:
    cluster.memo["apply_workers"] = kubernetes_worker_applier()
    _model_event(cluster)
    assert server.requests["POST"] == 2  # the Deployment and the Service, created once
    assert cluster.bodies[("Model", "part-similarity")]["status"]["workersReady"] == "2/2"
    server.requests.clear()
    _model_event(cluster)  # the timer again, nothing changed
    print(f"\nidle Model timer: {dict(server.requests)}")
    assert server.requests["PATCH"] == 0 and server.requests["POST"] == 0
    assert server.requests["GET"] <= 2


def test_a_changed_worker_spec_is_patched(cluster: Cluster,  # noqa: F811
                                          server: FakeServer) -> None:
    cluster.memo["apply_workers"] = kubernetes_worker_applier()
    _model_event(cluster)
    body = cluster.bodies[("Model", "part-similarity")]
    body["spec"].setdefault("workers", {})["replicas"] = 3
    body["metadata"]["generation"] = 2
    server.requests.clear()
    _model_event(cluster)
    assert server.requests["PATCH"] == 1  # the Deployment; the Service is as desired
    ((dep_key, dep),) = [(k, v) for k, v in server.objects.items() if k[0] == "Deployment"]
    assert dep["spec"]["replicas"] == 3
    server.objects[dep_key]["spec"]["template"]["spec"]["containers"][0]["image"] = "drift"
    server.requests.clear()
    _model_event(cluster)  # drift made by hand is repaired
    assert server.requests["PATCH"] == 1


@pytest.mark.parametrize(("desired", "live", "differ"), [
    ("1000m", "1", False), ("1024Mi", "1Gi", False), ("500m", "0.5", False),
    ("250m", "0.5", True), ("1Gi", "1G", True), ("nginx:1", "nginx:2", True),
    ("1", "1", False), ("a", "1", True),
])
def test_quantities_compare_by_value(desired: str, live: str, differ: bool) -> None:
    from controller.operator.workers import differs

    assert differs({"limits": {"cpu": desired}}, {"limits": {"cpu": live}}) is differ
