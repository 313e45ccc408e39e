"""Evaluation, automatic canary analysis and the scheduled tick, performed in the store.

Thin adapter over the pure `controller.evaluation`: it reads run facts, writes
evaluation rows and analysis state, and when a canary fails its analysis
`failureLimit` times in a row it aborts it: a snapshot routing 100 % to the
STABLE version is published (source `analysis-abort`), audited and counted. The
spec in Git is not touched; the planner keeps routing to STABLE while the abort
holds for that spec, and a new spec generation clears it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from controller import metrics
from controller.api.v1alpha1 import AnalysisSpec
from controller.evaluation import Metrics, analyse, compute, next_state
from controller.reconcile.planner import abort_reason
from controller.records import AnalysisState, RouteRow
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


def evaluate(tx: StoreTx, now: datetime, window: timedelta = DEFAULT_WINDOW,
             models: list[str] | None = None, job_key: str | None = None) -> list[Evaluated]:
    """Metrics per model and CANARY/STABLE version over [now - window, now)."""
    out = []
    start = now - window
    for model in models or tx.model_names():
        for v in tx.versions(model):
            if v.deleted or v.stage not in ("CANARY", "STABLE"):
                continue
            m = compute(tx.run_facts(model, start, now, version=v.version, job_key=job_key))
            tx.write_evaluation(model, v.version, start, now, m, job_key or "")
            out.append(Evaluated(model, v.version, m, start, now))
    return out


def analyse_policies(tx: StoreTx, now: datetime) -> list[AnalysisOutcome]:
    out = []
    observed = tx.observe()
    for name, policy in observed.policies.items():
        raw = policy.spec.get("analysis")
        snap = observed.snapshots.get(policy.model_name)
        if policy.deleted or not raw or snap is None:
            continue
        spec = AnalysisSpec.model_validate(raw)
        previous = {a.version: a for a in observed.analysis.get(name, [])}
        stable = snap.stable_version
        canaries = [r.version for r in snap.routes if not r.is_stable and r.weight > 0]
        for version in canaries:
            before = previous.get(version)
            if before is not None and before.spec_hash != policy.spec_hash:
                before = None  # a new spec generation starts the analysis afresh
            if before is not None and before.aborted:
                continue
            m = compute(tx.run_facts(policy.model_name,
                                     now - timedelta(seconds=spec.window_seconds), now,
                                     version=version))
            overall, verdicts = analyse(spec, m)
            failures, abort = next_state(before.failures if before else 0, overall,
                                         spec.failure_limit)
            summary = "; ".join(v.explain() for v in verdicts)
            state = AnalysisState(name, version, policy.spec_hash, failures, abort, {
                "overall": overall, "summary": summary,
                "verdicts": [v.as_dict() for v in verdicts], "at": now.isoformat()})
            tx.save_analysis(state)
            if abort and stable is not None:
                pv = tx.publish_snapshot(name, [RouteRow(stable, 100, True)],
                                         {stable: snap.thresholds.get(stable, {})},
                                         "analysis-abort", abort_reason([state]),
                                         snap.refresh_seconds)
                tx.audit("abort", "RolloutPolicy", name, {
                    "summary": f"canary {version} aborted after {failures} failed analyses; "
                               f"policyVersion {pv} routes 100% to {stable}",
                    "version": version, "verdicts": state.verdicts["verdicts"]})
                metrics.CANARY_ABORTS.labels(tx.tenant, policy.model_name, version).inc()
            out.append(AnalysisOutcome(name, version, overall, failures, abort, summary))
    return out


def schedule_tick(store: Store, tenant: str, window_key: str, now: datetime,
                  window: timedelta = DEFAULT_WINDOW) -> TickResult:
    """The due evaluation and analysis, once per (tenant, window key). A repeated trigger
    in the same window does nothing; a failed run claims nothing and can be retried."""
    with store.transaction(tenant, f"schedule-tick:{window_key}") as tx:
        if tx.tick_claimed(window_key):
            return TickResult(tenant, window_key, ran=False)
        result = TickResult(tenant, window_key, ran=True, evaluated=evaluate(tx, now, window),
                            analysed=analyse_policies(tx, now))
        summary: dict[str, Any] = {
            "evaluated": len(result.evaluated),
            "aborted": [a.version for a in result.analysed if a.aborted_now]}
        tx.claim_tick(window_key, summary)
    return result
