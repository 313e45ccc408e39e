"""kopf peering decisions: the replica's identity, the records of pods that are gone, and
whether this replica may operate (pure; the real API server: tests/e2e/test_peering.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.operator.peers import gone_peers, peers_allow, pod_identity, pod_of

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_ago: float, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


def test_a_replica_in_a_pod_is_known_by_its_pod() -> None:
    me = pod_identity("cadml-system", "cadml-operator-7d9-abc")
    assert me == "pod/cadml-system/cadml-operator-7d9-abc"
    assert pod_of(me) == ("cadml-system", "cadml-operator-7d9-abc")
    assert pod_identity(None, "x") is None and pod_identity("ns", "") is None
    assert pod_of("alice@laptop/20261130/xyz") is None  # a developer's replica


def test_only_records_of_pods_known_to_be_gone_are_removed() -> None:
    status = {"pod/ns/me": _peer(1, 0), "pod/ns/gone": _peer(9, 5),
              "pod/ns/alive": _peer(5, 5), "pod/ns/unknown": _peer(5, 5),
              "alice@laptop/20261130/xyz": _peer(9, 5)}
    answers = {"gone": False, "alive": True, "unknown": None, "me": False}
    asked: list[tuple[str, str]] = []

    def exists(ns: str, name: str) -> bool | None:
        asked.append((ns, name))
        return answers[name]

    assert gone_peers(status, "pod/ns/me", exists) == ["pod/ns/gone"]
    assert ("ns", "me") not in asked  # its own record is never in question


@pytest.mark.parametrize(("others", "allowed"), [
    ({}, True),
    ({"b": _peer(1, 10)}, True),  # a lower priority stands by
    ({"b": _peer(9, 10)}, False),  # a live higher priority operates
    ({"b": _peer(5, 10)}, False),  # the same priority: kopf pauses both
    ({"b": _peer(9, 61)}, True),  # a higher one whose record expired
    ({"b": _peer(9, 0, lifetime=0)}, True),  # a graceful exit's record
])
def test_a_replica_operates_when_kopf_would(others: dict[str, dict[str, object]],
                                           allowed: bool) -> None:
    status = {"me": _peer(5, 100), **others}  # its own record never pauses it
    assert peers_allow(status, "me", 5, NOW) is allowed
