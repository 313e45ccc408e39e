"""The pure walk of canary steps: examples of each rule, then random sequences of ticks,
measurements, commands and plan changes with the invariants checked after each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api.v1alpha1 import StepSpec
from controller.records import RouteRow, StepState
from controller.steps import (
    ABORTED,
    PAUSED,
    PROGRESSING,
    READY,
    Command,
    Measured,
    canary_weight,
    plan_key,
    refusal,
    stepped_routes,
    walk,
)

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
ROUTES = (RouteRow("1.0.0", 80, True), RouteRow("1.1.0", 20, False))
ANALYSIS = {"metrics": [{"name": "success_rate", "min": 0.9}], "failureLimit": 2}


def steps_of(*raw: dict[str, Any]) -> list[StepSpec]:
    return [StepSpec.model_validate(s) for s in raw]


PLAN = steps_of({"setWeight": 10}, {"analysis": ANALYSIS}, {"setWeight": 50},
                {"pause": {}}, {"pause": {"duration": "10m"}})
KEY = plan_key({"weights": [{"version": "1.0.0", "weight": 80}], "strategy": 1})


def measured(*overalls: str, aborted: bool = False) -> Measured:
    return Measured(tuple({"overall": o, "summary": f"success_rate {o}"} for o in overalls),
                    aborted)


def test_walks_to_the_first_analysis_at_its_weight() -> None:
    s = walk(PLAN, None, KEY, T0)
    assert (s.index, s.phase, canary_weight(PLAN, s)) == (1, PROGRESSING, 10)
    assert stepped_routes(ROUTES, canary_weight(PLAN, s)) == (
        RouteRow("1.0.0", 90, True), RouteRow("1.1.0", 10, False))


def test_insufficient_data_waits_and_a_pass_moves_on_to_the_pause() -> None:
    s = walk(PLAN, None, KEY, T0)
    s = walk(PLAN, s, KEY, T0 + timedelta(minutes=1), measured("InsufficientData"))
    assert (s.index, s.phase) == (1, PROGRESSING)
    s = walk(PLAN, s, KEY, T0 + timedelta(minutes=2), measured("InsufficientData", "Pass"))
    assert (s.index, s.phase, canary_weight(PLAN, s)) == (3, PAUSED, 50)
    assert [v["result"] for v in s.verdicts] == ["Pass"]


def test_a_pause_without_duration_waits_for_resume_then_a_timed_pause_elapses() -> None:
    s = walk(PLAN, None, KEY, T0)
    s = walk(PLAN, s, KEY, T0, measured("Pass"))
    s = walk(PLAN, s, KEY, T0 + timedelta(days=3))
    assert (s.index, s.phase) == (3, PAUSED)
    s = walk(PLAN, s, KEY, T0 + timedelta(days=3), command=Command("resume", "alice", "c1"))
    assert (s.index, s.phase) == (4, PAUSED)
    assert s.verdicts[-1]["by"] == "alice"
    s = walk(PLAN, s, KEY, T0 + timedelta(days=3, minutes=9))
    assert (s.index, s.phase) == (4, PAUSED)
    s = walk(PLAN, s, KEY, T0 + timedelta(days=3, minutes=10))
    assert (s.index, s.phase, canary_weight(PLAN, s)) == (5, READY, None)
    assert stepped_routes(ROUTES, canary_weight(PLAN, s)) == ROUTES


def test_a_command_applies_once_per_id() -> None:
    s = walk(PLAN, walk(PLAN, None, KEY, T0), KEY, T0, measured("Pass"))
    resume = Command("resume", "alice", "c1")
    s = walk(PLAN, s, KEY, T0, command=resume)
    assert walk(PLAN, s, KEY, T0, command=resume) == s


def test_failed_analysis_aborts_at_the_limit_and_routes_all_to_stable() -> None:
    s = walk(PLAN, None, KEY, T0)
    s = walk(PLAN, s, KEY, T0, measured("Fail"))
    assert (s.index, s.phase, canary_weight(PLAN, s)) == (1, PROGRESSING, 10)
    s = walk(PLAN, s, KEY, T0, measured("Fail", "Fail", aborted=True))
    assert (s.index, s.phase, canary_weight(PLAN, s)) == (1, ABORTED, 0)
    assert s.verdicts[-1]["result"] == "Fail"
    assert stepped_routes(ROUTES, 0) == (RouteRow("1.0.0", 100, True),)
    s = walk(PLAN, s, KEY, T0 + timedelta(days=1))
    assert s.phase == ABORTED  # time alone never lifts an abort
    s = walk(PLAN, s, KEY, T0, command=Command("retry", "bob", "c2"))
    assert (s.index, s.phase, canary_weight(PLAN, s)) == (1, PROGRESSING, 10)


def test_a_new_plan_starts_at_step_zero_an_unchanged_one_keeps_its_place() -> None:
    spec: dict[str, Any] = {"weights": [{"version": "1.0.0", "weight": 80}],
                            "strategy": {"steps": [{"setWeight": 10}]}, "refreshSeconds": 5}
    key = plan_key(spec)
    assert plan_key({**spec, "refreshSeconds": 30, "thresholds": {"s": 0.8}}) == key
    assert plan_key({**spec, "strategy": {"steps": [{"setWeight": 20}]}}) != key
    s = walk(PLAN, walk(PLAN, None, KEY, T0), KEY, T0, measured("Pass"))
    assert walk(PLAN, s, KEY, T0 + timedelta(hours=1)) == s
    fresh = walk(PLAN, s, "another-plan", T0 + timedelta(hours=1))
    assert (fresh.index, fresh.verdicts) == (1, ())


@pytest.mark.parametrize(("phase", "action", "refused"), [
    (PAUSED, "resume", False), (PROGRESSING, "resume", True), (ABORTED, "retry", False),
    (PAUSED, "retry", True), (PROGRESSING, "abort", False), (ABORTED, "abort", True),
    (READY, "abort", False), (READY, "resume", True)])
def test_refusal(phase: str, action: str, refused: bool) -> None:
    state = StepState(KEY, 2, phase, T0)
    assert (refusal(state, action) is not None) == refused


# ---------------------------------------------------------------- model-based

step_st = st.one_of(
    st.integers(0, 99).map(lambda w: {"setWeight": w}),
    st.just({"pause": {}}),
    st.sampled_from(["30s", "5m", "1h"]).map(lambda d: {"pause": {"duration": d}}),
    st.just({"analysis": ANALYSIS}))
plan_st = st.lists(step_st, min_size=1, max_size=8).map(lambda raw: steps_of(*raw))
op_st = st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 7200)),
    st.tuples(st.just("measure"), st.sampled_from(["Pass", "Fail", "InsufficientData",
                                                   "Abort"])),
    st.tuples(st.just("command"), st.sampled_from(["resume", "abort", "retry"])),
    st.tuples(st.just("replan"), plan_st))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plan_st, ops=st.lists(op_st, max_size=30))
def test_random_walks_keep_the_invariants(plan: list[StepSpec], ops: list[Any]) -> None:
    now, key, state = T0, "plan-0", walk(plan, None, "plan-0", T0)
    for n, (op, arg) in enumerate(ops):
        before = state
        if op == "tick":
            now += timedelta(seconds=arg)
            state = walk(plan, state, key, now)
        elif op == "measure":
            m = measured("Fail" if arg == "Abort" else arg, aborted=arg == "Abort")
            state = walk(plan, state, key, now, m)
        elif op == "command":
            state = walk(plan, state, key, now, command=Command(arg, "u", f"c{n}"))
        else:
            plan, key = arg, f"plan-{n + 1}"
            state = walk(plan, state, key, now)
            assert state.index <= len(plan) and not any(
                v for v in state.verdicts), "a new plan starts afresh"
        weight = canary_weight(plan, state)
        routes = stepped_routes(ROUTES, weight)
        assert sum(r.weight for r in routes) == 100
        assert 0 <= state.index <= len(plan)
        passed = [s.set_weight for s in plan[:state.index] if s.set_weight is not None]
        if state.phase == READY:
            assert state.index == len(plan) and weight is None
        else:
            assert weight is not None and weight <= (passed[-1] if passed else 0)
        if state.phase == ABORTED:
            assert routes[0].weight == 100
        if before.phase == ABORTED and before.plan_key == key and not (
                op == "command" and arg == "retry"):
            assert state.phase == ABORTED, "only a new plan or a retry lifts an abort"
        if state.phase not in (ABORTED, READY):
            assert plan[state.index].set_weight is None, "never rests on a setWeight"


def test_a_held_walk_judges_no_measurement() -> None:
    """Under a hold (an override routes, or the policy-wide analysis aborted) the runs are
    not the step's: a Pass does not move the walk and a Fail does not abort it (round-two
    review: the measurement was judged before the hold was looked at)."""
    s = walk(PLAN, None, KEY, T0)
    assert (s.index, s.phase) == (1, PROGRESSING)
    later = T0 + timedelta(minutes=5)
    assert walk(PLAN, s, KEY, later, measured("Pass"), hold=True).index == 1
    failed = walk(PLAN, s, KEY, later, measured("Fail", aborted=True), hold=True)
    assert (failed.index, failed.phase) == (1, PROGRESSING)
    assert walk(PLAN, s, KEY, later, measured("Pass")).index > 1  # not held: it moves


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plan_st, ops=st.lists(st.one_of(op_st, st.tuples(st.just("hold"), st.booleans())),
                                  max_size=30))
def test_random_walks_under_holds(plan: list[StepSpec], ops: list[Any]) -> None:
    """Holds (an override, the policy-wide analysis aborted) come and go between the other
    operations. Under a hold nothing passes, no measurement is judged, a resume or retry is
    read and refused, and a second look changes nothing at all (nothing to write); the
    look after it starts the current step again."""
    now, key, held = T0, "plan-0", False
    state = walk(plan, None, key, now)
    for n, (op, arg) in enumerate(ops):
        before = state
        if op == "hold":
            held = arg
            state = walk(plan, state, key, now, hold=held)
        elif op == "tick":
            now += timedelta(seconds=arg)
            state = walk(plan, state, key, now, hold=held)
        elif op == "measure":
            m = measured("Fail" if arg == "Abort" else arg, aborted=arg == "Abort")
            state = walk(plan, state, key, now, m, hold=held)
        elif op == "command":
            state = walk(plan, state, key, now, command=Command(arg, "u", f"c{n}"), hold=held)
        else:
            plan, key = arg, f"plan-{n + 1}"
            state = walk(plan, state, key, now, hold=held)
        if held:
            assert state.held_since is not None or state.phase in (ABORTED, READY)
            assert walk(plan, state, key, now + timedelta(hours=1), hold=True) == state
            if before.plan_key == key and not (op == "command" and arg == "abort"):
                assert (state.index, state.phase, state.verdicts) == (
                    before.index, before.phase, before.verdicts), "a held walk moves"
        else:
            assert state.held_since is None
            if before.held_since is not None and state.plan_key == before.plan_key \
                    and state.index == before.index and state.phase != READY:
                assert state.started_at == now, "the step starts again after a hold"
