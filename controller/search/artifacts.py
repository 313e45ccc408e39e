"""Model-version artifacts: resolve the URI, verify sha256, load vectors and an index.

Formats: `faiss-index` (a manifest written by `cadml index build`: it names the
faiss index file and the raw vectors, each with its sha256), `npz` (arrays
`vectors` and `ids`, no pickles allowed), `pickle` (scanned opcode by opcode,
then loaded restricted; a dict with `vectors` and `ids`). npz and pickle are
deserialised in a child process under memory and CPU limits (`loader.py`). A faiss index that is
missing, corrupt or fails its checksum does not stop the version: it is served
Degraded from the exact numpy index over the verified vectors.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from controller.search.fetch import Fetcher, FetchError, is_remote, plain_name, sha256_file
from controller.search.index import ExactIndex, VectorIndex, read_faiss
from controller.search.loader import ArtifactError, LoaderLimits, check_faiss, load_arrays
from controller.search.pickle_scan import DEFAULT_MAX_BYTES, ScanReport

__all__ = ["Artifact", "ArtifactError", "load_artifact", "resolve"]

MANIFEST_FORMAT = "cadml-index/v1"


def resolve(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ArtifactError(f"artifact scheme {parsed.scheme!r} cannot be fetched by this worker "
                            "(file:// and http(s):// only; mount s3/configmap artifacts as "
                            "files, or give a presigned https URL)",
                            code="unsupported_scheme", context={"uri": uri})
    return Path(unquote(parsed.path))


def _fetched(uri: str, sha256: str | None, fmt: str, fetcher: Fetcher) -> Path:
    """The local copy of an http(s) artifact, and for a manifest its companion files."""
    if sha256 is None:
        raise ArtifactError(f"{uri}: a downloaded artifact needs its sha256",
                            code="checksum_required", context={"uri": uri})
    try:
        path = fetcher.fetch(uri, sha256)
        if fmt == "faiss-index":
            manifest = _read_manifest(path)
            vec, idx = manifest["vectors"], manifest["index"]
            fetcher.companion(uri, vec["file"], vec["sha256"], path.parent)
            with contextlib.suppress(FetchError):  # no index: served Degraded (exact search)
                fetcher.companion(uri, idx["file"], idx["sha256"], path.parent)
    except FetchError as exc:
        raise ArtifactError(str(exc), code=exc.code, context=exc.context) from None
    return path


def _verified(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"{what} {path} does not exist", code="artifact_missing",
                            context={"path": str(path)})
    # the digest that did not match is never echoed: no hash oracle for readable files
    if expected is not None and sha256_file(path) != expected:
        raise ArtifactError(f"{what} {path} does not match sha256 {expected}",
                            code="checksum_mismatch",
                            context={"path": str(path), "expected": expected})


@dataclass
class Artifact:
    ids: list[str]
    vectors: np.ndarray
    index: VectorIndex
    feature_version: str | None
    degraded: str | None = None  # why the exact fallback serves, if it does
    scan: ScanReport | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def load_artifact(uri: str, sha256: str | None, fmt: str, *, pickle_mode: str = "whitelist",
                  pickle_max_bytes: int = DEFAULT_MAX_BYTES, ef_search: int | None = None,
                  fetcher: Fetcher | None = None, limits: LoaderLimits | None = None
                  ) -> Artifact:
    path = _fetched(uri, sha256, fmt, fetcher or Fetcher()) if is_remote(uri) else resolve(uri)
    _verified(path, sha256, "artifact")
    if fmt == "faiss-index":
        return _load_manifest(path, ef_search, limits)
    if fmt in ("npz", "pickle"):  # deserialised in a limited child, handed over as arrays
        ids, raw, report = load_arrays(path, fmt, pickle_mode=pickle_mode,
                                       pickle_max_bytes=pickle_max_bytes, limits=limits)
        vectors = _matrix(raw, len(ids))
        return Artifact(ids, vectors, ExactIndex(vectors), None, scan=report)
    raise ArtifactError(f"unknown artifact format {fmt!r}", code="artifact_format")


def _matrix(vectors: Any, n: int) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n or not np.isfinite(arr).all():
        raise ArtifactError(f"vectors must be a finite {n} x d matrix, got shape {arr.shape}",
                            code="artifact_corrupt")
    return arr


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"manifest {path}: {exc}", code="artifact_corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"manifest {path} is not {MANIFEST_FORMAT}", code="artifact_format")
    try:
        for part in ("vectors", "index"):
            plain_name(str(manifest[part]["file"]))
            str(manifest[part]["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"manifest {path}: vectors and index must each name a plain file "
                            f"and its sha256 ({exc})", code="artifact_corrupt") from None
    return manifest


def _load_manifest(path: Path, ef_search: int | None, limits: LoaderLimits | None
                   ) -> Artifact:
    manifest = _read_manifest(path)
    base = path.parent
    vec = manifest["vectors"]
    _verified(base / vec["file"], vec["sha256"], "vectors")
    vectors = np.load(base / vec["file"], allow_pickle=False)
    ids = [f["id"] for f in manifest["files"]]
    vectors = _matrix(vectors, len(ids))
    idx = manifest["index"]
    try:
        _verified(base / idx["file"], idx["sha256"], "faiss index")
        if check_faiss(base / idx["file"], idx.get("kind", "flat"), limits) != len(ids):
            raise ArtifactError("faiss index size differs from the manifest",
                                code="artifact_corrupt")
        faiss_index = read_faiss(str(base / idx["file"]), idx.get("kind", "flat"), ef_search)
        if faiss_index.ntotal != len(ids):
            raise ArtifactError("faiss index size differs from the manifest",
                                code="artifact_corrupt")
        if faiss_index.index.d != vectors.shape[1]:  # every search would fail: served exactly
            raise ArtifactError(f"faiss index takes {faiss_index.index.d} dimensions, the "
                                f"vectors have {vectors.shape[1]}", code="artifact_corrupt")
        index: VectorIndex = faiss_index
        degraded = None
    except (ArtifactError, RuntimeError) as exc:
        index, degraded = ExactIndex(vectors), f"faiss index unavailable: {exc}"
    return Artifact(ids, vectors, index, manifest.get("featureVersion"), degraded,
                    manifest=manifest)
