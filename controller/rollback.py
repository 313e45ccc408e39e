"""`cadml rollback` and `cadml promote`: edit a model's release state in Git (or live).

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
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller.errors import InvalidInput, SourceError, UsageError
from controller.routing import ROLLBACK_ANNOTATION
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


@dataclass
class _ModelTree:
    """One model's policy and versions in a Git working tree, loaded round-trip."""

    repo: Any
    root: Path
    loaded: dict[Path, list[Any]]
    policy: _Doc
    versions: list[_Doc]
    yaml: YAML

    def version(self, semver: str) -> _Doc | None:
        return next((v for v in self.versions if str(v.body["spec"]["version"]) == semver),
                    None)

    def stage(self, semver: str) -> str:
        doc = self.version(semver)
        return str(doc.body["spec"]["stage"]) if doc else ""


def _load_model(repo_dir: str, tenant: str, model: str) -> _ModelTree:
    import git

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
    return _ModelTree(repo, root, loaded, policy, versions, y)


def _set_stage(doc: _Doc, stage: str, touched: set[Path], changes: list[str]) -> None:
    changes.append(f"{doc.body['metadata']['name']}: {doc.body['spec']['stage']} → {stage}")
    doc.body["spec"]["stage"] = stage
    touched.add(doc.path)


_AUTHOR = re.compile(r"^\s*([^<>]+?)\s*<([^<>\s]+@[^<>\s]+)>\s*$")


def commit_identity(repo: Any, author: str | None) -> Any:
    """Who the commit is by: `author` ('Name <email>'), else Git's own identity
    (GIT_AUTHOR_NAME/EMAIL, user.name/user.email). Never a guessed `user@host`: a commit
    that moves production traffic must name a person."""
    from git import Actor

    if author:
        match = _AUTHOR.match(author)
        if not match:
            raise UsageError(f"--author {author!r}: use 'Name <email>'")
        return Actor(match.group(1), match.group(2))
    reader = repo.config_reader()
    name = os.environ.get("GIT_AUTHOR_NAME") or reader.get_value("user", "name", "")
    email = os.environ.get("GIT_AUTHOR_EMAIL") or reader.get_value("user", "email", "")
    if not name or not email:
        raise UsageError("Git has no identity to commit as: set `git config user.name` and "
                         "`git config user.email`, or pass --author 'Name <email>'")
    return Actor(str(name), str(email))


def _commit(tree: _ModelTree, touched: set[Path], target: str, title: str, reason: str,
            actor: str,
            changes: list[str], now: datetime | None,
            author: str | None = None) -> RollbackResult:
    """Write the edited files, validate the whole tree with `cadml validate`'s rules, and
    commit; on any refusal the files are restored and nothing is committed."""
    root = tree.root
    identity = commit_identity(tree.repo, author)
    dirty = {root / str(d.a_path) for d in tree.repo.index.diff(None)} | {
        Path(root / p) for p in tree.repo.untracked_files}
    if touched & dirty:
        raise UsageError("uncommitted changes in " + ", ".join(
            str(p.relative_to(root)) for p in sorted(touched & dirty)) + "; commit or stash them")
    originals = {p: p.read_text("utf-8") for p in touched}
    for path in touched:
        buf = io.StringIO()
        tree.yaml.dump_all(tree.loaded[path], buf)
        path.write_text(buf.getvalue(), "utf-8")
    check_files, _ = collect_paths([str(root)], DEFAULT_MAX_BYTES)
    report = validate_files(check_files, now or datetime.now(UTC))
    if not report.ok:
        for path, text in originals.items():
            path.write_text(text, "utf-8")
        raise InvalidInput(report.errors)
    rel = [str(p.relative_to(root)) for p in sorted(touched)]
    tree.repo.index.add(rel)
    when = (now or datetime.now(UTC)).isoformat()
    message = (f"{title}\n\nReason: {reason}\nActor: {actor}\nRequested-At: {when}\n\n"
               + "\n".join(f"- {c}" for c in changes))
    commit = tree.repo.index.commit(message, author=identity, committer=identity)
    return RollbackResult(commit.hexsha, target, rel, changes)


def _drop_override(spec: Any, changes: list[str]) -> None:
    """The commit itself routes traffic: a manual override would hide it."""
    if "override" in spec:
        del spec["override"]
        changes.append("manual override removed")


def _drop_strategy(spec: Any, changes: list[str], why: str) -> None:
    """Canary steps walk one canary: a commit that ends the canary ends its steps too."""
    if spec.pop("strategy", None) is not None:
        changes.append(f"strategy.steps removed: {why}")


def _weights(spec: Any) -> str:
    return ", ".join(f"{w['version']}={w['weight']}" for w in spec.get("weights", []))


def rollback_in_repo(repo_dir: str, tenant: str, model: str, to: str | None, reason: str,
                     actor: str, now: datetime | None = None,
                     author: str | None = None) -> RollbackResult:
    if not reason.strip():
        raise UsageError("--reason is required: say why you roll back")
    tree = _load_model(repo_dir, tenant, model)
    stable = [v for v in tree.versions if v.body["spec"].get("stage") == "STABLE"]
    target_version = to or (str(stable[0].body["spec"]["version"]) if stable else None)
    if target_version is None:
        raise UsageError(f"model {tenant}/{model} has no STABLE version; name one with --to")
    target = tree.version(target_version)
    if target is None:
        raise UsageError(f"model {tenant}/{model} has no version {target_version}")
    stage = target.body["spec"]["stage"]
    changes: list[str] = []
    touched = {tree.policy.path}
    if stage == "DEPRECATED":  # reinstate an earlier stable version
        for old in stable:
            _set_stage(old, "DEPRECATED", touched, changes)
        _set_stage(target, "STABLE", touched, changes)
    elif stage != "STABLE":
        raise UsageError(f"version {target_version} is {stage}; a rollback goes to the STABLE "
                         "version or reinstates an earlier (DEPRECATED) stable one")
    spec = tree.policy.body["spec"]
    before = _weights(spec)
    spec["weights"] = [{"version": target_version, "weight": 100}]
    _drop_override(spec, changes)
    _drop_strategy(spec, changes, "the rollback routes everything to the STABLE version")
    meta = tree.policy.body["metadata"]
    meta.setdefault("annotations", {})[ROLLBACK_ANNOTATION] = reason
    changes.insert(0, f"{meta['name']}: weights {before} → {target_version}=100")
    return _commit(tree, touched, target_version,
                   f"rollback {tenant}/{model} to {target_version}", reason, actor, changes, now,
                   author)


def promote_in_repo(repo_dir: str, tenant: str, model: str, version: str, reason: str,
                    actor: str, now: datetime | None = None,
                    author: str | None = None,
                    gate: Callable[[dict[str, Any]], None] | None = None) -> RollbackResult:
    """Make a CANARY version the STABLE one in one commit: it becomes STABLE, the current
    STABLE becomes DEPRECATED (one STABLE per model key at every commit), and the policy
    gives the new stable what the old one and this canary had; other canaries keep their
    weights. A failed release gate or any other broken rule refuses the commit."""
    if not reason.strip():
        raise UsageError("--reason is required: say why you promote")
    tree = _load_model(repo_dir, tenant, model)
    target = tree.version(version)
    if target is None:
        raise UsageError(f"model {tenant}/{model} has no version {version}")
    stage = target.body["spec"]["stage"]
    if stage != "CANARY":
        raise UsageError(f"version {version} is {stage}; only a CANARY is promoted "
                         "(DRAFT → CANARY first; to go back to an old stable, rollback)")
    if gate is not None:  # e.g. canary steps must have passed (raises a UsageError)
        gate(json.loads(json.dumps(tree.policy.body["spec"])))
    changes: list[str] = []
    touched = {tree.policy.path}
    for old in tree.versions:
        if old.body["spec"].get("stage") == "STABLE":
            _set_stage(old, "DEPRECATED", touched, changes)
    _set_stage(target, "STABLE", touched, changes)
    spec = tree.policy.body["spec"]
    before = _weights(spec)
    others = [w for w in spec.get("weights", []) if str(w["version"]) != version
              and tree.stage(str(w["version"])) == "CANARY"]
    spec["weights"] = [{"version": version, "weight": 100 - sum(int(w["weight"])
                                                                for w in others)}, *others]
    _drop_override(spec, changes)
    _drop_strategy(spec, changes, "the canary they walked is the STABLE now")
    changes.insert(0, f"{tree.policy.body['metadata']['name']}: weights {before} → "
                      f"{_weights(spec)}")
    return _commit(tree, touched, version, f"promote {tenant}/{model} {version} to STABLE",
                   reason, actor, changes, now, author)


def cluster_patch(target_version: str, reason: str, actor: str, now: datetime) -> dict[str, Any]:
    """The merge patch `--cluster` applies to the live RolloutPolicy (pure)."""
    return {"metadata": {"annotations": {GIT_MUST_FOLLOW: "true",
                                         ROLLBACK_ANNOTATION: reason,
                                         "cadml.io/rollback-actor": actor,
                                         "cadml.io/rollback-requested-at": now.isoformat()}},
            "spec": {"override": {"version": target_version,
                                  "reason": f"emergency rollback by {actor}: {reason}"}}}
