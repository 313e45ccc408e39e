"""The similarity workers of a Model, as desired Kubernetes objects, and whether a live
one needs them applied (pure functions).

One Deployment and one Service per Model, owned by it (ownerReferences), so
deleting the Model garbage-collects them and scaling is a Git change to
`spec.workers`. They are written by server-side apply as `FIELD_MANAGER` with force:
the operator owns the fields it applies, a field it stops applying is removed by the
API server, and fields another manager added (`kubectl set env`) are theirs and left
alone. `needs_apply` compares only what the operator owns, so an idle Model costs no
write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from controller.api.v1alpha1 import API_VERSION, Model

FIELD_MANAGER = "cadml-operator"  # the server-side apply field manager of the workers
WORKER_LABELS = {"app.kubernetes.io/name": "cadml-worker", "app.kubernetes.io/part-of": "cadml"}


def worker_name(model: Model) -> str:
    return f"cadml-worker-{model.metadata.name}"[:63].rstrip("-")


def owner_reference(model: Model, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Model", "name": model.metadata.name,
            "uid": uid, "controller": True, "blockOwnerDeletion": True}


def worker_objects(model: Model, uid: str, image: str, port: int,
                   store_secret: tuple[str, str] = ("cadml-store", "url"),
                   service_account: str | None = None) -> list[dict[str, Any]]:
    """The Deployment and Service the Model's workers run as. `store_secret` (name, key)
    holds the store URL; it must exist in the Model's namespace (a pod reads only the
    Secrets of its own namespace), so a namespace's own Secret can carry a role bound to
    that tenant (`cadml db grant-tenant`). With `service_account` (an account allowed to
    create TokenReviews and SubjectAccessReviews: the chart's cadml-worker-auth) the
    workers check write tokens with the API server (--kube-auth); without one they mount
    no token and refuse every review and binding."""
    name = worker_name(model)
    ns = model.metadata.namespace
    labels = {**WORKER_LABELS, "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "worker",  # the chart's worker NetworkPolicy
              "cadml.io/model": model.metadata.name}
    meta = {"name": name, "namespace": ns, "labels": labels,
            "ownerReferences": [owner_reference(model, uid)]}
    workers = model.spec.workers
    resources = ({"requests": dict(workers.resources.requests),
                  "limits": dict(workers.resources.limits)} if workers.resources else {})
    container = {
        "name": "worker",
        "image": workers.image or image,
        "args": ["worker", "--model", f"{ns}/{model.metadata.name}", "--port", str(port),
                 "--host", "0.0.0.0", *(["--kube-auth"] if service_account else [])],
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": "CADML_STORE_URL",
                 "valueFrom": {"secretKeyRef": {"name": store_secret[0],
                                                "key": store_secret[1]}}},
                # the root filesystem is read-only: scratch (sandbox sockets) and downloaded
                # artifacts go to volumes of the pod's own
                {"name": "HOME", "value": "/tmp"},
                {"name": "CADML_ARTIFACT_CACHE", "value": "/var/cache/cadml/artifacts"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "artifacts", "mountPath": "/var/cache/cadml"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                           "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                          "periodSeconds": 10},
        "resources": resources,
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": workers.replicas,
                 "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [container],
                                       "volumes": [{"name": "tmp", "emptyDir": {}},
                                                   {"name": "artifacts", "emptyDir": {}}],
                                       **({"serviceAccountName": service_account}
                                          if service_account else {}),
                                       "automountServiceAccountToken": bool(service_account)}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": {"app.kubernetes.io/instance": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [deployment, service]


def indexed_worker(body: Mapping[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """A live worker Deployment or Service as the operator's index keeps it: what
    `needs_apply` and `readiness` read (spec, status, and of the managed fields only the
    operator's own), so an idle Model is judged without a request."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "labels", "ownerReferences") if k in meta}
    kept["managedFields"] = [m for m in meta.get("managedFields") or []
                             if m.get("manager") == manager]
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept,
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


def readiness(deployment_status: dict[str, Any] | None, replicas: int) -> str:
    ready = int((deployment_status or {}).get("readyReplicas") or 0)
    return f"{ready}/{replicas}"


MERGE_KEYS = ("name", "mountPath", "uid")  # what identifies an item of a keyed list


def differs(desired: Any, live: Any) -> bool:
    """Whether the live object (as the API server serves it, camelCase) lacks something of
    its desired form. Fields the API server adds (defaults, status, managedFields) are not
    a difference, nor items another field manager added to a keyed list (an env var set
    by hand: server-side apply leaves them to their owner, so they are no reason to
    write); an atomic list must match element by element."""
    if isinstance(desired, dict | list) and live is None:
        live = type(desired)()  # an empty field the API server leaves out
    if isinstance(desired, dict):
        return not isinstance(live, dict) or any(
            differs(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list):
            return True
        key = _merge_key(desired)
        if key is not None:
            by_key = {i.get(key): i for i in live if isinstance(i, dict)}
            return any(differs(d, by_key.get(d[key])) for d in desired)
        return len(desired) != len(live) or any(
            differs(d, v) for d, v in zip(desired, live, strict=True))
    if isinstance(desired, str) and isinstance(live, str) and desired != live:
        a, b = quantity(desired), quantity(live)
        return a is None or a != b  # "1000m" and "1", "1024Mi" and "1Gi" are one quantity
    return bool(desired != live)


def _merge_key(items: list[Any]) -> str | None:
    for key in MERGE_KEYS:
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def owned_fields(live: Mapping[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """The fields `manager` owns in the live object by server-side apply (its
    `managedFields` entry, fieldsV1 form: `f:name`, `k:{json}` for a keyed list's item,
    `v:json` for a set's value); empty when it owns none."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" \
                and not entry.get("subresource"):
            return dict(entry.get("fieldsV1") or {})
    return {}


def unwanted(fields: Mapping[str, Any], desired: Any, path: str = "") -> list[str]:
    """Paths of owned fields (`owned_fields`) that the desired form no longer has: the
    next apply removes them (a resource limit taken out of the Model)."""
    out = []
    for key, sub in fields.items():
        kind, _, ident = key.partition(":")
        here: Any = None
        if kind == "f" and isinstance(desired, Mapping):
            here = desired.get(ident)
        elif kind == "k" and isinstance(desired, list):
            wanted = json.loads(ident)  # fields the server defaults (protocol) may be absent
            here = next((i for i in desired if isinstance(i, Mapping) and all(
                i.get(k, v) == v for k, v in wanted.items())), None)
        elif kind == "v" and isinstance(desired, list):
            here = ident if json.loads(ident) in desired else None
        elif key == ".":
            continue
        if here is None:
            out.append(f"{path}/{key}")
        elif isinstance(sub, Mapping) and sub:
            out.extend(unwanted(sub, here, f"{path}/{key}"))
    return out


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None,
                manager: str = FIELD_MANAGER) -> bool:
    """Whether applying `desired` as `manager` would change the live object: it is missing,
    lacks or has another value for a desired field, or holds a field the manager owns
    and no longer wants."""
    return live is None or differs(desired, live) or bool(
        unwanted(owned_fields(live, manager), desired))


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {"m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
           "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15,
           "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20,
           "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50,
           "Ei": Decimal(2) ** 60}


def quantity(text: str) -> Decimal | None:
    """A Kubernetes resource quantity's value (the API server serves them canonical:
    `1000m` comes back as `1`); None for a string that is not one."""
    found = _QUANTITY.match(text)
    if found is None:
        return None
    try:
        return Decimal(found.group(1)) * _SUFFIX.get(found.group(2) or "", Decimal(1))
    except InvalidOperation:
        return None
