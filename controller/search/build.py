"""`cadml index build`: drawings → feature vectors → faiss index + vectors + manifest.

The manifest (`manifest.json`) is the artifact a ModelVersion points at (URI +
sha256); it records the feature version, dimension, the sha256 of the index and
of the raw vectors, the extractor identity (controller.features.identity), every
indexed file and every skipped file with its reason. With a feature cache
(controller.search.featurecache) only drawings not seen before are parsed; the
artifact is the same, byte for byte, as a build without it. `build_files` indexes a
given list of drawings (a shard of a corpus, say); `build_index` a whole folder.
"""

from __future__ import annotations

import array
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np

from controller.features import FEATURE_DIMS, InvalidDrawing, identity
from controller.features.sandbox import SandboxLimits
from controller.search.artifacts import MANIFEST_FORMAT
from controller.search.featurecache import FeatureCache, check_writable
from controller.search.fetch import sha256_file
from controller.search.index import build_faiss, write_faiss
from controller.search.jsonstream import Lazy, dump
from controller.search.progress import BuildTick
from controller.search.stream import Rows, StreamStats, extract_stream, unreadable

DXF_SUFFIXES = (".dxf",)


@dataclass
class BuildResult:
    manifest_path: Path
    manifest_sha256: str
    indexed: int
    skipped: list[dict[str, str]]
    parsed: int = 0  # drawings parsed by this build
    reused: int = 0  # drawings whose features came from the cache
    uncached: int = 0  # results the cache could not store (the build went on without)
    cache_error: str | None = None


def find_drawings(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The drawings under `root` (their paths relative to it, in manifest order: plain
    strings, not Path objects, kept a whole build long), and what was passed over.
    Symbolic links are followed only when they stay inside `root`; linked folders are
    never walked into."""
    top = root.resolve()
    found: list[str] = []
    skipped = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = str(Path(folder).relative_to(root))
        prefix = "" if base == "." else base + "/"
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = prefix + name
            if not path.is_symlink():
                if name in files and path.suffix.lower() in DXF_SUFFIXES:
                    found.append(rel)
                continue
            target = path.resolve()
            if not target.is_relative_to(top):
                skipped.append({"file": rel, "code": "outside_root",
                                "reason": f"a symbolic link out of {root}; not followed"})
            elif name in dirs:
                skipped.append({"file": rel, "code": "linked_folder",
                                "reason": "a symbolic link to a folder; not walked into"})
            elif target.is_file() and path.suffix.lower() in DXF_SUFFIXES:
                found.append(rel)
    return sorted(found, key=manifest_order), sorted(skipped, key=lambda s: s["file"])


def _sizes(source: Path, names: Sequence[str], limit: int
           ) -> tuple[array.array[int], dict[int, InvalidDrawing]]:
    """Each file's size (8 bytes a drawing), and the rows refused before anything is read
    (over the size limit: a 1 GiB file is never loaded; or gone)."""
    sizes, refused = array.array("q"), {}
    for row, name in enumerate(names):
        try:
            size = os.stat(os.path.join(source, name)).st_size
        except OSError as exc:
            size, refused[row] = 0, unreadable(exc)
        if size > limit:
            refused[row] = InvalidDrawing(f"{size} bytes, over the limit of {limit}",
                                          code="too_large", stage="read",
                                          context={"bytes": size, "limit": limit})
        sizes.append(size)
    return sizes, refused


def manifest_order(name: str) -> tuple[str, ...]:
    """The order of a manifest's `files` and `skipped`: the walk's order (path components).
    A merge of shards (controller.search.shards) sorts by it to write what one build does."""
    if name and "//" not in name and "/./" not in f"/{name}/" and \
            name[0] != "/" and name[-1] != "/":
        return tuple(name.split("/"))  # a plain relative path: its parts, without pathlib
    return PurePosixPath(name).parts


class Entries(Protocol):
    """A manifest's `files`: counted up front, its entries read once, in order (a list,
    or columns that make each entry as it is read: stream.Listing)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[dict[str, Any]]: ...


@dataclass
class Collected:
    """What the drawings below a folder gave: manifest entries and vectors, in manifest order."""

    files: Entries
    vectors: np.ndarray  # one row per entry of `files`
    skipped: list[dict[str, str]]
    parsed: int  # drawings parsed by this build
    reused: int  # drawings whose features came from the cache
    uncached: int = 0  # results the cache could not store (the build went on without)
    cache_error: str | None = None


def collect(source: Path, work: Path, *, feature_version: str = "v4", workers: int = 2,
            limits: SandboxLimits | None = None,
            progress: Callable[[BuildTick], None] | None = None, cache: Path | None = None,
            select: Callable[[str], bool] | None = None, digests: bool = False) -> Collected:
    """Features of every drawing below `source` whose relative path `select` takes (all
    when None; it is asked about every entry of the folder once); `cache` is the
    feature-cache root, `work` a folder for the build's temporary vector file; `digests`:
    each entry carries the sha256 and size of the bytes parsed (a shard's)."""
    names, passed_over = find_drawings(source)
    if select is not None:
        names = [n for n in names if select(n)]
        passed_over = [s for s in passed_over if select(s["file"])]
    return collect_files(source, names, passed_over, work, feature_version=feature_version,
                         workers=workers, limits=limits, progress=progress, cache=cache,
                         digests=digests)


def collect_files(source: Path, names: Sequence[str], passed_over: list[dict[str, str]],
                  work: Path, *, feature_version: str = "v4", workers: int = 2,
                  limits: SandboxLimits | None = None,
                  progress: Callable[[BuildTick], None] | None = None,
                  cache: Path | None = None, digests: bool = False) -> Collected:
    """Features of `names` (drawings below `source`, relative to it; their order is the
    artifact's); `passed_over` is listed as skipped. The drawings stream through the
    parsers (controller.search.stream): memory does not grow with them."""
    if feature_version not in FEATURE_DIMS:
        raise ValueError(f"unknown feature version {feature_version!r}")
    limits = limits or SandboxLimits()
    store = None if cache is None else FeatureCache(
        cache, feature_version, identity.extractor_version(), limits.cpu_seconds)
    if cache is not None:
        check_writable(cache)
    sizes, early = _sizes(source, names, limits.max_bytes)
    work.mkdir(parents=True, exist_ok=True)
    rows = Rows(len(names), FEATURE_DIMS[feature_version], work)
    stats = StreamStats()
    parsed = 0
    try:
        for row, why in early.items():
            rows.put(row, why)
        total = len(names) - len(early)
        stream = extract_stream(lambda row: source / names[row], source, sizes,
                                (r for r in range(len(names)) if r not in early),
                                version=feature_version, limits=limits, workers=workers,
                                cache=store, stats=stats)
        for done, (row, result, fresh, digest) in enumerate(stream, start=1):
            rows.put(row, result, digest)
            parsed += fresh
            if progress:
                what = (f"skipped: {result}" if isinstance(result, InvalidDrawing)
                        else f"{result.entities} entities")
                progress(BuildTick(done, total, names[row], what, fresh))
        matrix = rows.matrix()
        files, refused = rows.listing(names, digests)
    finally:
        rows.close()
    skipped = sorted([*passed_over, *refused], key=lambda s: manifest_order(s["file"]))
    return Collected(files, matrix, skipped, parsed, total - parsed, stats.uncached,
                     stats.cache_error)


def build_index(source: Path, out: Path, *, feature_version: str = "v4", kind: str = "flat",
                workers: int = 2, limits: SandboxLimits | None = None,
                progress: Callable[[BuildTick], None] | None = None,
                cache: Path | None = None) -> BuildResult:
    """Index every drawing below `source` into `out`; `cache` is the feature-cache root."""
    names, passed_over = find_drawings(source)
    return build_files(source, names, passed_over, out, feature_version=feature_version,
                       kind=kind, workers=workers, limits=limits, progress=progress,
                       cache=cache)


def build_files(source: Path, names: Sequence[str], passed_over: list[dict[str, str]],
                out: Path, *, feature_version: str = "v4", kind: str = "flat",
                workers: int = 2, limits: SandboxLimits | None = None,
                progress: Callable[[BuildTick], None] | None = None,
                cache: Path | None = None) -> BuildResult:
    """Index `names` (see `collect_files`) into `out`."""
    got = collect_files(source, names, passed_over, out, feature_version=feature_version,
                        workers=workers, limits=limits, progress=progress, cache=cache)
    if not got.files:
        raise InvalidDrawing(f"no drawing in {source} could be indexed", code="nothing_indexed",
                             stage="index")
    built = write_artifact(out, got.vectors, got.files, got.skipped, feature_version, kind,
                           extractor=identity.describe())
    built.parsed, built.reused = got.parsed, got.reused
    built.uncached, built.cache_error = got.uncached, got.cache_error
    return built


def write_artifact(out: Path, matrix: np.ndarray, files: Entries,
                   skipped: list[dict[str, Any]], feature_version: str = "v4",
                   kind: str = "flat", extractor: dict[str, Any] | None = None) -> BuildResult:
    """Write vectors, the faiss index and the manifest (last, atomically) into `out`.
    `extractor` (identity.describe()) says which extractor computed the vectors. The
    manifest is the bytes of json.dumps(manifest, indent=2), written an entry at a time."""
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
        "files": Lazy(files),
        "skipped": Lazy(skipped),
    }
    tmp = out / "manifest.json.tmp"
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as fh:
        dump(manifest, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, out / "manifest.json")  # a reader never sees half a manifest
    return BuildResult(out / "manifest.json", sha256_file(out / "manifest.json"), len(files),
                       skipped)
