"""The metric set and the canary verdicts are pure functions: many small cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.api.v1alpha1 import AnalysisSpec
from controller.evaluation import (
    MEASUREMENT_HISTORY,
    RunFact,
    analyse,
    compute,
    judge,
    measure,
    measurement_due,
    next_state,
    overridden,
    p95,
)

T = datetime(2026, 11, 22, tzinfo=UTC)


def run(ok: bool = True, met: bool = True, ms: float = 10.0, review: str = "PENDING_REVIEW",
        ai: str | None = "a.dxf", human: str | None = None) -> RunFact:
    return RunFact("1.0.0", ok, met, ms, review, ai, human, T)


def test_empty_window_reports_none_not_zero() -> None:
    m = compute([])
    assert (m.success_rate, m.review_override_rate, m.p95_latency_ms, m.sample_size) == (
        None, None, None, 0)


def test_success_needs_no_error_and_the_threshold() -> None:
    m = compute([run(), run(ok=False), run(met=False), run()])
    assert m.success_rate == 0.5 and m.sample_size == 4


@pytest.mark.parametrize(("r", "expect"), [
    (run(review="APPROVED"), False),
    (run(review="APPROVED", human="a.dxf"), False),
    (run(review="APPROVED", human="b.dxf"), True),
    (run(review="REJECTED"), True),
])
def test_override_means_the_human_disagreed(r: RunFact, expect: bool) -> None:
    assert overridden(r) is expect


def test_review_override_rate_counts_reviewed_runs_only() -> None:
    m = compute([run(), run(), run(review="REJECTED"), run(review="APPROVED")])
    assert m.review_override_rate == 0.5 and m.reviewed_sample_size == 2


@pytest.mark.parametrize(("values", "expect"), [
    ([], None), ([7.0], 7.0), (list(range(1, 101)), 95), (list(range(1, 21)), 19),
])
def test_p95_nearest_rank(values: list[float], expect: float | None) -> None:
    assert p95([float(v) for v in values]) == expect


SPEC = AnalysisSpec.model_validate({"metrics": [{"name": "success_rate", "min": 0.9},
                                                {"name": "p95_latency_ms", "max": 100}],
                                    "minSampleSize": 10, "failureLimit": 2})


@pytest.mark.parametrize(("runs", "overall"), [
    ([run()] * 5, "InsufficientData"),
    ([run()] * 20, "Pass"),
    ([run()] * 10 + [run(met=False)] * 10, "Fail"),
    ([run(ms=500)] * 20, "Fail"),
])
def test_analysis_verdicts(runs: list[RunFact], overall: str) -> None:
    got, verdicts = analyse(SPEC, compute(runs))
    assert got == overall
    assert all(v.window_seconds == 600 and v.sample_size == len(runs) for v in verdicts)
    if overall == "InsufficientData":
        assert {v.result for v in verdicts} == {"InsufficientData"}
        assert "n=5" in verdicts[0].explain()


@pytest.mark.parametrize(("failures", "overall", "expect"), [
    (0, "Fail", (1, False)), (1, "Fail", (2, True)), (1, "Pass", (0, False)),
    (1, "InsufficientData", (1, False)),
])
def test_failures_count_consecutively(failures: int, overall: str,
                                      expect: tuple[int, bool]) -> None:
    assert next_state(failures, overall, 2) == expect


@pytest.mark.parametrize(("seconds", "due"), [(0, False), (59, False), (60, True), (600, True),
                                              (-5, False)])
def test_a_measurement_is_due_once_the_interval_passed(seconds: int, due: bool) -> None:
    taken = [{"at": T.isoformat(), "overall": "Fail", "consecutiveFailures": 1}]
    assert measurement_due(taken, T + timedelta(seconds=seconds), 60) is due
    assert measurement_due([], T, 60)


@pytest.mark.parametrize(("overalls", "expect"), [
    (["Fail", "Fail"], (2, True)),
    (["Fail", "InsufficientData", "Fail"], (2, True)),  # neither counts nor resets
    (["Fail", "Pass", "Fail"], (1, False)),
    (["Pass"] * 3, (0, False)),
])
def test_failures_and_abort_derive_from_the_measurements(overalls: list[str],
                                                         expect: tuple[int, bool]) -> None:
    kept: tuple[dict[str, object], ...] = ()
    for i, overall in enumerate(overalls):
        kept, failures, aborted = measure(kept, overall, [], T + timedelta(minutes=i), 2)
    assert (failures, aborted) == expect == judge(kept, 2)


def test_history_is_bounded_and_keeps_the_count() -> None:
    """The count rides on each measurement, so dropping old ones never loses it."""
    kept: tuple[dict[str, object], ...] = ()
    for i in range(MEASUREMENT_HISTORY + 5):
        kept, failures, _ = measure(kept, "Fail", [], T + timedelta(minutes=i), 100)
    assert len(kept) == MEASUREMENT_HISTORY and failures == MEASUREMENT_HISTORY + 5
    assert kept[0]["at"] == (T + timedelta(minutes=5)).isoformat()
