"""Shadow comparison: how different a shadow version's search results are from the served.

Purely computational, no I/O: the worker scores each mirrored query with
`compare_results`, `cadml compare --shadow` summarises the stored scores with
`summarise` and, when the two versions extract different feature versions,
`migration_stats`.

- overlap@k = |A ∩ B| / k over the first k ids of each list (k capped at the longer
  list's length, so a query that asked for 5 results is compared over 5);
- rank-biased overlap (Webber, Moffat & Zobel 2010) truncated at depth k and divided
  by the largest value the first k ranks can carry (1 - p^k): in [0, 1], 1 for
  identical lists; p = 0.9 by default (the top ranks weigh most);
- top-1 delta = the shadow's best score minus the served one's (None when either list
  is empty).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.records import ShadowRoute

if TYPE_CHECKING:
    from controller.api.v1alpha1 import ModelVersion, RolloutPolicy
    from controller.routing import RoutingTable

OVERLAP_K = 10
RBO_P = 0.9
LOW_OVERLAP = 0.5  # a query whose overlap@10 is below this "changed a lot"
NEGATIVE_SKEW_SHARE = 0.5  # large_negative_skew: more than half the top-1 deltas < 0
GROWTH_SPIKE_SHARE = 0.3  # growth_spike: more than 30 % of top-1 scores grow by > 100 %
GROWTH_SPIKE_RATIO = 1.0


def depth(a: Sequence[str], b: Sequence[str], k: int = OVERLAP_K) -> int:
    """The depth two lists are compared at: k, or the longer list's length when both are
    shorter (a query that asked for 5 results is compared over 5)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return min(k, max(len(a), len(b)))


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int = OVERLAP_K) -> float:
    """|A ∩ B| / k over the first k ids of each list (1.0 for two empty lists)."""
    d = depth(a, b, k)
    return 1.0 if d == 0 else len(set(a[:d]) & set(b[:d])) / d


def rbo(a: Sequence[str], b: Sequence[str], p: float = RBO_P, k: int = OVERLAP_K) -> float:
    """Rank-biased overlap of the first k ids: the truncated sum
    (1 - p) · Σ_{d=1..k} p^(d-1) · |A_:d ∩ B_:d| / d divided by its largest value
    1 - p^k, so it lies in [0, 1] and is 1 for identical lists."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be within (0, 1)")
    n = depth(a, b, k)
    if n == 0:
        return 1.0
    total = sum(p ** (d - 1) * len(set(a[:d]) & set(b[:d])) / d for d in range(1, n + 1))
    return min(1.0, (1.0 - p) * total / (1.0 - p**n))


@dataclass(frozen=True, slots=True)
class Comparison:
    overlap_at_10: float
    rbo: float
    top1_delta: float | None
    served_top1: float | None
    shadow_top1: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"overlapAt10": self.overlap_at_10, "rbo": self.rbo,
                "top1Delta": self.top1_delta, "servedTop1": self.served_top1,
                "shadowTop1": self.shadow_top1}


def compare_results(served: Sequence[tuple[str, float]], shadow: Sequence[tuple[str, float]]
                    ) -> Comparison:
    """Compare two result lists of (id, score), best first."""
    a, b = [i for i, _ in served], [i for i, _ in shadow]
    s1 = served[0][1] if served else None
    h1 = shadow[0][1] if shadow else None
    return Comparison(overlap_at_k(a, b), rbo(a, b), None if s1 is None or h1 is None
                      else h1 - s1, s1, h1)


@dataclass(frozen=True, slots=True)
class ShadowFact:
    """One stored shadow comparison, as `summarise` reads it."""

    shadow_version: str
    served_version: str
    job_key: str
    run_key: str
    overlap_at_10: float
    rbo: float
    top1_delta: float | None
    served_top1: float | None = None


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (as evaluation's p95)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(facts: Sequence[ShadowFact], changed: int = 10) -> dict[str, dict[str, Any]]:
    """Per shadow version: the distribution of overlap@10 and RBO (mean, median, p10), the
    share of queries with overlap@10 < 0.5, and the `changed` queries that changed most
    (lowest overlap@10, then lowest RBO)."""
    out: dict[str, dict[str, Any]] = {}
    for version in sorted({f.shadow_version for f in facts}):
        mine = [f for f in facts if f.shadow_version == version]
        ov = [f.overlap_at_10 for f in mine]
        rb = [f.rbo for f in mine]
        deltas = [f.top1_delta for f in mine if f.top1_delta is not None]
        worst = sorted(mine, key=lambda f: (f.overlap_at_10, f.rbo, f.job_key))[:changed]
        out[version] = {
            "sampleSize": len(mine),
            "servedVersions": sorted({f.served_version for f in mine}),
            "overlapAt10": _distribution(ov),
            "rbo": _distribution(rb),
            "top1Delta": _distribution(deltas),
            "lowOverlapShare": sum(1 for v in ov if v < LOW_OVERLAP) / len(ov),
            "changedMost": [{"jobId": f.job_key, "runKey": f.run_key,
                             "servedVersion": f.served_version,
                             "overlapAt10": f.overlap_at_10, "rbo": f.rbo,
                             "top1Delta": f.top1_delta} for f in worst],
        }
    return out


def _distribution(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p10": None}
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "p10": quantile(values, 0.10)}


def migration_stats(facts: Sequence[ShadowFact]) -> dict[str, Any]:
    """What a feature-version change does to the top-1 score: mean and median delta, the
    share of negative deltas, and the warnings `large_negative_skew` (more than half
    negative) and `growth_spike` (more than 30 % grow by over 100 % of the served
    score)."""
    pairs = [(f.top1_delta, f.served_top1) for f in facts if f.top1_delta is not None]
    deltas = [d for d, _ in pairs]
    if not deltas:
        return {"sampleSize": 0, "meanDelta": None, "medianDelta": None,
                "negativeShare": None, "growthShare": None, "warnings": []}
    negative = sum(1 for d in deltas if d < 0) / len(deltas)
    growth = sum(1 for d, base in pairs if base is not None and base > 0
                 and d / base > GROWTH_SPIKE_RATIO) / len(deltas)
    warnings = ([f"large_negative_skew: {negative:.0%} of top-1 scores fall"]
                if negative > NEGATIVE_SKEW_SHARE else []) + (
        [f"growth_spike: {growth:.0%} of top-1 scores grow by over 100 %"]
        if growth > GROWTH_SPIKE_SHARE else [])
    return {"sampleSize": len(deltas), "meanDelta": statistics.fmean(deltas),
            "medianDelta": statistics.median(deltas), "negativeShare": negative,
            "growthShare": growth, "warnings": warnings}


def mirrored(job_id: str, percent: int) -> bool:
    """Whether a job is mirrored to the shadow version: deterministic by its id (its own
    hash, independent of the routing slot, so the canary's jobs are mirrored as often as
    the STABLE's)."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(b"shadow:" + job_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def shadow_route(policy: RolloutPolicy, versions: Mapping[str, ModelVersion],
                 routing: RoutingTable) -> ShadowRoute | None:
    """The shadow a snapshot publishes: the policy's `spec.shadow` while the policy's own
    weights route (not under an override, an abort, a rollback or outside the validity
    window), its version CANARY or DRAFT with an artifact sha256, and taking less than
    all the traffic (something else must answer to compare with)."""
    st = shadow_status(policy, versions, routing)
    return ShadowRoute(st["version"], st["percent"]) if st and st["inForce"] else None


def published_shadow(policy: RolloutPolicy, stage: str, sha256: str | None,
                     routing: RoutingTable) -> ShadowRoute | None:
    """`shadow_route` given the shadow version's stage and artifact sha256 (from resources
    or from the store's rows)."""
    sh = policy.spec.shadow
    if sh is None or shadow_refusal(sh.version, stage, sha256, routing) is not None:
        return None
    return ShadowRoute(sh.version, sh.percent)


def shadow_refusal(version: str, stage: str | None, sha256: str | None,
                   routing: RoutingTable) -> str | None:
    """Why `spec.shadow` of `version` (its stage; None: not a version of the model) is
    not mirrored with this routing; None when it is."""
    if stage is None:
        return f"{version} is not a version of the model"
    if routing.source != "policy":
        return f"the policy's weights do not route ({routing.source}: {routing.reason})"
    if not (stage == "CANARY" or (stage == "DRAFT" and sha256)):
        return (f"{version} is {stage}; a shadow is a CANARY, or a DRAFT with an "
                "artifact sha256")
    if any(r.version == version and r.weight >= 100 for r in routing.routes):
        return f"{version} takes all the traffic: there is nothing to compare it with"
    return None


def shadow_status(policy: RolloutPolicy, versions: Mapping[str, ModelVersion],
                  routing: RoutingTable) -> dict[str, Any] | None:
    """The policy's `status.shadow`: the shadow Git asks for, whether it is mirrored with
    the routing published (`inForce`) and why not; None without `spec.shadow`."""
    sh = policy.spec.shadow
    if sh is None:
        return None
    target = versions.get(sh.version)
    why = shadow_refusal(sh.version, target.spec.stage if target else None,
                         target.spec.artifact.sha256 if target else None, routing)
    return {"version": sh.version, "percent": sh.percent, "inForce": why is None,
            **({"reason": why} if why else {})}


def shadow_change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
                  ) -> str | None:
    """What a change of `spec.shadow` (as dumped; None: none) does, for `cadml diff`."""
    if before == after:
        return None
    if after is None:
        return (f"shadow removed: {before['version']} at {before['percent']}% is no longer "
                "mirrored" if before else None)
    mirror = f"{after['version']} at {after['percent']}% of requests"
    if before is None:
        return f"shadow added: mirrors {mirror} (compared, never served)"
    return f"shadow changed: {before['version']} at {before['percent']}% → {mirror}"


def shadow_text(shadow: ShadowRoute | None) -> str:
    return "no shadow" if shadow is None else f"shadow {shadow.version} {shadow.percent}%"


def shadow_report(rows: Sequence[Mapping[str, Any]], changed: int = 10) -> dict[str, Any]:
    """What `cadml compare --shadow` shows, from stored shadow runs (`StoreTx.shadow_runs`
    rows): per shadow version its distribution and the queries that changed most, the
    failed shadow searches by error code, and, for every (served → shadow) pair of
    different feature versions, the migration statistics of the top-1 score."""
    facts = [ShadowFact(r["shadow_version"], r["served_version"], r["job_key"] or "",
                        r["run_key"], float(r["overlap_at_10"]), float(r["rbo"]),
                        r["top1_delta"], r["served_top1"])
             for r in rows if r["error_code"] is None and r["overlap_at_10"] is not None]
    versions = summarise(facts, changed)
    for r in rows:
        entry = versions.setdefault(r["shadow_version"], {"sampleSize": 0})
        if r["error_code"] is not None:
            failed = entry.setdefault("failed", {})
            failed[r["error_code"]] = failed.get(r["error_code"], 0) + 1
    migrations = []
    pairs = sorted({(r["served_version"], r["served_feature_version"], r["shadow_version"],
                     r["shadow_feature_version"]) for r in rows
                    if r["served_feature_version"] != r["shadow_feature_version"]})
    for served, served_fv, shadow, shadow_fv in pairs:
        mine = [f for f in facts if (f.served_version, f.shadow_version) == (served, shadow)]
        migrations.append({"servedVersion": served, "shadowVersion": shadow,
                           "featureVersions": [served_fv, shadow_fv],
                           **migration_stats(mine)})
    return {"versions": versions, "migrations": migrations}
