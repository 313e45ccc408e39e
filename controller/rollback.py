"""`cadml rollback`: point a model's policy back at a STABLE version — in Git, or live.

With a repository, the policy YAML in the working tree is edited (comments and
layout kept, ruamel.yaml), the result is validated with the same rules as
`cadml validate`, and one commit is made whose message carries the reason and
the actor, ready to push or open as a pull request — so Argo CD's self-heal
never fights it. Rolling back to an earlier (now DEPRECATED) stable version
reinstates it and deprecates the current one in the same commit. History is
never rewritten: the commit is appended, and the store only appends snapshots.
With `--cluster`, the live RolloutPolicy gets a manual override (emergency); the
annotation `cadml.io/git-must-follow` records that Git must catch up.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller.errors import InvalidInput, SourceError, UsageError
from controller.reconcile.planner import ROLLBACK_ANNOTATION
from controller.sources import collect_paths
from controller.validation import validate_files
from controller.yamlio import DEFAULT_MAX_BYTES

GIT_MUST_FOLLOW = "cadml.io/git-must-follow"


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


@dataclass
class _Doc:
    path: Path
    docs: list[Any]
    index: int

    @property
    def body(self) -> Any:
        return self.docs[self.index]


@dataclass
class RollbackResult:
    commit: str
    target: str
    files: list[str]
    changes: list[str] = field(default_factory=list)


def _is(doc: Any, kind: str, ns: str) -> bool:
    return (isinstance(doc, dict) and doc.get("apiVersion") == "cadml.io/v1alpha1"
            and doc.get("kind") == kind
            and (doc.get("metadata") or {}).get("namespace") == ns)


def rollback_in_repo(repo_dir: str, tenant: str, model: str, to: str | None, reason: str,
                     actor: str, now: datetime | None = None) -> RollbackResult:
    import git

    if not reason.strip():
        raise UsageError("--reason is required: say why you roll back")
    try:
        repo = git.Repo(repo_dir, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(f"{repo_dir}: not a Git repository") from exc
    root = Path(str(repo.working_tree_dir))
    files, _unreadable = collect_paths([str(root)], DEFAULT_MAX_BYTES)
    loaded: dict[Path, list[Any]] = {}
    policy: _Doc | None = None
    versions: list[_Doc] = []
    y = _yaml()
    for src in files:
        path = Path(src.name)
        text = src.data.decode("utf-8", errors="replace")
        if "cadml.io/" not in text:
            continue
        try:
            docs = list(y.load_all(text))
        except Exception:  # unparseable files are validate's business
            continue
        for i, doc in enumerate(docs):
            if _is(doc, "RolloutPolicy", tenant) and doc["spec"].get("modelRef") == model:
                policy = _Doc(path, docs, i)
            elif _is(doc, "ModelVersion", tenant) and doc["spec"].get("modelRef") == model:
                versions.append(_Doc(path, docs, i))
        loaded[path] = docs
    if policy is None:
        raise UsageError(f"no RolloutPolicy for model {tenant}/{model} in {root}")
    stable = [v for v in versions if v.body["spec"].get("stage") == "STABLE"]
    target_version = to or (str(stable[0].body["spec"]["version"]) if stable else None)
    if target_version is None:
        raise UsageError(f"model {tenant}/{model} has no STABLE version; name one with --to")
    target = next((v for v in versions if str(v.body["spec"]["version"]) == target_version),
                  None)
    if target is None:
        raise UsageError(f"model {tenant}/{model} has no version {target_version}")
    stage = target.body["spec"]["stage"]
    changes: list[str] = []
    touched = {policy.path}
    if stage == "DEPRECATED":  # reinstate an earlier stable version
        for old in stable:
            old.body["spec"]["stage"] = "DEPRECATED"
            touched.add(old.path)
            changes.append(f"{old.body['metadata']['name']}: STABLE → DEPRECATED")
        target.body["spec"]["stage"] = "STABLE"
        touched.add(target.path)
        changes.append(f"{target.body['metadata']['name']}: DEPRECATED → STABLE")
    elif stage != "STABLE":
        raise UsageError(f"version {target_version} is {stage}; a rollback goes to the STABLE "
                         "version or reinstates an earlier (DEPRECATED) stable one")
    spec = policy.body["spec"]
    before = ", ".join(f"{w['version']}={w['weight']}" for w in spec.get("weights", []))
    spec["weights"] = [{"version": target_version, "weight": 100}]
    if "override" in spec:
        del spec["override"]
        changes.append("manual override removed")
    meta = policy.body["metadata"]
    meta.setdefault("annotations", {})[ROLLBACK_ANNOTATION] = reason
    changes.insert(0, f"{meta['name']}: weights {before} → {target_version}=100")

    dirty = {root / str(d.a_path) for d in repo.index.diff(None)} | {
        Path(root / p) for p in repo.untracked_files}
    if touched & dirty:
        raise UsageError("uncommitted changes in " + ", ".join(
            str(p.relative_to(root)) for p in sorted(touched & dirty)) + "; commit or stash them")
    originals = {p: p.read_text("utf-8") for p in touched}
    for path in touched:
        buf = io.StringIO()
        y.dump_all(loaded[path], buf)
        path.write_text(buf.getvalue(), "utf-8")
    check_files, _ = collect_paths([str(root)], DEFAULT_MAX_BYTES)
    report = validate_files(check_files, now or datetime.now(UTC))
    if not report.ok:
        for path, text in originals.items():
            path.write_text(text, "utf-8")
        raise InvalidInput(report.errors)
    rel = [str(p.relative_to(root)) for p in sorted(touched)]
    repo.index.add(rel)
    when = (now or datetime.now(UTC)).isoformat()
    message = (f"rollback {tenant}/{model} to {target_version}\n\nReason: {reason}\n"
               f"Actor: {actor}\nRequested-At: {when}\n\n" + "\n".join(f"- {c}" for c in changes))
    commit = repo.index.commit(message)
    return RollbackResult(commit.hexsha, target_version, rel, changes)


def cluster_patch(target_version: str, reason: str, actor: str, now: datetime) -> dict[str, Any]:
    """The merge patch `--cluster` applies to the live RolloutPolicy (pure)."""
    return {"metadata": {"annotations": {GIT_MUST_FOLLOW: "true",
                                         ROLLBACK_ANNOTATION: reason,
                                         "cadml.io/rollback-actor": actor,
                                         "cadml.io/rollback-requested-at": now.isoformat()}},
            "spec": {"override": {"version": target_version,
                                  "reason": f"emergency rollback by {actor}: {reason}"}}}
