"""What a run's thresholds say about its results: purely computational.

The thresholds a run gets are the policy snapshot's layered map (name → {value,
source}). Applied, each by its own rule:
- `similarity`: the best result's score (1 / (1 + distance)) is at least the value;
- `minMatches`: at least that many results score at least `similarity` (every result
  counts where no similarity is set);
- `maxDistance`: the best result's distance is at most the value.
A name the worker has no rule for is reported as not applied, never silently passed.
A run with no result meets nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KNOWN = ("similarity", "minMatches", "maxDistance")


@dataclass(frozen=True, slots=True)
class ThresholdVerdict:
    met: bool
    failed: tuple[str, ...]  # the thresholds the results did not meet
    unapplied: tuple[str, ...]  # thresholds the worker has no rule for
    snapshot: dict[str, Any]  # the run's thresholds, each with `met` (None: not applied)


def _value(thresholds: Mapping[str, Any], name: str) -> float | None:
    entry = thresholds.get(name)
    if isinstance(entry, (dict, Mapping)):  # a dict first: no ABC check
        entry = entry.get("value")
    return None if entry is None else float(entry)


def judge_thresholds(thresholds: Mapping[str, Any],
                     hits: Sequence[tuple[float, float]]) -> ThresholdVerdict:
    """`hits`: (distance, score) of each result, best first."""
    if not thresholds:  # nothing to apply (the common no-threshold case, kept cheap)
        return ThresholdVerdict(bool(hits), (), (), {})
    similarity = _value(thresholds, "similarity")
    checks: dict[str, bool] = {}
    if similarity is not None:
        checks["similarity"] = bool(hits) and hits[0][1] >= similarity
    min_matches = _value(thresholds, "minMatches")
    if min_matches is not None:
        good = sum(1 for _, score in hits if similarity is None or score >= similarity)
        checks["minMatches"] = good >= min_matches
    max_distance = _value(thresholds, "maxDistance")
    if max_distance is not None:
        checks["maxDistance"] = bool(hits) and hits[0][0] <= max_distance
    failed = tuple(name for name, ok in checks.items() if not ok)
    unapplied = tuple(sorted(n for n in thresholds if n not in KNOWN))
    snapshot = {name: ({**entry, "met": checks.get(name)} if isinstance(entry, (dict, Mapping))
                       else {"value": entry, "met": checks.get(name)})
                for name, entry in thresholds.items()}
    return ThresholdVerdict(bool(hits) and not failed, failed, unapplied, snapshot)
