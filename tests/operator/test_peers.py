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


class _Peering:
    """Stands in for `kube.Peering` (the real one: tests/e2e/test_peering.py)."""

    def __init__(self, fail: bool = False) -> None:
        self.status = {"pod/ns/me": _peer(1, 0), "pod/ns/gone": _peer(9, 5),
                       "pod/ns/alive": _peer(9, 5)}
        self.fail = fail
        self.removed: list[tuple[str | None, list[str]]] = []

    def statuses(self) -> list[tuple[str | None, dict[str, object]]]:
        if self.fail:
            raise OSError("the API server is away")
        return [(None, dict(self.status))]

    def remove(self, namespace: str | None, identities: list[str]) -> None:
        self.removed.append((namespace, identities))

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        return name != "gone"


def test_a_starting_replica_removes_only_the_records_of_pods_that_are_gone() -> None:
    from controller.operator.run import forget_gone_peers

    peering = _Peering()
    assert forget_gone_peers(peering, "pod/ns/me") == ["pod/ns/gone"]  # type: ignore[arg-type]
    assert peering.removed == [(None, ["pod/ns/gone"])]
    # an API server that cannot be read: nothing removed, the start goes on
    assert forget_gone_peers(_Peering(fail=True), "pod/ns/me") == []  # type: ignore[arg-type]


def test_only_the_gone_pods_of_peers_that_pause_this_replica_are_asked_about() -> None:
    from controller.operator.peers import gone_blockers

    status = {"pod/ns/me": _peer(5, 0), "pod/ns/dead": _peer(9, 5),
              "pod/ns/low-dead": _peer(1, 5), "pod/ns/expired": _peer(9, 61),
              "pod/ns/alive": _peer(9, 5)}
    asked: list[str] = []

    def exists(ns: str, name: str) -> bool | None:
        asked.append(name)
        return name == "alive"

    assert gone_blockers(status, "pod/ns/me", 5, NOW, exists) == ["pod/ns/dead"]
    assert sorted(asked) == ["alive", "dead"]  # neither a lower nor an expired peer
    asked.clear()
    assert gone_blockers({"pod/ns/me": _peer(9, 0), "pod/ns/low": _peer(1, 0)},
                         "pod/ns/me", 9, NOW, exists) == [] and asked == []


def test_a_standby_removes_a_dead_holder_and_then_operates() -> None:
    """`PeeringWatch`: paused by a live record whose pod is gone, it removes the record and
    answers True; paused by a live one, False; an unreadable peering object, False."""
    from controller.operator.standby import PeeringWatch

    peering = _Peering()
    peering.status["pod/ns/alive"] = _peer(0, 5)  # a lower one: does not pause
    watch = PeeringWatch(peering, "pod/ns/me", 1, clock=lambda: NOW)  # type: ignore[arg-type]
    assert watch() is False  # no answer yet
    assert watch.check() is True and watch() is True
    assert peering.removed == [(None, ["pod/ns/gone"])]
    peering.status["pod/ns/alive"] = _peer(9, 5)  # a live holder of a higher priority
    assert watch.check() is False and watch() is False
    assert PeeringWatch(_Peering(fail=True), "pod/ns/me", 1,  # type: ignore[arg-type]
                        clock=lambda: NOW).check() is False
