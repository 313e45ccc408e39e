"""A worker Service the API server refuses (an admission policy, a quota): the Model's
status says so once, each repair tries the Service again without writing the Model, and
the handler does not fail (kopf would retry it every minute, writing its progress on the
Model each time). The handler, the planner and the store are real; the kubernetes
client's Deployment and Service calls are served by `test_cost.FakeServer` (the real API
server: tests/e2e/test_periodic.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.operator.handlers import kubernetes_worker_applier
from controller.operator.kube import refusal
from tests.operator.test_cost import FakeServer, install
from tests.operator.test_handlers import Cluster, cluster  # noqa: F401 - the fixture

DENIED = ('services "cadml-worker-part-similarity" is forbidden: ValidatingAdmissionPolicy '
          "'no-services' denied request: no Services here")


class RefusingServices(FakeServer):
    """The API server with an admission policy that refuses every Service."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = True

    def api(self, kind: str) -> Any:
        api = super().api(kind)
        if kind == "Service":
            apply = api.patch

            def patch(name: str, ns: str, body: dict[str, Any], **kw: Any) -> Any:
                if not self.refuse:
                    return apply(name, ns, body, **kw)
                self.requests["PATCH"] += 1
                exc = ApiException(status=422, reason="Unprocessable Entity")
                exc.body = json.dumps({"kind": "Status", "status": "Failure", "code": 422,
                                       "message": DENIED.replace("part-similarity", name[13:])})
                raise exc

            api.patch = patch
        return api


def test_a_refused_service_is_said_once_and_tried_again_without_a_status_write(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    server = install(monkeypatch, RefusingServices())
    cluster.memo["apply_workers"] = kubernetes_worker_applier()
    cluster.memo["patch_status"] = cluster.patch_status
    patch = cluster.handle("Model", "part-similarity")  # the create event: no failure
    status = cluster.bodies[("Model", "part-similarity")]["status"]
    assert patch["status"]["workersError"] == f"Service cadml-worker-part-similarity " \
        f"refused (422): {DENIED}"
    assert status["workersReady"] == "2/2"  # the Deployment is applied all the same
    cluster.repair()  # the tenant's first repair: the other Model says it too
    for _ in range(3):  # interval after interval of the same refusal
        cluster.writes.clear()
        server.requests.clear()
        cluster.repair()
        assert cluster.writes == []  # nothing changed: no status write
        assert server.requests["PATCH"] == 2  # each Model's Service tried again
    server.refuse = False  # the policy is lifted: the next repair applies and says so
    cluster.writes.clear()
    cluster.repair()
    assert sorted((kind, name, changes) for kind, name, changes in cluster.writes) == [
        ("Model", "assembly-match", {"workersError": None}),
        ("Model", "part-similarity", {"workersError": None})]
    assert "workersError" not in status


@pytest.mark.parametrize(("code", "body", "said"), [
    (422, json.dumps({"message": "denied: no"}), "Service s refused (422): denied: no"),
    (403, "not json", "Service s refused (403): Forbidden"),
    (409, None, "Service s refused (409): Forbidden"),
    (429, None, None),  # throttled: a retry helps, the caller retries
    (500, None, None),
    (503, json.dumps({"message": "etcd"}), None),
    (None, None, None),  # no answer at all
])
def test_what_a_refusal_says(code: int | None, body: str | None, said: str | None) -> None:
    assert refusal("Service", "s", code, body, "Forbidden") == said
