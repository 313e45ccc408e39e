"""Jobs stay where they were: the hash slots of a route depend on the version's own
history, not on its position or on the other versions (a property over random policies)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.records import RouteRow
from controller.routing import SLOTS, held_slots, place_routes, route_by_slot, slot

VERSIONS = [f"1.{i}.0" for i in range(6)]


@st.composite
def policies(draw: st.DrawFn) -> list[RouteRow]:
    """A STABLE version taking the rest and 0..4 canaries of 1..99 %, in any order."""
    names = draw(st.permutations(VERSIONS))
    n = draw(st.integers(0, 4))
    stable, canaries = names[0], names[1:1 + n]
    weights: list[int] = []
    for _ in canaries:
        room = 99 - sum(weights) - (len(canaries) - len(weights) - 1)
        weights.append(draw(st.integers(1, max(1, min(99, room)))))
    routes = [RouteRow(v, w, False) for v, w in zip(canaries, weights, strict=True)]
    routes.insert(draw(st.integers(0, len(routes))), RouteRow(stable, 100 - sum(weights), True))
    return routes


def _promote(routes: list[RouteRow], canary: str) -> list[RouteRow]:
    """What `cadml promote` writes: the canary takes the old STABLE's share and goes first,
    the other canaries keep their weights."""
    others = [r for r in routes if not r.is_stable and r.version != canary]
    return [RouteRow(canary, 100 - sum(r.weight for r in others), True), *others]


def _owners(routes: tuple[RouteRow, ...]) -> dict[int, str]:
    return {s: v for v, slots in held_slots(routes).items() for s in slots}


@settings(max_examples=300, deadline=None)
@given(policies(), st.data())
def test_promotion_keeps_every_job_of_a_surviving_version(before: list[RouteRow],
                                                         data: st.DataObject) -> None:
    placed = place_routes({}, before)
    canaries = [r.version for r in before if not r.is_stable]
    if not canaries:
        return
    after = place_routes(held_slots(placed), _promote(before, data.draw(
        st.sampled_from(canaries))))
    old, new = _owners(placed), _owners(after)
    for s, version in old.items():
        if any(r.version == version for r in after):
            assert new[s] == version  # the promoted canary and the others keep their jobs


@settings(max_examples=300, deadline=None)
@given(policies(), policies())
def test_placed_slots_match_the_weights_and_only_shrinking_versions_lose_jobs(
        first: list[RouteRow], second: list[RouteRow]) -> None:
    a = place_routes({}, first)
    b = place_routes(held_slots(a), second)
    for routes in (a, b):
        held = held_slots(routes)
        assert {v: len(s) for v, s in held.items()} == {r.version: r.weight for r in routes}
        assert len({s for slots in held.values() for s in slots}) == SLOTS  # a partition
    weight_a = {r.version: r.weight for r in first}
    old, new = _owners(a), _owners(b)
    for s in range(SLOTS):
        if old[s] != new[s]:  # a job moved: its old version shrank or left
            assert old[s] not in {r.version: r for r in second} or \
                weight_a[old[s]] > next(r.weight for r in second if r.version == old[s])


def test_routes_without_slots_route_by_position_as_before() -> None:
    routes = (RouteRow("1.0.0", 90, True), RouteRow("1.1.0", 10, False))
    jobs = [f"job-{i}" for i in range(2000)]
    by_position = {j: "1.0.0" if slot(j) < 90 else "1.1.0" for j in jobs}
    assert {j: route_by_slot(j, routes) for j in jobs} == by_position
    placed = place_routes(held_slots(routes), routes)  # the first placed snapshot
    assert {j: route_by_slot(j, placed) for j in jobs} == by_position
