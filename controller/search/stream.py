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
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from controller.search.featurecache import FeatureCache, Result, content_key, file_key

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


def parse_file(path: str, version: str, limits: SandboxLimits, cache: FeatureCache | None
               ) -> tuple[Any, ...]:
    """In a parser child: read the drawing (never more than the size limit), parse it and
    store the result in the cache under the sha256 of the bytes parsed, with the CPU
    seconds the parse took. Answers the raw
    tuple of `extract_raw`, then that sha256 (None without a cache) and the cache's error
    (None when stored, or not to be stored)."""
    try:
        with open(path, "rb") as fh:  # read(n) allocates n bytes first: ask for the size
            data = fh.read(min(os.fstat(fh.fileno()).st_size, limits.max_bytes) + 1)
    except OSError as exc:
        return (*refusal(unreadable(exc)), None, None)
    except MemoryError:
        return (*memory_limit(limits), None, None)
    spent = time.process_time()  # what the CPU timer counts (this process, user + system)
    raw = extract_raw(data, version, limits)
    spent = time.process_time() - spent
    if cache is None:
        return (*raw, None, None)
    sha = content_key(data)
    try:
        cache.put(sha, result_of(raw), spent)
    except OSError as exc:  # a full disk costs the cache entry, not the drawing
        return (*raw, sha, f"{path}: {exc.strerror}")
    return (*raw, sha, None)


def _look_up(cache: FeatureCache, path: Path) -> tuple[str | None, Result | None]:
    try:
        sha = file_key(path)
    except OSError as exc:
        return None, unreadable(exc)
    hit = cache.get(sha)
    if hit is not None:
        cache.touch(sha)
    return sha, hit


@dataclass
class StreamStats:
    uncached: int = 0  # results the cache could not take (its folder full or gone)
    cache_error: str | None = None


def extract_stream(path_of: Callable[[int], Path], sizes: Sequence[int], todo: Iterable[int], *,
                   version: str, limits: SandboxLimits, workers: int,
                   cache: FeatureCache | None, stats: StreamStats | None = None
                   ) -> Iterator[tuple[int, Result, bool]]:
    """(row, result, parsed) for every row of `todo`: cache hits first, then the parsed
    ones as they finish; `parsed` is False for a hit and for a copy of a drawing parsed
    in this build. `path_of(row)` is the drawing's file (made when needed: the parent
    keeps names, not Path objects)."""
    stats = stats or StreamStats()
    jobs: dict[int, list[int]] = {}  # row to parse → the rows with the same bytes
    expected: dict[int, str | None] = {}
    if cache is None:
        jobs = {row: [row] for row in todo}
    else:
        misses: dict[str, list[int]] = {}
        for row, (sha, hit) in bounded_map(lambda r: _look_up(cache, path_of(r)),
                                           ((r, r) for r in todo), workers):
            if sha is None or hit is not None:
                yield row, hit, False
            else:
                misses.setdefault(sha, []).append(row)
        for sha, rows in misses.items():
            rows.sort()
            jobs[rows[0]], expected[rows[0]] = rows, sha
        del misses
    sandbox = FeatureSandbox(workers, limits)
    try:
        while jobs:
            order = largest_first(sizes, jobs)
            again: dict[int, list[int]] = {}

            def run(row: int) -> tuple[Any, ...]:
                return sandbox.run(parse_file, str(path_of(row)), version, limits, cache)

            # one drawing per parser at a time: a drawing queued behind another in the
            # pool would spend its wall-clock deadline waiting (and be killed for it)
            for row, raw in bounded_map(run, ((r, r) for r in order), workers):
                sha, cache_error = (*raw[6:8], None, None)[:2]
                if cache_error is not None:
                    stats.uncached += 1
                    stats.cache_error = cache_error
                result = result_of(raw)
                copies = jobs.pop(row)
                if sha is not None and sha != expected.get(row):
                    # changed since it was hashed: its copies still hold the old bytes
                    again.update({r: [r] for r in copies[1:]})
                    copies = copies[:1]
                for i, copy in enumerate(copies):
                    yield copy, result, i == 0
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

    def put(self, row: int, result: Result) -> None:
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

    def listing(self, names: Sequence[str]) -> tuple[Listing, list[dict[str, str]]]:
        """The manifest's `files` (compact, each entry made when read) and the drawings
        refused, in row order."""
        skipped = [{"file": names[row], "code": why.code, "reason": str(why)}
                   for row, why in sorted(self.refused.items())]
        return Listing(names, self.state == INDEXED, self.entities, self.truncated,
                       self.recovered), skipped

    def close(self) -> None:
        del self._vectors
        self._file.close()


class Listing:
    """A manifest's `files` kept as columns (a name and a few numbers per drawing, not a
    dict): its entries are made one at a time as they are read, in row order."""

    def __init__(self, names: Sequence[str], indexed: np.ndarray, entities: np.ndarray,
                 truncated: np.ndarray, recovered: np.ndarray) -> None:
        self.names, self.indexed = names, indexed
        self.entities, self.truncated, self.recovered = entities, truncated, recovered
        self.count = int(indexed.sum())

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in np.flatnonzero(self.indexed).tolist():
            yield {"id": self.names[row], "entities": int(self.entities[row]),
                   "truncated": bool(self.truncated[row]),
                   "recovered": bool(self.recovered[row])}
