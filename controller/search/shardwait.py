"""Shards that failed, and a merge that waits for the others: `cadml index merge --wait`.

A shard build that fails writes a failure marker beside the shard file it was to write
(`SHARD.failed`, JSON, written under a temporary name and renamed): which shard, which
attempt of how many, the exit code and the error. A marker is *final* when no retry
will come: the last attempt failed, or the error is one a retry cannot help (exit code
1: the input breaks a rule; the Indexed Job's podFailurePolicy fails the index at once
for it too). A successful attempt removes the marker after its shard file is in place.

`merge --wait` polls the shard files and the markers: it merges once every shard file
exists, and fails at once, naming every shard known failed for good, instead of waiting
out the Job's deadline. `wait_state` (pure) says what one look at the folder means.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.errors import StructuredError
from controller.search.regular import open_regular

MARKER_SUFFIX = ".failed"
MARKER_FORMAT = "cadml-index-shard-failure/v1"
PERMANENT_EXIT = 1  # the input breaks a rule: a retry builds the same failure
MAX_MARKER_BYTES = 64 * 1024


class ShardFailed(StructuredError):
    """`merge --wait` gave up: shards failed for good (`code` shard_failed) or the wait
    ran past its timeout (`code` shard_wait_timeout); `context` names the shards."""

    reason = "ShardFailed"
    exit_code = 1

    def __init__(self, message: str, *, code: str, context: dict[str, Any]) -> None:
        super().__init__(message, code=code, stage="merge", context=context)


def marker_path(shard_file: Path) -> Path:
    return shard_file.with_name(shard_file.name + MARKER_SUFFIX)


def failure_record(shard: str, attempt: int, attempts: int, exit_code: int, error: str
                   ) -> dict[str, Any]:
    """Purely computational: the marker a failed attempt writes."""
    return {"format": MARKER_FORMAT, "shard": shard, "attempt": attempt, "attempts": attempts,
            "exitCode": exit_code, "final": exit_code == PERMANENT_EXIT or attempt >= attempts,
            "error": error[:4000]}


def write_marker(shard_file: Path, record: dict[str, Any]) -> None:
    """Write the marker atomically; a folder that cannot take it costs only the marker."""
    target = marker_path(shard_file)
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)  # killed before the build made it
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            os.replace(tmp, target)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise


def clear_marker(shard_file: Path) -> None:
    marker_path(shard_file).unlink(missing_ok=True)


@dataclass(frozen=True)
class Look:
    """One shard as the folder shows it now."""

    path: Path
    exists: bool
    marker: dict[str, Any] | None  # None: no marker, or one that cannot be read (yet)


def look(path: Path) -> Look:
    marker = None
    with contextlib.suppress(OSError, ValueError):
        # a regular file only: a FIFO put there would block the wait past its timeout
        with open_regular(marker_path(path), follow=False) as fh:
            data = json.loads(fh.read(MAX_MARKER_BYTES))
        if isinstance(data, dict) and data.get("format") == MARKER_FORMAT:
            marker = data
    return Look(path, path.is_file(), marker)


@dataclass(frozen=True)
class WaitState:
    done: bool
    failed: list[Look]  # failed for good: the merge cannot happen
    waiting: list[Look]  # no shard file yet (a retry may be running)


def wait_state(looks: Sequence[Look]) -> WaitState:
    """Purely computational: what one look at every shard means. A shard file that exists
    wins over a marker (an attempt failed, a later one succeeded)."""
    waiting = [s for s in looks if not s.exists]
    failed = [s for s in waiting if s.marker is not None and s.marker.get("final") is True]
    return WaitState(not waiting, failed, waiting)


def _describe(s: Look) -> str:
    m = s.marker or {}
    return (f"{m.get('shard', s.path.name)} ({s.path.name}: attempt {m.get('attempt')} of "
            f"{m.get('attempts')}, exit code {m.get('exitCode')}: {m.get('error')})")


def wait_for_shards(paths: Sequence[Path], *, timeout: float | None, poll: float = 2.0,
                    say: Callable[[str], None] | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once every shard file exists; ShardFailed as soon as one failed for good, or
    when `timeout` seconds passed first."""
    start, said = clock(), -1
    while True:
        state = wait_state([look(p) for p in paths])
        if state.done:
            return
        if state.failed:
            names = [_describe(s) for s in state.failed]
            raise ShardFailed(
                f"{len(state.failed)} shard(s) failed for good: {'; '.join(names[:10])}"
                f"{f' (+{len(names) - 10} more)' if len(names) > 10 else ''}; fix the cause "
                "and build those shards again (same --shard, same options), then merge",
                code="shard_failed",
                context={"failed": [str(s.path) for s in state.failed],
                         "shards": [(s.marker or {}).get("shard") for s in state.failed]})
        if timeout is not None and clock() - start >= timeout:
            raise ShardFailed(
                f"{len(state.waiting)} of {len(paths)} shard files still missing after "
                f"{timeout:g} s (first: {state.waiting[0].path}); see the shard Job's pods",
                code="shard_wait_timeout",
                context={"missing": [str(s.path) for s in state.waiting[:100]]})
        if say is not None and len(state.waiting) != said:
            said = len(state.waiting)
            say(f"waiting for {said} of {len(paths)} shard files")
        sleep(poll)
