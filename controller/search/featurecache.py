"""The incremental-build feature cache: content-addressed, one small JSON file per drawing.

Key: (sha256 of the drawing's bytes, featureVersion, extractorVersion), laid out as
ROOT/<extractorVersion>/<featureVersion>/<sha[:2]>/<sha>.json. A rebuild parses only
drawings whose bytes it has not seen with this extractor; renamed, touched or
copied files are hits, removed files simply stop being asked for. Entries are
written as each drawing finishes (atomically, by the parser child that computed
it), so an interrupted build resumes from where it stopped (`cadml index build
--resume`). Looking entries up needs only the sha256, computed a block at a time.

What is cached: the vector and its flags, or the refusal of a drawing whose
failure depends only on its bytes and the extractor. Refusals that depend on the
run's limits or luck (CPU time, memory, size limit, a crashed parser) are never
cached: the next build tries again. A damaged or foreign cache entry is a miss.

Each entry records the CPU seconds its parse took (`cpuSeconds`), and a build takes it
only when that is below the build's `--cpu-seconds`: a drawing that took 5 s under a
generous limit is parsed again (and refused, as a clean build refuses it) under a 1 s
limit, while its entry stays for the next build that allows 5 s. An entry without its
cost (written by an older cadml) is a miss once, then rewritten with it.

Pruning: a build touches every entry it uses, so an entry's mtime is its last use;
`cadml index cache prune --older-than 30d` removes what no build used since (entries
of an older extractor included) and nothing but files named as entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from controller.errors import SourceError
from controller.features import FEATURE_DIMS, Features, InvalidDrawing

DEFAULT_CACHE = Path("~/.cache/cadml/features")
# refusals that depend on the limits of this run, not on the drawing: never cached
UNCACHED_CODES = frozenset({"time_limit", "memory_limit", "parser_crash", "too_large"})

Result = Features | InvalidDrawing
BLOCK = 1 << 20  # a streaming hash holds this much of a drawing at a time


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Digest = tuple[str, int]  # sha256 (hex) and size of the bytes a result comes from


def hash_file(fh: BinaryIO) -> Digest:
    """content_key and size of an open file's bytes, read a block at a time (never the
    whole file)."""
    digest, size = hashlib.sha256(), 0
    while block := fh.read(BLOCK):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def encode(sha: str, result: Result, cpu_seconds: float | None = None
           ) -> dict[str, Any] | None:
    """Purely computational: the cache record of a result that took `cpu_seconds` of CPU to
    compute, None when it must not be cached."""
    cost = {} if cpu_seconds is None else {"cpuSeconds": round(cpu_seconds, 3)}
    if isinstance(result, InvalidDrawing):
        if result.code in UNCACHED_CODES:
            return None
        return {"sha256": sha, **cost, "error": {
            "message": str(result), "code": result.code, "stage": result.stage,
            "context": result.context, "status": result.status}}
    return {"sha256": sha, **cost, "vector": [float(v) for v in result.vector],
            "version": result.version, "entities": result.entities,
            "truncated": result.truncated, "recovered": result.recovered}


def within(record: Any, cpu_limit: float | None) -> bool:
    """Purely computational: whether a record's parse fits under `cpu_limit` CPU seconds
    (the timer fires at the limit: a cost of exactly the limit does not fit). No limit:
    any record fits; a record without a usable cost fits no limit."""
    if cpu_limit is None:
        return True
    cost = record.get("cpuSeconds")
    return isinstance(cost, (int, float)) and not isinstance(cost, bool) and \
        0 <= cost < cpu_limit


def decode(sha: str, record: Any, feature_version: str, cpu_limit: float | None = None
           ) -> Result | None:
    """Purely computational: the result a record holds, None when it is not a valid one or
    its parse took more CPU than `cpu_limit` allows."""
    try:
        if record["sha256"] != sha or not within(record, cpu_limit):
            return None
        if "error" in record:
            e = record["error"]
            return InvalidDrawing(str(e["message"]), code=str(e["code"]), stage=str(e["stage"]),
                                  context=e["context"], status=int(e["status"]))
        vector = np.asarray(record["vector"], dtype=np.float32)
        if record["version"] != feature_version or \
                vector.shape != (FEATURE_DIMS[feature_version],) or \
                not np.isfinite(vector).all():  # a damaged entry: parse the drawing again
            return None
        return Features(vector, feature_version, int(record["entities"]),
                        bool(record["truncated"]), bool(record["recovered"]))
    except (KeyError, TypeError, ValueError):
        return None


def make_writable_folder(folder: Path) -> None:
    """Create `folder` and prove a file can be written in it (OSError if not): what a
    build checks of its output and its cache before it spends any work."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def check_writable(root: Path) -> None:
    """Refuse a cache folder that cannot take entries before a build spends any work."""
    try:
        make_writable_folder(root)
    except OSError as exc:
        raise SourceError(f"feature cache {root}: cannot write there ({exc.strerror}); "
                          "give a writable --cache folder, or --no-cache") from None


@dataclass(frozen=True)
class FeatureCache:
    root: Path
    feature_version: str
    extractor_version: str
    cpu_limit: float | None = None  # the build's --cpu-seconds: costlier entries are misses

    def path(self, sha: str) -> Path:
        return (self.root / self.extractor_version / self.feature_version / sha[:2]
                / f"{sha}.json")

    def get(self, sha: str) -> Result | None:
        try:
            record = json.loads(self.path(sha).read_bytes())
        except (OSError, ValueError):
            return None
        return decode(sha, record, self.feature_version, self.cpu_limit)

    def touch(self, sha: str) -> None:
        """Mark an entry used now: an entry's mtime is the last build that used it, which
        is what `prune` goes by."""
        with contextlib.suppress(OSError):  # gone meanwhile (pruned): it was a hit anyway
            os.utime(self.path(sha))

    def put(self, sha: str, result: Result, cpu_seconds: float | None = None) -> None:
        record = encode(sha, result, cpu_seconds)
        if record is None:
            return
        target = self.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            os.replace(tmp, target)  # a concurrent or killed build never leaves half a record
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# What a cache entry and a cache temporary are named: prune removes nothing else.
_ENTRY = re.compile(r"^[0-9a-f]{64}\.json$")
_TEMPORARY = re.compile(r"^\.tmp-")
_PREFIX = re.compile(r"^[0-9a-f]{2}$")  # the <sha[:2]> folder an entry lies in


@dataclass(frozen=True)
class Entry:
    path: Path
    mtime: float
    size: int


def cache_entries(root: Path) -> list[Entry]:
    """Every entry and leftover temporary of the cache at `root`, and only those: files
    named as the layout names them, at ROOT/<extractor>/<feature>/<sha[:2]>/."""
    found = []
    for path in root.glob("*/*/*/*"):  # glob follows links to folders: none is taken
        below = (path, path.parent, path.parent.parent, path.parent.parent.parent)
        if not (_ENTRY.match(path.name) or _TEMPORARY.match(path.name)) or \
                not _PREFIX.match(path.parent.name) or any(p.is_symlink() for p in below):
            continue
        with contextlib.suppress(OSError):
            st = path.stat()
            found.append(Entry(path, st.st_mtime, st.st_size))
    return found


def unused_since(entries: list[Entry], cutoff: float) -> list[Entry]:
    """Purely computational: the entries no build has used or written since `cutoff`."""
    return [e for e in entries if e.mtime < cutoff]


def prune(root: Path, cutoff: float, *, dry_run: bool = False) -> tuple[list[Entry], int]:
    """Remove the entries unused since `cutoff` (and then empty folders); returns what
    was (or, dry, would be) removed and how many entries are kept."""
    entries = cache_entries(root)
    stale = unused_since(entries, cutoff)
    if not dry_run:
        for entry in stale:
            entry.path.unlink(missing_ok=True)
        for folder in sorted({e.path.parent for e in stale}, reverse=True):
            for empty in (folder, folder.parent, folder.parent.parent):
                with contextlib.suppress(OSError):  # not empty: a build uses it
                    empty.rmdir()
    return stale, len(entries) - len(stale)
