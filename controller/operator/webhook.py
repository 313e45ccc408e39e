"""The admission webhooks' server, reached by the API server through a Service.

kopf's own server tells the API server a URL (`https://HOST:PORT/…`). Inside a cluster
that is the wrong address: kube-apiserver usually cannot resolve `*.svc` names (it runs
on the host network) and the Service exposes 443, not the container port. This server
listens in the pod like kopf's, but hands kopf a `clientConfig.service` reference
(namespace, name, port), which the API server routes to the Service's endpoints; TLS is
verified against `<name>.<namespace>.svc`, which the serving certificate names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf

from controller.api.v1alpha1 import GROUP, KINDS, VERSION

TenantReader = Callable[[str], list[dict[str, Any]]]


def parse_service(ref: str) -> tuple[str, str, int]:
    """`namespace/name[:port]` → (namespace, name, port); port 443 by default."""
    ns, sep, rest = ref.partition("/")
    name, _, port = rest.partition(":")
    if not sep or not ns or not name or (port and not port.isdigit()):
        raise ValueError(f"CADML_WEBHOOK_SERVICE {ref!r}: expected NAMESPACE/NAME[:PORT]")
    return ns, name, int(port or 443)


class ServiceWebhookServer(kopf.WebhookServer):
    def __init__(self, *, service: tuple[str, str, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        namespace, name, port = self.service
        async for config in super().__call__(fn):
            out: dict[str, Any] = {"service": {"namespace": namespace, "name": name,
                                               "port": port, "path": self.path or ""}}
            if config.get("caBundle"):
                out["caBundle"] = config["caBundle"]
            yield out


def kubernetes_tenant_reader() -> TenantReader:
    """The tenant as the API server has it now: one LIST per kind in its namespace.

    The validating webhook judges a change against the tenant's other objects. kopf's
    indexes are not that view on every replica: a standby (paused by peering) never
    watches, so its indexes are empty, and a replica paused later keeps a frozen copy;
    yet every replica is an endpoint of the webhook Service and answers admission. Read
    live, any replica refuses what the active one would (4 small LISTs per request)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.CustomObjectsApi()
    plurals = [cls.plural for cls in KINDS.values()]

    def read(namespace: str) -> list[dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        for plural in plurals:
            listed: dict[str, Any] = api.list_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, plural)
            bodies.extend({k: item.get(k) for k in ("apiVersion", "kind", "metadata", "spec",
                                                     "status")}
                          for item in listed.get("items") or [])
        return bodies

    return read
