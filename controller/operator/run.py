"""Starting the operator: settings once, the store, the registry, then kopf's event loop."""

from __future__ import annotations

import asyncio

import kopf
from prometheus_client import start_http_server

from controller.operator.handlers import WRITTEN, build_registry, kubernetes_worker_applier
from controller.operator.settings import OperatorSettings
from controller.operator.tenantqueue import TenantQueue
from controller.operator.webhook import kubernetes_tenant_reader
from controller.store.open import open_store


def run_operator(settings: OperatorSettings, *, apply_workers: bool = True) -> None:
    kopf.configure(verbose=False, log_format=kopf.LogFormat.PLAIN)
    start_http_server(settings.metrics_port)  # /metrics for Prometheus
    store = open_store(settings.store_url)
    memo = kopf.Memo(store=store, settings=settings, post_event=kopf.info,
                     apply_workers=kubernetes_worker_applier() if apply_workers else None,
                     finalized={},  # shared by every handler (kopf copies memos shallowly)
                     tenants=TenantQueue(),  # one pass per tenant at a time, coalesced
                     **{WRITTEN: {}},  # the status writes of passes, until indexes see them
                     # the webhook reads the tenant live: a standby's indexes are empty
                     admission_tenant=kubernetes_tenant_reader() if settings.webhook_host
                     else None)
    registry = build_registry(settings)
    asyncio.run(kopf.operator(
        registry=registry,
        memo=memo,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        peering_name=settings.peering,
        standalone=settings.peering is None,
        priority=settings.priority,
        liveness_endpoint=settings.liveness,
    ))
