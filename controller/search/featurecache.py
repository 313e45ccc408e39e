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
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def file_key(path: Path) -> str:
    """content_key of a file's bytes, read a block at a time (never the whole file)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def encode(sha: str, result: Result) -> dict[str, Any] | None:
    """Purely computational: the cache record of a result, None when it must not be cached."""
    if isinstance(result, InvalidDrawing):
        if result.code in UNCACHED_CODES:
            return None
        return {"sha256": sha, "error": {"message": str(result), "code": result.code,
                                         "stage": result.stage, "context": result.context,
                                         "status": result.status}}
    return {"sha256": sha, "vector": [float(v) for v in result.vector],
            "version": result.version, "entities": result.entities,
            "truncated": result.truncated, "recovered": result.recovered}


def decode(sha: str, record: Any, feature_version: str) -> Result | None:
    """Purely computational: the result a record holds, None when it is not a valid one."""
    try:
        if record["sha256"] != sha:
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

    def path(self, sha: str) -> Path:
        return (self.root / self.extractor_version / self.feature_version / sha[:2]
                / f"{sha}.json")

    def get(self, sha: str) -> Result | None:
        try:
            record = json.loads(self.path(sha).read_bytes())
        except (OSError, ValueError):
            return None
        return decode(sha, record, self.feature_version)

    def put(self, sha: str, result: Result) -> None:
        record = encode(sha, result)
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
