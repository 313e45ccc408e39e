"""The pure shadow comparison: overlap@k, rank-biased overlap, summaries, migration stats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.shadow import (
    ShadowFact,
    compare_results,
    migration_stats,
    mirrored,
    overlap_at_k,
    rbo,
    summarise,
)

ids = st.lists(st.sampled_from([f"d{i}" for i in range(30)]), max_size=15, unique=True)


@given(ids, ids)
def test_overlap_is_a_share_and_symmetric(a: list[str], b: list[str]) -> None:
    assert 0.0 <= overlap_at_k(a, b) <= 1.0
    assert overlap_at_k(a, b) == overlap_at_k(b, a)


@given(ids, ids, st.floats(min_value=0.05, max_value=0.95))
def test_rbo_within_bounds_and_symmetric(a: list[str], b: list[str], p: float) -> None:
    assert 0.0 <= rbo(a, b, p) <= 1.0
    assert rbo(a, b, p) == pytest.approx(rbo(b, a, p))


@given(ids, st.floats(min_value=0.05, max_value=0.95))
def test_identical_lists_score_one(a: list[str], p: float) -> None:
    assert overlap_at_k(a, a) == 1.0
    assert rbo(a, a, p) == pytest.approx(1.0)


@given(st.lists(st.sampled_from([f"d{i}" for i in range(30)]), min_size=1, max_size=10,
                unique=True))
def test_disjoint_lists_score_zero(a: list[str]) -> None:
    b = [f"x{i}" for i in range(len(a))]
    assert overlap_at_k(a, b) == 0.0
    assert rbo(a, b) == 0.0


def test_overlap_counts_over_k_and_rbo_weighs_the_top() -> None:
    a = [f"d{i}" for i in range(10)]
    swapped_top = ["x", *a[1:]]
    swapped_bottom = [*a[:9], "x"]
    assert overlap_at_k(a, swapped_top) == overlap_at_k(a, swapped_bottom) == 0.9
    assert rbo(a, swapped_top) < rbo(a, swapped_bottom) < 1.0


def test_shorter_answers_are_compared_at_their_depth() -> None:
    assert overlap_at_k(["a", "b", "c"], ["a", "b", "d"]) == pytest.approx(2 / 3)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        overlap_at_k(["a"], ["a"], k=0)
    with pytest.raises(ValueError):
        rbo(["a"], ["a"], p=1.0)


def test_compare_results_reports_top1_delta() -> None:
    c = compare_results([("a", 0.8), ("b", 0.5)], [("b", 0.6), ("a", 0.55)])
    assert c.overlap_at_10 == 1.0
    assert c.top1_delta == pytest.approx(-0.2)
    assert compare_results([], [("a", 1.0)]).top1_delta is None


def fact(v: str, ov: float, job: str, delta: float | None = 0.0, served: float = 0.5
         ) -> ShadowFact:
    return ShadowFact(v, "1.0.0", job, f"run-{job}", ov, ov, delta, served)


def test_summary_per_version_with_the_queries_that_changed_most() -> None:
    facts = [fact("2.0.0", x / 10, f"j{x}") for x in range(11)] + [fact("3.0.0", 1.0, "k")]
    out = summarise(facts, changed=3)
    two = out["2.0.0"]
    assert two["sampleSize"] == 11
    assert two["overlapAt10"]["mean"] == pytest.approx(0.5)
    assert two["overlapAt10"]["median"] == pytest.approx(0.5)
    assert two["overlapAt10"]["p10"] == pytest.approx(0.1)
    assert two["lowOverlapShare"] == pytest.approx(5 / 11)
    assert [c["jobId"] for c in two["changedMost"]] == ["j0", "j1", "j2"]
    assert out["3.0.0"]["lowOverlapShare"] == 0.0


@pytest.mark.parametrize(("deltas", "warnings"), [
    ([-0.1, -0.2, 0.1], ["large_negative_skew"]),
    ([-0.1, 0.2, 0.1, 0.0], []),
    ([0.6, 0.6, 0.1, -0.1], ["growth_spike"]),  # served 0.5: +0.6 is +120 %
    ([-0.3, -0.3, 0.6, 0.6, 0.6], ["growth_spike"]),
    ([-0.1, -0.1, -0.1, 0.6, 0.6], ["large_negative_skew", "growth_spike"]),
])
def test_migration_warnings(deltas: list[float], warnings: list[str]) -> None:
    stats = migration_stats([fact("2.0.0", 1.0, f"j{i}", d) for i, d in enumerate(deltas)])
    assert [w.split(":")[0] for w in stats["warnings"]] == warnings
    assert stats["negativeShare"] == pytest.approx(sum(d < 0 for d in deltas) / len(deltas))
    assert stats["meanDelta"] == pytest.approx(sum(deltas) / len(deltas))


def test_migration_of_nothing_is_no_data() -> None:
    assert migration_stats([])["meanDelta"] is None


def test_mirroring_is_deterministic_and_near_its_percent() -> None:
    jobs = [f"job-{i}" for i in range(4000)]
    share = sum(mirrored(j, 25) for j in jobs) / len(jobs)
    assert 0.22 < share < 0.28
    assert [mirrored(j, 25) for j in jobs] == [mirrored(j, 25) for j in jobs]
    assert not any(mirrored(j, 0) for j in jobs) and all(mirrored(j, 100) for j in jobs)
