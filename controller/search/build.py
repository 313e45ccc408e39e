"""`cadml index build`: drawings → feature vectors → faiss index + vectors + manifest.

The manifest (`manifest.json`) is the artifact a ModelVersion points at (URI +
sha256); it records the feature version, dimension, the sha256 of the index and
of the raw vectors, the extractor identity (controller.features.identity), every
indexed file and every skipped file with its reason. With a feature cache
(controller.search.featurecache) only drawings not seen before are parsed; the
artifact is the same, byte for byte, as a build without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from controller.features import FEATURE_DIMS, Features, InvalidDrawing, identity
from controller.features.sandbox import FeatureSandbox, SandboxLimits
from controller.search.artifacts import MANIFEST_FORMAT
from controller.search.featurecache import FeatureCache, check_writable, extract_cached
from controller.search.fetch import sha256_file
from controller.search.index import build_faiss, write_faiss
from controller.search.progress import BuildTick

DXF_SUFFIXES = (".dxf",)


@dataclass
class BuildResult:
    manifest_path: Path
    manifest_sha256: str
    indexed: int
    skipped: list[dict[str, str]]
    parsed: int = 0  # drawings parsed by this build
    reused: int = 0  # drawings whose features came from the cache


def find_drawings(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The drawings under `root`, and what was passed over. Symbolic links are followed
    only when they stay inside `root`; linked folders are never walked into."""
    top = root.resolve()
    found, skipped = [], []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            if not path.is_symlink():
                if name in files and path.suffix.lower() in DXF_SUFFIXES:
                    found.append(path)
                continue
            target = path.resolve()
            rel = str(path.relative_to(root))
            if not target.is_relative_to(top):
                skipped.append({"file": rel, "code": "outside_root",
                                "reason": f"a symbolic link out of {root}; not followed"})
            elif name in dirs:
                skipped.append({"file": rel, "code": "linked_folder",
                                "reason": "a symbolic link to a folder; not walked into"})
            elif target.is_file() and path.suffix.lower() in DXF_SUFFIXES:
                found.append(path)
    return sorted(found), sorted(skipped, key=lambda s: s["file"])


def _too_large(path: Path, limit: int) -> InvalidDrawing | None:
    """Sizes are checked before anything is read (a 1 GiB file is never loaded)."""
    size = path.stat().st_size
    if size <= limit:
        return None
    return InvalidDrawing(f"{size} bytes, over the limit of {limit}", code="too_large",
                          stage="read", context={"bytes": size, "limit": limit})


def manifest_order(name: str) -> tuple[str, ...]:
    """The order of a manifest's `files` and `skipped`: the walk's order (path components).
    A merge of shards (controller.search.shards) sorts by it to write what one build does."""
    return PurePosixPath(name).parts


@dataclass
class Collected:
    """What the drawings below a folder gave: manifest entries and vectors, in manifest order."""

    files: list[dict[str, Any]]
    vectors: np.ndarray  # one row per entry of `files`
    skipped: list[dict[str, str]]
    parsed: int  # drawings parsed by this build
    reused: int  # drawings whose features came from the cache


def collect(source: Path, *, feature_version: str = "v4", workers: int = 2,
            limits: SandboxLimits | None = None,
            progress: Callable[[BuildTick], None] | None = None, cache: Path | None = None,
            select: Callable[[str], bool] | None = None) -> Collected:
    """Features of every drawing below `source` whose relative path `select` takes (all
    when None); `cache` is the feature-cache root."""
    if feature_version not in FEATURE_DIMS:
        raise ValueError(f"unknown feature version {feature_version!r}")
    limits = limits or SandboxLimits()
    store = None if cache is None else FeatureCache(cache, feature_version,
                                                     identity.extractor_version())
    if cache is not None:
        check_writable(cache)
    paths, passed_over = find_drawings(source)
    if select is not None:
        paths = [p for p in paths if select(str(p.relative_to(source)))]
        passed_over = [s for s in passed_over if select(s["file"])]
    names = {str(p.relative_to(source)): p for p in paths}
    results: dict[str, Features | InvalidDrawing] = {
        name: why for name, p in names.items()
        if (why := _too_large(p, limits.max_bytes)) is not None}
    items = [(name, p.read_bytes) for name, p in names.items() if name not in results]
    sandbox = FeatureSandbox(workers, limits)
    parsed = 0
    try:
        stream = extract_cached(items, lambda todo: sandbox.map(todo, feature_version), store)
        for done, (name, result, fresh) in enumerate(stream, start=1):
            results[name] = result
            parsed += fresh
            if progress:
                what = (f"skipped: {result}" if isinstance(result, InvalidDrawing)
                        else f"{result.entities} entities")
                progress(BuildTick(done, len(items), name, what, fresh))
    finally:
        sandbox.close()
    files, vectors, skipped = [], [], list(passed_over)
    for name in names:  # manifest order = sorted file order, whatever finished first
        result = results[name]
        if isinstance(result, InvalidDrawing):
            skipped.append({"file": name, "code": result.code, "reason": str(result)})
            continue
        files.append({"id": name, "entities": result.entities, "truncated": result.truncated,
                      "recovered": result.recovered})
        vectors.append(result.vector)
    skipped.sort(key=lambda s: manifest_order(s["file"]))
    matrix = (np.vstack(vectors).astype(np.float32) if vectors
              else np.empty((0, FEATURE_DIMS[feature_version]), np.float32))
    return Collected(files, matrix, skipped, parsed, len(items) - parsed)


def build_index(source: Path, out: Path, *, feature_version: str = "v4", kind: str = "flat",
                workers: int = 2, limits: SandboxLimits | None = None,
                progress: Callable[[BuildTick], None] | None = None,
                cache: Path | None = None) -> BuildResult:
    """Index every drawing below `source` into `out`; `cache` is the feature-cache root."""
    got = collect(source, feature_version=feature_version, workers=workers, limits=limits,
                  progress=progress, cache=cache)
    if not got.files:
        raise InvalidDrawing(f"no drawing in {source} could be indexed", code="nothing_indexed",
                             stage="index")
    built = write_artifact(out, got.vectors, got.files, got.skipped, feature_version, kind,
                           extractor=identity.describe())
    built.parsed, built.reused = got.parsed, got.reused
    return built


def write_artifact(out: Path, matrix: np.ndarray, files: list[dict[str, Any]],
                   skipped: list[dict[str, Any]], feature_version: str = "v4",
                   kind: str = "flat", extractor: dict[str, Any] | None = None) -> BuildResult:
    """Write vectors, the faiss index and the manifest (last, atomically) into `out`.
    `extractor` (identity.describe()) says which extractor computed the vectors."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "vectors.npy", matrix, allow_pickle=False)
    write_faiss(build_faiss(matrix, kind), str(out / "index.faiss"))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "featureVersion": feature_version,
        "dim": int(matrix.shape[1]),
        **({"extractorVersion": extractor["extractorVersion"],
            "extractor": {k: v for k, v in extractor.items() if k != "extractorVersion"}}
           if extractor else {}),
        "count": len(files),
        "index": {"file": "index.faiss", "kind": kind,
                  "sha256": sha256_file(out / "index.faiss")},
        "vectors": {"file": "vectors.npy", "sha256": sha256_file(out / "vectors.npy")},
        "files": files,
        "skipped": skipped,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    os.replace(tmp, out / "manifest.json")  # a reader never sees half a manifest
    return BuildResult(out / "manifest.json", sha256_file(out / "manifest.json"), len(files),
                       skipped)
