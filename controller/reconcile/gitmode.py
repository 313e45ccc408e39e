"""Git mode, the embedded default: reconcile the resources at a Git ref into the store.

Reads the tree with gitpython (no checkout), validates everything first and
applies nothing if any rule fails, then plans and applies tenant by tenant, each
in one transaction that reads the observed state and writes the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.findings import FieldError, errors_only
from controller.reconcile.planner import Plan
from controller.reconcile.step import reconcile_tenant
from controller.sources import collect_git
from controller.store.repository import Store
from controller.validation import validate_files


@dataclass
class ReconcileResult:
    commit: str
    findings: list[FieldError] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    resources: int = 0

    @property
    def ok(self) -> bool:
        return not errors_only(self.findings)

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
                   max_bytes: int, now: datetime | None = None) -> ReconcileResult:
    now = now or datetime.now(UTC)
    sha, actor = resolve_commit(repo_dir, ref)
    files, read_errors = collect_git(repo_dir, sha, list(paths), max_bytes)
    report = validate_files(files, now)
    result = ReconcileResult(sha, read_errors + report.findings, resources=report.resources)
    if not result.ok:
        return result  # nothing applied: the previous state stays intact
    by_tenant: dict[str, list] = {t: [] for t in report.bundle.tenants()}  # type: ignore[type-arg]
    for item in report.bundle.items:
        by_tenant[item.key[1]].append(item.resource)
    for tenant in sorted(set(by_tenant) | set(store.tenants())):
        result.plans.append(reconcile_tenant(store, tenant, by_tenant.get(tenant, []),
                                             result.findings, now, actor))
    return result


def watch(store: Store, repo_dir: str, ref: str, paths: list[str], max_bytes: int,
          interval: float, on_result: Callable[[ReconcileResult], None],
          passes: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
    """Reconcile every `interval` seconds like a GitOps agent: a new commit is applied once,
    and each pass in between repairs drift (a no-op pass writes nothing)."""
    done = 0
    while passes is None or done < passes:
        on_result(reconcile_repo(store, repo_dir, ref, paths, max_bytes))
        done += 1
        if passes is None or done < passes:
            sleep(interval)
