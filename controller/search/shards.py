"""Sharded index builds: `cadml index build --shard I/N` and `cadml index merge`.

A drawing belongs to shard `shard_of(relative path, N)`: a hash of its path alone, so
any machine, any order of work and any subset of the folder agree on it. A shard
file is a ZIP archive (stored, not compressed) of two members:

    shard.json   format, shard {index, count}, featureVersion, dim, extractorVersion +
                 extractor, parameters (what changes the artifact: index kind and the
                 per-drawing limits), files (manifest entries + sha256 and size of the
                 drawing), skipped (with reasons), vectors {file, sha256}
    vectors.npy  float32, one row per entry of `files`

It is written to a temporary name and renamed, so a file that exists is whole.

`check_shards` (pure) finds every reason a set of shards cannot be merged: different
extractors or parameters, a missing or duplicated shard, a drawing in the wrong
shard. `merge_shards` (pure) puts the rows in manifest order, and the artifact is
written by the very function a single build uses: merged and single-machine
artifacts are the same bytes.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import hashlib
import heapq
import io
import itertools
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import StructuredError, UsageError
from controller.features import FEATURE_DIMS, identity
from controller.features.sandbox import SandboxLimits
from controller.search.build import BuildResult, collect, manifest_order, write_artifact
from controller.search.fetch import sha256_file
from controller.search.progress import BuildTick
from controller.search.regular import open_regular

SHARD_FORMAT = "cadml-index-shard/v1"
MAX_SHARDS = 100_000  # an Indexed Job's completions are limited to 100,000 too
META, VECTORS = "shard.json", "vectors.npy"
MAX_META_BYTES = 512 * 1024 * 1024
NPY_HEADER_MAX = 64 * 1024
# a shard's file entry holds the manifest's (in the manifest's order) and sha256, size
ENTRY_KEYS = ("id", "entities", "truncated", "recovered")
SKIPPED_KEYS = frozenset({"file", "code", "reason"})
META_KEYS = frozenset({"format", "shard", "featureVersion", "dim", "extractorVersion",
                       "extractor", "parameters", "source", "listing", "files", "skipped",
                       "vectors"})
HEX64 = re.compile(r"[0-9a-f]{64}")
PARAMETERS = frozenset({"kind", "cpuSeconds", "memoryBytes", "maxBytes"})  # build_parameters'
# what every shard of one build must agree on, besides extractorVersion
SAME = ("featureVersion", "dim", "parameters", "extractor", "listing")
ADVICE = {"listing": "the folder changed between the shards' builds (drawings added, removed "
                     "or renamed): build every shard again from the same, unchanging folder",
          "shard.count": "pass the N shard files of one --shard I/N build"}
SAME_OPTIONS = "build every shard with the same options"


class ShardError(StructuredError):
    """Shards that cannot be merged (or a shard file that cannot be read): `code` is
    shard_damaged, shard_mismatch, shard_missing or shard_duplicate; `context` names the
    file and the field."""

    reason = "InvalidShard"
    exit_code = 1

    def __init__(self, message: str, *, code: str, context: dict[str, Any] | None = None
                 ) -> None:
        super().__init__(message, code=code, stage="merge", context=context)


@dataclass(frozen=True)
class ShardSpec:
    index: int
    count: int

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(name: str, count: int) -> int:
    """Purely computational: the shard (0..count-1) of a drawing's relative path."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> ShardSpec:
    """`I/N` (I counted from 0, as an Indexed Job's JOB_COMPLETION_INDEX) → ShardSpec."""
    index, slash, count = text.strip().partition("/")
    try:
        spec = ShardSpec(int(index), int(count)) if slash else None
    except ValueError:
        spec = None
    if spec is None or not (1 <= spec.count <= MAX_SHARDS and 0 <= spec.index < spec.count):
        raise UsageError(f"--shard {text!r}: use I/N with 0 <= I < N <= {MAX_SHARDS} "
                         "(e.g. --shard 0/4 ... --shard 3/4; I is JOB_COMPLETION_INDEX)")
    return spec


def build_parameters(kind: str, limits: SandboxLimits) -> dict[str, Any]:
    """What a shard records of the options that change the artifact's bytes (PARAMETERS)."""
    return {"kind": kind, "cpuSeconds": limits.cpu_seconds, "memoryBytes": limits.memory_bytes,
            "maxBytes": limits.max_bytes}


@dataclass
class Shard:
    """A shard file read back: its metadata and its vectors. The file entries are kept
    compact (their names, and each entry's manifest fields as a tuple in ENTRY_KEYS
    order), not as dicts: a merge of a million drawings holds tuples, not dicts."""

    path: Path
    meta: dict[str, Any]  # as read; its "files" are moved into names and entries
    vectors: np.ndarray
    names: list[str] = dataclasses.field(init=False)
    entries: list[tuple[Any, ...]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        files = self.meta.get("files", [])
        self.names = [f["id"] for f in files]
        self.entries = [(f["id"], f["entities"], f["truncated"], f["recovered"]) for f in files]
        self.meta = {k: v for k, v in self.meta.items() if k != "files"}

    @property
    def spec(self) -> ShardSpec:
        return ShardSpec(int(self.meta["shard"]["index"]), int(self.meta["shard"]["count"]))


def build_shard(source: Path, out: Path, spec: ShardSpec, *, feature_version: str = "v4",
                kind: str = "flat", workers: int = 2, limits: SandboxLimits | None = None,
                progress: Callable[[BuildTick], None] | None = None,
                cache: Path | None = None) -> BuildResult:
    """Extract the drawings of shard `spec` below `source` into the shard file `out`."""
    limits = limits or SandboxLimits()
    listed: list[str] = []

    def select(name: str) -> bool:  # asked about every entry of the folder once
        listed.append(name)
        return spec.owns(name)

    got = collect(source, out.parent, feature_version=feature_version, workers=workers,
                  limits=limits, progress=progress, cache=cache, select=select, digests=True)
    files = list(got.files)  # with the sha256 and size of the bytes each vector comes from
    described = identity.describe()
    meta = {
        "format": SHARD_FORMAT,
        "shard": {"index": spec.index, "count": spec.count},
        "featureVersion": feature_version,
        "dim": FEATURE_DIMS[feature_version],
        "extractorVersion": described["extractorVersion"],
        "extractor": {k: v for k, v in described.items() if k != "extractorVersion"},
        "parameters": build_parameters(kind, limits),
        "source": str(source),  # for a human: shards built on other mounts may differ
        "listing": listing(listed),
        "files": files,
        "skipped": got.skipped,
    }
    write_shard(out, meta, got.vectors)
    return BuildResult(out, sha256_file(out), len(files), got.skipped, got.parsed, got.reused)


def listing(names: list[str]) -> dict[str, Any]:
    """Purely computational: what a shard saw of the whole folder (every shard walks all
    of it): the number of entries and a digest of their paths. Shards that saw different
    folders (files added, removed or renamed between two shards' builds) do not merge."""
    digest = hashlib.sha256()
    for name in sorted(names, key=manifest_order):
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return {"entries": len(names), "sha256": digest.hexdigest()}


def write_shard(out: Path, meta: dict[str, Any], vectors: np.ndarray) -> None:
    """Write the shard file atomically (a temporary file in the same folder, renamed)."""
    buf = io.BytesIO()
    np.save(buf, vectors.astype(np.float32), allow_pickle=False)
    raw = buf.getvalue()
    meta = {**meta, "vectors": {"file": VECTORS, "sha256": hashlib.sha256(raw).hexdigest()}}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(META, json.dumps(meta, indent=1) + "\n")
            zf.writestr(VECTORS, raw)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _damaged(path: Path, field: str, what: str) -> ShardError:
    return ShardError(f"shard {path}: {field}: {what}; build this shard again (same --shard, "
                      "same options)", code="shard_damaged",
                      context={"file": str(path), "field": field})


def read_shard(path: Path) -> Shard:
    """A shard file, checked whole (members, fields, vectors' sha256 and shape); a
    ShardError naming the file and the field if anything is wrong. shard.json is parsed
    once, and checked before vectors.npy is read."""
    try:
        # a regular file only (a FIFO would block the merge); sizes as declared: a bomb is
        # not inflated
        with open_regular(path) as fh, zipfile.ZipFile(fh) as zf:
            if zf.getinfo(META).file_size > MAX_META_BYTES:
                raise _damaged(path, META, f"larger than {MAX_META_BYTES} bytes")
            meta = _parse_meta(path, zf.read(META))
            declared = zf.getinfo(VECTORS).file_size
            if declared > _vectors_limit(len(meta["files"])):
                raise _damaged(path, VECTORS, f"declares {declared} bytes, more than the "
                                              f"{len(meta['files'])} rows shard.json lists")
            raw = zf.read(VECTORS)
    except FileNotFoundError:
        raise ShardError(f"shard {path}: no such file; pass the shard files the build wrote",
                         code="shard_missing", context={"file": str(path)}) from None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise _damaged(path, "file", f"not a readable shard file ({exc})") from None
    if hashlib.sha256(raw).hexdigest() != meta["vectors"]["sha256"]:
        raise _damaged(path, "vectors.sha256", "does not match vectors.npy")
    try:
        vectors = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(path, VECTORS, f"unreadable ({exc})") from None
    expected = (len(meta["files"]), meta["dim"])
    if vectors.dtype != np.float32 or vectors.shape != expected or \
            not np.isfinite(vectors).all():
        raise _damaged(path, VECTORS, f"must be a finite float32 {expected[0]} x {expected[1]} "
                                      f"matrix, is {vectors.dtype} {vectors.shape}")
    return Shard(path, meta, vectors)


def _parse_meta(path: Path, text: bytes) -> dict[str, Any]:
    """shard.json parsed and checked field by field (`_check_fields`)."""
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise _damaged(path, META, f"not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        raise _damaged(path, "format", f"is not {SHARD_FORMAT}")
    _check_fields(path, meta)
    return meta


def _vectors_limit(rows: int) -> int:
    """The most bytes vectors.npy may take for `rows` rows (a header, then float32 rows of
    the widest feature version)."""
    return NPY_HEADER_MAX + 4 * max(FEATURE_DIMS.values()) * rows


def _check_fields(path: Path, meta: dict[str, Any]) -> None:
    """Every field of a shard file as a shard build writes it, and nothing else: a hostile
    shard must not put fields into the merged manifest (file and skipped entries and the
    extractor are copied into it). The first wrong field raised, named."""
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("shard", lambda: meta["shard"].keys() == {"index", "count"}
         and _count(meta["shard"]["index"]) and _count(meta["shard"]["count"])
         and meta["shard"]["index"] < meta["shard"]["count"] <= MAX_SHARDS),
        ("featureVersion", lambda: meta["featureVersion"] in FEATURE_DIMS),
        ("dim", lambda: meta["dim"] == FEATURE_DIMS[meta["featureVersion"]]),
        ("extractorVersion", lambda: type(meta["extractorVersion"]) is str),
        ("extractor", lambda: meta["extractor"].keys() == _extractor_keys()
         and all(type(v) in (str, int) for v in meta["extractor"].values())),
        ("parameters", lambda: meta["parameters"].keys() == PARAMETERS
         and meta["parameters"]["kind"] in ("flat", "hnsw")),
        ("source", lambda: type(meta["source"]) is str),
        ("files", lambda: type(meta["files"]) is list),
        ("skipped", lambda: type(meta["skipped"]) is list),
        ("vectors", lambda: meta["vectors"].keys() == {"file", "sha256"}
         and meta["vectors"]["file"] == VECTORS and _sha256(meta["vectors"]["sha256"])),
        ("listing", lambda: meta["listing"].keys() == {"entries", "sha256"}
         and _count(meta["listing"]["entries"]) and _sha256(meta["listing"]["sha256"])),
    ]
    unknown = sorted(k for k in meta if k not in META_KEYS)
    if unknown:
        raise _damaged(path, unknown[0], "not a field of a shard file")
    for field, ok in checks:
        try:
            good = ok()
        except (KeyError, TypeError, AttributeError):
            good = False
        if not good:
            raise _damaged(path, field, "missing or malformed")
    keys = FILE_FIELDS.keys()
    for n, f in enumerate(meta["files"]):
        # the common case in one expression (a million entries); the field named on failure
        if type(f) is dict and f.keys() == keys and type(f["id"]) is str \
                and type(f["entities"]) is int and f["entities"] >= 0 \
                and type(f["truncated"]) is bool and type(f["recovered"]) is bool \
                and type(f["size"]) is int and f["size"] >= 0 and type(f["sha256"]) is str \
                and HEX64.fullmatch(f["sha256"]) is not None:
            continue
        if (bad := _bad_file_field(f)) is not None:
            raise _damaged(path, f"files[{n}]{bad}",
                           "not a shard entry (exactly id, entities, truncated, recovered, "
                           "sha256, size, of their types)")
    for n, s in enumerate(meta["skipped"]):
        if not (type(s) is dict and s.keys() == SKIPPED_KEYS
                and all(type(v) is str for v in s.values())):
            raise _damaged(path, f"skipped[{n}]", "not a skipped entry (exactly file, code "
                                                  "and reason, each a string)")
    if not _distinct_relative([f["id"] for f in meta["files"]] +
                              [s["file"] for s in meta["skipped"]]):
        raise _damaged(path, "files", "a drawing listed twice, or not by a relative path "
                                      "below the folder")


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _sha256(value: Any) -> bool:
    return type(value) is str and HEX64.fullmatch(value) is not None


# each field of a shard's file entry, and what it must be
FILE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "id": lambda v: type(v) is str, "entities": _count,
    "truncated": lambda v: type(v) is bool, "recovered": lambda v: type(v) is bool,
    "sha256": _sha256, "size": _count}


def _bad_file_field(f: Any) -> str | None:
    """Purely computational: None when a shard's file entry is exactly what a shard build
    writes, else where it is not (`.KEY`, or '' when it is no object at all): no other
    key either, as a shard must not put fields into the merged manifest."""
    if type(f) is not dict:
        return ""
    if f.keys() != FILE_FIELDS.keys():
        return f".{sorted(map(str, f.keys() ^ FILE_FIELDS.keys()))[0]}"
    for key, ok in FILE_FIELDS.items():
        if not ok(f[key]):
            return f".{key}"
    return None


@functools.cache
def _extractor_keys() -> frozenset[str]:
    """What a shard's `extractor` holds (the merged manifest copies it)."""
    return frozenset(identity.describe()) - {"extractorVersion"}


def _distinct_relative(names: list[str]) -> bool:
    """Whether every entry is named once, by a relative path below the folder (what a
    build writes: no absolute path, no `..` or `.` part, no empty part, no NUL)."""
    return len(set(names)) == len(names) and all(
        name and not name.startswith("/") and "\0" not in name and all(
            part not in ("", ".", "..") for part in name.split("/")) for name in names)


def check_shards(shards: Sequence[Shard]) -> list[ShardError]:
    """Purely computational: every reason these shards do not make one build (empty: they
    do). The first shard given is the reference the others are compared with."""
    if not shards:
        return [ShardError("no shard given", code="shard_missing")]
    ref = shards[0]
    problems: list[ShardError] = []
    for shard in shards[1:]:
        problems += _mismatches(ref, shard)
    count = ref.spec.count
    seen: dict[int, Path] = {}
    for shard in shards:
        spec = shard.spec
        if spec.count != count:
            continue  # already reported as a mismatch
        if spec.index in seen:
            problems.append(ShardError(
                f"shards {seen[spec.index]} and {shard.path} are both shard {spec}; pass each "
                "shard once", code="shard_duplicate",
                context={"file": str(shard.path), "field": "shard.index",
                         "other": str(seen[spec.index])}))
        seen.setdefault(spec.index, shard.path)
        for name in itertools.chain(shard.names, (s["file"] for s in shard.meta["skipped"])):
            if not spec.owns(name):
                problems.append(ShardError(
                    f"shard {shard.path}: {name} belongs to shard {shard_of(name, count)}/"
                    f"{count}, not {spec}; build the shards with one cadml version",
                    code="shard_mismatch", context={"file": str(shard.path), "field": "files",
                                                    "drawing": name}))
                break
    missing = [i for i in range(count) if i not in seen]
    entries = sum(len(s.names) + len(s.meta["skipped"]) for s in shards)
    if not missing and not problems and entries != ref.meta["listing"]["entries"]:
        problems.append(ShardError(
            f"the {count} shards hold {entries} entries but each listed "
            f"{ref.meta['listing']['entries']} in the folder; build the shards again",
            code="shard_mismatch", context={"field": "listing.entries"}))
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing[:10])
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        problems.append(ShardError(
            f"{len(missing)} of {count} shards missing: {listed}{more}; build each with "
            f"`cadml index build SOURCE --shard I/{count} --out FILE` and pass every shard",
            code="shard_missing", context={"field": "shard.index", "missing": missing}))
    return problems


def _mismatches(ref: Shard, shard: Shard) -> list[ShardError]:
    out = []
    if shard.meta["extractorVersion"] != ref.meta["extractorVersion"]:
        out.append(ShardError(
            f"shard {shard.path}: extractorVersion {shard.meta['extractorVersion']} differs from "
            f"{ref.meta['extractorVersion']} of {ref.path}: its vectors come from another "
            "feature extractor; rebuild every shard with one cadml (and ezdxf) version",
            code="shard_mismatch", context={"file": str(shard.path), "field": "extractorVersion",
                                            "value": shard.meta["extractorVersion"],
                                            "expected": ref.meta["extractorVersion"]}))
    for field in (*SAME, "shard.count"):
        theirs, ours = _field(shard.meta, field), _field(ref.meta, field)
        if theirs != ours:
            out.append(ShardError(
                f"shard {shard.path}: {field} is {json.dumps(theirs)}, {ref.path} has "
                f"{json.dumps(ours)}; {ADVICE.get(field, SAME_OPTIONS)}",
                code="shard_mismatch", context={"file": str(shard.path), "field": field,
                                                "value": theirs, "expected": ours}))
    return out


def _field(meta: dict[str, Any], dotted: str) -> Any:
    value: Any = meta
    for part in dotted.split("."):
        value = value[part]
    return value


class MergedFiles:
    """The merged manifest's `files`: which shard and row each entry comes from (two
    numbers a drawing); each entry is made as it is read."""

    def __init__(self, shards: Sequence[Shard], shard: np.ndarray, row: np.ndarray) -> None:
        self.shards, self.shard, self.row = shards, shard, row

    def __len__(self) -> int:
        return len(self.shard)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i, row in zip(self.shard.tolist(), self.row.tolist(), strict=True):
            yield dict(zip(ENTRY_KEYS, self.shards[i].entries[row], strict=True))


@dataclass
class Merged:
    files: MergedFiles
    vectors: np.ndarray
    skipped: list[dict[str, Any]]


def order_key(name: str) -> str:
    """Purely computational: a string that sorts as manifest_order(name) does, for the
    names a shard may hold (relative, no empty part, no NUL: `_distinct_relative`): the
    parts joined by NUL, which sorts below every character a part can hold. One string
    compares faster than a tuple of parts, and costs one object, not one per part."""
    return name.replace("/", "\0")


def _sorted_rows(names: Sequence[str], shard: int) -> Iterator[tuple[str, int, int]]:
    """(order_key, shard, row) of a shard's entries in manifest order: as the shard lists
    them when sorted already (a shard build writes them so), else sorted."""
    keys = (order_key(n) for n in names)
    if all(a <= b for a, b in itertools.pairwise(keys)):
        return ((order_key(n), shard, row) for row, n in enumerate(names))
    return iter(sorted((order_key(n), shard, row) for row, n in enumerate(names)))


def merge_shards(shards: Sequence[Shard]) -> Merged:
    """Purely computational: the rows of compatible shards in manifest order (the order of
    one build over the whole folder), shard-only fields dropped. A k-way merge of the
    shards' sorted lists (O(rows log shards)); ties keep the order the shards are given
    in."""
    total = sum(len(shard.names) for shard in shards)
    which_rows, row_rows = array.array("i"), array.array("q")
    merged = heapq.merge(*(_sorted_rows(shard.names, i) for i, shard in enumerate(shards)))
    for _, i, row in merged:
        which_rows.append(i)
        row_rows.append(row)
    which = np.frombuffer(which_rows, np.int32) if total else np.empty(0, np.int32)
    rows = np.frombuffer(row_rows, np.int64) if total else np.empty(0, np.int64)
    vectors = np.empty((total, shards[0].meta["dim"]), np.float32)
    # the merged positions grouped by shard (a stable sort keeps each shard's in order):
    # every row is gathered once, not one pass over all rows per shard
    by_shard = np.argsort(which, kind="stable")
    start = 0
    for shard in shards:
        mine = by_shard[start:start + len(shard.names)]
        vectors[mine] = shard.vectors[rows[mine]]
        start += len(shard.names)
    skipped = sorted((s for shard in shards for s in shard.meta["skipped"]),
                     key=lambda s: manifest_order(s["file"]))
    return Merged(MergedFiles(shards, which, rows), vectors, skipped)


def read_compatible(paths: Sequence[Path]) -> list[Shard]:
    """Every shard file read and checked together; the first problem raised (with how many
    more there are), before anything is written."""
    shards = [read_shard(p) for p in paths]
    problems = check_shards(shards)
    if problems:
        first = problems[0]
        if len(problems) > 1:
            raise ShardError(f"{first} (+{len(problems) - 1} more problems)", code=first.code,
                             context={**first.context,
                                      "problems": [str(p) for p in problems]})
        raise first
    return shards


def write_merged(shards: Sequence[Shard], merged: Merged, out: Path) -> BuildResult:
    """The artifact one build of the whole folder writes, from compatible shards."""
    ref = shards[0].meta
    extractor = {"extractorVersion": ref["extractorVersion"], **ref["extractor"]}
    return write_artifact(out, merged.vectors, merged.files, merged.skipped,
                          ref["featureVersion"], ref["parameters"]["kind"], extractor=extractor)
