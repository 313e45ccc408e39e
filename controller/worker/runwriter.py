"""Group commit for run records: many concurrent requests, one transaction per batch.

Each request waits until its runs are committed (nothing is answered that is not
recorded), but the requests arriving while one batch commits share the next one.
A failed batch is retried run by run, so one bad run cannot fail its neighbours; a batch
that failed because the store is unavailable (retryable) fails whole: retrying each run
would only wait for the store once per request.

The commits run on one thread of their own (RunWriter), fed by a lock-free queue, or,
when the worker has a recorder process (recorder.py), in that process, the event loop
sending each batch and reading its answer (PipeWriter, no thread). The thread's case:
a request costs one `put` and one future, a batch one wake-up of the event loop for all its requests
(an executor hop per batch and an asyncio queue per request cost more than the SQLite
insert, measured by bench/worker_bench.py's HTTP figure). On stop, everything queued
before the writer closed is committed before the thread ends.

Under load the batch lingers: when the previous batch held more than one request, the
thread sleeps `linger` seconds (default 2 ms) after the first request of the next one,
so the requests that arrive meanwhile share its commit; sleeping, not waiting on the
queue, so that those arrivals do not each wake the thread. A request of an idle worker
(the previous batch was itself alone) is committed at once: it never waits for the
bound. A crash loses only what no request was answered for: the batch in flight.

Never wedged, never lying: a request waits at most `timeout` seconds (the worker's
--run-commit-timeout) for its commit, then fails with `RunNotRecorded` (503,
retryable) and its runs, if still queued, are dropped; while a commit has been pending
longer than that, or once the thread has ended (a stop, a BaseException inside it),
`problem()` says so (/healthz and /readyz fail) and new requests are refused at once.
Every request queued is answered: committed, or an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.worker.recorder import (
    RecorderLost,
    RecorderProcess,
    RunRow,
    frame,
    isolate,
    results,
    split,
)
from controller.worker.runtime import SearchOutcome, WorkerError

log = logging.getLogger("cadml.worker")

MAX_BATCH = 256
LINGER_SECONDS = 0.002  # the most a request waits for others to share its commit
COMMIT_TIMEOUT_SECONDS = 10.0  # the most a request waits for its commit
RETRY_AFTER_SECONDS = 1
RESTART_BACKOFF, RESTART_BACKOFF_MAX = 1.0, 30.0  # between starts of a failing recorder


@dataclass(eq=False, slots=True)
class _Pending:
    """One request's runs, its waiting future, and when it queued them (monotonic)."""

    outcomes: list[SearchOutcome]
    future: asyncio.Future[None]
    queued_at: float
    withdrawn: bool = False  # the request gave up (timeout): not committed if still queued


_STOP = None


@dataclass(frozen=True)
class WriterProblem:
    """Why requests cannot be recorded now: `code` run_writer_stalled | run_writer_stopped."""

    code: str
    message: str
    context: dict[str, Any] = field(default_factory=dict)


def writer_problem(alive: bool, death: str | None, oldest: float | None, now: float,
                   bound: float) -> WriterProblem | None:
    """Purely computational: what is wrong with a writer whose thread is `alive` (or ended
    by `death`), whose oldest request still waiting for a commit queued at `oldest`
    (None: none waits); None when nothing is."""
    if not alive:
        why = f" ({death})" if death else ""
        return WriterProblem("run_writer_stopped", f"the run writer is not running{why}; "
                             "no run can be recorded: restart the worker",
                             {"death": death} if death else {})
    if oldest is not None and now - oldest >= bound:
        age = now - oldest
        return WriterProblem(
            "run_writer_stalled", f"a commit of run records has been pending for {age:.1f} s "
            f"(bound {bound:g} s): the store does not take writes (a lock held by another "
            "session?)", {"oldestPendingSeconds": age, "boundSeconds": bound})
    return None


class RunNotRecorded(WorkerError):
    """A request whose runs were not recorded (in time): it is not answered as served."""

    retryable = True
    retry_after = RETRY_AFTER_SECONDS

    def __init__(self, message: str, reason: str, outcomes: list[SearchOutcome],
                 context: dict[str, Any] | None = None) -> None:
        super().__init__(message, code="run_not_recorded", stage="record", status=503,
                         context={"reason": reason, "retryable": True,
                                  "runKeys": [o.run_key for o in outcomes],
                                  **({"jobId": outcomes[0].job_id} if len(outcomes) == 1
                                     else {}), **(context or {})})


def linger_for(previous_requests: int, bound: float) -> float:
    """Purely computational: how long the next batch waits for company after its first
    request. Only under load (the previous batch was shared): an idle worker's lone
    request is committed at once."""
    return bound if previous_requests > 1 else 0.0


class Background:
    """A worker-lifetime task running `_loop` (started and stopped with the app)."""

    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        """Whether the loop runs: a dead one would leave its work waiting forever."""
        return self._task is not None and not self._task.done()


class RunWriter:
    def __init__(self, record: Callable[[list[SearchOutcome]], None],
                 linger: float = LINGER_SECONDS,
                 timeout: float = COMMIT_TIMEOUT_SECONDS) -> None:
        self._record = record
        self._linger = linger
        self._timeout = timeout
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # `_accepting` changes, and requests queue, under the lock: nothing is queued after
        # the thread took its last look at the queue
        self._lock = threading.Lock()
        self._accepting = False
        self._oldest: float | None = None  # queued_at of the batch being committed
        self._inflight: list[_Pending] = []
        self._death: str | None = None  # the BaseException that ended the thread
        # requests waiting, oldest first (event loop only), and the timer that fails those
        # past the bound
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._accepting = True
        self._thread = threading.Thread(target=self._run, args=(asyncio.get_running_loop(),),
                                        name="cadml-run-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued, then end the thread; unless a commit stalls (past the
        bound): then return at once, leaving the thread (a daemon) to the process's end,
        so that a wedged worker still shuts down. Its requests are answered by their own
        bound."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._join, self._thread)
        if self._watchdog is not None and not self._waiting:
            self._watchdog.cancel()
            self._watchdog = None

    def _join(self, thread: threading.Thread) -> None:
        while thread.is_alive():
            thread.join(0.05)
            # stalled, even while committing what was queued after the stop (not accepting)
            stall = writer_problem(True, None, self._oldest, time.monotonic(), self._timeout)
            if stall is not None:
                log.warning("stopping without the run writer: %s", stall.message)
                return

    async def write(self, outcomes: list[SearchOutcome]) -> None:
        """Return once `outcomes` are committed; raise what their commit raised, or
        RunNotRecorded: the writer cannot commit (stopped, stalled) or did not in time."""
        loop = asyncio.get_running_loop()
        pending = _Pending(outcomes, loop.create_future(), time.monotonic())
        oldest, trouble = self._oldest, None
        with self._lock:  # the thread's end clears `_accepting` under it, then answers all
            if self._accepting and (oldest is None
                                    or pending.queued_at - oldest < self._timeout):
                self._enqueue(pending)
            else:  # not accepting, or stalled
                trouble = self.problem(pending.queued_at)
                if trouble is None:  # the stall ended meanwhile
                    self._enqueue(pending)
        if trouble is not None:
            raise RunNotRecorded(f"runs not recorded: {trouble.message}", trouble.code,
                                 outcomes, trouble.context)
        waiting = self._waiting
        while waiting and waiting[0].future.done():  # answered: no longer watched
            waiting.popleft()
        waiting.append(pending)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._watch, loop)
        await pending.future

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.put(pending)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """One timer for all waiting requests (one each cost more than the rest of a
        write): fail those waiting longer than the bound, then wake at the next one's."""
        self._watchdog = None
        waiting, now = self._waiting, time.monotonic()
        while waiting and (waiting[0].future.done()
                           or now - waiting[0].queued_at >= self._timeout):
            self._expire(waiting.popleft())
        if waiting:
            self._watchdog = loop.call_later(
                waiting[0].queued_at + self._timeout - now, self._watch, loop)

    def _expire(self, pending: _Pending) -> None:
        """The bound passed: the request gives up (its runs, if not being committed yet,
        will not be)."""
        if pending.future.done():
            return
        pending.withdrawn = True
        pending.future.set_exception(RunNotRecorded(
            f"the runs were not committed within {self._timeout:g} s (the store does not "
            "take writes); they are recorded only if their commit, already under way, "
            "completes later: look the runKeys up (GET /v1/runs/RUN) before retrying",
            "timeout", pending.outcomes, {"boundSeconds": self._timeout}))

    @property
    def alive(self) -> bool:
        """Whether the commit thread runs: a dead one would leave every request waiting."""
        return self._thread is not None and self._thread.is_alive() and self._accepting

    def problem(self, now: float | None = None) -> WriterProblem | None:
        """Why requests cannot be recorded now (None: they can): /healthz and /readyz."""
        return writer_problem(self.alive, self._death, self._oldest,
                              time.monotonic() if now is None else now, self._timeout)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit batches until a stop, then what was queued before the writer closed; a
        BaseException ends the thread, and every request still waiting is answered."""
        try:
            self._serve(loop)
            with self._lock:
                self._accepting = False
            rest = self._rest()  # queued before the writer closed: committed as usual
            for i in range(0, len(rest), MAX_BATCH):
                self._commit_and_answer(loop, rest[i:i + MAX_BATCH])
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the thread ends
            self._death = f"{type(exc).__name__}: {exc}"
            log.critical("the run writer stopped: %s; requests are answered 503 "
                         "run_not_recorded until the worker restarts", self._death,
                         exc_info=True)
        finally:
            with self._lock:
                self._accepting = False
            left = self._inflight + self._rest()
            self._inflight = []
            if left:
                error = RunNotRecorded(
                    "the run writer stopped before these runs were committed"
                    + (f" ({self._death})" if self._death else ""), "run_writer_stopped",
                    [o for p in left for o in p.outcomes])
                _answer(loop, left, [error] * len(left))

    def _next(self) -> _Pending | None:
        """The next request still waiting, blocking (None: a stop); withdrawn ones are
        skipped: their requests already failed."""
        while True:
            item = self._queue.get()
            if item is _STOP or not item.withdrawn:
                return item

    def _rest(self) -> list[_Pending]:
        """Every request still queued and waiting (stops skipped)."""
        rest: list[_Pending] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rest
            if item is not _STOP and not item.withdrawn:
                rest.append(item)

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = 1
        while (item := self._next()) is not None:
            wait = linger_for(previous, self._linger)
            if wait > 0:
                time.sleep(wait)
            previous, stopping = self._batch(loop, item)
            if stopping:
                return

    def _batch(self, loop: asyncio.AbstractEventLoop, first: _Pending) -> tuple[int, bool]:
        """Commit the batch that starts with `first` and answer its requests: its size,
        and whether a stop came with it."""
        batch, stopping = self._drain(first)
        self._commit_and_answer(loop, batch)
        return len(batch), stopping

    def _commit_and_answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]
                           ) -> None:
        self._inflight, self._oldest = batch, batch[0].queued_at
        results = self._commit(batch)
        self._oldest = None
        _answer(loop, batch, results)
        self._inflight = []

    def _drain(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """The batch that starts with `first`: what is queued now, up to MAX_BATCH runs;
        and whether a stop came with it."""
        batch, size = [first], len(first.outcomes)
        while size < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if item.withdrawn:
                continue
            batch.append(item)
            size += len(item.outcomes)
        return batch, False

    def _commit(self, batch: list[_Pending]) -> list[Exception | None]:
        """Each request's result: one transaction for all, or (when it fails) one each;
        a retryable failure (the store is unavailable) is every request's at once."""
        return as_not_recorded(isolate(self._record, [p.outcomes for p in batch]),
                                    batch)


def as_not_recorded(results: list[Exception | None], batch: list[_Pending]
                    ) -> list[Exception | None]:
    """Each request whose runs the store did not take for a reason that passes (a lock
    held past the busy timeout, the store unreachable, the recorder ended under the
    batch): RunNotRecorded naming its own runs, retryable with Retry-After. A recorder
    that ended: committed or not is unknown, as after a crash."""
    out: list[Exception | None] = []
    for exc, p in zip(results, batch, strict=True):
        answer = exc
        if isinstance(exc, RecorderLost):
            answer = RunNotRecorded(
                f"runs not recorded: {exc}; they are recorded only if the recorder "
                "committed them before it ended: look the runKeys up (GET /v1/runs/RUN) "
                "before retrying", "run_recorder_lost", p.outcomes)
        elif exc is not None and getattr(exc, "retryable", False) and \
                not isinstance(exc, RunNotRecorded):
            answer = RunNotRecorded(
                f"runs not recorded: the store did not take them ({exc}); nothing of them "
                "was committed: retry in a moment", "store_unavailable", p.outcomes,
                {"storeError": getattr(exc, "reason", type(exc).__name__)})
        out.append(answer)
    return out


def _answer(loop: asyncio.AbstractEventLoop, batch: list[_Pending],
            results: list[Exception | None]) -> None:
    """Wake the event loop once for the whole batch."""
    try:
        loop.call_soon_threadsafe(_settle_all, [p.future for p in batch], results)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        log.debug("event loop closed; %d committed requests not answered", len(batch))


def _settle_all(futures: list[asyncio.Future[None]], results: list[Exception | None]) -> None:
    for future, exc in zip(futures, results, strict=True):
        _settle(future, exc)


def _settle(future: asyncio.Future[None], exc: Exception | None) -> None:
    """Answer a waiting request, unless it stopped waiting (cancelled: client gone, a
    timeout); its runs are committed all the same."""
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class PipeWriter(RunWriter):
    """The run writer of a worker with a recorder process: no thread. The event loop
    hands each batch to the recorder as one frame on its stdin and reads the answer when
    it arrives (`add_reader`); the requests that queue while a batch is out form the next
    one. The batching, the bound on each request, the stall and the answers are
    RunWriter's; only where the commit runs differs.

    Both pipes are non-blocking: a frame larger than the pipe holds is written as the
    recorder reads it (`add_writer`), so a recorder that stops reading stalls its batch
    (answered by the bound, /healthz failing), never the event loop."""

    def __init__(self, recorder: RecorderProcess,
                 rows: Callable[[list[SearchOutcome]], tuple[list[RunRow], datetime]],
                 recorded: Callable[[list[SearchOutcome]], None],
                 timeout: float = COMMIT_TIMEOUT_SECONDS) -> None:
        super().__init__(lambda _: None, 0.0, timeout)
        self._recorder = recorder
        self._rows = rows
        self._recorded = recorded
        self._queued: collections.deque[_Pending] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None  # the recorder being read
        self._ready = False  # it answered its first frame: its store is open
        self._buffer = bytearray()
        self._kicked = False
        self._idle = asyncio.Event()
        self._out = memoryview(b"")  # what is left to write of the frame being sent
        self._writing = False  # the loop waits for the pipe to take the rest
        # a recorder that could not be started (or ended before it was ready): why, how
        # many times in a row, and when the next attempt is due (monotonic)
        self._start_error: str | None = None
        self._start_failures = 0
        self._next_start = 0.0
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        self._idle.set()

    async def stop(self) -> None:
        """Send what is queued and wait for the answers; unless a commit stalls (past
        the bound): then return at once, its requests answered by their own bound."""
        with self._lock:
            self._accepting = False
        while self._queued or self._inflight:
            stall = writer_problem(True, None, self._oldest, time.monotonic(), self._timeout)
            if stall is not None:
                log.warning("stopping without the run writer: %s", stall.message)
                break
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 0.05)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._unwrite()  # a frame the recorder does not take: it is closed next
        if not self._inflight:
            self._drop()  # a stalled batch's answer may still come (its requests wait)
        if self._watchdog is not None and not self._waiting:
            self._watchdog.cancel()
            self._watchdog = None

    @property
    def alive(self) -> bool:
        return self._loop is not None and self._accepting

    def _enqueue(self, pending: _Pending) -> None:
        self._queued.append(pending)
        if not self._inflight and not self._kicked:
            self._kicked = True  # the requests of this loop iteration join the batch
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        """Send the next batch, when none is out and the recorder is ready."""
        self._kicked = False
        if self._inflight:
            return
        batch, size = [], 0
        while self._queued and size < MAX_BATCH:
            p = self._queued.popleft()
            if not p.withdrawn:
                batch.append(p)
                size += len(p.outcomes)
        if not batch:
            self._idle.set()
            return
        self._inflight, self._oldest = batch, batch[0].queued_at
        wait = self._next_start - time.monotonic()
        if self._proc is None and self._start_error is not None and wait > 0:
            self._settle([RecorderLost(  # no attempt per request: one after the backoff
                f"the run recorder process cannot be started ({self._start_error}); next "
                f"attempt in {wait:.1f} s")] * len(batch))
            return
        try:
            proc = self._reader()
        except RecorderLost as exc:  # none can be started: this batch fails, retryable
            self._start_failed(str(exc))
            self._settle([exc] * len(batch))
            return
        if self._ready:
            self._send(proc)

    def _start_failed(self, why: str) -> None:
        """A recorder could not be started, or ended before it was ready: /healthz says so
        (problem), and a new one is tried after a backoff (1, 2, 4 … 30 s), requests or
        not, until one is ready."""
        self._start_error, self._start_failures = why, self._start_failures + 1
        backoff = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (self._start_failures - 1))
        self._next_start = time.monotonic() + backoff
        if self._retry is None and self._loop is not None and self._accepting:
            self._retry = self._loop.call_later(backoff, self._try_start)

    def _try_start(self) -> None:
        self._retry = None
        if self._proc is not None or not self._accepting:
            return
        try:
            self._reader()
        except RecorderLost as exc:
            self._start_failed(str(exc))

    def problem(self, now: float | None = None) -> WriterProblem | None:
        found = super().problem(now)
        if found is None and self._start_error is not None:
            return WriterProblem(
                "run_recorder_unavailable", f"the run recorder process cannot be started "
                f"({self._start_error}); requests are answered 503 run_not_recorded until "
                "one starts", {"error": self._start_error, "attempts": self._start_failures})
        return found

    def _reader(self) -> subprocess.Popen[bytes]:
        """The recorder, read by the event loop (started again when it ended)."""
        proc = self._recorder.spawn()
        if proc is not self._proc:
            assert proc.stdout is not None and self._loop is not None
            if self._proc is not None:
                self._drop()
            assert proc.stdin is not None
            os.set_blocking(proc.stdin.fileno(), False)
            fd = proc.stdout.fileno()
            os.set_blocking(fd, False)
            self._proc, self._buffer = proc, bytearray()
            # the recorder the worker's start waited for is ready; a new one says so
            self._ready = self._recorder.ready_at_start(proc)
            self._loop.add_reader(fd, self._readable)
        return proc

    def _send(self, proc: subprocess.Popen[bytes]) -> None:
        outcomes = [o for p in self._inflight for o in p.outcomes]
        rows, created = self._rows(outcomes)
        groups, i = [], 0
        for p in self._inflight:
            groups.append(rows[i:i + len(p.outcomes)])
            i += len(p.outcomes)
        self._out = memoryview(frame(groups, created))
        self._flush()

    def _flush(self) -> None:
        """Write what is left of the frame; the rest when the pipe takes it (a recorder
        that does not read, stopped or frozen, leaves the loop free: its batch stalls and
        is answered by the bound)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        fd = proc.stdin.fileno()
        try:
            while self._out:
                self._out = self._out[os.write(fd, self._out):]
        except BlockingIOError:
            if not self._writing:
                assert self._loop is not None
                self._loop.add_writer(fd, self._flush)
                self._writing = True
            return
        except OSError as exc:
            self._gone(f"{type(exc).__name__}: {exc}")
            return
        self._unwrite()

    def _unwrite(self) -> None:
        proc = self._proc
        if self._writing and proc is not None and proc.stdin is not None and \
                self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(proc.stdin.fileno())
        self._writing = False

    def _readable(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._gone(f"{type(exc).__name__}: {exc}")
            return
        if not data:
            self._gone(f"end of its output; exit code {proc.poll()}")
            return
        self._buffer += data
        try:
            frames = split(self._buffer)
        except ValueError as exc:
            self._gone(str(exc))
            return
        for reply in frames:
            if not self._ready:
                self._ready = True
                self._start_error, self._start_failures = None, 0
                if self._inflight:
                    self._send(proc)
                continue
            try:
                answers = results(reply, len(self._inflight))
            except ValueError as exc:
                self._gone(str(exc))
                return
            self._settle(answers)

    def _settle(self, answers: list[Exception | None]) -> None:
        """Answer the batch out, then send the next."""
        batch = self._inflight
        self._inflight, self._oldest = [], None
        answers = as_not_recorded(answers, batch)
        done = [o for p, a in zip(batch, answers, strict=True) if a is None
                for o in p.outcomes]
        if done:
            self._recorded(done)
        _settle_all([p.future for p in batch], answers)
        if self._queued:
            self._kick()
        else:
            self._idle.set()

    def _gone(self, why: str) -> None:
        """The recorder ended (or its pipe broke): the batch out is answered as lost."""
        proc, starting = self._proc, not self._ready
        self._drop()
        if proc is not None:
            self._recorder.lost(proc)
            if starting:
                self._start_failed(f"it ended before it was ready: {why}")
        if self._inflight:
            self._settle([RecorderLost(f"the run recorder process ended ({why}); a new one "
                                       "is started for the next batch")] * len(self._inflight))

    def _drop(self) -> None:
        self._unwrite()
        self._out = memoryview(b"")
        proc, self._proc = self._proc, None
        if proc is not None and proc.stdout is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(proc.stdout.fileno())
        self._ready = False
