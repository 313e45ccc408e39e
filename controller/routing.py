"""Effective routing and thresholds of a model: what a run will actually get.

Purely computational, shared by `cadml diff`, the planner and the workers.
Precedence, fixed: manual override > the job's own binding/policy > the model's
default policy. Thresholds layer model defaults < version defaults < policy.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from controller.api.v1alpha1 import Model, ModelVersion, RolloutPolicy, RolloutPolicySpec
from controller.records import RouteRow, ShadowRoute

ROLLBACK_ANNOTATION = "cadml.io/rollback-reason"


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """How traffic is split and why. `source`: override | analysis-abort | expired |
    rollback | policy | default (no policy: all on STABLE) | none (nothing to serve)."""

    routes: tuple[RouteRow, ...]
    source: str
    reason: str = ""
    expired: str | None = None  # why the policy is not in force, if it is not
    shadow: ShadowRoute | None = None  # requests mirrored for comparison (spec.shadow)

    def as_percentages(self) -> dict[str, int]:
        return {r.version: r.weight for r in self.routes}


def override_active(policy: RolloutPolicy, now: datetime) -> bool:
    return override_in_force(policy.spec, now)


def override_in_force(spec: RolloutPolicySpec, now: datetime) -> bool:
    ov = spec.override
    return ov is not None and (ov.until is None or ov.until > now)


def window_closed(spec: RolloutPolicySpec, now: datetime) -> str | None:
    """Why the policy's validity window (validFrom/validUntil) is closed now (None: open):
    its weights, and so its canary steps, are not in force."""
    if spec.valid_until is not None and spec.valid_until <= now:
        return f"the policy expired at {spec.valid_until.isoformat()}"
    if spec.valid_from is not None and spec.valid_from > now:
        return f"the policy starts at {spec.valid_from.isoformat()}"
    return None


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
    expired = window_closed(spec, now)
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
    return _point(job_id) / 100.0


def slot(job_id: str) -> int:
    """The job's slot 0..99: the whole percent its bucket falls in."""
    return _point(job_id) // 100


def _point(job_id: str) -> int:
    digest = hashlib.sha256(job_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000


SLOTS = 100


def positional_slots(routes: Sequence[RouteRow]) -> dict[str, tuple[int, ...]]:
    """The slots each version held before slots were placed: consecutive ranges in the
    order of the routes (what a snapshot without stored slots routes by)."""
    out, start = {}, 0
    for r in routes:
        width = max(r.weight, 0)
        out[r.version] = tuple(range(start, min(start + width, SLOTS)))
        start += width
    return out


def held_slots(routes: Sequence[RouteRow]) -> dict[str, tuple[int, ...]]:
    """version → the slots it holds in these routes (all by position when any route of
    them was published without slots)."""
    if any(r.slots is None for r in routes):
        return positional_slots(routes)
    return {r.version: r.slots or () for r in routes}


def place_routes(previous: Mapping[str, Sequence[int]],
                 routes: Sequence[RouteRow]) -> tuple[RouteRow, ...]:
    """Purely computational: the routes with the slots each version holds from now on.

    Every version keeps the slots it held (`previous`: version → slots), as many as its
    new weight, lowest first; what it needs more comes from the free slots, lowest first.
    So a job changes version only when its version's weight shrinks or leaves: a promoted
    canary keeps its jobs as it becomes STABLE and takes the old STABLE's, the other
    canaries keep theirs, and a canary that grows only takes jobs in."""
    taken: set[int] = set()
    kept: dict[str, list[int]] = {}
    for r in routes:
        own = [s for s in sorted(set(previous.get(r.version, ())))
               if 0 <= s < SLOTS and s not in taken][:max(r.weight, 0)]
        kept[r.version] = own
        taken.update(own)
    free = iter([s for s in range(SLOTS) if s not in taken])
    return tuple(replace(r, slots=tuple(sorted(
        kept[r.version] + list(itertools.islice(free, max(r.weight, 0) - len(kept[r.version])))
    ))) for r in routes)


def routable(routes: Sequence[RouteRow]) -> frozenset[str]:
    """The versions a snapshot routes to: weight > 0, or the STABLE version."""
    return frozenset(r.version for r in routes if r.weight > 0 or r.is_stable)


def slot_table(routes: Sequence[RouteRow]) -> tuple[str | None, ...]:
    """slot → the version holding it (None: no route covers it)."""
    table: list[str | None] = [None] * SLOTS
    for version, slots in held_slots(routes).items():
        for s in slots:
            table[s] = version
    return tuple(table)


# the tables of the last few snapshots' routes, by the identity of their routes tuple (a
# worker asks with the same tuple for every request until its next refresh)
_TABLES: dict[int, tuple[Sequence[RouteRow], tuple[str | None, ...]]] = {}


def route_by_slot(job_id: str, routes: Sequence[RouteRow]) -> str | None:
    """The version the routes give this job (None where no route covers its slot)."""
    cached = _TABLES.get(id(routes))
    if cached is None or cached[0] is not routes:
        if len(_TABLES) >= 16:
            _TABLES.clear()
        cached = _TABLES[id(routes)] = (routes, slot_table(routes))
    return cached[1][slot(job_id)]


@dataclass(frozen=True, slots=True)
class Choice:
    version: str
    source: str  # "override" | "binding" | "policy" | "default"
    binding: str | None = None  # the job's binding: active | suspended; None: not bound


def binding_state(binding: str | None, routes: Sequence[RouteRow]) -> str | None:
    """A binding holds only while the effective routing routes to its version: after a
    rollback, an abort, an override or a deprecation it is suspended (kept, not used)."""
    if binding is None:
        return None
    return "active" if binding in routable(routes) else "suspended"


def choose_version(job_id: str, routes: Sequence[RouteRow], snapshot_source: str,
                   binding: str | None, available: frozenset[str]) -> Choice | None:
    """Precedence, fixed: manual override > the job's own binding > the policy's weights;
    a binding applies only while its version is routable by the snapshot.

    `routes` are the published snapshot's; `available` the versions this worker has
    loaded. None when the version the job routes to is not loaded.
    """
    state = binding_state(binding, routes)
    if snapshot_source == "override" and routes:
        version = routes[0].version
        return Choice(version, "override", state) if version in available else None
    if binding is not None and state == "active":
        return Choice(binding, "binding", state) if binding in available else None
    found = route_by_slot(job_id, routes)
    source = "default" if snapshot_source == "default" else "policy"
    return Choice(found, source, state) if found is not None and found in available else None
