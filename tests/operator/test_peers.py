"""kopf peering decisions: the replica's identity, the records of replicas that are gone,
and whether this replica may operate (pure; the real API server: tests/e2e/test_peering.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.operator.peers import (
    FRESH_SECONDS,
    GONE,
    gone_blockers,
    gone_peers,
    peers_allow,
    pod_identity,
    pod_of,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_ago: float, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


STALE = FRESH_SECONDS + 1  # seconds since a record's last refresh: no longer refreshed


def test_a_replica_in_a_pod_is_known_by_its_pod() -> None:
    me = pod_identity("cadml-system", "cadml-operator-7d9-abc", "u-1")
    assert me == "pod/cadml-system/cadml-operator-7d9-abc/u-1"
    assert pod_of(me) == ("cadml-system", "cadml-operator-7d9-abc", "u-1")
    assert pod_of("pod/ns/a") == ("ns", "a", None)  # an identity of before the UID
    assert pod_identity("ns", "a") == "pod/ns/a"
    assert pod_identity(None, "x") is None and pod_identity("ns", "") is None
    assert pod_of("alice@laptop/20261130/xyz") is None  # a developer's replica
    assert pod_of("pod/ns//u") is None and pod_of("pod/ns/a/u/x") is None


def test_only_stale_records_of_pods_known_to_be_gone_are_removed() -> None:
    status = {"pod/ns/me/u": _peer(1, STALE), "pod/ns/gone/u": _peer(9, STALE),
              "pod/ns/alive/u": _peer(5, STALE), "pod/ns/unknown/u": _peer(5, STALE),
              "pod/ns/recreated/u": _peer(5, STALE), "pod/ns/refreshed/u": _peer(5, 1),
              "alice@laptop/20261130/xyz": _peer(9, STALE)}
    answers = {"gone": GONE, "alive": "u", "unknown": None, "me": GONE,
               "recreated": "u2", "refreshed": GONE}
    asked: list[tuple[str, str]] = []

    def uid(ns: str, name: str) -> str | None:
        asked.append((ns, name))
        return answers[name]

    assert gone_peers(status, "pod/ns/me/u", NOW, uid) == [
        "pod/ns/gone/u", "pod/ns/recreated/u"]
    assert ("ns", "me") not in asked  # its own record is never in question
    assert ("ns", "refreshed") not in asked  # a fresh record costs no lookup


@settings(deadline=None)  # the first call imports kopf's peering
@given(exists=st.sampled_from([True, False, None]), same_uid=st.booleans(),
       uid_recorded=st.booleans(), seen_ago=st.floats(0, 59.9),
       priority=st.integers(0, 10))
def test_a_record_is_removed_only_when_its_pod_is_gone_and_no_one_refreshes_it(
        exists: bool | None, same_uid: bool, uid_recorded: bool, seen_ago: float,
        priority: int) -> None:
    """Over (pod exists?, same UID?, record fresh?): a blocking record goes exactly when
    its pod is known gone (no pod, or a pod of another UID where the identity records
    one) and it was not refreshed for FRESH_SECONDS. A fresh record stays, whatever its
    pod says: its replica runs (two actives never happen); a pod that cannot be looked
    at keeps its record."""
    other = "pod/ns/other/u1" if uid_recorded else "pod/ns/other"
    status = {"pod/ns/me/m": _peer(5, 0), other: _peer(priority, seen_ago)}
    answer = None if exists is None else ("u1" if same_uid else "u2") if exists else GONE
    removed = gone_blockers(status, "pod/ns/me/m", 5, NOW, lambda ns, name: answer)
    gone = exists is False or (exists is True and uid_recorded and not same_uid)
    expected = gone and seen_ago >= FRESH_SECONDS and priority >= 5
    assert removed == ([other] if expected else [])
    if seen_ago < FRESH_SECONDS:
        assert removed == []


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
        self.status = {"pod/ns/me": _peer(1, 0), "pod/ns/gone": _peer(9, STALE),
                       "pod/ns/alive": _peer(9, STALE)}
        self.fail = fail
        self.removed: list[tuple[str | None, list[str]]] = []
        self.touched: list[tuple[str | None, str, dict[str, object]]] = []

    def statuses(self) -> list[tuple[str | None, dict[str, object]]]:
        if self.fail:
            raise OSError("the API server is away")
        return [(None, dict(self.status))]

    def remove(self, namespace: str | None, identities: list[str]) -> None:
        self.removed.append((namespace, identities))

    def touch(self, namespace: str | None, identity: str, record: dict[str, object]) -> bool:
        self.touched.append((namespace, identity, record))
        return True

    def pod_uid(self, namespace: str, name: str) -> str | None:
        return GONE if name == "gone" else f"uid-{name}"


def test_a_starting_replica_removes_only_the_records_of_pods_that_are_gone() -> None:
    from controller.operator.run import forget_gone_peers

    peering = _Peering()
    peering.status = {k: {**v, "lastseen": (datetime.now(UTC) - timedelta(seconds=STALE))
                          .isoformat()} for k, v in peering.status.items()}
    assert forget_gone_peers(peering, "pod/ns/me") == ["pod/ns/gone"]  # type: ignore[arg-type]
    assert peering.removed == [(None, ["pod/ns/gone"])]
    # an API server that cannot be read: nothing removed, the start goes on
    assert forget_gone_peers(_Peering(fail=True), "pod/ns/me") == []  # type: ignore[arg-type]


def test_only_the_gone_pods_of_peers_that_pause_this_replica_are_asked_about() -> None:
    status = {"pod/ns/me": _peer(5, 0), "pod/ns/dead": _peer(9, STALE),
              "pod/ns/low-dead": _peer(1, STALE), "pod/ns/expired": _peer(9, 61),
              "pod/ns/alive": _peer(9, STALE)}
    asked: list[str] = []

    def uid(ns: str, name: str) -> str | None:
        asked.append(name)
        return "u" if name == "alive" else GONE

    assert gone_blockers(status, "pod/ns/me", 5, NOW, uid) == ["pod/ns/dead"]
    assert sorted(asked) == ["alive", "dead"]  # neither a lower nor an expired peer
    asked.clear()
    assert gone_blockers({"pod/ns/me": _peer(9, 0), "pod/ns/low": _peer(1, 0)},
                         "pod/ns/me", 9, NOW, uid) == [] and asked == []


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
    # operating beside a standby: its own record refreshed (the heartbeat standbys read)
    assert peering.touched == [(None, "pod/ns/me", {**_peer(1, 0), "lastseen": NOW.isoformat()})]
    assert watch.heartbeat is True  # and looks every HEARTBEAT_SECONDS
    peering.status["pod/ns/alive"] = _peer(9, 5)  # a live holder of a higher priority
    assert watch.check() is False and watch() is False
    assert len(peering.touched) == 1 and watch.heartbeat is False  # paused: no heartbeat
    alone = _Peering()
    alone.status = {"pod/ns/me": _peer(1, 0)}  # the only replica: a replacement pod may
    lone = PeeringWatch(alone, "pod/ns/me", 1, clock=lambda: NOW)  # type: ignore[arg-type]
    # arrive while this one's Pod is gone (a partition): its record must be fresh then
    assert lone.check() is True and lone.heartbeat is True
    assert alone.touched == [(None, "pod/ns/me", {**_peer(1, 0), "lastseen": NOW.isoformat()})]
    assert PeeringWatch(_Peering(fail=True), "pod/ns/me", 1,  # type: ignore[arg-type]
                        clock=lambda: NOW).check() is False
