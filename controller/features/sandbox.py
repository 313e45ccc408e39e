"""Parsing untrusted drawings in separate processes with CPU-time and memory limits.

ezdxf is pure Python and hostile files can make it slow or hungry (DESIGN §9), so
every extraction runs in a pool process whose address space is capped
(RLIMIT_AS) and whose CPU time per drawing is capped by a profiling timer. The
timer raises a `BaseException`, which no library `except Exception` (such as the
strict reader's fallback to `ezdxf.recover`) can swallow; a wall-clock deadline
on the future backs it up for a child stuck where no signal gets through. A
child whose limit fired is replaced.

Parser children start from a fork server launched with a minimal environment (no
store URL, no tokens) and inherit no file descriptors beyond their pipes.

A dead child fails only its own drawing: the pool is rebuilt and every drawing
that was in it is tried again alone in a one-process quarantine pool, where only
the drawing that kills it again is reported as `parser_crash`. At most
`max_pending` drawings wait for the pool at once (a bounded queue); the async
caller waits in a thread of its own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import signal
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.features.extract import Features, InvalidDrawing, features_from_bytes

# Everything a parser child gets from its environment: no secret can leak into it.
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Imported once by the fork server, so a new parser child (a pool started or replaced)
# is forked ready instead of importing the parser itself (~0.3 s of CPU each).
PRELOAD = ["controller.features.extract", "ezdxf", "ezdxf.document", "ezdxf.filemanagement",
           "ezdxf.lldxf.tagger", "ezdxf.recover"]


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 10.0
    memory_bytes: int = 2 * 1024 * 1024 * 1024
    max_bytes: int = 50 * 1024 * 1024
    # The wall-clock deadline on each drawing is cpu_seconds + this: a child that has not
    # answered by then (stuck where no signal gets through, or starved of CPU) is killed.
    wall_grace_seconds: float = 1.0
    # ... plus this while a pool has not answered yet: its children still start and import
    startup_seconds: float = 60.0

    @property
    def wall_seconds(self) -> float:
        return self.cpu_seconds + self.wall_grace_seconds


class _CpuLimit(BaseException):
    """The CPU timer fired. A BaseException: `except Exception` in a library cannot catch
    it and carry on unbounded."""


_ENV_LOCK = threading.Lock()


def process_environ() -> dict[str, str]:
    """This process's environment, never the parsers' minimal one that it holds for a
    moment while the fork server starts: what a child started from another thread gets."""
    with _ENV_LOCK:
        return dict(os.environ)


def _start_scrubbed_forkserver() -> None:
    """Launch the fork server (and resource tracker) with CHILD_ENV as their whole
    environment; every parser child is forked from it. A fork server that is already
    running is left alone."""
    server: Any = multiprocessing.forkserver._forkserver  # private: no public "is running"
    with _ENV_LOCK:
        pid = server._forkserver_pid
        if pid is not None and _alive(pid):
            return
        saved = dict(os.environ)
        try:  # the launch copies the process environment: swap it for the moment
            os.environ.clear()
            os.environ.update(CHILD_ENV)
            server.set_forkserver_preload(PRELOAD)
            server.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _alive(pid: int) -> bool:
    """Whether a process runs (not reaped here: ensure_running reaps a dead fork server)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _init(memory_bytes: int) -> None:
    os.environ.clear()
    os.environ.update(CHILD_ENV)  # in case the fork server was not ours to start
    # Import the parser before any limit applies: an import cut short by the CPU timer
    # would leave a half-initialised module behind for every later drawing.
    import ezdxf
    import ezdxf.document
    import ezdxf.filemanagement
    import ezdxf.lldxf.tagger
    import ezdxf.recover

    ezdxf.new()  # type: ignore[attr-defined]  # loads lazily imported entity modules too
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _on_cpu_limit(_signum: int, _frame: Any) -> None:
    raise _CpuLimit


def _time_limit(limits: SandboxLimits) -> tuple[Any, ...]:
    return ("err", f"parsing took more than {limits.cpu_seconds} s of CPU", "time_limit",
            "parse", {"cpuSeconds": limits.cpu_seconds}, 422)


def extract_raw(data: bytes, version: str, limits: SandboxLimits) -> tuple[Any, ...]:
    """In a parser child: the features of `data` under the CPU timer, as a raw tuple
    (`result_of` turns it into Features or InvalidDrawing). Tasks given to
    `FeatureSandbox.run` answer such a tuple, optionally followed by fields of their own."""
    signal.signal(signal.SIGPROF, _on_cpu_limit)
    signal.setitimer(signal.ITIMER_PROF, limits.cpu_seconds)
    try:
        f = features_from_bytes(data, version, max_bytes=limits.max_bytes)
        return ("ok", f.vector.tolist(), f.version, f.entities, f.truncated, f.recovered)
    except InvalidDrawing as exc:
        return refusal(exc)
    except _CpuLimit:
        return _time_limit(limits)
    except MemoryError:
        return memory_limit(limits)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def memory_limit(limits: SandboxLimits) -> tuple[Any, ...]:
    return ("err", f"parsing needed more than {limits.memory_bytes} bytes of memory",
            "memory_limit", "parse", {"memoryBytes": limits.memory_bytes}, 422)


def refusal(exc: InvalidDrawing) -> tuple[Any, ...]:
    return ("err", str(exc), exc.code, exc.stage, exc.context, exc.status)


def result_of(raw: tuple[Any, ...]) -> Features | InvalidDrawing:
    """Purely computational: what a raw task answer says (fields after the sixth ignored)."""
    if raw[0] == "ok":
        return Features(np.asarray(raw[1], dtype=np.float32), raw[2], raw[3], raw[4], raw[5])
    return InvalidDrawing(raw[1], code=raw[2], stage=raw[3], context=raw[4], status=raw[5])


def _result(raw: tuple[Any, ...]) -> Features:
    result = result_of(raw)
    if isinstance(result, InvalidDrawing):
        raise result
    return result


# a task whose process died twice: the answer the pool could not give
PARSER_CRASH = ("err", "the parser process died on this drawing", "parser_crash", "parse",
                None, 422)


class _Slot:
    """One process pool that is replaced, never repaired: a broken or retired pool is
    shut down and a new one takes its place."""

    def __init__(self, make: Callable[[], concurrent.futures.ProcessPoolExecutor]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self.pool = make()
        self.warm = False  # whether self.pool has answered once (its children are up)

    def replace(self, old: concurrent.futures.ProcessPoolExecutor, *, kill: bool = False
                ) -> None:
        with self._lock:
            if self.pool is old:
                self.pool, self.warm = self._make(), False
        if kill:  # a child past its wall deadline does not answer signals: end it
            for process in list((getattr(old, "_processes", None) or {}).values()):
                process.kill()
        old.shutdown(wait=False)  # drawings already running in it still finish

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class FeatureSandbox:
    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None,
                 max_pending: int | None = None) -> None:
        self.workers = workers
        self.limits = limits or SandboxLimits()
        self.max_pending = max_pending or 4 * workers
        self._slots = threading.BoundedSemaphore(self.max_pending)
        self._main = _Slot(lambda: self._new_pool(self.workers))
        self._quarantine = _Slot(lambda: self._new_pool(1))
        self._quarantine_lock = threading.Lock()
        self._waiters = concurrent.futures.ThreadPoolExecutor(
            self.max_pending, thread_name_prefix="cadml-parse")

    def _new_pool(self, workers: int) -> concurrent.futures.ProcessPoolExecutor:
        _start_scrubbed_forkserver()
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init, initargs=(self.limits.memory_bytes,))

    def pids(self) -> list[int]:
        """The parser children alive now (for health checks and tests)."""
        processes = getattr(self._main.pool, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.is_alive()]

    def _run(self, slot: _Slot, task: Callable[..., tuple[Any, ...]], args: tuple[Any, ...]
             ) -> tuple[Any, ...]:
        """One attempt in `slot`'s pool; BrokenProcessPool when a child died meanwhile."""
        while True:
            pool = slot.pool
            try:
                future = pool.submit(task, *args)
                break
            except BrokenProcessPool:
                slot.replace(pool)
                raise
            except RuntimeError:  # retired by another thread a moment ago: use the new one
                if slot.pool is pool:
                    raise
        deadline = self.limits.wall_seconds + (0 if slot.warm else self.limits.startup_seconds)
        try:
            raw = future.result(timeout=deadline)
            slot.warm = slot.warm or slot.pool is pool
        except BrokenProcessPool:
            slot.replace(pool)
            raise
        except concurrent.futures.TimeoutError:
            slot.replace(pool, kill=True)
            raw = _time_limit(self.limits)
        except _CpuLimit:  # fired between the parse and the timer being disarmed
            raw = _time_limit(self.limits)
        if raw[2:3] == ("time_limit",):
            slot.replace(pool)  # a child whose limit fired may hold broken state
        return raw

    def run(self, task: Callable[..., tuple[Any, ...]], *args: Any) -> tuple[Any, ...]:
        """`task(*args)` in a parser child (a top-level function answering a raw tuple, as
        `extract_raw` does): a time limit, a wall deadline or a dead child are answered
        here as raw refusals. Blocks; call it from as many threads as drawings in flight."""
        with self._slots:
            try:
                return self._run(self._main, task, args)
            except BrokenProcessPool:
                pass
            # the pool died while this drawing was in it: try it again, alone
            with self._quarantine_lock:
                try:
                    return self._run(self._quarantine, task, args)
                except BrokenProcessPool:
                    return PARSER_CRASH

    def extract(self, data: bytes, version: str = "v4") -> Features:
        return _result(self.run(extract_raw, data, version, self.limits))

    async def extract_async(self, data: bytes, version: str = "v4") -> Features:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._waiters, self.extract, data, version)

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)
        self._main.close()
        self._quarantine.close()
