"""The similarity workers of a Model, as desired Kubernetes objects, and whether a live
one differs from them (pure functions).

One Deployment and one Service per Model, owned by it (ownerReferences), so
deleting the Model garbage-collects them and scaling is a Git change to
`spec.workers`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from controller.api.v1alpha1 import API_VERSION, Model


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
    labels = {"app.kubernetes.io/name": "cadml-worker",
              "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "cadml",
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


def readiness(deployment_status: dict[str, Any] | None, replicas: int) -> str:
    ready = int((deployment_status or {}).get("readyReplicas") or 0)
    return f"{ready}/{replicas}"


def differs(desired: Any, live: Any) -> bool:
    """Whether the live object (as the API server serves it, camelCase) lacks something of
    its desired form. Fields the API server adds (defaults, status, managedFields) are not
    a difference; a list must match element by element. A worker that finds nothing to
    change this way makes no API write."""
    if isinstance(desired, dict | list) and live is None:
        live = type(desired)()  # an empty field the API server leaves out
    if isinstance(desired, dict):
        return not isinstance(live, dict) or any(
            differs(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return not isinstance(live, list) or len(desired) != len(live) or any(
            differs(d, v) for d, v in zip(desired, live, strict=True))
    if isinstance(desired, str) and isinstance(live, str) and desired != live:
        a, b = quantity(desired), quantity(live)
        return a is None or a != b  # "1000m" and "1", "1024Mi" and "1Gi" are one quantity
    return bool(desired != live)


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
