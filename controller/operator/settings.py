"""Operator settings, read once at start-up into a typed object and passed down (kopf memo)."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field

from controller.errors import UsageError
from controller.store.engine import resolve_url


def env_seconds(env: dict[str, str], *names: str) -> float | None:
    """The first of `names` that is set, as seconds above 0; None when none is set.
    Anything else stops the start (`UsageError`, exit code 2) naming the variable."""
    for name in names:
        text = (env.get(name) or "").strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"{name} {env[name]!r}: use a number of seconds above 0 "
                             f"(e.g. 60 or 0.5), or leave it unset for the default")
        return value
    return None


def env_count(env: dict[str, str], name: str, minimum: int = 1,
              maximum: int | None = None) -> int | None:
    """`name` as a whole number of at least `minimum` (and at most `maximum`); None when
    unset or empty. ASCII digits only ("²" is a digit to str.isdigit, not to int)."""
    text = (env.get(name) or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < minimum or \
            (maximum is not None and int(text) > maximum):
        span = f"of {minimum} or more" if maximum is None else f"from {minimum} to {maximum}"
        raise UsageError(f"{name} {env[name]!r}: use a whole number {span}, "
                         f"or leave it unset for the default")
    return int(text)


@dataclass(frozen=True)
class OperatorSettings:
    store_url: str
    worker_image: str = "ghcr.io/cadml/cadml:0.1.0"
    worker_port: int = 8080
    worker_store_secret: str = "cadml-store"  # in each tenant namespace: name and key of
    worker_store_key: str = "url"  # the Secret holding the workers' store URL
    # namespaces whose workers check write tokens with the API server, as this account
    # (the chart creates it there and lets it create TokenReviews/SubjectAccessReviews)
    worker_auth_namespaces: tuple[str, ...] = ()
    worker_service_account: str = "cadml-worker"
    timer_interval: float = 60.0
    analysis_interval: float = 60.0
    periodic_workers: int = 4  # tenants the periodic driver runs at once
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    peering: str | None = None  # None: standalone; a name needs kopf's peering CRDs + object
    # Peers of equal priority freeze each other (kopf), so each replica draws its own at
    # start: the highest is active, the others stand by until it is gone.
    priority: int = field(default_factory=lambda: secrets.randbelow(2**31 - 1) + 1)
    pod_name: str | None = None  # the replica's pod (downward API): its peering identity
    pod_namespace: str | None = None
    pod_uid: str | None = None  # a pod recreated under the same name is another replica
    webhook_port: int = 9443
    webhook_host: str | None = None  # set: serve the admission webhook (self-signed cert)
    webhook_url_host: str | None = None  # the address the API server calls, if not webhook_host
    webhook_cert: str | None = None  # mounted serving certificate; self-signed when unset
    webhook_key: str | None = None
    webhook_ca: str | None = None  # CA bundle the API server trusts (cert-manager: ca.crt)
    webhook_service: str | None = None  # NAMESPACE/NAME[:PORT]: the API server calls the
    #                                     Service (in a cluster), not https://HOST:PORT
    webhook_failure_policy: str = "Fail"  # Fail: nothing is admitted while the webhook is down
    liveness: str = "http://0.0.0.0:8081/healthz"
    metrics_port: int = 9090
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> OperatorSettings:
        env = dict(os.environ) if env is None else env
        values: dict[str, object] = {
            "store_url": resolve_url(None, env),
            "worker_image": env.get("CADML_WORKER_IMAGE", cls.worker_image),
            "worker_store_secret": env.get("CADML_WORKER_STORE_SECRET") or None,
            "worker_store_key": env.get("CADML_WORKER_STORE_KEY") or None,
            "worker_auth_namespaces": tuple(
                n for n in env.get("CADML_WORKER_AUTH_NAMESPACES", "").split(",") if n),
            "worker_service_account": env.get("CADML_WORKER_SERVICE_ACCOUNT") or None,
            "timer_interval": env_seconds(env, "CADML_TIMER_INTERVAL"),
            # canary analysis follows the repair interval unless set on its own
            "analysis_interval": env_seconds(env, "CADML_ANALYSIS_INTERVAL",
                                             "CADML_TIMER_INTERVAL"),
            "periodic_workers": env_count(env, "CADML_PERIODIC_WORKERS"),
            "namespaces": tuple(n for n in env.get("CADML_NAMESPACES", "").split(",") if n),
            "peering": env.get("CADML_PEERING") or None,
            "priority": env_count(env, "CADML_PRIORITY", minimum=0),
            "pod_name": env.get("POD_NAME") or None,
            "pod_namespace": env.get("POD_NAMESPACE") or None,
            "pod_uid": env.get("POD_UID") or None,
            "webhook_host": env.get("CADML_WEBHOOK_HOST") or None,
            "webhook_port": env_count(env, "CADML_WEBHOOK_PORT", maximum=65535),
            "webhook_cert": env.get("CADML_WEBHOOK_CERT") or None,
            "webhook_key": env.get("CADML_WEBHOOK_KEY") or None,
            "webhook_ca": env.get("CADML_WEBHOOK_CA") or None,
            "webhook_service": env.get("CADML_WEBHOOK_SERVICE") or None,
            "webhook_failure_policy": env.get("CADML_WEBHOOK_FAILURE_POLICY") or None,
            "metrics_port": env_count(env, "CADML_METRICS_PORT", minimum=0, maximum=65535),
        }
        if overrides.get("timer_interval") is not None and \
                env_seconds(env, "CADML_ANALYSIS_INTERVAL") is None:
            # --timer-interval, like $CADML_TIMER_INTERVAL, sets analysis' interval too
            values["analysis_interval"] = overrides["timer_interval"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
        if settings.webhook_service:
            from controller.operator.webhook import parse_service

            try:
                parse_service(settings.webhook_service)  # a malformed value fails at start
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if settings.webhook_failure_policy not in ("Fail", "Ignore"):
            raise UsageError(f"CADML_WEBHOOK_FAILURE_POLICY must be Fail or Ignore, "
                             f"not {settings.webhook_failure_policy!r}")
        return settings
