"""Effective routing and thresholds of a model: what a run will actually get.

Purely computational, shared by `cadml diff`, the planner and the workers.
Precedence, fixed: manual override > the job's own binding/policy > the model's
default policy. Thresholds layer model defaults < version defaults < policy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from controller.api.v1alpha1 import Model, ModelVersion, RolloutPolicy


@dataclass(frozen=True, slots=True)
class Route:
    version: str
    weight: int
    stage: str | None


@dataclass(frozen=True, slots=True)
class RoutingTable:
    routes: tuple[Route, ...]
    source: str  # "override" | "policy" | "none"
    override_reason: str | None = None

    def as_percentages(self) -> dict[str, int]:
        return {r.version: r.weight for r in self.routes}


def override_active(policy: RolloutPolicy, now: datetime) -> bool:
    ov = policy.spec.override
    return ov is not None and (ov.until is None or ov.until > now)


def effective_routing(
    policy: RolloutPolicy | None, versions: list[ModelVersion], now: datetime
) -> RoutingTable:
    stage = {v.spec.version: v.spec.stage for v in versions}
    if policy is None:
        return RoutingTable((), "none")
    ov = policy.spec.override
    if ov is not None and override_active(policy, now):
        return RoutingTable((Route(ov.version, 100, stage.get(ov.version)),), "override", ov.reason)
    routes = tuple(Route(w.version, w.weight, stage.get(w.version)) for w in policy.spec.weights)
    return RoutingTable(routes, "policy")


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    source: str  # e.g. "model", "version 1.2.0", "policy"


def effective_thresholds(
    model: Model | None, version: ModelVersion | None, policy: RolloutPolicy | None
) -> dict[str, Threshold]:
    out: dict[str, Threshold] = {}
    if model is not None:
        out.update({k: Threshold(v, "model") for k, v in model.spec.threshold_defaults.items()})
    if version is not None:
        src = f"version {version.spec.version}"
        out.update({k: Threshold(v, src) for k, v in version.spec.threshold_defaults.items()})
    if policy is not None:
        out.update({k: Threshold(v, "policy") for k, v in policy.spec.thresholds.items()})
    return dict(sorted(out.items()))


def bucket(job_id: str) -> float:
    """A job's fixed place in [0, 100): the same job lands in the same bucket forever."""
    digest = hashlib.sha256(job_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100.0


@dataclass(frozen=True, slots=True)
class Choice:
    version: str
    source: str  # "override" | "binding" | "policy"


def choose_version(job_id: str, routes: tuple[tuple[str, int], ...], snapshot_source: str,
                   binding: str | None, available: frozenset[str]) -> Choice | None:
    """Precedence, fixed: manual override > the job's own binding > the policy's weights.

    `routes` are (version, weight) of the published snapshot; `available` the
    versions this worker has loaded. A binding to a version that is not loaded any
    more falls back to the policy. None when nothing can serve.
    """
    if snapshot_source == "override" and routes:
        version = routes[0][0]
        return Choice(version, "override") if version in available else None
    if binding is not None and binding in available:
        return Choice(binding, "binding")
    point, cumulative = bucket(job_id), 0.0
    for version, weight in routes:
        cumulative += weight
        if point < cumulative and weight > 0:
            return Choice(version, "policy") if version in available else None
    return None
