"""Session 7b adversarial review findings: the worker's recorder process (`cadml worker
--run-recorder process`, the default) written to by the event loop (PipeWriter), through
real `cadml worker` processes on real SQLite stores."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.review.test_session7_findings import _call, _query, _stored, _Worker
from tests.worker.conftest import World
from tests.worker.test_recorder_process import _recorders


def _in_thread(answer: dict[str, Any], url: str, path: str, body: dict[str, Any],
               timeout: float = 30) -> threading.Thread:
    def call() -> None:
        try:
            answer["status"], answer["body"] = _call(url, "POST", path, body, timeout)
        except OSError as exc:
            answer["error"] = repr(exc)
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("recorder", ["process", "thread"])  # the thread: passes
def test_a_batch_the_store_refuses_in_part_logs_json_lines_only(
        world: World, tmp_path: Path, recorder: str) -> None:
    """`cadml worker` logs JSON lines on stderr, one per event (issue 12; --log-level
    sets what is logged). Two requests share a batch and the store refuses one of them
    (a trigger here stands for any per-request refusal: a constraint, a removed
    version): the batch is retried one request at a time, and that is logged, as a JSON
    line with the thread. With the recorder process the line is written by the
    recorder's own logging.basicConfig ("WARNING:cadml.worker:batch of 2 requests
    failed; ..."): plain text in the worker's JSON stream, and at WARNING whatever
    --log-level says; a non-store exception would add a multi-line plain traceback
    (recorder._reply)."""
    db = str(world.store.engine.url.database)
    with sqlite3.connect(db) as c:
        c.execute("CREATE TRIGGER refuse BEFORE INSERT ON model_run WHEN NEW.job_key = "
                  "'refused' BEGIN SELECT RAISE(ABORT, 'refused by the store'); END")
    worker = _Worker(f"sqlite:///{db}", ["--run-commit-timeout", "15", "--run-recorder",
                                         recorder], tmp_path / "w.log")
    try:
        lock = sqlite3.connect(db, timeout=0, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the first batch waits: the next two queue
        answers: dict[str, dict[str, Any]] = {j: {} for j in ("first", "refused", "good")}
        threads = [_in_thread(answers["first"], worker.url, "/v1/search",
                              _query(world, "first"))]
        time.sleep(1.0)
        threads += [_in_thread(answers[j], worker.url, "/v1/search", _query(world, j))
                    for j in ("refused", "good")]
        time.sleep(1.0)
        lock.rollback()
        lock.close()
        for t in threads:
            t.join(30)
        assert answers["first"].get("status") == 200, answers
        assert answers["good"].get("status") == 200, answers  # isolated from its neighbour
        assert answers["refused"].get("status") not in (None, 200), answers
        assert sorted(j for j in _stored(world).values() if j) == ["first", "good"]
    finally:
        worker.stop()
    text = worker.log.read_text()
    bad = [line for line in text.splitlines() if line.strip() and not _is_json(line)]
    assert not bad, text[-3000:]
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any("batch of 2 requests failed" in e.get("message", "") for e in events), text


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


@pytest.mark.parametrize("queries", [1, 2000])  # 1: a frame the pipe holds: passes
def test_a_large_batch_to_a_recorder_that_does_not_read_blocks_the_event_loop(
        world: World, tmp_path: Path, queries: int) -> None:
    """A recorder that does not read its stdin (stopped: SIGSTOP, a frozen cgroup, a
    debugger; any process that is not scheduled) is a stalled commit: requests get 503
    run_not_recorded within --run-commit-timeout and /healthz keeps answering (and fails,
    so the liveness probe restarts the worker), as it does for a small batch. A batch
    whose frame is larger than the pipe's buffer (64 KiB: a /v1/search/batch of a few
    hundred queries) is written blocking on the event loop (PipeWriter._send): the write
    never returns, so the whole worker stops answering: no 503 for the batch, no
    /healthz, and a SIGTERM cannot stop it gracefully."""
    db = str(world.store.engine.url.database)
    worker = _Worker(f"sqlite:///{db}", ["--run-commit-timeout", "1"], tmp_path / "w.log")
    (recorder,) = _recorders(worker.proc.pid)
    try:
        assert _call(worker.url, "POST", "/v1/search", _query(world, "before"))[0] == 200
        os.kill(recorder, signal.SIGSTOP)
        one = _query(world, "x")
        batch = {"queries": [{"vector": one["vector"], "jobId": f"job-{i}"}
                             for i in range(queries)]}
        answer: dict[str, Any] = {}
        held = _in_thread(answer, worker.url, "/v1/search/batch", batch, timeout=8)
        deadline = time.monotonic() + 15
        health: Any = None
        while health != 503 and time.monotonic() < deadline:  # stalled past the bound
            try:
                health = _call(worker.url, "GET", "/healthz", timeout=5)[0]
            except OSError as exc:  # TimeoutError: the event loop does not run
                health = repr(exc)
            time.sleep(0.1)
        held.join(10)
        assert health == 503, (health, answer)  # stalled: fails, but answers
        assert answer.get("status") == 503, answer
        assert answer["body"]["code"] == "run_not_recorded", answer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(recorder, signal.SIGCONT)
        worker.stop()


@pytest.mark.parametrize("recorder", ["process", "thread"])  # both: not new in this change
def test_a_store_that_stays_locked_past_its_busy_timeout_answers_run_not_recorded(
        world: World, tmp_path: Path, recorder: str) -> None:
    """A store URL with a short SQLite busy timeout (`?timeout=0.5`, below
    --run-commit-timeout): another session holds the write lock, the commit gives up
    after 0.5 s (StoreUnavailable, retryable). The request cannot be recorded: it should
    get the structured 503 run_not_recorded with its runKeys and a Retry-After, as the
    worker promises for any request whose runs are not recorded (and as the bound or a
    lost recorder answer). It gets a bare 503 {"code": "StoreUnavailable", "context":
    {}} without Retry-After or runKeys (errors middleware, CadmlError branch). PostgreSQL
    with `?options=-c lock_timeout=500` answers alike (LockNotAvailable is an
    OperationalError)."""
    db = str(world.store.engine.url.database)
    worker = _Worker(f"sqlite:///{db}?timeout=0.5", ["--run-commit-timeout", "5",
                                                     "--run-recorder", recorder],
                     tmp_path / "w.log")
    try:
        lock = sqlite3.connect(db, timeout=0, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            req = urllib.request.Request(
                worker.url + "/v1/search", data=json.dumps(_query(world, "held")).encode(),
                headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(req, timeout=10)
        finally:
            lock.rollback()
            lock.close()
        body = json.loads(raised.value.read())
        assert raised.value.code == 503, body
        assert body["code"] == "run_not_recorded", body
        assert body["context"]["retryable"] is True and len(body["context"]["runKeys"]) == 1
        assert raised.value.headers.get("Retry-After"), dict(raised.value.headers)
        assert _stored(world) == {}
    finally:
        worker.stop()


@pytest.mark.parametrize("path", ["/v1/search", "/v1/search/batch"])
def test_a_job_id_with_a_lone_surrogate_is_refused_as_a_bad_request(
        world: World, tmp_path: Path, path: str) -> None:
    """Hostile request content bound for the run record: JSON may spell a lone surrogate
    ("\\ud800"), which json.loads accepts (orjson refuses it, so the codec falls back),
    and no store can encode it. Like a job id with control characters it should be
    refused with 400 bad_request before it is routed (or, in a batch, that query alone
    answered with its error). It fails routing's hash (`job_id.encode("utf-8")`):
    500 `internal` for the request, and for the whole batch. Not new in this change (the
    thread answers alike); found while sending hostile job ids to the recorder."""
    db = str(world.store.engine.url.database)
    worker = _Worker(f"sqlite:///{db}", [], tmp_path / "w.log")
    try:
        query = _query(world, "\ud800")
        body: dict[str, Any] = query if path == "/v1/search" else {
            "queries": [query, _query(world, "fine")]}
        status, answer = _call(worker.url, "POST", path, body)
        if path == "/v1/search":
            assert (status, answer.get("code")) == (400, "bad_request"), answer
        else:
            assert status == 200, answer
            refused, fine = answer["results"]
            assert refused["error"]["code"] == "bad_request", refused
            assert fine["runKey"] in _stored(world), fine
    finally:
        worker.stop()
