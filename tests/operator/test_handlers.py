"""The kopf handlers, called with real bodies (the examples), real indexes and a real store.

No API server here: the end-to-end issue runs the same handlers under kopf against
kube-apiserver. What stands in: the index mapping kopf would pass (built from the
same bodies), and a recorder instead of kopf's event poster (kopf.info needs the
running operator's context).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from controller.errors import UsageError
from controller.operator.handlers import (
    CHANGED_BY,
    actor_of,
    changed_by,
    index_by_namespace,
    on_change,
    on_delete,
    on_version_delete,
    stamp_changed_by,
    status_changes,
    validate,
)
from controller.operator.settings import OperatorSettings
from controller.operator.tenantqueue import TenantQueue
from controller.operator.workers import worker_objects
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.validation.parse import parse_body
from tests.conftest import EXAMPLES


def _bodies() -> list[dict[str, Any]]:
    out = []
    for path in sorted((EXAMPLES / "tenants").rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            doc["metadata"].update(uid=f"uid-{doc['metadata']['name']}-{i}", generation=1)
            doc["status"] = {}
            out.append(doc)
    return out


class Cluster:
    """The cluster's view kopf would hand to handlers: bodies and the four indexes."""

    def __init__(self, store: Store) -> None:
        self.bodies = {(b["kind"], b["metadata"]["name"]): b for b in _bodies()}
        self.events: list[tuple[str, str, str]] = []
        self.writes: list[tuple[str, str, dict[str, Any]]] = []  # patch_status's
        self.memo = kopf.Memo(store=store, settings=OperatorSettings(store_url="sqlite://"),
                              post_event=lambda body, reason, message: self.events.append(
                                  (body["metadata"]["name"], reason, message)),
                              finalized={}, tenants=TenantQueue())

    def indexes(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        plural = {"Model": "models", "ModelVersion": "modelversions",
                  "RolloutPolicy": "rolloutpolicies", "ReleaseRecord": "releaserecords"}
        out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for b in self.bodies.values():
            for ns, value in index_by_namespace(namespace=b["metadata"]["namespace"],
                                                body=kopf.Body(b)).items():
                out[f"{plural[b['kind']]}_by_ns"][ns].append(value)
        return out

    def handle(self, kind: str, name: str) -> kopf.Patch:
        patch = kopf.Patch()
        on_change(body=kopf.Body(self.bodies[(kind, name)]), patch=patch, memo=self.memo,
                  logger=logging.getLogger("test"), **self.indexes())
        # what kopf does with the patch: merge it into the object's status
        self.merge_status(kind, name, dict(patch.get("status", {})))
        return patch

    def merge_status(self, kind: str, name: str, changes: dict[str, Any]) -> None:
        """A merge patch of the object's status, as the API server applies one."""
        status = self.bodies[(kind, name)]["status"]
        for k, v in changes.items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v

    def patch_status(self, namespace: str, kind: str, name: str,
                     changes: dict[str, Any]) -> None:
        """`memo.patch_status` against these bodies."""
        self.writes.append((kind, name, dict(changes)))
        self.merge_status(kind, name, changes)

    def repair(self, namespace: str = "acme-cad", **indexes: Any) -> Any:
        """The operator's periodic repair of one tenant (`repair_tenant`), its status
        writes merged into these bodies; `indexes` add to (or replace) the four."""
        from controller.operator.handlers import repair_tenant

        self.memo.setdefault("patch_status", self.patch_status)
        return repair_tenant(self.memo, namespace, {**self.indexes(), **indexes})


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'op.db'}"))
    upgrade(store.engine)
    return Cluster(store)


def test_policy_status_is_written_once_and_only_when_changed(cluster: Cluster) -> None:
    patch = cluster.handle("RolloutPolicy", "part-similarity")
    status = patch["status"]
    assert status["policyVersion"] == 1 and status["routingSummary"] == "1.1.0=90,1.2.0=10"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert ("part-similarity", "Publish",
            "policyVersion 1: - → 1.1.0=90,1.2.0=10 (policy)") in cluster.events
    again = cluster.handle("RolloutPolicy", "part-similarity")
    assert dict(again) == {}  # nothing changed: no status write at all


def test_weight_change_through_the_api_raises_policy_version(cluster: Cluster) -> None:
    cluster.handle("RolloutPolicy", "part-similarity")
    body = cluster.bodies[("RolloutPolicy", "part-similarity")]
    body["spec"]["weights"] = [{"version": "1.1.0", "weight": 100}]
    body["metadata"]["generation"] = 2
    status = cluster.handle("RolloutPolicy", "part-similarity")["status"]
    assert status["policyVersion"] == 2 and status["routingSummary"] == "1.1.0=100"
    assert status["observedGeneration"] == 2


def test_invalid_object_gets_stalled_status_not_retries(cluster: Cluster) -> None:
    body = cluster.bodies[("RolloutPolicy", "part-similarity")]
    body["spec"]["weights"] = [{"version": "1.1.0", "weight": 90},
                               {"version": "1.2.0", "weight": 20}]
    status = cluster.handle("RolloutPolicy", "part-similarity")["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "policy.weights-sum-100" in stalled["message"]


def test_every_example_object_reaches_ready(cluster: Cluster) -> None:
    for kind, name in list(cluster.bodies):
        cluster.handle(kind, name)
    for (kind, name), body in cluster.bodies.items():
        ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", (kind, name, ready)


def _admission(cluster: Cluster, body: dict[str, Any], old: dict[str, Any] | None = None,
               operation: str = "CREATE") -> None:
    validate(body=kopf.Body(body), old=kopf.Body(old) if old else None, operation=operation,
             memo=cluster.memo, **cluster.indexes())


def test_webhook_refuses_a_second_stable(cluster: Cluster) -> None:
    canary = cluster.bodies[("ModelVersion", "part-similarity-1-2-0")]
    promoted = {**canary, "spec": {**canary["spec"], "stage": "STABLE"}}
    with pytest.raises(kopf.AdmissionError, match=r"version\.one-stable") as exc:
        _admission(cluster, promoted, old=canary, operation="UPDATE")
    assert exc.value.code == 422 and "DEPRECATED" in str(exc.value)


def test_webhook_refuses_editing_a_release_record(cluster: Cluster) -> None:
    record = cluster.bodies[("ReleaseRecord", "rel-2026-09-02-part-sim-1-1-0")]
    edited = {**record, "spec": {**record["spec"], "canaryPercent": 50}}
    with pytest.raises(kopf.AdmissionError, match=r"release\.immutable"):
        _admission(cluster, edited, old=record, operation="UPDATE")


def test_webhook_accepts_references_that_arrive_later(cluster: Cluster) -> None:
    policy = {"apiVersion": "cadml.io/v1alpha1", "kind": "RolloutPolicy",
              "metadata": {"name": "newcomer", "namespace": "acme-cad"},
              "spec": {"modelRef": "not-yet-there", "weights": [
                  {"version": "1.0.0", "weight": 100}]}}
    _admission(cluster, policy)  # no exception


def test_version_with_traffic_cannot_be_deleted(cluster: Cluster) -> None:
    cluster.handle("RolloutPolicy", "part-similarity")
    canary = cluster.bodies[("ModelVersion", "part-similarity-1-2-0")]
    with pytest.raises(kopf.TemporaryError, match="10% of traffic"):
        on_version_delete(body=kopf.Body(canary), memo=cluster.memo, **cluster.indexes())
    draft = cluster.bodies.pop(("ModelVersion", "part-similarity-1-3-0-rc-1"))
    on_version_delete(body=kopf.Body(draft), memo=cluster.memo, **cluster.indexes())
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        assert [e.action for e in tx.audit_events()][-1] == "delete"


def test_a_renamed_version_with_traffic_can_go(cluster: Cluster) -> None:
    """`kubectl apply --prune` of a rename: the new name exists before the old one is
    pruned. Its semver keeps its traffic, so the finalizer lets the old object go and the
    store carries the row over to the new name; a successor that is itself being deleted
    takes nothing over."""
    cluster.handle("RolloutPolicy", "part-similarity")
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        routed = tx.snapshot("part-similarity", live=True)
    old = cluster.bodies[("ModelVersion", "part-similarity-1-2-0")]
    new = {**old, "metadata": {**old["metadata"], "name": "part-similarity-v1-2-0",
                               "uid": "uid-renamed", "deletionTimestamp": "2026-11-30T00:00:00Z"},
           "status": {}}
    cluster.bodies[("ModelVersion", "part-similarity-v1-2-0")] = new
    with pytest.raises(kopf.TemporaryError, match="10% of traffic"):
        on_version_delete(body=kopf.Body(old), memo=cluster.memo, **cluster.indexes())
    del new["metadata"]["deletionTimestamp"]
    on_version_delete(body=kopf.Body(old), memo=cluster.memo, **cluster.indexes())
    del cluster.bodies[("ModelVersion", "part-similarity-1-2-0")]
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        event = list(tx.audit_events())[-1]
        assert (event.action, event.object_name) == ("rename", "part-similarity-v1-2-0")
        assert event.details["previousName"] == "part-similarity-1-2-0"
        assert tx.snapshot("part-similarity", live=True) == routed  # routing untouched
    status = cluster.handle("ModelVersion", "part-similarity-v1-2-0")["status"]
    assert status["servingWeight"] == 10
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_an_object_being_deleted_is_not_drift(cluster: Cluster) -> None:
    """The API server bumps `generation` when it marks an object deleting (the spec is
    unchanged); a pass running before its finalizer writes nothing for it."""
    for kind, name in list(cluster.bodies):
        cluster.handle(kind, name)
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        before = len(list(tx.audit_events()))
    going = cluster.bodies[("ModelVersion", "part-similarity-1-2-0")]
    going["metadata"].update(deletionTimestamp="2026-11-30T00:00:00Z", generation=2)
    cluster.handle("RolloutPolicy", "part-similarity")
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        assert [(e.action, e.object_name) for e in tx.audit_events()][before:] == []


def test_status_changes_removes_stale_fields() -> None:
    assert status_changes({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"c": 3, "b": None}


def test_status_changes_compare_as_the_api_server_stores() -> None:
    """Nulls inside status objects are pruned by the API server; a status that differs only
    by them is unchanged (it used to be patched again at every pass)."""
    stored = {"analysis": [{"metric": "success_rate", "result": "InsufficientData"}]}
    desired = {"analysis": [{"metric": "success_rate", "result": "InsufficientData",
                             "observed": None}], "lastRollback": None}
    assert status_changes(stored, desired) == {}
    desired["analysis"][0]["observed"] = 0.91
    assert status_changes(stored, desired) == {"analysis": [
        {"metric": "success_rate", "result": "InsufficientData", "observed": 0.91}]}


def test_worker_objects_are_owned_by_the_model() -> None:
    body = next(b for b in _bodies() if b["kind"] == "Model" and
                b["metadata"]["name"] == "part-similarity")
    model = parse_body(body).loaded.resource  # type: ignore[union-attr]
    deployment, service = worker_objects(model, "uid-1", "img:1", 8080)  # type: ignore[arg-type]
    assert deployment["spec"]["replicas"] == 2
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "cadml.io/v1alpha1", "kind": "Model",
                     "name": "part-similarity", "uid": "uid-1", "controller": True,
                     "blockOwnerDeletion": True}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["worker", "--model", "acme-cad/part-similarity", "--port",
                                 "8080", "--host", "0.0.0.0"]
    # no account to ask the API server with: no token mounted, every write refused
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert_writable_paths_are_volumes(deployment["spec"]["template"]["spec"])
    (store_env,) = [e for e in container["env"] if e["name"] == "CADML_STORE_URL"]
    assert store_env["valueFrom"]["secretKeyRef"] == {"name": "cadml-store", "key": "url"}
    custom, _ = worker_objects(model, "uid-1", "img:1", 8080,  # type: ignore[arg-type]
                               ("acme-store", "dsn"))
    (store_env,) = [e for e in custom["spec"]["template"]["spec"]["containers"][0]["env"]
                    if e["name"] == "CADML_STORE_URL"]
    assert store_env["valueFrom"]["secretKeyRef"] == {"name": "acme-store", "key": "dsn"}
    settings = OperatorSettings.from_env({"CADML_WORKER_STORE_SECRET": "acme-store",
                                          "CADML_WORKER_STORE_KEY": "dsn"})
    assert (settings.worker_store_secret, settings.worker_store_key) == ("acme-store", "dsn")


def test_workers_check_write_tokens_in_the_namespaces_the_chart_prepared() -> None:
    from controller.operator.kube import WorkerApplier

    body = next(b for b in _bodies() if b["kind"] == "Model" and
                b["metadata"]["name"] == "part-similarity")
    body = {**body, "metadata": {**body["metadata"], "uid": "uid-1"}}
    created: list[dict[str, Any]] = []

    class Api:  # records what would be created; nothing exists yet
        def __getattr__(self, name: str) -> Any:
            from kubernetes.client.exceptions import ApiException

            def call(*args: Any, **_: Any) -> Any:  # server-side apply: (name, ns, body, ...)
                if name.startswith("read_"):
                    raise ApiException(status=404)
                created.append(args[-1])
                return args[-1]
            return call

    for namespaces, account in ((("acme-cad",), "cadml-worker"), (("other",), None)):
        created.clear()
        settings = OperatorSettings.from_env({"CADML_WORKER_AUTH_NAMESPACES":
                                              ",".join(namespaces)})
        WorkerApplier(Api(), Api(), lambda o: o)(body, settings)
        pod = created[0]["spec"]["template"]["spec"]
        assert pod.get("serviceAccountName") == account
        assert pod["automountServiceAccountToken"] is bool(account)
        assert ("--kube-auth" in pod["containers"][0]["args"]) is bool(account)


def assert_writable_paths_are_volumes(pod: dict[str, Any]) -> None:
    """The root filesystem is read-only: /tmp (the feature sandbox's sockets) and the
    artifact cache must be volumes of the pod."""
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]
              if m["name"] in volumes and not m.get("readOnly")}
    env = {e["name"]: e.get("value") for e in container["env"]}
    for path in ("/tmp", env["HOME"], env["CADML_ARTIFACT_CACHE"]):
        assert any(path == m or path.startswith(m + "/") for m in mounts), path


def _annotated(body: dict[str, Any], **annotations: str) -> dict[str, Any]:
    meta = {**body["metadata"], "annotations": {**body["metadata"].get("annotations", {}),
                                               **annotations}}
    return {**body, "metadata": meta}


def _stamp(new: dict[str, Any], old: dict[str, Any] | None, user: str) -> dict[str, Any]:
    """What kopf does with a mutating handler: the JSON patch the API server applies."""
    patch = kopf.Patch()
    stamp_changed_by(body=kopf.Body(new), old=kopf.Body(old) if old else None, patch=patch,
                     operation="UPDATE" if old else "CREATE", userinfo={"username": user})
    return {"ops": patch.as_json_patch(new)}


def test_changed_by_records_the_user_who_changed_the_spec(cluster: Cluster) -> None:
    policy = cluster.bodies[("RolloutPolicy", "part-similarity")]
    assert changed_by("CREATE", policy, None, "alice") == "alice"
    mine = _annotated(policy, **{CHANGED_BY: "alice"})
    moved = {**mine, "spec": {**mine["spec"], "weights": [{"version": "1.1.0",
                                                            "weight": 100}]}}
    assert changed_by("UPDATE", moved, mine, "bob") == "bob"
    # no spec change: the operator's finalizer, a label, or a hand-typed annotation
    forged = _annotated(mine, **{CHANGED_BY: "someone-else"})
    assert changed_by("UPDATE", forged, mine, "mallory") == "alice"
    assert changed_by("UPDATE", policy, policy, "system:serviceaccount:cadml:op") is None


def test_mutating_webhook_patches_only_what_must_change(cluster: Cluster) -> None:
    policy = cluster.bodies[("RolloutPolicy", "part-similarity")]
    created = _stamp(policy, None, "alice")["ops"]
    assert created == [{"op": "add", "path": "/metadata/annotations",
                        "value": {CHANGED_BY: "alice"}}]
    mine = _annotated(policy, **{CHANGED_BY: "alice"})
    forged = _annotated(mine, **{CHANGED_BY: "mallory"})
    assert _stamp(forged, mine, "mallory")["ops"] == [
        {"op": "replace", "path": "/metadata/annotations/cadml.io~1changed-by",
         "value": "alice"}]
    assert _stamp(mine, mine, "system:serviceaccount:cadml:op")["ops"] == []


def test_audit_actor_is_the_stamped_user(cluster: Cluster) -> None:
    key = ("RolloutPolicy", "part-similarity")
    cluster.bodies[key] = _annotated(cluster.bodies[key], **{CHANGED_BY: "alice@acme"})
    assert actor_of(cluster.bodies[key]) == "k8s:alice@acme"
    model = ("Model", "part-similarity")
    cluster.bodies[model] = _annotated(cluster.bodies[model], **{CHANGED_BY: "bob@acme"})
    cluster.handle(*key)  # one pass over the tenant, triggered by the policy
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        actors = {(e.object_kind, e.object_name): e.actor for e in tx.audit_events()}
    assert actors[key] == "k8s:alice@acme"  # each row names who changed its object
    assert actors[model] == "k8s:bob@acme"
    assert actors[("Model", "assembly-match")] == "k8s:unknown"  # no managedFields here
    unstamped = {"metadata": {"managedFields": [{"manager": "kubectl", "operation": "Update"}]}}
    assert actor_of(unstamped) == "k8s:kubectl"  # the webhook is off: the field manager


def test_webhook_settings_from_the_environment() -> None:
    s = OperatorSettings.from_env({"CADML_WEBHOOK_CERT": "/c/tls.crt", "CADML_WEBHOOK_KEY":
                                   "/c/tls.key", "CADML_WEBHOOK_CA": "/c/ca.crt",
                                   "CADML_WEBHOOK_FAILURE_POLICY": "Ignore"})
    assert (s.webhook_cert, s.webhook_key, s.webhook_ca, s.webhook_failure_policy) == (
        "/c/tls.crt", "/c/tls.key", "/c/ca.crt", "Ignore")
    assert OperatorSettings.from_env({}).webhook_failure_policy == "Fail"
    with pytest.raises(UsageError, match="Fail or Ignore"):
        OperatorSettings.from_env({"CADML_WEBHOOK_FAILURE_POLICY": "fail-open"})


def test_a_deletion_is_audited_under_the_user_who_asked(cluster: Cluster) -> None:
    key = ("RolloutPolicy", "part-similarity")
    cluster.bodies[key] = _annotated(cluster.bodies[key], **{CHANGED_BY: "alice@acme"})
    cluster.handle(*key)
    policy = cluster.bodies[key]
    # `kubectl delete --dry-run=server` audits nothing, and a webhook call repeated for the
    # same request (the API server retries a broken connection) adds no second row
    for dryrun in (True, False, False):
        validate(body=kopf.Body(policy), old=kopf.Body(policy), operation="DELETE",
                 dryrun=dryrun, userinfo={"username": "carol@acme"}, memo=cluster.memo,
                 **cluster.indexes())
    terminating = {**policy, "metadata": {**policy["metadata"],
                                          "deletionTimestamp": "2026-11-22T06:00:00Z"}}
    validate(body=kopf.Body(terminating), old=kopf.Body(terminating), operation="DELETE",
             dryrun=False, userinfo={"username": "dave@acme"}, memo=cluster.memo,
             **cluster.indexes())  # a second DELETE while it terminates: not a new request
    del cluster.bodies[key]  # the finalizer runs once the object is gone from the indexes
    on_delete(body=kopf.Body(policy), memo=cluster.memo, **cluster.indexes())
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        rows = [(e.action, e.actor) for e in tx.audit_events() if e.object_name == key[1]
                and e.object_kind == key[0]]
        assert tx.verify_audit() is None
    assert rows[-2:] == [("delete-requested", "k8s:carol@acme"), ("delete", "k8s:carol@acme")]
    assert rows.count(("delete-requested", "k8s:carol@acme")) == 1


def test_a_deletion_that_cannot_be_audited_is_refused(cluster: Cluster,
                                                      tmp_path: Path) -> None:
    policy = cluster.bodies[("RolloutPolicy", "part-similarity")]
    broken = Store(make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}"))  # no tables
    memo = kopf.Memo(store=broken, settings=cluster.memo["settings"])
    with pytest.raises(kopf.AdmissionError, match="cannot be audited") as exc:
        validate(body=kopf.Body(policy), old=kopf.Body(policy), operation="DELETE",
                 dryrun=False, userinfo={"username": "carol"}, memo=memo, **cluster.indexes())
    assert exc.value.code == 503


def test_a_pass_on_a_stale_index_does_not_bring_a_deleted_object_back(cluster: Cluster) -> None:
    """kopf drops an object from its indexes only when the DELETED event arrives: a timer
    pass in between still sees it. It must not write the object back into the store."""
    cluster.handle("Model", "part-similarity")
    key = ("ModelVersion", "part-similarity-1-3-0-rc-1")
    draft = cluster.bodies[key]  # stays in the (stale) indexes
    on_version_delete(body=kopf.Body(draft), memo=cluster.memo, **cluster.indexes())
    cluster.handle("Model", "part-similarity")  # the repair timer fires right after
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        rows = {v.name: v.deleted for v in tx.versions("part-similarity")}
        actions = [e.action for e in tx.audit_events() if e.object_name == key[1]]
    assert rows[key[1]] is True
    assert actions[-1] == "delete" and actions.count("delete") == 1


def test_webhook_service_reference_parses_and_refuses_garbage() -> None:
    from controller.operator.webhook import parse_service

    assert parse_service("cadml-system/cadml-operator") == ("cadml-system", "cadml-operator",
                                                            443)
    assert parse_service("ops/hooks:8443") == ("ops", "hooks", 8443)
    for bad in ("cadml-operator", "/x", "ns/", "ns/x:https"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_service(bad)
    with pytest.raises(UsageError, match="NAMESPACE/NAME"):
        OperatorSettings.from_env({"CADML_WEBHOOK_SERVICE": "nope"})


async def test_the_webhook_server_hands_the_api_server_a_service(tmp_path: Path) -> None:
    """The real server starts (TLS on loopback) and the client config it yields names the
    Service and carries the CA bundle; the URL of the pod is not given out."""
    from controller.operator.certs import self_signed
    from controller.operator.webhook import ServiceWebhookServer
    from tests.e2e.controlplane import free_port

    cert, key = self_signed(["cadml-operator.cadml-system.svc"], tmp_path)
    server = ServiceWebhookServer(service=("cadml-system", "cadml-operator", 443),
                                  addr="127.0.0.1", port=free_port(),
                                  host="cadml-operator.cadml-system.svc",
                                  certfile=str(cert), pkeyfile=str(key))

    async def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("no admission request is made here")

    configs = server(never)
    config = await configs.__anext__()
    await configs.aclose()
    assert config["service"] == {"namespace": "cadml-system", "name": "cadml-operator",
                                 "port": 443, "path": ""}
    assert config["caBundle"] and "url" not in config


def test_concurrent_events_of_one_tenant_never_run_two_passes_at_once(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf runs handlers of different objects concurrently. Two events of one tenant:
    the second waits for (and is coalesced after) the first pass; no audit row twice."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from controller.operator import handlers

    real = handlers.reconcile_tenant
    lock = threading.Lock()
    inside: list[str] = []
    overlaps: list[int] = []
    first_in = threading.Event()
    queue: TenantQueue[Any, Any] = cluster.memo["tenants"]

    def second_arrived() -> bool:
        with lock:
            if len(inside) > 1:
                return True
        with queue._cond:
            pending = queue._pending.get("acme-cad")
            return pending is not None and len(pending.items) > 0

    def instrumented(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside.append("pass")
            if len(inside) > 1:
                overlaps.append(len(inside))
        try:
            if not first_in.is_set():  # hold the first pass until the second event is in
                first_in.set()
                for _ in range(1000):
                    if second_arrived():
                        break
                    threading.Event().wait(0.01)
            return real(*args, **kwargs)
        finally:
            with lock:
                inside.remove("pass")

    monkeypatch.setattr(handlers, "reconcile_tenant", instrumented)

    def handle(kind: str, name: str) -> None:
        for _ in range(5):  # kopf retries a TemporaryError
            try:
                cluster.handle(kind, name)
                return
            except kopf.TemporaryError:
                continue
        raise AssertionError(f"{kind}/{name} never reconciled")

    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(handle, "RolloutPolicy", "part-similarity")
        assert first_in.wait(10)
        b = pool.submit(handle, "Model", "assembly-match")
        a.result(30)
        b.result(30)
    assert not overlaps
    with cluster.memo["store"].transaction("acme-cad", "t") as tx:
        rows = [(e.action, e.object_kind, e.object_name) for e in tx.audit_events()]
    assert len(rows) == len(set(rows)), rows  # no audit row written twice
    for kind, name in [("RolloutPolicy", "part-similarity"), ("Model", "assembly-match")]:
        ready = next(c for c in cluster.bodies[(kind, name)]["status"]["conditions"]
                     if c["type"] == "Ready")
        assert ready["status"] == "True", (kind, name, ready)


def test_the_periodic_repair_passes_each_tenant_once_per_interval(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One periodic driver for the operator: each tenant the indexes know is passed once
    an interval, whatever its object count, and only when no pass of it (an event's
    included) finished within the interval. A repair that changes nothing writes no
    status."""
    from controller.operator import handlers

    real = handlers.reconcile_tenant
    passes: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes.append(str(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(handlers, "reconcile_tenant", counted)
    now = [0.0]
    cluster.memo["tenants"] = TenantQueue(clock=lambda: now[0])
    cluster.memo["patch_status"] = cluster.patch_status


    class Live(dict[str, Any]):  # kopf's indexes are live: they follow the status writes
        def get(self, key: str, default: Any = None) -> Any:
            return cluster.indexes().get(key, default)

    driver = handlers.periodic_driver(cluster.memo, Live(), OperatorSettings(
        store_url="sqlite://", timer_interval=60, analysis_interval=60))
    driver.clock = lambda: now[0]

    def repaired() -> list[str]:  # the tenants a round repaired (analysis runs too)
        return [tenant for work, tenant in driver.tick() if work == "repair"]

    acme = sum(1 for b in cluster.bodies.values() if b["metadata"]["namespace"] == "acme-cad")
    assert acme >= 5
    assert repaired() == [] and passes == []  # first seen: its events pass it
    now[0] = 60
    assert repaired() == ["acme-cad", "globex-cad"]  # an interval later: each tenant once
    assert sorted(passes) == ["acme-cad", "globex-cad"]
    assert cluster.writes  # their statuses, written by the repair
    cluster.writes.clear()
    now[0] = 90
    assert repaired() == [] and len(passes) == 2  # within the interval: nothing
    now[0] = 100
    cluster.handle("RolloutPolicy", "part-similarity")  # an event's pass of acme-cad
    passes.clear()
    now[0] = 121
    assert repaired() == ["globex-cad"] and passes == ["globex-cad"]
    now[0] = 161
    assert repaired() == ["acme-cad"] and passes == ["globex-cad", "acme-cad"]
    cluster.writes.clear()  # the example policy's first analysis measurement was news
    now[0] = 300
    assert repaired() == ["acme-cad", "globex-cad"]
    assert cluster.writes == []  # nothing changed: no status write


def test_the_periodic_driver_waits_while_another_replica_operates() -> None:
    """A standby's driver runs nothing (kopf pauses its handlers; the driver reads the
    operating flag first, before each tenant) and asks only when something is due."""
    from controller.operator.periodic import PeriodicDriver

    asked, ran, now = [], [], [0.0]
    allowed = [False]

    def active() -> bool:
        asked.append(now[0])
        return allowed[0]

    driver = PeriodicDriver(lambda: ["t"], lambda _: None, ran.append, lambda _: None,
                            interval=10, analysis_interval=10, active=active,
                            clock=lambda: now[0])
    assert driver.tick() == [] and asked == []  # first seen: nothing due, not asked
    now[0] = 10
    assert driver.tick() == [] and ran == [] and asked == [10]
    now[0] = 15  # still due, still a standby: asked again (a flag), nothing run
    assert driver.tick() == [] and asked == [10, 15]
    allowed[0], now[0] = True, 20
    assert driver.tick() == [("analyse", "t"), ("repair", "t")] and ran == ["t"]
    assert asked == [10, 15, 20, 20]  # once per run
    now[0] = 25
    assert driver.tick() == [] and asked == [10, 15, 20, 20]  # nothing due: not asked
    now[0], allowed[0] = 30, False
    assert driver.tick() == [] and ran == ["t"]


@pytest.mark.parametrize(("last", "now", "due"), [
    (None, 0.0, True), (0.0, 59.9, False), (0.0, 60.0, True), (100.0, 120.0, False)])
def test_a_tenant_is_due_once_its_last_run_is_an_interval_old(last: float | None, now: float,
                                                              due: bool) -> None:
    from controller.operator.periodic import due as due_tenants

    assert due_tenants(["t"], lambda _: last, now, 60) == (["t"] if due else [])


def test_the_index_keeps_only_what_a_pass_reads(cluster: Cluster) -> None:
    """kopf's indexes hold every object of every tenant in memory: the managed field sets
    and kubectl's last-applied copy are dropped; who changed it (the changed-by stamp, the
    field managers' names) and the rollback reason stay, and a pass reads the same."""
    import json

    body = cluster.bodies[("RolloutPolicy", "part-similarity")]
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(body),
        "cadml.io/rollback-reason": "latency", CHANGED_BY: "alice"}
    body["metadata"]["managedFields"] = [
        {"manager": "kubectl-client-side-apply", "operation": "Update",
         "fieldsV1": {"f:spec": {"f:weights": {}, "f:modelRef": {}}}},
        {"manager": "argocd-controller", "operation": "Update",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:cadml.io/rollback-reason": {}}}}}]
    (indexed,) = index_by_namespace(namespace="acme-cad", body=kopf.Body(body)).values()
    meta = indexed["metadata"]
    assert meta["annotations"] == {"cadml.io/rollback-reason": "latency", CHANGED_BY: "alice"}
    assert meta["managedFields"] == [
        {"manager": "kubectl-client-side-apply", "operation": "Update"},
        {"manager": "argocd-controller", "operation": "Update"}]
    assert actor_of(indexed) == actor_of(body) == "k8s:alice"
    del body["metadata"]["annotations"][CHANGED_BY]
    (indexed,) = index_by_namespace(namespace="acme-cad", body=kopf.Body(body)).values()
    assert actor_of(indexed) == actor_of(body) == "k8s:argocd-controller"
    assert parse_body(indexed).loaded is not None
    print(f"\nindexed policy: {len(json.dumps(indexed))} bytes of {len(json.dumps(body))}")


def test_a_stale_index_view_cannot_undo_a_newer_pass(cluster: Cluster) -> None:
    """An event whose handler still sees an older view of the tenant (kopf's index before
    the policy's rollback reached it) must not publish that view over the rollback: its
    pass is refused by the store's generation guard and requeued (TemporaryError), nothing
    of it is written, and the retry from the current view changes nothing."""
    for kind, name in list(cluster.bodies):
        cluster.handle(kind, name)
    stale = cluster.indexes()  # the view before the rollback: policy generation 1, 90/10
    policy = cluster.bodies[("RolloutPolicy", "part-similarity")]
    policy["spec"]["weights"] = [{"version": "1.1.0", "weight": 100}]
    policy["metadata"]["generation"] = 2
    assert cluster.handle("RolloutPolicy", "part-similarity")["status"]["policyVersion"] == 2

    def stored() -> tuple[int, dict[str, int], int]:
        with cluster.memo["store"].read("acme-cad") as tx:
            snap = tx.snapshot("part-similarity", live=True)
            return (snap.policy_version, {r.version: r.weight for r in snap.routes},
                    len(list(tx.audit_events())))

    before = stored()
    model = cluster.bodies[("Model", "part-similarity")]
    model["metadata"].setdefault("labels", {})["team"] = "search"  # an event, same spec
    with pytest.raises(kopf.TemporaryError):
        on_change(body=kopf.Body(model), patch=kopf.Patch(), memo=cluster.memo, **stale)
    assert stored() == before == (2, {"1.1.0": 100}, before[2])
    cluster.handle("Model", "part-similarity")  # kopf's retry, from the current view
    assert stored() == before


def test_a_weight_change_that_suspends_bindings_puts_their_count_in_the_policy_status(
        cluster: Cluster) -> None:
    """Issue 12: a binding the effective routing no longer routes is suspended; the policy
    status the operator patches (what `kubectl get rolloutpolicy -o yaml` shows) counts
    them per version."""
    cluster.handle("RolloutPolicy", "part-similarity")
    store = cluster.memo.store
    with store.transaction("acme-cad", "worker") as tx:  # as a worker binds jobs
        tx.bind_job("j1", "part-similarity-1-2-0", {})
        tx.bind_job("j2", "part-similarity-1-2-0", {})
        tx.bind_job("j3", "part-similarity-1-1-0", {})
    body = cluster.bodies[("RolloutPolicy", "part-similarity")]
    body["spec"]["weights"] = [{"version": "1.1.0", "weight": 100}]  # the canary rolled back
    body["metadata"]["generation"] = 2
    status = cluster.handle("RolloutPolicy", "part-similarity")["status"]
    assert status["routingSummary"] == "1.1.0=100"
    assert status["suspendedBindings"] == {"count": 2, "versions": {"1.2.0": 2}}
    assert body["status"]["suspendedBindings"]["count"] == 2


def test_a_version_held_by_a_model_being_deleted_is_looked_at_again_soon(
        cluster: Cluster) -> None:
    """A namespace deleted at once deletes every object together: a version whose
    policy still routes to it waits, but its finalizer looks again in 1 s, not 30 s,
    since what holds it is going too."""
    cluster.handle("RolloutPolicy", "part-similarity")
    canary = cluster.bodies[("ModelVersion", "part-similarity-1-2-0")]
    with pytest.raises(kopf.TemporaryError) as alone:
        on_version_delete(body=kopf.Body(canary), memo=cluster.memo, **cluster.indexes())
    assert alone.value.delay == 30
    for key in (("Model", "part-similarity"), ("RolloutPolicy", "part-similarity")):
        cluster.bodies[key]["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    with pytest.raises(kopf.TemporaryError, match="10% of traffic") as together:
        on_version_delete(body=kopf.Body(canary), memo=cluster.memo, **cluster.indexes())
    assert together.value.delay == 1
