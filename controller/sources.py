"""Where resource YAML comes from: files, folders, standard input, or a Git ref.

Folders are walked in sorted order for YAML files (hidden files and folders skipped); a
`.cadmlignore` file (gitignore syntax) in any folder excludes paths below it,
the way `.helmignore` does for charts. A Git ref is read from the object
database with gitpython: no checkout, the working tree is never touched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pathspec

from controller.errors import SourceError
from controller.findings import FieldError

YAML_SUFFIXES = (".yaml", ".yml")
IGNORE_FILE = ".cadmlignore"


@dataclass(frozen=True)
class SourceFile:
    name: str
    data: bytes


def _too_large(name: str, size: int, limit: int) -> FieldError:
    return FieldError(
        rule="yaml.too-large",
        path="",
        message=f"file is {size} bytes, over the limit of {limit} bytes (--max-bytes)",
        file=name,
    )


def _dir_key(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


def _ignored(rel: str, specs: dict[str, pathspec.GitIgnoreSpec]) -> bool:
    """True when a .cadmlignore in an ancestor folder of `rel` matches it."""
    path = PurePosixPath(rel)
    for parent in reversed(path.parents):
        spec = specs.get("" if str(parent) == "." else str(parent))
        if spec is not None and spec.match_file(str(path.relative_to(parent))):
            return True
    return False


def _spec(text: str) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(text.splitlines())


def _read_limited(
    stream: BinaryIO, name: str, limit: int
) -> tuple[bytes | None, FieldError | None]:
    data = stream.read(limit + 1)
    if len(data) > limit:
        return None, _too_large(name, len(data), limit)
    return data, None


def collect_paths(
    paths: Iterable[str], max_bytes: int
) -> tuple[list[SourceFile], list[FieldError]]:
    files: list[SourceFile] = []
    errors: list[FieldError] = []

    def add(name: str, path: Path) -> None:
        size = path.stat().st_size
        if size > max_bytes:
            errors.append(_too_large(name, size, max_bytes))
            return
        files.append(SourceFile(name, path.read_bytes()))

    for given in paths:
        if given == "-":
            data, err = _read_limited(sys.stdin.buffer, "<stdin>", max_bytes)
            if err:
                errors.append(err)
            elif data is not None:
                files.append(SourceFile("<stdin>", data))
            continue
        root = Path(given)
        try:
            if root.is_file():
                add(given, root)
                continue
            if not root.is_dir():
                raise SourceError(f"{given}: no such file or folder")
            specs: dict[str, pathspec.GitIgnoreSpec] = {}
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = Path(dirpath).relative_to(root).as_posix()
                rel_dir = "" if rel_dir == "." else rel_dir
                if IGNORE_FILE in filenames:
                    specs[rel_dir] = _spec((Path(dirpath) / IGNORE_FILE).read_text("utf-8"))
                for fname in sorted(filenames):
                    if not fname.endswith(YAML_SUFFIXES) or fname.startswith("."):
                        continue
                    rel = f"{rel_dir}/{fname}" if rel_dir else fname
                    if _ignored(rel, specs):
                        continue
                    add(str(Path(given) / rel), Path(dirpath) / fname)
        except OSError as exc:
            raise SourceError(f"{given}: {exc.strerror or exc}") from exc
    return files, errors


def _missing_prefix(prefix: str, ref: str, paths: Iterable[str]) -> SourceError:
    """The error for a prefix that selects no YAML file: it names what exists instead, at
    the deepest folder of the prefix that does exist (so a typo shows its neighbours)."""
    parts = PurePosixPath(prefix).parts
    paths = list(paths)
    for depth in range(len(parts), -1, -1):
        base = "/".join(parts[:depth])
        below = [p[len(base) + 1:] if base else p for p in paths
                 if not base or p.startswith(base + "/")]
        if below:
            break
    entries = sorted({e.split("/", 1)[0] + ("/" if "/" in e else "") for e in below})
    where = f"{base}/ holds" if base else "the tree holds"
    shown = ", ".join(entries[:20]) + (f", … ({len(entries)} in all)" if len(entries) > 20
                                       else "")
    return SourceError(f"PREFIX {prefix}/ selects no YAML file at {ref[:12]}; "
                       f"{where}: {shown or 'nothing'}")


def collect_git(
    repo_dir: str, ref: str, prefixes: Iterable[str], max_bytes: int,
    *, require_match: bool = False,
) -> tuple[list[SourceFile], list[FieldError]]:
    """YAML files of the tree at `ref`, below any of `prefixes` (all when empty). With
    `require_match`, a prefix that selects no YAML file is a SourceError naming what
    exists: a typo must not read as "this part of the repository is empty"."""
    import git  # gitpython; imported here so validating files needs no git binary

    try:
        repo = git.Repo(repo_dir, search_parent_directories=True)
        commit = repo.commit(ref)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(f"{repo_dir}: not a Git repository") from exc
    except (git.BadName, ValueError) as exc:
        raise SourceError(f"{ref}: no such Git ref in {repo_dir}") from exc
    wanted = [p.strip("/") for p in prefixes if p.strip("/") not in ("", ".")]
    blobs: list[git.Blob] = [b for b in commit.tree.traverse() if isinstance(b, git.Blob)]
    specs = {
        _dir_key(str(b.path)): _spec(b.data_stream.read().decode("utf-8", "replace"))
        for b in blobs
        if PurePosixPath(str(b.path)).name == IGNORE_FILE
    }
    files: list[SourceFile] = []
    errors: list[FieldError] = []
    matched: set[str] = set()
    for blob in sorted(blobs, key=lambda b: str(b.path)):
        path = str(blob.path)
        if not path.endswith(YAML_SUFFIXES):
            continue
        if any(part.startswith(".") for part in PurePosixPath(path).parts):
            continue
        hits = {w for w in wanted if path == w or path.startswith(w + "/")}
        if wanted and not hits:
            continue
        if _ignored(path, specs):
            continue
        matched |= hits
        name = f"{ref}:{path}"
        if blob.size > max_bytes:
            errors.append(_too_large(name, blob.size, max_bytes))
            continue
        files.append(SourceFile(name, blob.data_stream.read()))
    missing = [w for w in wanted if w not in matched] if require_match else []
    if missing:
        raise _missing_prefix(missing[0], commit.hexsha, (str(b.path) for b in blobs))
    return files, errors
