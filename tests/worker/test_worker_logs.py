"""`cadml worker` logs JSON lines, one per event (issue 12): a real worker process, its
stderr read line by line while the store changes under it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from controller.records import RouteRow
from tests.worker.conftest import MODEL, TENANT, World


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(world: World, tmp_path: Path, level: str
            ) -> Iterator[tuple[Queue[dict[str, Any]], int]]:
    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "worker", "--model", f"{TENANT}/{MODEL}",
         "--store", str(world.store.engine.url), "--port", str(port), "--host", "127.0.0.1",
         "--log-level", level],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "CADML_HOME": str(tmp_path)})
    lines: Queue[dict[str, Any]] = Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                lines.put(json.loads(line))
            except json.JSONDecodeError:
                lines.put({"notJson": line})

    threading.Thread(target=pump, daemon=True).start()
    yield lines, port
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def worker(world: World, tmp_path: Path) -> Iterator[tuple[Queue[dict[str, Any]], int]]:
    yield from _worker(world, tmp_path, "debug")


def _next(lines: Queue[dict[str, Any]], event: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except Empty:
            break
        seen.append(line)
        if line.get("event") == event:
            return line
    raise AssertionError(f"no {event} event; saw {seen}")


def test_the_worker_logs_one_json_line_per_event(
        world: World, worker: tuple[Queue[dict[str, Any]], int]) -> None:
    lines, port = worker
    first = _next(lines, "policy_applied")
    assert first["oldPolicyVersion"] is None and first["policyVersion"] == 1
    assert first["routes"] == {"1.0.0": 90, "1.1.0": 10}
    loaded = _next(lines, "version_loaded")
    assert loaded["version"] in ("1.0.0", "1.1.0") and "time" in loaded
    pv = world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    applied = _next(lines, "policy_applied")
    assert (applied["oldPolicyVersion"], applied["policyVersion"]) == (1, pv)
    assert applied["routes"] == {"1.0.0": 100} and applied["source"] == "rollback"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", method="POST",
                                 data=json.dumps({"vector": [0.0] * 24,
                                                  "jobId": "log-1"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        run = json.loads(resp.read())
    logged = _next(lines, "run")
    assert logged["level"] == "debug" and logged["run"] == run["runKey"]
    assert logged["version"] == "1.0.0" and logged["policyVersion"] == pv


@pytest.fixture
def info_worker(world: World, tmp_path: Path) -> Iterator[tuple[Queue[dict[str, Any]], int]]:
    yield from _worker(world, tmp_path, "info")


def test_at_info_a_served_request_writes_no_log_line(
        world: World, info_worker: tuple[Queue[dict[str, Any]], int]) -> None:
    """Request logs are at debug: before, aiohttp's access log wrote one line per request
    at info (a line of text in the JSON stream, and CPU on every request). The policy
    change published after the requests is the positive signal that the log is read up
    to there."""
    lines, port = info_worker
    _next(lines, "version_loaded")
    for i in range(3):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", method="POST",
                                     data=json.dumps({"vector": [0.0] * 24,
                                                      "jobId": f"quiet-{i}"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
    world.publish([RouteRow("1.0.0", 100, True)], source="rollback")
    seen = []
    while (line := lines.get(timeout=30)).get("event") != "policy_applied":
        seen.append(line)
    assert not [line for line in seen if "POST /v1/search" in json.dumps(line)
                or line.get("logger") == "aiohttp.access"], seen
