"""The admission webhooks' server, reached by the API server through a Service.

kopf's own server tells the API server a URL (`https://HOST:PORT/…`). Inside a cluster
that is the wrong address: kube-apiserver usually cannot resolve `*.svc` names (it runs
on the host network) and the Service exposes 443, not the container port. This server
listens in the pod like kopf's, but hands kopf a `clientConfig.service` reference
(namespace, name, port), which the API server routes to the Service's endpoints; TLS is
verified against `<name>.<namespace>.svc`, which the serving certificate names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kopf


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
