"""Effective routing and thresholds of a model: what a run will actually get.

Purely computational, shared by `cadml diff`, the planner and the workers.
Precedence, fixed: manual override > the job's own binding/policy > the model's
default policy. Thresholds layer model defaults < version defaults < policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from controller.api.v1alpha1 import Model, ModelVersion, RolloutPolicy
from controller.records import RouteRow

ROLLBACK_ANNOTATION = "cadml.io/rollback-reason"


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """How traffic is split and why. `source`: override | analysis-abort | expired |
    rollback | policy | default (no policy: all on STABLE) | none (nothing to serve)."""

    routes: tuple[RouteRow, ...]
    source: str
    reason: str = ""
    expired: str | None = None  # why the policy is not in force, if it is not

    def as_percentages(self) -> dict[str, int]:
        return {r.version: r.weight for r in self.routes}


def override_active(policy: RolloutPolicy, now: datetime) -> bool:
    ov = policy.spec.override
    return ov is not None and (ov.until is None or ov.until > now)


def stable_only(stable: str, source: str, reason: str,
                expired: str | None = None) -> RoutingTable:
    return RoutingTable((RouteRow(stable, 100, True),), source, reason, expired)


def effective_routing(policy: RolloutPolicy | None, stages: Mapping[str, str], now: datetime,
                      aborted: str | None = None) -> RoutingTable:
    """The one routing function (`cadml diff`, the planner, the workers' default): what a
    model routes by now, from its policy (or none), the stage of each of its versions
    (semver → stage) and, where the store holds one, the reason of a canary abort.

    Precedence, fixed: override > analysis abort > validity window > weights; a model with
    a STABLE version and no policy routes 100 % to it (source `default`). An abort holds
    for the spec it judged; the spec in Git is never touched, so a sync cannot undo it."""
    stable = next((sv for sv, st in stages.items() if st == "STABLE"), None)
    if policy is None:
        if stable is None:
            return RoutingTable((), "none", "no RolloutPolicy and no STABLE version")
        return stable_only(stable, "default", "no RolloutPolicy: all traffic on the STABLE "
                                              "version")
    spec = policy.spec
    ov = spec.override
    if ov is not None and override_active(policy, now):
        return RoutingTable((RouteRow(ov.version, 100, stages.get(ov.version) == "STABLE",
                                      forced=True),), "override", ov.reason)
    if aborted and stable is not None:
        return stable_only(stable, "analysis-abort", aborted)
    expired = None
    if spec.valid_until is not None and spec.valid_until <= now:
        expired = f"the policy expired at {spec.valid_until.isoformat()}"
    elif spec.valid_from is not None and spec.valid_from > now:
        expired = f"the policy starts at {spec.valid_from.isoformat()}"
    if expired is not None and stable is not None:
        return stable_only(stable, "expired", f"{expired}; all traffic on the STABLE version",
                           expired)
    routes = tuple(RouteRow(w.version, w.weight, stages.get(w.version) == "STABLE")
                   for w in spec.weights)
    reason = policy.metadata.annotations.get(ROLLBACK_ANNOTATION)
    if reason and len(routes) == 1 and routes[0].is_stable:
        return RoutingTable(routes, "rollback", reason, expired)
    return RoutingTable(routes, "policy", "", expired)


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    source: str  # e.g. "model", "version 1.2.0", "policy"


def effective_thresholds(
    model: Model | None, version: ModelVersion | None, policy: RolloutPolicy | None
) -> dict[str, Threshold]:
    return layered_thresholds(
        model.spec.threshold_defaults if model is not None else {},
        (version.spec.version, version.spec.threshold_defaults) if version is not None
        else None,
        policy.spec.thresholds if policy is not None else {})


def layered_thresholds(model: Mapping[str, float],
                       version: tuple[str, Mapping[str, float]] | None,
                       policy: Mapping[str, float]) -> dict[str, Threshold]:
    """Model defaults < version defaults < policy, each value with its source."""
    out = {k: Threshold(v, "model") for k, v in model.items()}
    if version is not None:
        out.update({k: Threshold(v, f"version {version[0]}") for k, v in version[1].items()})
    out.update({k: Threshold(v, "policy") for k, v in policy.items()})
    return dict(sorted(out.items()))


def bucket(job_id: str) -> float:
    """A job's fixed place in [0, 100): the same job lands in the same bucket forever."""
    digest = hashlib.sha256(job_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100.0


@dataclass(frozen=True, slots=True)
class Choice:
    version: str
    source: str  # "override" | "binding" | "policy" | "default"


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
    source = "default" if snapshot_source == "default" else "policy"
    for version, weight in routes:
        cumulative += weight
        if point < cumulative and weight > 0:
            return Choice(version, source) if version in available else None
    return None
