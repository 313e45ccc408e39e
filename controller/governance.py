"""Evaluation, automatic canary analysis and the scheduled tick, performed in the store.

Thin adapter over the pure `controller.evaluation`: it reads run facts, writes
evaluation rows and analysis state. Analysis writes analysis state only (Argo
Rollouts' AnalysisRun): a measurement per canary version, taken once its policy's
`intervalSeconds` have passed, keyed by (model, version, policy spec hash); when a
canary fails `failureLimit` measurements in a row, the abort is recorded (state and an
`abort` audit row). The planner is the only snapshot writer: it reads the abort and
publishes 100 % to STABLE (source `analysis-abort`) on its next pass, which the caller
runs at once (`schedule_tick` here, the operator's analysis timer). The spec in Git is
not touched; a new spec generation starts the analysis afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from controller import metrics
from controller.api.v1alpha1 import AnalysisSpec
from controller.evaluation import (
    SHADOW_METRICS,
    Metrics,
    analyse,
    analysis_key,
    compute,
    judged_by,
    judges,
    measure,
    measurement_due,
)
from controller.reconcile.planner import plan_steps
from controller.reconcile.step import publish_aborts
from controller.records import AnalysisState
from controller.stepping import StepOutcome, version_metrics, walk_policies
from controller.store.repository import Store, StoreTx

DEFAULT_WINDOW = timedelta(hours=1)


@dataclass
class Evaluated:
    model: str
    version: str
    metrics: Metrics
    start: datetime
    end: datetime


@dataclass
class AnalysisOutcome:
    policy: str
    version: str
    overall: str
    failures: int
    aborted_now: bool
    summary: str


@dataclass
class TickResult:
    tenant: str
    window_key: str
    ran: bool
    evaluated: list[Evaluated] = field(default_factory=list)
    analysed: list[AnalysisOutcome] = field(default_factory=list)
    stepped: list[StepOutcome] = field(default_factory=list)


def evaluate(tx: StoreTx, now: datetime, window: timedelta = DEFAULT_WINDOW,
             models: list[str] | None = None, job_key: str | None = None,
             write: bool = True) -> list[Evaluated]:
    """Metrics per model and CANARY/STABLE version over [now - window, now); written to
    the store unless `write` is false (a dry run, in a read-only transaction)."""
    out = []
    start = now - window
    for model in models or tx.model_names():
        for v in tx.versions(model):
            if v.deleted or v.stage not in ("CANARY", "STABLE"):
                continue
            m = compute(tx.run_facts(model, start, now, version=v.version, job_key=job_key))
            if write:
                tx.write_evaluation(model, v.version, start, now, m, job_key or "")
            out.append(Evaluated(model, v.version, m, start, now))
    return out


def analyse_policies(tx: StoreTx, now: datetime,
                     policy: str | None = None) -> list[AnalysisOutcome]:
    """Measure the canaries of the tenant's analysed policies (only `policy`, if named) that
    are due; one outcome per measurement taken. Publishes nothing."""
    out = []
    observed = tx.observe()
    for row in observed.policies.values():
        raw = row.spec.get("analysis")
        snap = observed.snapshots.get(row.model_name)
        if row.deleted or not raw or snap is None or policy not in (None, row.name):
            continue
        spec = AnalysisSpec.model_validate(raw)
        # a new spec generation (another hash) starts afresh; a rename keeps the hash
        key = analysis_key(row.spec)
        previous = {a.version: a for a in observed.analysis.get(row.model_name, [])
                    if judges(a.spec_hash, row.spec, row.spec_hash)}
        canaries = [r.version for r in snap.routes if not r.is_stable and r.weight > 0]
        shadow = snap.shadow.version if snap.shadow is not None else None
        if shadow is not None and shadow not in canaries and any(
                b.name in SHADOW_METRICS for b in spec.metrics):
            canaries.append(shadow)  # judged by its comparison before it takes traffic
        for version in canaries:
            before = previous.get(version)
            taken = before.measurements if before else ()
            if (before is not None and before.aborted) or \
                    not measurement_due(taken, now, spec.interval_seconds):
                continue
            since = now - timedelta(seconds=spec.window_seconds)
            m = version_metrics(tx, row.model_name, version, since, now, version == shadow)
            overall, verdicts = analyse(judged_by(spec, any(
                r.version == version and r.weight > 0 for r in snap.routes)), m)
            kept, failures, abort = measure(taken, overall, verdicts, now, spec.failure_limit)
            state = AnalysisState(row.model_name, version, key, failures, abort, kept)
            tx.save_analysis(state)
            if abort:
                tx.audit("abort", "RolloutPolicy", row.name, {
                    "summary": f"canary {version} aborted after {failures} failed analyses; "
                               f"the policy routes 100% to {snap.stable_version} from its "
                               "next pass",
                    "version": version, "specHash": key,
                    "verdicts": state.latest["verdicts"]})
                metrics.CANARY_ABORTS.labels(tx.tenant, row.model_name, version).inc()
            out.append(AnalysisOutcome(row.name, version, overall, failures, abort,
                                       state.latest["summary"]))
    return out


def schedule_tick(store: Store, tenant: str, window_key: str, now: datetime,
                  window: timedelta = DEFAULT_WINDOW) -> TickResult:
    """The due evaluation and analysis, once per (tenant, window key). A repeated trigger
    in the same window does nothing; a failed run claims nothing and can be retried."""
    with store.transaction(tenant, f"schedule-tick:{window_key}") as tx:
        if tx.tick_claimed(window_key):
            return TickResult(tenant, window_key, ran=False)
        result = TickResult(tenant, window_key, ran=True, evaluated=evaluate(tx, now, window),
                            analysed=analyse_policies(tx, now), stepped=walk_policies(tx, now))
        summary: dict[str, Any] = {
            "evaluated": len(result.evaluated),
            "aborted": [a.version for a in result.analysed if a.aborted_now],
            "stepped": [s.summary for s in result.stepped if s.moved]}
        tx.claim_tick(window_key, summary)
    if summary["aborted"]:  # in force at once: the planner publishes it from the store
        publish_aborts(store, tenant, now, f"schedule-tick:{window_key}")
    if summary["stepped"]:  # the steps' weights, likewise
        publish_aborts(store, tenant, now, f"schedule-tick:{window_key}", plan_steps)
    return result
