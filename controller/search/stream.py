"""Streaming feature extraction for index builds: the parent's memory stays flat however
many drawings there are.

The parent never holds a drawing's bytes. With a feature cache, each file is hashed a
block at a time (threads of the parent: reads and hashlib release the GIL) and looked
up; identical contents are parsed once. What is left goes to the parser children as
paths, largest drawing first (a big drawing started last would be the build's tail), a
bounded number in flight; each child reads, parses and stores its result in the cache
itself. Results land in `Rows` by row (the drawing's place in the artifact), vectors in
a file-backed memmap: per drawing the parent keeps a few numbers and its name.
"""

from __future__ import annotations

import concurrent.futures
import errno
import itertools
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from controller.features import Features, InvalidDrawing
from controller.features.sandbox import (
    FeatureSandbox,
    SandboxLimits,
    extract_raw,
    memory_limit,
    refusal,
    result_of,
)
from controller.search.featurecache import Digest, FeatureCache, Result, content_key, hash_file

K = TypeVar("K")
T = TypeVar("T")

INDEXED, REFUSED = 1, 2


def unreadable(exc: OSError) -> InvalidDrawing:
    return InvalidDrawing(f"cannot read: {exc.strerror}", code="unreadable", stage="read")


def largest_first(sizes: Sequence[int], rows: Iterable[int]) -> list[int]:
    """Purely computational: `rows` in the order to parse them, the largest drawing first
    (ties in row order: the same inputs are always handed out in the same order)."""
    return sorted(rows, key=lambda r: (-sizes[r], r))


def bounded_map(fn: Callable[[T], Any], jobs: Iterable[tuple[K, T]], threads: int
                ) -> Iterator[tuple[K, Any]]:
    """(key, fn(arg)) for each (key, arg) job as it finishes, run in `threads` threads.
    Jobs are taken lazily, at most twice `threads` at a time: nothing grows per job."""
    todo = iter(jobs)
    pending: dict[concurrent.futures.Future[Any], K] = {}
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="cadml-build") as pool:
        try:
            while True:
                for key, arg in itertools.islice(todo, 2 * threads - len(pending)):
                    pending[pool.submit(fn, arg)] = key
                if not pending:
                    return
                done, _ = concurrent.futures.wait(pending,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for future in [f for f in pending if f in done]:  # in the order handed out
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:
                future.cancel()


def open_drawing(path: str, root: str) -> BinaryIO:
    """Open a listed drawing as the listing policy says (build.find_drawings): never through
    a symbolic link out of `root` (a resolved folder), only a regular file (a FIFO would
    block, a device never end). The path is opened without following a link, so a file
    swapped for a link after the listing is caught here, where it is read; a link that
    stays inside `root` is opened at its target, again without following. Raises
    InvalidDrawing (read stage) for what is refused or cannot be opened."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            target = os.path.realpath(path)
            if not Path(target).is_relative_to(root):
                raise InvalidDrawing(f"a symbolic link out of {root}; not followed",
                                     code="outside_root", stage="read") from None
            fd = os.open(target, flags)
    except OSError as exc:
        raise unreadable(exc) from None
    if not Path(_opened(fd, path)).is_relative_to(root):  # a folder on the way was a link
        os.close(fd)
        raise InvalidDrawing(f"a symbolic link out of {root}; not followed",
                             code="outside_root", stage="read")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidDrawing("not a regular file; not read", code="not_a_file", stage="read")
    return os.fdopen(fd, "rb")


def _opened(fd: int, path: str) -> str:
    """The file an open descriptor reads, as the kernel resolved it (O_NOFOLLOW covers
    only the last name: a folder on the path swapped for a link is followed); where
    /proc is missing, the path resolved now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def parse_file(path: str, root: str, version: str, limits: SandboxLimits,
               cache: FeatureCache | None) -> tuple[Any, ...]:
    """In a parser child: read the drawing once (`open_drawing`; never more than the size
    limit), parse it and, with a cache, store the result under the sha256 of the bytes
    parsed with the CPU seconds the parse took. Answers the raw tuple of `extract_raw`,
    then the sha256 and size of the bytes parsed (None when nothing was read) and the
    cache's error (None when stored, or not to be stored)."""
    try:
        with open_drawing(path, root) as fh:  # read(n) allocates n bytes first: ask the size
            data = fh.read(min(os.fstat(fh.fileno()).st_size, limits.max_bytes) + 1)
    except InvalidDrawing as exc:
        return (*refusal(exc), None, None, None)
    except OSError as exc:
        return (*refusal(unreadable(exc)), None, None, None)
    except MemoryError:
        return (*memory_limit(limits), None, None, None)
    spent = time.process_time()  # what the CPU timer counts (this process, user + system)
    raw = extract_raw(data, version, limits)
    spent = time.process_time() - spent
    sha = content_key(data)
    if cache is None:
        return (*raw, sha, len(data), None)
    try:
        cache.put(sha, result_of(raw), spent)
    except OSError as exc:  # a full disk costs the cache entry, not the drawing
        return (*raw, sha, len(data), f"{path}: {exc.strerror}")
    return (*raw, sha, len(data), None)


def _look_up(cache: FeatureCache, path: Path, root: str
             ) -> tuple[Digest | None, Result | None]:
    try:
        with open_drawing(str(path), root) as fh:
            digest = hash_file(fh)
    except InvalidDrawing as exc:
        return None, exc
    except OSError as exc:
        return None, unreadable(exc)
    hit = cache.get(digest[0])
    if hit is not None:
        cache.touch(digest[0])
    return digest, hit


@dataclass
class StreamStats:
    uncached: int = 0  # results the cache could not take (its folder full or gone)
    cache_error: str | None = None


def extract_stream(path_of: Callable[[int], Path], root: Path, sizes: Sequence[int],
                   todo: Iterable[int], *, version: str, limits: SandboxLimits, workers: int,
                   cache: FeatureCache | None, stats: StreamStats | None = None
                   ) -> Iterator[tuple[int, Result, bool, Digest | None]]:
    """(row, result, parsed, digest) for every row of `todo`: cache hits first, then the
    parsed ones as they finish; `parsed` is False for a hit and for a copy of a drawing
    parsed in this build; `digest` is the sha256 and size of the bytes the result comes
    from (None when nothing was read). `path_of(row)` is the drawing's file below `root`
    (made when needed: the parent keeps names, not Path objects)."""
    stats = stats or StreamStats()
    top = str(root.resolve())
    jobs: dict[int, list[int]] = {}  # row to parse → the rows with the same bytes
    expected: dict[int, Digest] = {}
    if cache is None:
        jobs = {row: [row] for row in todo}
    else:
        misses: dict[Digest, list[int]] = {}
        for row, (digest, hit) in bounded_map(lambda r: _look_up(cache, path_of(r), top),
                                              ((r, r) for r in todo), workers):
            if digest is None or hit is not None:
                yield row, hit, False, digest
            else:
                misses.setdefault(digest, []).append(row)
        for digest, rows in misses.items():
            rows.sort()
            jobs[rows[0]], expected[rows[0]] = rows, digest
        del misses
    sandbox = FeatureSandbox(workers, limits)
    try:
        while jobs:
            order = largest_first(sizes, jobs)
            again: dict[int, list[int]] = {}

            def run(row: int) -> tuple[Any, ...]:
                return sandbox.run(parse_file, str(path_of(row)), top, version, limits, cache)

            # one drawing per parser at a time: a drawing queued behind another in the
            # pool would spend its wall-clock deadline waiting (and be killed for it)
            for row, raw in bounded_map(run, ((r, r) for r in order), workers):
                sha, size, cache_error = (*raw[6:9], None, None, None)[:3]
                if cache_error is not None:
                    stats.uncached += 1
                    stats.cache_error = cache_error
                result = result_of(raw)
                digest = None if sha is None else (sha, size)
                copies = jobs.pop(row)
                if row in expected and digest != expected[row]:
                    # changed since it was hashed: its copies still hold the old bytes
                    again.update({r: [r] for r in copies[1:]})
                    copies = copies[:1]
                for i, copy in enumerate(copies):
                    yield copy, result, i == 0, digest
            jobs, expected = again, {}
    finally:
        sandbox.close()


class Rows:
    """Every drawing's result by row; the vectors in a temporary, already unlinked file
    in `folder` (a memmap), the rest in a few numbers per row."""

    def __init__(self, count: int, dim: int, folder: Path) -> None:
        self.count = count
        # lives as long as the build (closed by close()): no context manager fits here
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".vectors-")  # noqa: SIM115
        self._vectors = np.memmap(self._file, dtype=np.float32, mode="w+",
                                  shape=(max(count, 1), dim))
        self.state = np.zeros(count, dtype=np.uint8)
        self.entities = np.zeros(count, dtype=np.int64)
        self.truncated = np.zeros(count, dtype=bool)
        self.recovered = np.zeros(count, dtype=bool)
        self.refused: dict[int, InvalidDrawing] = {}
        # the sha256 and size of the bytes each row's result comes from (41 bytes a row)
        self.sha = np.zeros((count, 32), dtype=np.uint8)
        self.size = np.zeros(count, dtype=np.int64)

    def put(self, row: int, result: Result, digest: Digest | None = None) -> None:
        if digest is not None:
            self.sha[row] = np.frombuffer(bytes.fromhex(digest[0]), dtype=np.uint8)
            self.size[row] = digest[1]
        if isinstance(result, Features):
            self._vectors[row] = result.vector
            self.entities[row] = result.entities
            self.truncated[row], self.recovered[row] = result.truncated, result.recovered
            self.state[row] = INDEXED
        else:
            self.refused[row] = result
            self.state[row] = REFUSED

    def matrix(self) -> np.ndarray:
        """The indexed rows' vectors, in row order (a copy in memory, for faiss)."""
        return np.array(self._vectors[:self.count][self.state == INDEXED], dtype=np.float32)

    def listing(self, names: Sequence[str], digests: bool = False
                ) -> tuple[Listing, list[dict[str, str]]]:
        """The manifest's `files` (compact, each entry made when read; `digests`: with the
        sha256 and size of the bytes parsed, as a shard lists them) and the drawings
        refused, in row order."""
        skipped = [{"file": names[row], "code": why.code, "reason": str(why)}
                   for row, why in sorted(self.refused.items())]
        return Listing(names, self.state == INDEXED, self.entities, self.truncated,
                       self.recovered, (self.sha, self.size) if digests else None), skipped

    def close(self) -> None:
        del self._vectors
        self._file.close()


class Listing:
    """A manifest's `files` kept as columns (a name and a few numbers per drawing, not a
    dict): its entries are made one at a time as they are read, in row order."""

    def __init__(self, names: Sequence[str], indexed: np.ndarray, entities: np.ndarray,
                 truncated: np.ndarray, recovered: np.ndarray,
                 digests: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.names, self.indexed = names, indexed
        self.entities, self.truncated, self.recovered = entities, truncated, recovered
        self.digests = digests
        self.count = int(indexed.sum())

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in np.flatnonzero(self.indexed).tolist():
            entry: dict[str, Any] = {
                "id": self.names[row], "entities": int(self.entities[row]),
                "truncated": bool(self.truncated[row]), "recovered": bool(self.recovered[row])}
            if self.digests is not None:
                entry["sha256"] = self.digests[0][row].tobytes().hex()
                entry["size"] = int(self.digests[1][row])
            yield entry
