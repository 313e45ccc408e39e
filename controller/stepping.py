"""Canary steps in the store: measure the analysis step a plan waits on, apply a user's
resume / abort / retry, and save where each plan stands (with an audit row).

Thin adapter over the pure `controller.steps`; it publishes nothing itself: the
planner is the only snapshot writer (`plan_steps` over the store's rows right after,
as `cadml schedule-tick` does for aborts; the operator runs a tenant pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller import steps
from controller.api.v1alpha1 import RolloutPolicySpec
from controller.errors import UsageError
from controller.evaluation import (
    Metrics,
    analyse,
    compute,
    judged_by,
    judges,
    measure,
    measurement_due,
    with_shadow,
)
from controller.records import AnalysisState, ObservedTenant, PolicyRow, StepState
from controller.routing import override_in_force, window_closed
from controller.store.repository import StoreTx


@dataclass(frozen=True)
class StepOutcome:
    policy: str
    model: str
    before: StepState | None
    after: StepState
    summary: str | None  # the audit line; None when the walk did not move

    @property
    def moved(self) -> bool:
        return self.summary is not None


def _spec(row: PolicyRow) -> RolloutPolicySpec | None:
    try:
        return RolloutPolicySpec.model_validate(row.spec)
    except ValueError:  # a row written under an older schema: the full pass decides
        return None


def version_metrics(tx: StoreTx, model: str, version: str, since: datetime, now: datetime,
                    shadowed: bool) -> Metrics:
    """What analysis judges a version by over [since, now]: its runs' metrics, and when
    it is the published shadow, the comparison of its shadow runs (shadow_overlap_at_10).
    The one measurement of the policy-wide analysis and of the steps' analyses."""
    m = compute(tx.run_facts(model, since, now, version=version))
    if not shadowed:
        return m
    return with_shadow(m, [r["overlap_at_10"] for r in tx.shadow_runs(
        model, since=since, version=version) if r["created_at"] <= now])


def walk_policies(tx: StoreTx, now: datetime, policy: str | None = None,
                  model: str | None = None,
                  command: steps.Command | None = None) -> list[StepOutcome]:
    """One look at every live policy with steps (only `policy` or `model`'s, if named):
    the command, when given, then the analysis measurement the current step is due for,
    then the steps that can pass. Saves and audits what moved."""
    observed = tx.observe()
    out = []
    for row in observed.policies.values():
        spec = _spec(row)
        if row.deleted or spec is None or spec.strategy is None \
                or policy not in (None, row.name) or model not in (None, row.model_name):
            continue
        plan, key = spec.strategy.steps, steps.plan_key(row.spec)
        before = observed.steps.get(row.model_name)
        # as the planner holds the walk: an override, a closed validity window, or the
        # policy-wide analysis aborted
        held = override_in_force(spec, now) or window_closed(spec, now) is not None or bool(
            guard_aborts(observed, row.model_name, [(row.spec, row.spec_hash)]))
        state = steps.walk(plan, before, key, now, command=command, hold=held)
        due = steps.analysis_due(plan, state)
        canary = next((w.version for w in spec.weights for v in observed.versions.values()
                       if v.model_name == row.model_name and v.version == w.version
                       and not v.deleted and v.stage != "STABLE"), None)
        if not held and due is not None and due.analysis is not None and canary is not None and \
                measurement_due(state.measurements, now, due.analysis.interval_seconds):
            a = due.analysis
            # only the runs (and shadow runs) of this step, at its weight
            since = max(now - timedelta(seconds=a.window_seconds), state.started_at)
            snap = observed.snapshots.get(row.model_name)
            shadowed = snap is not None and snap.shadow is not None \
                and snap.shadow.version == canary
            weight = steps.canary_weight(plan, state)
            overall, verdicts = analyse(
                judged_by(a, weight is None or weight > 0),
                version_metrics(tx, row.model_name, canary, since, now, shadowed))
            kept, _, aborted = measure(state.measurements, overall, verdicts, now,
                                       a.failure_limit)
            state = steps.walk(plan, state, key, now, steps.Measured(kept, aborted),
                               hold=held)
        said = steps.change_summary(plan, before, state)
        if state != before:
            tx.save_step(row.model_name, state, before)
        if said is not None:
            tx.audit("step", "RolloutPolicy", row.name, {
                "summary": said, "stepIndex": state.index, "phase": state.phase,
                **({"user": command.user, "command": command.action} if command else {})},
                actor=command.user if command else None)
        out.append(StepOutcome(row.name, row.model_name, before, state, said))
    return out


def command_store(tx: StoreTx, model: str, command: steps.Command,
                  now: datetime) -> StepOutcome:
    """A user's resume / abort / retry of `model`'s plan, in Git mode (the store): refused
    with a UsageError (nothing written) when the model has no policy with steps, or the
    plan is not where the command applies."""
    observed = tx.observe()
    rows = [r for r in observed.policies.values() if r.model_name == model and not r.deleted]
    spec = _spec(rows[0]) if rows else None
    if spec is None or spec.strategy is None:
        raise UsageError(f"model {tx.tenant}/{model} has no RolloutPolicy with "
                         "spec.strategy.steps in the store; reconcile one first")
    state = observed.steps.get(model)
    key = steps.plan_key(rows[0].spec)
    overridden, closed = override_in_force(spec, now), window_closed(spec, now)
    current = steps.walk(spec.strategy.steps, state, key, now,
                         hold=overridden or closed is not None)
    why = steps.refusal(current, command.action)
    if command.action in steps.HELD_REFUSED:  # the walk is held: nothing would move
        why = guard_refusal(observed, model, [(rows[0].spec, rows[0].spec_hash)]) or (
            "spec.override is in force; the steps are held until it ends or is removed"
            if overridden else f"{closed}; the steps are held while the validity window "
            "is closed" if closed else why)
    if why is not None:
        raise UsageError(f"cannot {command.action} {tx.tenant}/{model}: {why}")
    (outcome,) = walk_policies(tx, now, policy=rows[0].name, command=command)
    return outcome


def guard_aborts(observed: ObservedTenant, model: str,
                 specs: Sequence[tuple[Mapping[str, Any], str]]) -> list[AnalysisState]:
    """The policy-wide analysis's aborts of `model` in force for any of `specs` (spec,
    spec_hash): `evaluation.judges`, the one predicate the planner and the tick use."""
    return [a for a in observed.analysis.get(model, []) if a.aborted
            and any(judges(a.spec_hash, spec, h) for spec, h in specs)]


def guard_refusal(observed: ObservedTenant, model: str,
                  specs: Sequence[tuple[Mapping[str, Any], str]]) -> str | None:
    """Why nothing but a new plan lifts the guard's abort (None: there is none), for the
    refusals of `cadml promote` and `cadml rollout retry|resume`."""
    guard = guard_aborts(observed, model, specs)
    if not guard:
        return None
    return ("the policy-wide analysis (spec.analysis) aborted canary "
            f"{', '.join(a.version for a in guard)}: {guard[0].latest.get('summary', '')}; "
            "all traffic stays on STABLE until a change of spec.weights or spec.analysis in "
            "Git (a new plan) lifts it")


def promotion_refusal(tx: StoreTx, model: str, spec: Mapping[str, Any],
                      version: str | None = None) -> str | None:
    """Why a canary cannot be promoted yet (None: it can): the policy-wide analysis must not
    have aborted it (in the store's policy or in `spec`, the policy in Git as the promotion
    would edit it); with steps, the plan in Git must be the one the store walked, `version`
    (the one promoted) one its weights walked, and every step of it must have passed
    (ReadyToPromote)."""
    try:
        parsed = RolloutPolicySpec.model_validate(spec)
    except ValueError as exc:
        return f"the policy in Git is not valid: {exc}"
    walked = [str(w.version) for w in parsed.weights]
    if parsed.strategy is not None and version is not None and version not in walked:
        return (f"its canary steps walk {', '.join(walked)}, not {version}: add {version} to "
                "the weights (a new plan) and let its steps run first")
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    observed = tx.observe()
    live = [r for r in observed.policies.values() if r.model_name == model and not r.deleted]
    # what the store holds and what Git would promote: an abort of either is in force
    why = guard_refusal(observed, model, [(r.spec, r.spec_hash) for r in live]
                        + [(dumped, "")])
    if why is not None or parsed.strategy is None:
        return why
    state = observed.steps.get(model)
    if state is None or state.plan_key != steps.plan_key(dumped):
        return ("the store has not walked this plan (reconcile the commit and let its steps "
                "run first)")
    if state.phase != steps.READY:
        return (f"its canary steps are {state.phase} at step {state.index + 1} of "
                f"{len(parsed.strategy.steps)}; promote once the policy reports "
                "ReadyToPromote")
    return None
