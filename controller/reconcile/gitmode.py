"""Git mode, the embedded default: reconcile the resources at a Git ref into the store.

Reads the tree with gitpython (no checkout), validates everything first and
applies nothing if any rule fails, then plans and applies tenant by tenant, each
in one transaction that reads the observed state and writes the plan.

Failure is contained to its tenant: a tenant whose pass fails (a conflict in the
store, a refused prune) is rolled back alone, its objects become Stalled with the
reason, and the other tenants still apply. A pass that lost a race to another writer
(StaleWrite: planned from a view another pass changed) is run once more from the
latest view, and never stalls the tenant: the other pass's statuses stand. With
PREFIXes, only the tenants that have objects under them are reconciled; a PREFIX
selecting nothing is an error.
Deleting a whole tenant, or more than half of its live objects, needs `prune`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.api.v1alpha1 import Resource
from controller.errors import CadmlError, InvalidInput, PruneRefused, StaleWrite
from controller.findings import FieldError, errors_only
from controller.reconcile.planner import Plan
from controller.reconcile.prune import refuse_unasked_prune
from controller.reconcile.step import reconcile_tenant, stall_tenant
from controller.records import ObservedTenant
from controller.sources import collect_git
from controller.steps import COMMAND_ANNOTATION
from controller.store.repository import Store
from controller.validation import validate_files

RACE_RETRIES = 1  # a pass that lost a race to another (StaleWrite) runs once more


@dataclass(frozen=True)
class TenantFailure:
    """A tenant whose pass failed and was rolled back; the others went on."""

    tenant: str
    reason: str  # the error's condition reason (Conflict, PruneRefused, StoreUnavailable…)
    message: str
    exit_code: int
    would_delete: tuple[tuple[str, str], ...] = ()  # (kind, name): a refused prune

    def as_dict(self) -> dict[str, object]:
        return {"tenant": self.tenant, "error": {"reason": self.reason, "message": self.message},
                "wouldDelete": [{"kind": k, "name": n} for k, n in self.would_delete]}


@dataclass
class ReconcileResult:
    commit: str
    findings: list[FieldError] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    resources: int = 0
    failures: list[TenantFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not errors_only(self.findings)

    @property
    def exit_code(self) -> int:
        """0 applied everywhere · 1 invalid (nothing applied) or a tenant refused · 2 a
        tenant failed on the store (unavailable): the worst of them."""
        if not self.ok:
            return 1
        return max((f.exit_code for f in self.failures), default=0)

    @property
    def changed(self) -> bool:
        return any(p.changes or p.audit for p in self.plans)


def resolve_commit(repo_dir: str, ref: str) -> tuple[str, str]:
    """(full sha, actor) of `ref`; the actor names the commit and its author."""
    import git

    from controller.errors import SourceError

    try:
        commit = git.Repo(repo_dir, search_parent_directories=True).commit(ref)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(f"{repo_dir}: not a Git repository") from exc
    except (git.BadName, ValueError) as exc:
        raise SourceError(f"{ref}: no such Git ref in {repo_dir}") from exc
    return commit.hexsha, f"git:{commit.hexsha[:12]} ({commit.author.email})"


def reconcile_repo(store: Store, repo_dir: str, ref: str, paths: Iterable[str],
                   max_bytes: int, now: datetime | None = None,
                   prune: bool = False, allow_older: bool = False) -> ReconcileResult:
    """Reconcile the tree at `ref` (below `paths`, all when empty). Without `paths` every
    tenant the store knows is reconciled too (a tenant gone from Git is deleted, with
    `prune`); with `paths`, only the tenants that have objects under them."""
    now = now or datetime.now(UTC)
    paths = list(paths)
    sha, actor = resolve_commit(repo_dir, ref)
    files, read_errors = collect_git(repo_dir, sha, paths, max_bytes, require_match=True)
    report = validate_files(files, now)
    result = ReconcileResult(sha, read_errors + report.findings, resources=report.resources)
    if not result.ok:
        return result  # nothing applied: the previous state stays intact
    by_tenant: dict[str, list[Resource]] = {t: [] for t in report.bundle.tenants()}
    for item in report.bundle.items:
        by_tenant[item.key[1]].append(_without_command(item.resource))
    tenants = set(by_tenant) if paths else set(by_tenant) | set(store.tenants())
    # the validated tree stays alive for the whole pass: keep the cyclic GC from rescanning
    # it at every collection (unfrozen after, so --watch collects it between passes)
    gc.freeze()
    try:
        _reconcile_tenants(store, sorted(tenants), by_tenant, result, repo_dir, sha, now,
                           actor, prune, allow_older, bool(paths))
    finally:
        gc.unfreeze()
    return result


def _without_command(resource: Resource) -> Resource:
    """A resource as Git mode reconciles it: without the canary-step command annotation,
    which only the cluster's mutating webhook stamps with an authenticated user (a commit
    could otherwise resume/abort a plan in anyone's name; `cadml rollout` is Git mode's)."""
    notes = resource.metadata.annotations
    if COMMAND_ANNOTATION not in notes:
        return resource
    meta = resource.metadata.model_copy(update={"annotations": {
        k: v for k, v in notes.items() if k != COMMAND_ANNOTATION}})
    return resource.model_copy(update={"metadata": meta})


def _reconcile_tenants(store: Store, tenants: list[str], by_tenant: dict[str, list[Resource]],
                       result: ReconcileResult, repo_dir: str, sha: str, now: datetime,
                       actor: str, prune: bool, allow_older: bool, scoped: bool) -> None:
    for tenant in tenants:
        resources = by_tenant.get(tenant, [])
        for attempt in range(RACE_RETRIES + 1):
            try:
                if not allow_older:
                    _refuse_older_commit(store, tenant, repo_dir, sha)
                result.plans.append(reconcile_tenant(
                    store, tenant, resources, result.findings, now, actor,
                    guard=_guard(prune, scoped)))
                break
            except CadmlError as exc:  # contained: this tenant rolled back, the others go on
                if isinstance(exc, StaleWrite) and attempt < RACE_RETRIES:
                    continue  # another pass got there first: again, from its result
                result.failures.append(_failed(store, tenant, resources, exc, now, actor))
                break


def _refuse_older_commit(store: Store, tenant: str, repo_dir: str, sha: str) -> None:
    """The generation guard of Git mode: a tenant is reconciled only from the commit already
    applied to it or one that descends from it: never an older one (an ancestor), nor one
    of a branch that diverged (it would silently undo what the applied one changed, and the
    next pass of main would flip it back); going back is a new commit (`git revert`)."""
    with store.read(tenant) as tx:
        applied = tx.last_git_commit()
    if applied is None or sha.startswith(applied):
        return
    import git

    repo = git.Repo(repo_dir, search_parent_directories=True)
    try:
        newer = repo.commit(applied)
    except (git.BadName, ValueError) as exc:
        raise StaleWrite(f"tenant {tenant} was last reconciled from commit {applied}, which "
                         f"this clone does not have (a stale clone: fetch first; or history "
                         f"was rewritten: pass --allow-older once to accept {sha[:12]})"
                         ) from exc
    if not repo.is_ancestor(newer, repo.commit(sha)):  # older, or on a diverged branch
        how = "older than" if repo.is_ancestor(repo.commit(sha), newer) else "not a descendant of"
        raise StaleWrite(f"commit {sha[:12]} is {how} {newer.hexsha[:12]}, which is already "
                         f"applied to tenant {tenant} (it would undo what that applied); to "
                         "go back, commit the change (git revert) and reconcile that, or pass "
                         "--allow-older")


def _refuse_transitions(plan: Plan, observed: ObservedTenant) -> None:
    """Git mode applies a commit whole or not at all, tenant by tenant: a transition rule
    broken against what the store applied (an artifact changed on a served version, a
    stage move the CRD forbids) refuses the tenant's pass, as `cadml diff` refuses it."""
    if plan.transitions:
        raise InvalidInput(plan.transitions)


def _guard(prune: bool, scoped: bool) -> Callable[[Plan, ObservedTenant], None]:
    """What refuses a tenant's plan before anything is written: broken transition rules,
    and unless `prune`, deleting most of the tenant (any deletion in a PREFIX-scoped
    pass, which did not read the objects outside its prefixes)."""
    def guard(plan: Plan, observed: ObservedTenant) -> None:
        _refuse_transitions(plan, observed)
        if not prune:
            refuse_unasked_prune(plan, observed, scoped)
    return guard


def _failed(store: Store, tenant: str, resources: list[Resource], exc: CadmlError,
            now: datetime, actor: str) -> TenantFailure:
    """Record a tenant's failed pass: its objects become Stalled with the reason, unless a
    retry can help (the store was unavailable: it would likely refuse this write too)."""
    deleting = tuple(exc.deleting) if isinstance(exc, PruneRefused) else ()
    message = str(exc)
    if not exc.retryable:
        try:
            stall_tenant(store, tenant, resources, exc, now, actor, also=deleting)
        except CadmlError as again:
            message += f" (its status could not be written either: {again})"
    return TenantFailure(tenant, exc.reason, message, exc.exit_code, deleting)


def watch(store: Store, repo_dir: str, ref: str, paths: list[str], max_bytes: int,
          interval: float, on_result: Callable[[ReconcileResult], None],
          passes: int | None = None, sleep: Callable[[float], None] = time.sleep,
          prune: bool = False, allow_older: bool = False) -> None:
    """Reconcile every `interval` seconds like a GitOps agent: a new commit is applied once,
    and each pass in between repairs drift (a no-op pass writes nothing)."""
    done = 0
    while passes is None or done < passes:
        on_result(reconcile_repo(store, repo_dir, ref, paths, max_bytes, prune=prune,
                                 allow_older=allow_older))
        done += 1
        if passes is None or done < passes:
            sleep(interval)
