"""Conditions: kstatus-compatible Ready / Reconciling / Stalled plus domain conditions.

Purely computational. `lastTransitionTime` moves only when status, reason or
message changes; every condition carries the generation it describes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Domain condition types (positive polarity: True is good unless said otherwise).
VALIDATED = "Validated"
APPLIED = "Applied"
CONFLICT = "Conflict"  # negative polarity: True is bad
POLICY_EXPIRED = "PolicyExpired"  # negative polarity
ROLLOUT_HEALTHY = "RolloutHealthy"  # canary analysis verdict
ROLLBACK_SLO_BREACHED = "RollbackSLOBreached"  # negative polarity
DEGRADED = "Degraded"  # negative polarity: a Model its workers serve in a way Git no longer asks
READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"

# Negative polarity, most severe first: (type, the status that is bad). The first that
# holds makes Ready False with its reason and message (Flux's summarize step).
NEGATIVE: tuple[tuple[str, str], ...] = (
    (CONFLICT, "True"), (DEGRADED, "True"), (ROLLOUT_HEALTHY, "False"),
    (ROLLBACK_SLO_BREACHED, "True"))
# Reasons only a change in Git clears (kstatus: Failed), and reasons that may still clear
# by themselves while the controller works (kstatus: InProgress). A slow rollback is a
# fact about one that is over: Ready False, neither.
STALLING = frozenset({"SecondStable", "CanaryAborted", "ServesDeprecated"})
PROGRESSING = frozenset({"AnalysisFailing"})


@dataclass(frozen=True, slots=True)
class Cond:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def failing(domain: Iterable[Cond]) -> Cond | None:
    """The most severe negative-polarity condition in its bad state, or None."""
    conds = list(domain)
    return next((c for kind, bad in NEGATIVE for c in conds
                 if c.type == kind and c.status == bad), None)


def summary(*, invalid: str | None, waiting: str | None,
            domain: Iterable[Cond] = ()) -> list[Cond]:
    """Ready/Reconciling/Stalled from the findings (`invalid`, `waiting`: their messages)
    and the domain conditions: a negative one that holds makes Ready False with its
    reason; an invalid spec stalls whatever else holds (Ready names a conflict first)."""
    bad = failing(domain)
    if invalid:
        why = bad if bad is not None and bad.type == CONFLICT else \
            Cond(READY, "False", "InvalidSpec", invalid)
        return [Cond(READY, "False", why.reason, why.message),
                Cond(STALLED, "True", "InvalidSpec", invalid),
                Cond(RECONCILING, "False", "InvalidSpec", "")]
    if bad is not None:
        stalls, progresses = bad.reason in STALLING, bad.reason in PROGRESSING
        return [Cond(READY, "False", bad.reason, bad.message),
                Cond(STALLED, str(stalls), bad.reason, bad.message if stalls else ""),
                Cond(RECONCILING, str(progresses), bad.reason,
                     bad.message if progresses else "")]
    if waiting:
        return [Cond(READY, "False", "Waiting", waiting),
                Cond(STALLED, "False", "Waiting", ""),
                Cond(RECONCILING, "True", "Waiting", waiting)]
    return [Cond(READY, "True", "Reconciled", ""),
            Cond(STALLED, "False", "Reconciled", ""),
            Cond(RECONCILING, "False", "Reconciled", "")]


def stalled(reason: str, message: str) -> list[Cond]:
    """Ready/Reconciling/Stalled of an object whose pass failed in a way a retry cannot fix
    (a conflict in the store, a refused prune): nothing of its tenant was applied."""
    return [Cond(READY, "False", reason, message),
            Cond(STALLED, "True", reason, message),
            Cond(RECONCILING, "False", reason, "")]


def with_conditions(status: dict[str, Any], current: list[Cond], generation: int,
                    now: datetime) -> dict[str, Any]:
    """`status` with `current` merged into its conditions in place; the other conditions
    and fields stay as they are."""
    previous: list[dict[str, Any]] = list(status.get("conditions") or [])
    fresh = {c["type"]: c for c in merge(previous, current, generation, now)}
    kept = [fresh.pop(c.get("type"), c) for c in previous]
    return {**status, "conditions": kept + list(fresh.values())}


def merge(previous: list[dict[str, Any]], current: list[Cond], generation: int,
          now: datetime) -> list[dict[str, Any]]:
    """Condition dicts for status, keeping lastTransitionTime where nothing changed."""
    before = {c.get("type"): c for c in previous}
    stamp = now.isoformat().replace("+00:00", "Z")
    out = []
    for cond in current:
        old = before.get(cond.type)
        unchanged = old is not None and (old.get("status"), old.get("reason"),
                                         old.get("message")) == (cond.status, cond.reason,
                                                                 cond.message)
        out.append({
            "type": cond.type, "status": cond.status, "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": old["lastTransitionTime"] if unchanged and old else stamp,
            "observedGeneration": generation,
        })
    return out
