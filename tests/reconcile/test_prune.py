"""When a pass deletes so much of a tenant that pruning must be asked for (pure function)."""

from __future__ import annotations

import pytest

from controller.reconcile.prune import prune_check


@pytest.mark.parametrize(("live", "deleting", "needs_prune"), [
    (0, 0, False),    # an empty tenant
    (11, 0, False),   # nothing deleted
    (11, 1, False),   # one version dropped
    (7, 3, False),    # a model of three objects out of seven
    (6, 3, False),    # exactly half: still allowed
    (11, 6, True),    # more than half
    (1, 1, True),     # the only object of the tenant
    (7, 7, True),     # the whole tenant
])
def test_prune_needs_asking_above_half_of_the_live_objects(live: int, deleting: int,
                                                           needs_prune: bool) -> None:
    objects = [("ModelVersion", f"v{i}") for i in range(live)]
    check = prune_check(objects, objects[:deleting])
    assert check.needs_prune is needs_prune
    assert check.live == live and len(check.deleting) == deleting


def test_prune_counts_only_live_objects_it_deletes() -> None:
    live = [("Model", "m"), ("ModelVersion", "m-1"), ("RolloutPolicy", "m")]
    # an object already deleted (not live) does not count twice, nor shrink the tenant
    check = prune_check(live, [("ModelVersion", "m-1"), ("ModelVersion", "gone-long-ago")])
    assert check.deleting == (("ModelVersion", "m-1"),) and not check.needs_prune
