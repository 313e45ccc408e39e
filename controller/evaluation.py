"""Evaluation and canary analysis: pure functions over run facts.

- `compute(runs)`: success_rate = runs that completed without error and met their
  threshold / all runs (every routed request is a run, failed ones included);
  shadow_overlap_at_10 = mean overlap@10 of the version's shadow runs (a failed shadow
  search counts 0; its minSampleSize counts shadow runs);
  review_override_rate = reviewed runs whose reviewer said they did not agree with the
  AI's suggestion (`agree: false`; before reviewers said so: a rejection, or a
  humanDecision other than the suggestion) / reviewed runs; p95_latency_ms (over whole
  request latencies) by the nearest-rank method; each with its sample size. A rate
  over no runs is None, never 0.
- `analyse(bounds, metrics)`: one verdict per bound (Pass / Fail / InsufficientData
  when fewer than minSampleSize runs), and the overall verdict.
- `next_state(failures, overall, limit)`: consecutive failing analyses; abort at the limit.
- `measurement_due(measurements, now, interval)`, `measure(...)` and `judge(...)`: canary
  analysis as data, like Argo Rollouts' AnalysisRun. A measurement (time, overall verdict,
  observed value and bound per metric, and the consecutive failure count it brings) is
  taken only once `intervalSeconds` have passed since the previous one; the last
  `MEASUREMENT_HISTORY` are kept. The failure count and the abort derive from them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from controller.api.v1alpha1 import AnalysisSpec


@dataclass(frozen=True, slots=True)
class RunFact:
    version: str
    success: bool
    met_threshold: bool
    latency_ms: float
    review_status: str
    ai_suggestion: str | None
    human_decision: str | None
    created_at: datetime
    job_key: str | None = None
    agree: bool | None = None  # the reviewer's own word; None on runs reviewed before 0013


@dataclass(frozen=True, slots=True)
class Metrics:
    success_rate: float | None
    review_override_rate: float | None
    p95_latency_ms: float | None
    sample_size: int
    reviewed_sample_size: int
    # the shadow comparison of the version (spec.shadow): mean overlap@10 over its shadow
    # runs, a failed shadow search counting 0 (a version that cannot answer differs most)
    shadow_overlap_at_10: float | None = None
    shadow_sample_size: int = 0

    def get(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, Any]:
        return {"successRate": self.success_rate, "reviewOverrideRate": self.review_override_rate,
                "p95LatencyMs": self.p95_latency_ms, "sampleSize": self.sample_size,
                "reviewedSampleSize": self.reviewed_sample_size}


def p95(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def overridden(run: RunFact) -> bool:
    """The human disagreed with the AI's suggestion, as the reviewer said (`agree`). Runs
    reviewed before reviewers said so: a rejection, or a decision other than the
    suggestion."""
    if run.agree is not None:
        return not run.agree
    if run.review_status == "REJECTED":
        return True
    return run.human_decision is not None and run.human_decision != run.ai_suggestion


def compute(runs: Iterable[RunFact]) -> Metrics:
    runs = list(runs)
    n = len(runs)
    reviewed = [r for r in runs if r.review_status != "PENDING_REVIEW"]
    ok = sum(1 for r in runs if r.success and r.met_threshold)
    return Metrics(
        success_rate=ok / n if n else None,
        review_override_rate=(sum(1 for r in reviewed if overridden(r)) / len(reviewed)
                              if reviewed else None),
        p95_latency_ms=p95([r.latency_ms for r in runs]),
        sample_size=n,
        reviewed_sample_size=len(reviewed),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    metric: str
    result: str  # "Pass" | "Fail" | "InsufficientData"
    observed: float | None
    bound: str
    sample_size: int
    window_seconds: int

    def explain(self) -> str:
        seen = "n/a" if self.observed is None else f"{self.observed:.4g}"
        return (f"{self.metric} {seen} vs {self.bound} over {self.window_seconds}s, "
                f"n={self.sample_size}: {self.result}")

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "result": self.result, "observed": self.observed,
                "bound": self.bound, "sampleSize": self.sample_size,
                "windowSeconds": self.window_seconds}


def _runs(m: Metrics) -> int:
    return m.sample_size


# what a metric's minSampleSize counts: runs, reviewed runs, or shadow runs
SAMPLES: dict[str, Callable[[Metrics], int]] = {
    "review_override_rate": lambda m: m.reviewed_sample_size,
    "shadow_overlap_at_10": lambda m: m.shadow_sample_size,
}
SHADOW_METRICS = frozenset({"shadow_overlap_at_10"})


def with_shadow(metrics: Metrics, overlaps: Sequence[float | None]) -> Metrics:
    """`metrics` with the shadow comparison of its version: the mean overlap@10 of its
    shadow runs (None: the shadow search failed, counted as 0)."""
    n = len(overlaps)
    return replace(metrics, shadow_sample_size=n, shadow_overlap_at_10=(
        sum(o or 0.0 for o in overlaps) / n if n else None))


def shadow_only(spec: AnalysisSpec) -> AnalysisSpec:
    """The bounds a version that takes no traffic yet can be judged by: its shadow
    comparison (it has no runs of its own)."""
    return spec.model_copy(update={"metrics": [b for b in spec.metrics
                                               if b.name in SHADOW_METRICS]})


def judged_by(spec: AnalysisSpec, takes_traffic: bool) -> AnalysisSpec:
    """The bounds a version is judged by: all of them while it takes traffic; before
    that its shadow comparison alone, when the analysis bounds one (otherwise all of them,
    which wait for runs)."""
    if takes_traffic or not any(b.name in SHADOW_METRICS for b in spec.metrics):
        return spec
    return shadow_only(spec)


def analyse(spec: AnalysisSpec, metrics: Metrics) -> tuple[str, list[Verdict]]:
    verdicts = []
    for bound in spec.metrics:
        parts = ([f"min {bound.min:g}"] if bound.min is not None else []) + (
            [f"max {bound.max:g}"] if bound.max is not None else [])
        text = " and ".join(parts) or "no bound"
        value = metrics.get(bound.name)
        samples = SAMPLES.get(bound.name, _runs)(metrics)
        if samples < spec.min_sample_size or value is None:
            result = "InsufficientData"
        elif (bound.min is not None and value < bound.min) or (
                bound.max is not None and value > bound.max):
            result = "Fail"
        else:
            result = "Pass"
        verdicts.append(Verdict(bound.name, result, value, text, samples, spec.window_seconds))
    results = {v.result for v in verdicts}
    overall = "Fail" if "Fail" in results else (
        "InsufficientData" if "InsufficientData" in results else "Pass")
    return overall, verdicts


def next_state(failures: int, overall: str, failure_limit: int) -> tuple[int, bool]:
    """Consecutive failed analyses; InsufficientData neither counts nor resets."""
    if overall == "Fail":
        failures += 1
    elif overall == "Pass":
        failures = 0
    return failures, failures >= failure_limit


# Measurements kept per (model, version, policy spec), oldest dropped first: Argo Rollouts'
# measurementRetention. Each measurement carries the consecutive failure count it
# brought, so dropping old ones never changes the count or the abort.
MEASUREMENT_HISTORY = 10

Measurement = Mapping[str, Any]


def measurement_due(measurements: Sequence[Measurement], now: datetime,
                    interval_seconds: int) -> bool:
    """True when no measurement was taken yet, or `interval_seconds` have passed since the
    last one. A call before that must record nothing and count nothing."""
    if not measurements:
        return True
    last = datetime.fromisoformat(str(measurements[-1]["at"]))
    return now - last >= timedelta(seconds=interval_seconds)


def judge(measurements: Sequence[Measurement], failure_limit: int) -> tuple[int, bool]:
    """(consecutive failed measurements, aborted) as the measurements say."""
    failures = int(measurements[-1].get("consecutiveFailures", 0)) if measurements else 0
    return failures, failures >= failure_limit


def measure(measurements: Sequence[Measurement], overall: str, verdicts: Sequence[Verdict],
            now: datetime, failure_limit: int) -> tuple[tuple[dict[str, Any], ...], int, bool]:
    """Append one measurement; (the bounded history, consecutive failures, aborted)."""
    failures, _ = next_state(judge(measurements, failure_limit)[0], overall, failure_limit)
    taken = {"at": now.isoformat(), "overall": overall,
             "summary": "; ".join(v.explain() for v in verdicts),
             "verdicts": [v.as_dict() for v in verdicts], "consecutiveFailures": failures}
    kept = tuple(dict(m) for m in (*measurements, taken))[-MEASUREMENT_HISTORY:]
    return (kept, *judge(kept, failure_limit))


# the parts of a RolloutPolicy spec that make a canary experiment: which versions take
# how much traffic, and how they are judged. Other fields (refreshSeconds, thresholds,
# validity window, override) neither resume nor reset an abort.
ANALYSIS_FIELDS = ("weights", "analysis")


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _key_body(spec: Mapping[str, Any], ordered: bool = True) -> dict[str, Any]:
    """The key's fields; `ordered`: the weights sorted by version (the order they are
    written in is no part of the plan: reordering them lifts no abort)."""
    body = {"key": "analysis/2", **{k: spec.get(k) for k in ANALYSIS_FIELDS}}
    weights = body.get("weights")
    if ordered and isinstance(weights, list):
        body["weights"] = sorted(weights, key=lambda w: str(w.get("version", ""))
                                 if isinstance(w, Mapping) else "")
    return body


def analysis_key(spec: Mapping[str, Any]) -> str:
    """What canary analysis state is keyed by, with the model and version: the spec's
    weights and analysis only, fields of the canary plan (`steps.plan_key` adds the
    steps). Renaming the policy or its model, or an edit unrelated to the experiment
    (refreshSeconds, thresholds, an override, the shadow's percent or version), neither
    resumes nor resets an abort: a guard's abort is lifted only by a new plan. A shadow
    version is judged under its own version's state, so the shadow needs no key."""
    return _digest(_key_body(spec))


def judges(state_key: str, spec: Mapping[str, Any], spec_hash: str) -> bool:
    """Whether analysis state recorded under `state_key` judged this spec: the one
    predicate of the planner, the tick, `cadml rollout` and `cadml promote`. Keys written
    by older versions still count: the weights in their written order (before 0019's
    release), with the shadow (e237f7d and before; while the spec keeps that shadow), the
    spec without `modelRef` (migration 0010..) and the whole spec's hash (before it)."""
    written = _key_body(spec, ordered=False)
    keys = {analysis_key(spec), _digest(written), spec_hash,
            _digest({k: v for k, v in spec.items() if k != "modelRef"})}
    if spec.get("shadow"):
        keys.add(_digest({**written, "shadow": spec["shadow"]}))
    return state_key in keys
