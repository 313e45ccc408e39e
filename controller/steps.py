"""Canary steps: the walk of a RolloutPolicy's `spec.strategy.steps`, as pure decisions.

Purely computational, no side effects (the planner, `cadml schedule-tick`, the
operator's analysis timer and `cadml rollout` call it; `controller.stepping` does the IO).
Git holds the plan; where the walk stands is controller state (`StepState`, one per
model), mirrored into the policy's status. The spec's `weights` are the split reached
after the last step; while steps remain, the canary takes the percent of the last
`setWeight` passed (0 before the first) and the STABLE version the rest.

- `setWeight` steps pass at once; a `pause` with a duration passes once it has elapsed,
  one without waits for a `resume`; an `analysis` step passes on its first measurement
  whose verdict is Pass and aborts after `failureLimit` failed ones in a row (the
  measurements are `evaluation.measure`'s, of the runs since the step began).
- An abort (analysis or a user's) routes 100 % to STABLE until the plan changes or a
  user retries, which starts again at step 0.
- A new plan (`plan_key`: the spec's weights, strategy and analysis) starts at step 0;
  other edits, and syncs of the unchanged spec, keep the progress.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.v1alpha1 import StepSpec
from controller.reconcile.conditions import ROLLOUT_HEALTHY, Cond
from controller.records import RouteRow, StepState
from controller.routing import RoutingTable, stable_only

PROGRESSING, PAUSED, ABORTED, READY = "Progressing", "Paused", "Aborted", "ReadyToPromote"
RESUME, ABORT, RETRY = "resume", "abort", "retry"
COMMANDS = (RESUME, ABORT, RETRY)
# what a held walk (an override, the policy-wide analysis aborted) refuses: a resume would
# pass a pause no traffic saw; a retry would restart a plan whose canary stays aborted
HELD_REFUSED = (RESUME, RETRY)
# the annotation `cadml rollout … --kube` sets on the live RolloutPolicy, and the
# operator consumes (once per id)
COMMAND_ANNOTATION = "cadml.io/rollout-command"
PLAN_FIELDS = ("weights", "strategy", "analysis")
VERDICT_HISTORY = 20


@dataclass(frozen=True, slots=True)
class Command:
    """A user's resume / abort / retry; `id` makes it apply once however often it is read."""

    action: str
    user: str
    id: str


@dataclass(frozen=True, slots=True)
class Measured:
    """One analysis measurement of the current step: the kept history and the abort."""

    measurements: tuple[dict[str, Any], ...]
    aborted: bool


def plan_key(spec: Mapping[str, Any]) -> str:
    """What progress is kept for: the weights, the steps and the analysis. A change of any
    of them is a new plan; refreshSeconds, thresholds or an override are not."""
    body = {"key": "steps/1", **{k: spec.get(k) for k in PLAN_FIELDS}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def duration(text: str) -> timedelta:
    """'90s', '10m', '2h' (the schema's pattern) as a timedelta."""
    unit = {"s": 1, "m": 60, "h": 3600}[text[-1]]
    return timedelta(seconds=int(text[:-1]) * unit)


def start(key: str, now: datetime, verdicts: tuple[dict[str, Any], ...] = (),
          command: str = "") -> StepState:
    return StepState(key, 0, PROGRESSING, now, verdicts[-VERDICT_HISTORY:], (), command)


def kind(step: StepSpec) -> str:
    return "setWeight" if step.set_weight is not None else (
        "pause" if step.pause is not None else "analysis")


def refusal(state: StepState | None, action: str) -> str | None:
    """Why a command cannot apply now (None: it can), for the CLI's error. An abort stops
    a plan anywhere before it is aborted, a ReadyToPromote one included (the canary still
    takes its final weight until the promotion is merged)."""
    return phase_refusal(state.phase if state is not None else PROGRESSING,
                         state.index if state is not None else 0, action)


def phase_refusal(phase: str, index: int, action: str) -> str | None:
    """`refusal` from the phase and step index alone (what a live object's status says)."""
    where = f"step {index + 1}"
    if action == RESUME and phase != PAUSED:
        return f"not paused (phase {phase} at {where}); resume continues a pause"
    if action == RETRY and phase != ABORTED:
        return f"not aborted (phase {phase} at {where}); retry restarts an aborted plan"
    if action == ABORT and phase == ABORTED:
        return f"already {phase} at {where}; nothing to abort"
    return None


def _note(state: StepState, entry: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (*state.verdicts, {"step": state.index, **entry})[-VERDICT_HISTORY:]


def _advance(state: StepState, now: datetime) -> StepState:
    return replace(state, index=state.index + 1, phase=PROGRESSING, started_at=now,
                   measurements=())


def _apply(state: StepState, command: Command, key: str, now: datetime) -> StepState:
    state = replace(state, command=command.id)
    if refusal(state, command.action) is not None:
        return state  # read once, changes nothing (the CLI refuses it before writing)
    by = {"by": command.user, "at": now.isoformat()}
    if command.action == RESUME:
        return _advance(replace(state, verdicts=_note(state, {"result": "Resumed", **by})),
                        now)
    if command.action == ABORT:
        return replace(state, phase=ABORTED, measurements=(),
                       verdicts=_note(state, {"result": "Aborted", **by}))
    return start(key, now, _note(state, {"result": "Retried", **by}), command.id)


def _judge(state: StepState, measured: Measured, now: datetime) -> StepState:
    state = replace(state, measurements=measured.measurements)
    latest = measured.measurements[-1] if measured.measurements else {}
    entry = {"summary": latest.get("summary", ""), "at": now.isoformat()}
    if measured.aborted:
        return replace(state, phase=ABORTED, verdicts=_note(state, {"result": "Fail", **entry}))
    if latest.get("overall") == "Pass":
        return _advance(replace(state, verdicts=_note(state, {"result": "Pass", **entry})), now)
    return state


def _settle(steps: Sequence[StepSpec], state: StepState, now: datetime) -> StepState:
    """Pass every step that can pass now; stop at one that waits."""
    while state.phase not in (ABORTED, READY):
        if state.index >= len(steps):
            return replace(state, phase=READY)
        step = steps[state.index]
        if step.set_weight is not None:
            state = _advance(state, now)
        elif step.pause is not None:
            wait = step.pause.duration
            if wait is not None and now - state.started_at >= duration(wait):
                state = _advance(state, now)
            else:
                return replace(state, phase=PAUSED)
        else:
            return replace(state, phase=PROGRESSING)
    return state


def walk(steps: Sequence[StepSpec], state: StepState | None, key: str, now: datetime,
         measured: Measured | None = None, command: Command | None = None,
         hold: bool = False) -> StepState:
    """The state after one look at `now`: a new plan (`key`) starts at step 0; then the
    user's command (once per id), then the analysis measurement of the current step (if
    it is an analysis step), then every step that can pass passes. `hold`: the policy
    does not route now (an override, a policy-wide abort): no step passes, no
    measurement is judged (the runs are not the step's), a resume or retry is read and
    refused, and the first look under the hold notes when (`held_since`; later looks
    change nothing, so nothing is written); the first look after it starts the current
    step again (its pause counts from then)."""
    if state is None or state.plan_key != key:
        state = start(key, now, command=state.command if state is not None else "")
    if command is not None and command.id != state.command:
        state = replace(state, command=command.id) if hold and \
            command.action in HELD_REFUSED else _apply(state, command, key, now)
    if measured is not None and not hold and state.phase != ABORTED \
            and state.index < len(steps) and steps[state.index].analysis is not None:
        state = _judge(state, measured, now)
    if hold:
        return state if state.phase in (ABORTED, READY) or state.held_since is not None \
            else replace(state, held_since=now)
    if state.held_since is not None:
        state = replace(state, started_at=now, held_since=None)
    return _settle(steps, state, now)


def analysis_due(steps: Sequence[StepSpec], state: StepState) -> StepSpec | None:
    """The analysis step the walk waits on, if it does."""
    if state.phase != PROGRESSING or state.index >= len(steps):
        return None
    step = steps[state.index]
    return step if step.analysis is not None else None


def canary_weight(steps: Sequence[StepSpec], state: StepState) -> int | None:
    """The canary's percent now: the last setWeight passed (0 before the first, 0 once
    aborted); None once every step passed (the spec's weights are in force)."""
    if state.phase == READY:
        return None
    if state.phase == ABORTED:
        return 0
    passed = [s.set_weight for s in steps[:state.index] if s.set_weight is not None]
    return passed[-1] if passed else 0


def stepped_routes(routes: Sequence[RouteRow], weight: int | None) -> tuple[RouteRow, ...]:
    """The spec's routes (the STABLE version and one canary) at the canary's step weight;
    unchanged when `weight` is None or the routes are not one STABLE and one canary. A
    canary at 0 % (before the first setWeight, e.g. while a shadow analysis gates it) is
    no route at all: a route takes traffic (the store refuses a canary route at 0)."""
    routes = tuple(routes)
    stable = [r for r in routes if r.is_stable]
    if weight is None or len(routes) != 2 or len(stable) != 1:
        return routes
    return tuple(replace(r, weight=100 - weight if r.is_stable else weight) for r in routes
                 if r.is_stable or weight > 0)


def reason(steps: Sequence[StepSpec], state: StepState) -> str:
    """Why the snapshot routes as it does: names the step that set the weight, so pauses
    and analyses at the same weight publish nothing new."""
    weight = canary_weight(steps, state)
    last = max((i for i, s in enumerate(steps[:state.index]) if s.set_weight is not None),
               default=None)
    if last is None:
        return f"canary steps: canary at {weight} % before the first setWeight"
    return f"canary steps: step {last + 1} of {len(steps)} sets the canary to {weight} %"


def abort_summary(state: StepState) -> str:
    last = state.verdicts[-1] if state.verdicts else {}
    why = last.get("summary") or (f"aborted by {last['by']}" if "by" in last else "")
    return f"canary steps aborted at step {state.index + 1}: {why}"


def status_facts(state: StepState, routed: RoutingTable) -> dict[str, Any]:
    """The policy's status fields for its steps; `canaryWeight`: what the canary takes in
    the routing published (its step's weight, the spec's after the last step, 0 once
    aborted or overridden away)."""
    return {"currentStepIndex": state.index, "stepPhase": state.phase,
            "stepStartedAt": state.started_at.isoformat(),
            "canaryWeight": sum(r.weight for r in routed.routes if not r.is_stable),
            "stepVerdicts": [dict(v) for v in state.verdicts]}


def change_summary(steps: Sequence[StepSpec], old: StepState | None,
                   new: StepState) -> str | None:
    """One line for the audit trail when the walk moved (None when it did not)."""
    if old is not None and (old.plan_key, old.index, old.phase, old.verdicts) == (
            new.plan_key, new.index, new.phase, new.verdicts):
        return None
    at = (f"step {new.index + 1} of {len(steps)} ({kind(steps[new.index])})"
          if new.index < len(steps) else f"all {len(steps)} steps done")
    moved = "" if old is None or old.plan_key != new.plan_key else \
        f"from step {old.index + 1} ({old.phase}) "
    fresh = "new plan: " if old is None or old.plan_key != new.plan_key else ""
    news = [v for v in new.verdicts if old is None or v not in old.verdicts]
    said = "; ".join(f"step {v['step'] + 1} {v['result']}"
                     + (f" by {v['by']}" if "by" in v else "")
                     + (f": {v['summary']}" if v.get("summary") else "") for v in news)
    return f"{fresh}{moved}to {at}, {new.phase}" + (f"; {said}" if said else "")


def parse_command(text: str | None) -> Command | None:
    """The command annotation (`{"action": …, "user": …, "id": …}`), or None when absent
    or unreadable (a hand-written annotation is ignored, never an error loop)."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("action") not in COMMANDS or not raw.get("id"):
        return None
    return Command(str(raw["action"]), str(raw.get("user") or "unknown"), str(raw["id"])[:128])


def stamp_command(text: str | None, username: str) -> str | None:
    """The command annotation with its user replaced by the authenticated one (the
    mutating webhook); None when there is no readable command to stamp."""
    command = parse_command(text)
    if command is None:
        return None
    return json.dumps({"action": command.action, "user": username or "unknown",
                       "id": command.id})


def command_annotation(command: Command) -> dict[str, Any]:
    """The merge patch `cadml rollout … --kube` sends to the live RolloutPolicy."""
    body = {"action": command.action, "user": command.user, "id": command.id}
    return {"metadata": {"annotations": {COMMAND_ANNOTATION: json.dumps(body)}}}


def step_routing(spec: Mapping[str, Any], steps: Sequence[StepSpec], routing: RoutingTable,
                 state: StepState | None, now: datetime,
                 command: Command | None = None) -> tuple[RoutingTable, StepState]:
    """What a policy with steps publishes, and where its walk stands after this look.
    `routing`: the policy's own (`routing.effective_routing`); an override, a validity
    window or an abort of the policy-wide analysis win over the steps, as they win over
    the weights. Otherwise: the canary at its step's weight, all on STABLE once aborted,
    and the spec's weights once every step passed."""
    new = walk(steps, state, plan_key(spec), now, command=command,
               hold=routing.source != "policy")
    stable = next((r.version for r in routing.routes if r.is_stable), None)
    if routing.source != "policy" or stable is None:
        return routing, new
    if new.phase == ABORTED:
        return stable_only(stable, "analysis-abort", abort_summary(new)), new
    weight = canary_weight(steps, new)
    if weight is None:
        return routing, new
    return RoutingTable(stepped_routes(routing.routes, weight), "policy", reason(steps, new),
                        routing.expired), new


READY_TO_PROMOTE = "ReadyToPromote"  # condition type: every step passed


def step_conditions(steps: Sequence[StepSpec], state: StepState,
                    guard_abort: str | None = None) -> list[Cond]:
    """ReadyToPromote (True once every step passed: `cadml promote --repo` may commit), and
    on an abort RolloutHealthy False/CanaryAborted, which makes Ready False and Stalled
    until the plan changes or a user retries. `guard_abort`: why the policy-wide analysis
    (`spec.analysis`, a guard over the whole walk) aborted the canary; the walk is held
    where it stands and ReadyToPromote says so (False/CanaryAborted)."""
    at = f"step {state.index + 1} of {len(steps)}"
    if guard_abort is not None:
        return [Cond(READY_TO_PROMOTE, "False", "CanaryAborted",
                     f"the policy-wide analysis (spec.analysis) aborted the canary, all "
                     f"traffic is on STABLE; the steps are held {state.phase} at {at}: "
                     f"{guard_abort}")]
    conds = [Cond(READY_TO_PROMOTE, "True" if state.phase == READY else "False",
                  "StepsDone" if state.phase == READY else state.phase,
                  f"all {len(steps)} steps passed; promote the canary in Git" if
                  state.phase == READY else f"{state.phase} at {at}")]
    if state.phase == ABORTED:
        conds.append(Cond(ROLLOUT_HEALTHY, "False", "CanaryAborted", abort_summary(state)))
    return conds


def plan_change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
                after_steps: Sequence[StepSpec], final_weight: int) -> str | None:
    """What a change of a policy spec (`before` → `after`, as dumped; None: no policy)
    does to its canary steps, for `cadml diff`: a new plan restarts the walk (the canary
    drops or rises to the first weight it rests at), removing the steps applies the
    weights at once; None when the plan is the same (or there are none)."""
    had = before is not None and before.get("strategy") is not None
    if after is None or not after_steps:
        return "steps removed: the spec's weights apply at once" if had else None
    key = plan_key(after)
    if before is not None and had and plan_key(before) == key:
        return None
    first = walk(after_steps, None, key, datetime(2000, 1, 1, tzinfo=UTC))
    weight = canary_weight(after_steps, first)
    n = len(after_steps)
    if weight is None:
        return f"a new plan of {n} steps; every step passes at once: {final_weight}%"
    return (f"a new plan of {n} steps; the walk starts again at step 1 and waits at step "
            f"{first.index + 1} ({kind(after_steps[first.index])}) with the canary at "
            f"{weight}%; {final_weight}% after the last step")
