"""Thresholds of a run, judged by a pure function: each one the policy sets is applied,
the verdict says which failed (issue 12, item 4)."""

from __future__ import annotations

import pytest

from controller.worker.thresholds import judge_thresholds


@pytest.mark.parametrize(("thresholds", "hits", "met", "failed"), [
    ({"similarity": 0.5}, [(0.0, 1.0)], True, ()),
    ({"similarity": 0.5}, [(3.0, 0.25)], False, ("similarity",)),
    ({"similarity": 0.5, "minMatches": 2}, [(0.0, 1.0), (3.0, 0.25)], False, ("minMatches",)),
    ({"minMatches": 2}, [(0.0, 1.0), (3.0, 0.25)], True, ()),
    ({"maxDistance": 1.0}, [(2.0, 1 / 3)], False, ("maxDistance",)),
    ({}, [], False, ()),
    ({"similarity": 0.1}, [], False, ("similarity",)),
])
def test_judge_thresholds(thresholds: dict[str, float], hits: list[tuple[float, float]],
                          met: bool, failed: tuple[str, ...]) -> None:
    verdict = judge_thresholds(thresholds, hits)
    assert (verdict.met, verdict.failed) == (met, failed)


def test_an_unknown_threshold_is_reported_not_applied() -> None:
    verdict = judge_thresholds({"similarity": {"value": 0.1, "source": "model"},
                                "maxCost": {"value": 3, "source": "policy"}}, [(0.0, 1.0)])
    assert verdict.unapplied == ("maxCost",) and verdict.snapshot["maxCost"]["met"] is None
