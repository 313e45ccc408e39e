"""Whether a pass deletes so much of a tenant that it must have been asked for (`--prune`).

Purely computational. A typo in a path, a folder moved in a refactor or a branch cut
from the wrong base looks to a level-triggered reconciler exactly like "delete all
of this"; like Flux's and Argo CD's explicit prune, such a pass is refused unless the
caller says pruning is intended.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from controller.errors import PruneRefused
from controller.reconcile.planner import Plan
from controller.records import ObservedTenant

PRUNED_KINDS = ("Model", "ModelVersion", "RolloutPolicy")  # release records are never deleted


@dataclass(frozen=True, slots=True)
class PruneCheck:
    """What a pass would delete, against what the tenant holds live."""

    live: int
    deleting: tuple[tuple[str, str], ...]  # (kind, name), sorted
    scoped: bool = False  # the pass read only part of the tree (PREFIXes)

    @property
    def needs_prune(self) -> bool:
        """More than half of the tenant's live objects go (the whole tenant included); in a
        pass scoped by PREFIXes, any deletion: the objects outside the prefixes were not
        read, so their absence says nothing."""
        if self.scoped:
            return bool(self.deleting)
        return 2 * len(self.deleting) > self.live


def prune_check(live: Collection[tuple[str, str]], deleting: Collection[tuple[str, str]],
                scoped: bool = False) -> PruneCheck:
    """`live`: the tenant's live (not deleted) objects; `deleting`: those the pass deletes;
    `scoped`: the pass read only the tree below some PREFIXes."""
    live_set = set(live)
    return PruneCheck(len(live_set), tuple(sorted(set(deleting) & live_set)), scoped)


def live_objects(observed: ObservedTenant) -> list[tuple[str, str]]:
    return ([("Model", n) for n, m in observed.models.items() if not m.deleted]
            + [("ModelVersion", n) for n, v in observed.versions.items() if not v.deleted]
            + [("RolloutPolicy", n) for n, p in observed.policies.items() if not p.deleted])


def deletions(plan: Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.name) for a in plan.audit
            if a.action == "delete" and a.kind in PRUNED_KINDS]


def refuse_unasked_prune(plan: Plan, observed: ObservedTenant, scoped: bool = False) -> None:
    """A guard for `reconcile_tenant`: raise PruneRefused (the transaction rolls back)
    when the plan needs --prune."""
    check = prune_check(live_objects(observed), deletions(plan), scoped)
    if check.needs_prune:
        raise PruneRefused(plan.tenant, check.deleting, check.live)
