"""Run records committed by a process of their own, so that the store's insert work does
not run under the serving process's GIL.

The serving process keeps the batching, the bound on each request and the answers
(runwriter.py's PipeWriter); only the commit moves. The event loop hands each batch to
the recorder process (`python -m controller.worker.recorder`) as one frame on its stdin
(each request's runs a group) and reads the one-frame answer on its stdout when it
comes: None (all committed) or, per request, None or its error. The recorder commits the
batch in one transaction; when that fails it commits each request on its own
(`isolate`, shared with the thread's path), so one bad request fails alone.
Measured by bench/worker_bench.py's HTTP figure: with the insert in the serving process,
its writer thread took the GIL from the event loop (0.45 of a minimal aiohttp handler's
throughput, against 0.53-0.56 with the recorder).

Frames are `marshal` data (it builds only plain values: no object of ours is created
from a frame, no code runs), a 4-byte length first. The process is ours and the pipe
is private; still, nothing it answers is more than a class name out of a fixed list and
a message.

A recorder that ended (killed, out of memory) fails its batch as retryable (503
run_not_recorded, reason run_recorder_lost: whether the batch was committed is unknown,
as after a crash) and is started again for the next batch. It ignores SIGINT and SIGTERM
(a group signal reaches it with the worker, which then stops gracefully and still needs
it); closing its stdin ends it, as the worker's stop does, and it is killed when the
worker dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import IO, Any, TypeVar

from controller.errors import (
    CadmlError,
    ConflictError,
    NotFound,
    StaleWrite,
    StoreError,
    StoreMissing,
    StoreUnavailable,
)
from controller.records import RunRecord

log = logging.getLogger("cadml.worker")

RUN_RECORDERS = ("process", "thread")  # the worker's --run-recorder
T = TypeVar("T")

# One run as it travels: RunRecord's fields after model_name, without created_at (one for
# the whole batch): version, policy_version, route_source, thresholds, latency_ms, success,
# met_threshold, job_key, ai_suggestion, error_code, run_key, parse_ms, search_ms,
# binding_state
RunRow = tuple[Any, ...]

# what the recorder may answer: the store's own errors, raised again as they were
_ERRORS: dict[str, type[StoreError]] = {c.__name__: c for c in (
    StoreError, ConflictError, NotFound, StoreUnavailable, StoreMissing, StaleWrite)}

_HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024


class RecorderLost(StoreUnavailable):
    """The recorder process ended, or its pipe broke, while a batch was handed to it:
    whether that batch was committed is not known. Retryable: the next batch starts a new
    recorder."""


def records(model: str, rows: Sequence[RunRow], created_at: datetime) -> list[RunRecord]:
    """The run records of `rows` (RunRow), all created at `created_at`."""
    out = []
    for (version, policy_version, source, thresholds, latency_ms, success, met, job, ai,
         error_code, run_key, parse_ms, search_ms, binding) in rows:
        out.append(RunRecord(model, version, policy_version, source, thresholds, latency_ms,
                             success, met, job_key=job, ai_suggestion=ai,
                             error_code=error_code, run_key=run_key, created_at=created_at,
                             parse_ms=parse_ms, search_ms=search_ms, binding_state=binding))
    return out


def commit_rows(store: Any, tenant: str, actor: str, model: str, rows: Sequence[RunRow],
                created_at: datetime) -> None:
    """Insert the runs of `rows` in one transaction (both the thread and the process
    write through this)."""
    runs = records(model, rows, created_at)
    with store.transaction(tenant, actor) as tx:
        tx.record_runs(runs)


def isolate(commit: Callable[[list[T]], None], groups: list[list[T]]
            ) -> list[Exception | None]:
    """Commit the groups (one request's runs each) in one transaction; when that fails,
    each group on its own, so that one bad request cannot fail its neighbours. A retryable
    failure (the store is unavailable) is every group's at once: trying each would only
    wait for the store once per request. Each group's result: None or its error."""
    try:
        commit([x for g in groups for x in g])
        return [None] * len(groups)
    except Exception as exc:  # isolate the culprit: commit each request on its own
        if len(groups) == 1 or getattr(exc, "retryable", False):
            return [exc] * len(groups)
        log.warning("batch of %d requests failed; retrying one request at a time",
                    len(groups))
    results: list[Exception | None] = []
    for g in groups:
        try:
            commit(g)
        except Exception as exc:  # the request learns why
            results.append(exc)
        else:
            results.append(None)
    return results


def encode(value: Any) -> bytes:
    """One frame: the length, then the marshal data."""
    data = marshal.dumps(value)
    return _HEADER.pack(len(data)) + data


def send(stream: IO[bytes], value: Any) -> None:
    stream.write(encode(value))
    stream.flush()


def frame(groups: list[list[RunRow]], created_at: datetime) -> bytes:
    """A batch for the recorder: each request's runs (a group), created at `created_at`."""
    return encode(([portable(rows) for rows in groups], created_at.isoformat()))


def results(reply: Any, groups: int) -> list[Exception | None]:
    """The recorder's answer to a batch of `groups` requests, as each one's error (None:
    committed): None (all committed) or one (class name, message) or None per group."""
    if reply is None:
        return [None] * groups
    if not isinstance(reply, list) or len(reply) != groups:
        raise ValueError(f"a recorder answer of {type(reply).__name__} for {groups} groups")
    return [None if r is None else _ERRORS.get(r[0], StoreError)(r[1]) for r in reply]


def split(buffer: bytearray) -> list[Any]:
    """The complete frames at the start of `buffer`, removed from it."""
    out = []
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes")
        end = _HEADER.size + size
        if len(buffer) < end:
            break
        out.append(marshal.loads(bytes(buffer[_HEADER.size:end])))
        del buffer[:end]
    return out


def receive(stream: IO[bytes]) -> Any:
    """The next frame's value; EOFError when the other end closed."""
    header = _read(stream, _HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    return marshal.loads(_read(stream, size))


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise EOFError("the other end closed the pipe")
    return data


def portable(rows: list[RunRow]) -> list[RunRow]:
    """`rows` as marshal takes them: a threshold snapshot holding a value marshal does not
    know (a mapping proxy, a numpy scalar) is made plain."""
    try:
        marshal.dumps(rows)
        return rows
    except ValueError:
        return [(*row[:3], _plain(row[3]), *row[4:]) for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    return value


class RecorderProcess:
    """The serving process's end: one recorder at a time, started by `start` (the worker's
    start waits for it) and by `spawn` again after one ended; its pipes are read and
    written by the PipeWriter on the event loop."""

    def __init__(self, url: str, tenant: str, actor: str, model: str) -> None:
        self._init = (url, tenant, actor, model)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._closed = False
        self._lock = threading.Lock()  # start/close against record's restart

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the recorder and wait until it has its store (the worker's start: a
        request never waits for the recorder's imports)."""
        with self._lock:
            proc = self._ensure()
        assert proc.stdout is not None
        try:
            receive(proc.stdout)
        except (OSError, EOFError, ValueError) as exc:
            self._lost(proc)
            raise RecorderLost(f"the run recorder process did not start ({exc}; exit code "
                               f"{proc.poll()}): see its error above") from None
        self._ready = True

    def _ensure(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if self._closed:
            raise RecorderLost("the run recorder is closed: the worker is stopping")
        from controller.features.sandbox import process_environ

        env = {**process_environ(), "CADML_RECORDER_PARENT": str(os.getpid()),
               # it logs as the worker does: JSON lines, at the worker's level
               "CADML_RECORDER_LOG_LEVEL": str(logging.getLogger().getEffectiveLevel())}
        try:
            proc = subprocess.Popen([sys.executable, "-m", "controller.worker.recorder"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                    close_fds=True)
        except OSError as exc:  # no pipes, no process (a pids or memory limit)
            raise RecorderLost(f"the run recorder process could not be started: {exc}"
                               ) from None
        assert proc.stdin is not None
        try:
            send(proc.stdin, self._init)  # the URL (with its password) never in argv
        except OSError as exc:
            self._lost(proc)
            raise RecorderLost(f"the run recorder process ended at its start: {exc}"
                               ) from None
        self._proc, self._ready = proc, False
        return proc

    def spawn(self) -> subprocess.Popen[bytes]:
        """The running recorder, or a new one (its store not ready until its first frame:
        None); RecorderLost when it cannot be started or the worker is stopping."""
        with self._lock:
            return self._ensure()

    def ready_at_start(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether `proc` is the recorder `start` waited for (its first frame read)."""
        return proc is self._proc and self._ready

    def lost(self, proc: subprocess.Popen[bytes]) -> None:
        """`proc` ended, or its pipe broke: gone, and the next batch starts another."""
        self._lost(proc)

    def _lost(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        with self._lock:
            if self._proc is proc:
                self._proc = None

    def close(self, timeout: float = 5.0) -> None:
        """End the recorder: its stdin closed, it exits once its batch (if any) is done;
        killed past `timeout` (a commit stalled on a lock)."""
        with self._lock:
            proc, self._proc, self._closed = self._proc, None, True
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the run recorder did not end within %g s; killed", timeout)
            proc.kill()
            proc.wait(5)


def _die_with_parent(parent: int) -> None:
    """End with the serving process, never before it: SIGINT and SIGTERM are ignored (a
    Ctrl-C or a stop signals the whole process group; the worker then stops gracefully,
    its last batches still to commit here, and closes our stdin: that ends us); killed
    (Linux) when the thread that started us ends, even while waiting on a lock."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the line above
        sys.exit(0)


def _reply(exc: Exception) -> tuple[str, str]:
    """A commit's error as the recorder answers it: a store error by its class name, any
    other as a StoreError naming its type (logged here with its traceback)."""
    if isinstance(exc, CadmlError):
        name = type(exc).__name__
        return (name if name in _ERRORS else "StoreError", str(exc))
    log.error("recording runs failed", exc_info=exc)
    return ("StoreError", f"{type(exc).__name__}: {exc}")


def main() -> int:
    """The recorder process: its store from the first frame, then one answer per batch."""
    parent = int(os.environ.get("CADML_RECORDER_PARENT", os.getppid()))
    _die_with_parent(parent)
    frames_in = sys.stdin.buffer
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever prints, prints to stderr: never into the frames
    sys.stdout = sys.stderr
    from controller.worker.events import JsonLines

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.getLogger().handlers[:] = [handler]
    level = os.environ.get("CADML_RECORDER_LOG_LEVEL", "")
    logging.getLogger().setLevel(int(level) if level.isdigit() else logging.WARNING)
    from controller.store import Store
    from controller.store.engine import make_engine

    try:
        url, tenant, actor, model = receive(frames_in)
    except EOFError:
        return 0
    store = Store(make_engine(url, create_dirs=False))
    send(frames_out, None)
    try:
        while True:
            try:
                groups, created = receive(frames_in)
            except EOFError:
                return 0
            at = datetime.fromisoformat(created)
            done = isolate(functools.partial(commit_rows, store, tenant, actor, model,
                                             created_at=at), groups)
            send(frames_out, None if not any(done) else [None if e is None else _reply(e)
                                                          for e in done])
    finally:
        store.dispose()


if __name__ == "__main__":
    sys.exit(main())
