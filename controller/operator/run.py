"""Starting the operator: settings once, the store, the registry, then kopf's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import kopf
from kopf._core.engines.peering import Identity, detect_own_id
from prometheus_client import start_http_server

from controller.operator import kube
from controller.operator.handlers import WRITTEN, build_registry, kubernetes_worker_applier
from controller.operator.peers import gone_peers, pod_identity
from controller.operator.settings import OperatorSettings
from controller.operator.standby import PeeringWatch
from controller.operator.tenantqueue import TenantQueue
from controller.operator.webhook import kubernetes_tenant_reader
from controller.store.open import open_store

logger = logging.getLogger(__name__)


def forget_gone_peers(peering: kube.Peering, identity: str) -> list[str]:
    """Remove the peering records of replicas that are gone (pod gone, record no longer
    refreshed: `peers.removable`; a SIGKILLed replica's, replaced by a new pod), before
    kopf reads them and pauses for up to their lifetime. Best effort: whatever cannot be
    read or removed expires as kopf expects."""
    removed = []
    try:
        for namespace, status in peering.statuses():
            gone = gone_peers(status, identity, datetime.now(UTC), peering.pod_uid)
            if gone:
                peering.remove(namespace, gone)
                removed += gone
    except Exception:  # any client error: kopf's own expiry still applies
        logger.warning("peering records not cleaned", exc_info=True)
    if removed:
        logger.info("removed the peering records of replicas that are gone: %s", removed)
    return removed


def run_operator(settings: OperatorSettings, *, apply_workers: bool = True) -> None:
    kopf.configure(verbose=False, log_format=kopf.LogFormat.PLAIN)
    start_http_server(settings.metrics_port)  # /metrics for Prometheus
    store = open_store(settings.store_url)
    identity = Identity(pod_identity(settings.pod_namespace, settings.pod_name,
                                     settings.pod_uid) or detect_own_id(manual=False))
    operating = None
    if settings.peering is not None:
        peering = kube.kubernetes_peering(settings.peering, settings.namespaces)
        forget_gone_peers(peering, identity)
        # the periodic driver acts only where kopf does; a standby whose holder's pod is
        # gone removes its record and resumes within seconds
        operating = PeeringWatch(peering, identity, settings.priority)
        operating.check()

    memo = kopf.Memo(store=store, settings=settings, post_event=kopf.info,
                     apply_workers=kubernetes_worker_applier() if apply_workers else None,
                     announce=kube.kubernetes_event_poster(),  # Events outside handlers
                     operating=operating,
                     finalized={},  # shared by every handler (kopf copies memos shallowly)
                     tenants=TenantQueue(),  # one pass per tenant at a time, coalesced
                     **{WRITTEN: {}},  # the status writes of passes, until indexes see them
                     # the webhook reads the tenant live: a standby's indexes are empty
                     admission_tenant=kubernetes_tenant_reader() if settings.webhook_host
                     else None)
    registry = build_registry(settings)
    asyncio.run(_beside(operating.run() if operating else None, kopf.operator(
        registry=registry,
        memo=memo,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        peering_name=settings.peering,
        standalone=settings.peering is None,
        priority=settings.priority,
        identity=identity,
        liveness_endpoint=settings.liveness,
    )))


async def _beside(background: Coroutine[Any, Any, None] | None,
                  main: Coroutine[Any, Any, None]) -> None:
    """Run `main`, with `background` as a task for as long as `main` runs."""
    task = asyncio.create_task(background) if background is not None else None
    try:
        await main
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
