"""The operator's effects through the kubernetes client, outside kopf's own patch: a
Model's worker Deployment and Service, the status of a tenant's other objects, Events
posted outside a handler, and kopf's peering records.

Both take the client's API objects, so tests hand them a counting fake; the
`kubernetes_*` constructors build them from the in-cluster config or $KUBECONFIG.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from controller.api.v1alpha1 import GROUP, KINDS, VERSION, Model
from controller.operator.settings import OperatorSettings
from controller.operator.workers import FIELD_MANAGER, needs_apply, readiness, worker_objects
from controller.validation.parse import parse_body

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)


def _client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client


class WorkerApplier:
    """Applies a Model's worker Deployment and Service and returns the Model status fields
    about them (`workersReady`; `workersError`, what the API server refused, None once
    nothing is: the next call tries again, and the same refusal is no status change).
    Each object is read, and applied (server-side apply as `FIELD_MANAGER`, with force:
    the operator's fields are its own) only when that would change it
    (`needs_apply`): a Model whose workers are as desired costs two reads and no write.
    A missing object is created by the same apply, so the operator owns its fields from
    the start."""

    def __init__(self, apps: Any, core: Any, serialize: Any) -> None:
        self.apps, self.core, self.serialize = apps, core, serialize

    def __call__(self, body: Mapping[str, Any], settings: OperatorSettings,
                 indexed: Mapping[str, Mapping[Any, Any] | None] | None = None
                 ) -> dict[str, Any]:
        """`indexed`: kind → the operator's index of live worker objects ((namespace,
        name) → them, `indexed_worker`); an object found there is not read again."""
        from kubernetes.client.exceptions import ApiException

        result = parse_body(dict(body))
        if result.loaded is None or not isinstance(result.loaded.resource, Model):
            return {}
        model = result.loaded.resource
        deployment, service = worker_objects(
            model, str(body["metadata"]["uid"]), settings.worker_image, settings.worker_port,
            (settings.worker_store_secret, settings.worker_store_key),
            settings.worker_service_account
            if model.metadata.namespace in settings.worker_auth_namespaces else None)
        ns, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        live: dict[str, Any] = {}
        refused: list[str] = []
        for obj, read, apply in (
            (deployment, self.apps.read_namespaced_deployment,
             self.apps.patch_namespaced_deployment),
            (service, self.core.read_namespaced_service, self.core.patch_namespaced_service),
        ):
            current = _indexed((indexed or {}).get(obj["kind"]), (ns, name))
            try:
                if current is None:  # not indexed (yet): read it
                    try:
                        current = self.serialize(read(name, ns))
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                if needs_apply(obj, current):
                    current = self.serialize(apply(name, ns, obj, field_manager=FIELD_MANAGER,
                                                   force=True, _content_type=APPLY_PATCH))
            except ApiException as exc:
                why = refusal(obj["kind"], name, exc.status, exc.body, exc.reason)
                if why is None:  # the API server is away or busy: the caller retries
                    raise
                refused.append(why)  # the same refusal again next time: no status change
            live[obj["kind"]] = current
        status = (live["Deployment"] or {}).get("status")
        return {"workersReady": readiness(status, model.spec.workers.replicas),
                "workersError": "; ".join(refused) or None}


def refusal(kind: str, name: str, code: int | None, body: Any, reason: Any) -> str | None:
    """What the Model's status says when the API server refuses one of its worker objects
    (a 4xx other than 429: the same request is refused again until someone changes the
    cluster): the kind, the name and the server's own message, without anything that
    varies between attempts. None for an answer a retry can change (5xx, 429, none)."""
    if code is None or not 400 <= code < 500 or code == 429:
        return None
    message = ""
    with contextlib.suppress(TypeError, ValueError, AttributeError):  # not a Status body
        message = str(json.loads(body).get("message") or "")
    return f"{kind} {name} refused ({code}): {message or reason or 'no reason given'}"[:512]


def _indexed(index: Mapping[Any, Any] | None, key: tuple[str, str]) -> dict[str, Any] | None:
    """The object a kopf index holds under `key` (its values are collections), or None."""
    found = index.get(key) if index is not None else None
    return next((dict(v) for v in found), None) if found is not None else None


def kubernetes_worker_applier() -> WorkerApplier:
    client = _client()
    return WorkerApplier(client.AppsV1Api(), client.CoreV1Api(),
                         client.ApiClient().sanitize_for_serialization)


class StatusPatcher:
    """Patches the status subresource of one object (a JSON merge patch: None removes a
    field), for the objects a tenant pass changed besides the one kopf patches itself."""

    def __init__(self, custom: Any) -> None:
        self.custom = custom

    def __call__(self, namespace: str, kind: str, name: str, changes: Mapping[str, Any]
                 ) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, KINDS[kind].plural, name, {"status": dict(changes)},
                _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status != 404:  # gone meanwhile: nothing left to tell
                raise


def kubernetes_status_patcher() -> StatusPatcher:
    return StatusPatcher(_client().CustomObjectsApi())


class EventPoster:
    """Posts a Kubernetes Event about an object from any thread (kopf's `kopf.info` works
    only inside a handler): what the periodic driver announces, e.g. a canary aborted."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def __call__(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        from datetime import UTC, datetime

        meta = body.get("metadata") or {}
        now = datetime.now(UTC).isoformat()
        self.core.create_namespaced_event(str(meta.get("namespace")), {
            "apiVersion": "v1", "kind": "Event", "type": "Normal",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace":
                         meta.get("namespace")},
            "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                               "name": meta.get("name"), "namespace": meta.get("namespace"),
                               "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER})


def kubernetes_event_poster() -> EventPoster:
    return EventPoster(_client().CoreV1Api())


class Peering:
    """kopf's peering object(s) of this operator: the cluster-wide one, or one per
    namespace it serves (`namespaces`). Reads their peer records, removes records, writes
    this replica's own, and says which pod (UID) has a name now (None: cannot tell, e.g.
    not allowed to look)."""

    def __init__(self, custom: Any, core: Any, name: str, namespaces: tuple[str, ...]) -> None:
        self.custom, self.core, self.name, self.namespaces = custom, core, name, namespaces
        # each peering object's resourceVersion at the last read (`statuses`): this
        # replica's own record is written only onto the object as it was read
        self._read: dict[str | None, str] = {}

    def statuses(self) -> list[tuple[str | None, dict[str, Any]]]:
        """(namespace or None, the peer records) of each peering object that exists."""
        from kubernetes.client.exceptions import ApiException

        out: list[tuple[str | None, dict[str, Any]]] = []
        for ns in self.namespaces or (None,):
            try:
                obj = self.custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", self.name) if ns is None else \
                    self.custom.get_namespaced_custom_object(
                        "kopf.dev", "v1", ns, "kopfpeerings", self.name)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self._read[ns] = str(version)
            out.append((ns, dict(obj.get("status") or {})))
        return out

    def remove(self, namespace: str | None, identities: list[str]) -> None:
        self._patch(namespace, dict.fromkeys(identities))

    def touch(self, namespace: str | None, identity: str, record: Mapping[str, Any]) -> bool:
        """Write this replica's own record (kopf's keep-alive, more often: the heartbeat
        that tells standbys it runs), only onto the peering object as `statuses` read it:
        if it changed since (kopf removed this record at shutdown, a peer wrote), the API
        server refuses the write (409) and nothing is written: the next check reads
        again. False: refused so."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._patch(namespace, {identity: dict(record)}, self._read.get(namespace))
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    def _patch(self, namespace: str | None, records: Mapping[str, Any],
               version: str | None = None) -> None:
        patch: dict[str, Any] = {"status": dict(records)}
        if version is not None:  # a merge patch with it is refused once the object moved
            patch["metadata"] = {"resourceVersion": version}
        if namespace is None:
            self.custom.patch_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", self.name, patch,
                _content_type=MERGE_PATCH)
        else:
            self.custom.patch_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", self.name, patch,
                _content_type=MERGE_PATCH)

    def pod_uid(self, namespace: str, name: str) -> str | None:
        """The pod's UID; `peers.GONE` when it does not exist; None: cannot tell."""
        from kubernetes.client.exceptions import ApiException

        from controller.operator.peers import GONE

        try:
            pod = self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            return GONE if exc.status == 404 else None
        return str(pod.metadata.uid) if pod.metadata and pod.metadata.uid else None


def kubernetes_peering(name: str, namespaces: tuple[str, ...]) -> Peering:
    client = _client()
    return Peering(client.CustomObjectsApi(), client.CoreV1Api(), name, namespaces)
