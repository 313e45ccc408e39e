"""What an idle operator costs: API requests made by the Model handler against a counting
fake of the kubernetes client (the `kubernetes.client` API classes the worker applier
builds are replaced; the handler, the planner and the store are real)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, TypeVar

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
        self.applies: Counter[tuple[Any, ...]] = Counter()  # (content type, manager, force)

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

            def patch(self, name: str, ns: str, body: dict[str, Any], **kw: Any) -> Any:
                # the only writer of these objects applies them whole (server-side apply
                # as their sole field manager): what it applies replaces what was there
                server.requests["PATCH"] += 1
                server.applies[kw.get("_content_type"), kw.get("field_manager"),
                               kw.get("force")] += 1
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
    """The periodic repair of the tenant: both of acme-cad's Models' workers."""
    cluster.repair("acme-cad")


MODELS = 2  # acme-cad's Models (part-similarity, assembly-match): a Deployment, a Service each


def test_an_idle_models_timer_makes_no_api_write(cluster: Cluster,  # noqa: F811
                                                 server: FakeServer) -> None:
    cluster.memo["apply_workers"] = kubernetes_worker_applier()
    _model_event(cluster)
    # the Deployment and the Service, created once by server-side apply
    assert dict(server.requests) == {"GET": 2 * MODELS, "PATCH": 2 * MODELS}
    assert dict(server.applies) == {
        ("application/apply-patch+yaml", "cadml-operator", True): 2 * MODELS}
    assert cluster.bodies[("Model", "part-similarity")]["status"]["workersReady"] == "2/2"
    server.requests.clear()
    _model_event(cluster)  # the timer again, nothing changed
    print(f"\nidle repair of a tenant with {MODELS} Models: {dict(server.requests)}")
    assert server.requests["PATCH"] == 0 and server.requests["POST"] == 0
    assert server.requests["GET"] <= 2 * MODELS


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
    ((dep_key, dep),) = [(k, v) for k, v in server.objects.items()
                         if k[0] == "Deployment" and k[2] == "cadml-worker-part-similarity"]
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


# What `cadml-operator` owned in a worker Deployment after an apply, as the real API server
# (tests/e2e/test_worker_apply.py) reported it; `model-uid` stands for the Model's uid.
OWNED = {"f:metadata": {"f:labels": {"f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}, "f:cadml.io/model": {}}, "f:ownerReferences": {"k:{\"uid\":\"model-uid\"}": {}}}, "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}, "f:cadml.io/model": {}}}, "f:spec": {"f:automountServiceAccountToken": {}, "f:containers": {"k:{\"name\":\"worker\"}": {".": {}, "f:args": {}, "f:env": {"k:{\"name\":\"CADML_ARTIFACT_CACHE\"}": {".": {}, "f:name": {}, "f:value": {}}, "k:{\"name\":\"CADML_STORE_URL\"}": {".": {}, "f:name": {}, "f:valueFrom": {"f:secretKeyRef": {}}}, "k:{\"name\":\"HOME\"}": {".": {}, "f:name": {}, "f:value": {}}}, "f:image": {}, "f:livenessProbe": {"f:httpGet": {"f:path": {}, "f:port": {}}, "f:periodSeconds": {}}, "f:name": {}, "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:name": {}}}, "f:readinessProbe": {"f:httpGet": {"f:path": {}, "f:port": {}}, "f:periodSeconds": {}}, "f:resources": {"f:limits": {"f:memory": {}}, "f:requests": {"f:cpu": {}, "f:memory": {}}}, "f:securityContext": {"f:allowPrivilegeEscalation": {}, "f:capabilities": {"f:drop": {}}, "f:readOnlyRootFilesystem": {}, "f:runAsNonRoot": {}}, "f:volumeMounts": {"k:{\"mountPath\":\"/tmp\"}": {".": {}, "f:mountPath": {}, "f:name": {}}, "k:{\"mountPath\":\"/var/cache/cadml\"}": {".": {}, "f:mountPath": {}, "f:name": {}}}}}, "f:volumes": {"k:{\"name\":\"artifacts\"}": {".": {}, "f:emptyDir": {}, "f:name": {}}, "k:{\"name\":\"tmp\"}": {".": {}, "f:emptyDir": {}, "f:name": {}}}}}}}  # noqa: E501


def _desired_deployment(resources: dict[str, Any]) -> dict[str, Any]:
    from controller.api.v1alpha1 import Model
    from controller.operator.workers import worker_objects

    model = Model.model_validate({
        "apiVersion": "cadml.io/v1alpha1", "kind": "Model",
        "metadata": {"namespace": "ns", "name": "sim"},
        "spec": {"modelKey": "sim", "provider": "cadml", "displayName": "Sim",
                 "review": {"controlAllowed": False, "defaultDecision": "PENDING_REVIEW"},
                 "workers": {"replicas": 1, "resources": resources}}})
    return worker_objects(model, "model-uid", "img", 8080)[0]


@pytest.mark.parametrize(("resources", "unwanted"), [
    ({"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}, []),
    ({"requests": {"cpu": "250m", "memory": "512Mi"}},
     ["/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"worker\"}/f:resources/f:limits"
      "/f:memory"]),
    ({}, ["/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"worker\"}/f:resources"
          "/f:limits/f:memory",
          "/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"worker\"}/f:resources"
          "/f:requests/f:cpu",
          "/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"worker\"}/f:resources"
          "/f:requests/f:memory"]),
])
def test_owned_fields_the_desired_form_no_longer_has(resources: dict[str, Any],
                                                     unwanted: list[str]) -> None:
    """Server-side apply removes what its manager owned and no longer applies; the
    applier writes exactly when there is such a field (keyed list items match on their
    key, with fields the API server defaults, e.g. a port's protocol, left out)."""
    from controller.operator.workers import unwanted as unwanted_fields

    assert unwanted_fields(OWNED, _desired_deployment(resources)) == unwanted


def test_items_another_manager_added_to_a_keyed_list_are_no_difference() -> None:
    from controller.operator.workers import differs

    desired = _desired_deployment({})
    live = copy.deepcopy(desired)
    env = live["spec"]["template"]["spec"]["containers"][0]["env"]
    env.insert(1, {"name": "DEBUG", "value": "1"})  # kubectl set env: kubectl's item
    assert not differs(desired, live)
    env[2]["value"] = "/elsewhere"  # HOME, the operator's item, changed by hand
    assert differs(desired, live)


def test_an_idle_models_timer_reads_its_workers_from_the_index(
        cluster: Cluster, server: FakeServer) -> None:  # noqa: F811
    """With the live Deployment and Service in the operator's index (the watch keeps it),
    an idle Model timer makes no request at all; what the index lacks is read."""
    from controller.operator.handlers import index_worker

    cluster.memo["apply_workers"] = kubernetes_worker_applier()
    _model_event(cluster)

    def indexes(kinds: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {"worker_deployments": {}, "worker_services": {}}
        for (kind, ns, name), obj in server.objects.items():
            if kind in kinds:
                index = "worker_deployments" if kind == "Deployment" else "worker_services"
                for key, value in index_worker(namespace=ns, name=name, body=obj).items():
                    out[index][key] = [value]
        return out

    for kinds, expected in ((("Deployment", "Service"), {}),
                            (("Deployment",), {"GET": MODELS})):
        server.requests.clear()
        cluster.writes.clear()
        cluster.repair("acme-cad", **indexes(kinds))
        assert dict(server.requests) == expected
        assert cluster.writes == []  # still 2/2: no status write
