"""Hostile uploads against a real worker over HTTP: a drawing slow to parse, a parser
process that is SIGKILLed, more uploads than the worker takes, a gzip bomb; and the
parser sandbox's environment as its children see it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controller.features.sandbox import FeatureSandbox, SandboxLimits
from controller.worker.app import UPLOADS, make_app
from tests.conftest import DXF_CORPUS
from tests.worker.conftest import World
from tests.worker.hostile import Killer, parser_children, slow_dxf

Client = TestClient  # type: ignore[type-arg]
DXF = {"Content-Type": "application/dxf"}
MAX = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def slow() -> bytes:
    return slow_dxf()


@contextlib.contextmanager
def _sandbox(cpu: float) -> Iterator[FeatureSandbox]:
    box = FeatureSandbox(1, SandboxLimits(cpu_seconds=cpu, max_bytes=MAX))
    box.extract((DXF_CORPUS / "xclip.dxf").read_bytes())  # the child is up and warm
    try:
        yield box
    finally:
        box.close()


async def _client(world: World, box: FeatureSandbox, aiohttp_client: Any, **settings: Any
                  ) -> Client:
    world.runtime.settings = replace(world.runtime.settings, **settings)
    app = make_app(world.runtime, sandbox=box, refresh=False)
    app.on_cleanup.clear()
    return await aiohttp_client(app)


async def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Wait for a positive signal (polling), failing with `what` if it never comes."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def test_a_drawing_slow_to_parse_is_answered_time_limit_within_the_limit(
        world: World, slow: bytes, aiohttp_client: Any) -> None:
    with _sandbox(cpu=1.0) as box:
        client = await _client(world, box, aiohttp_client)
        before = set(box.pids())
        start = time.monotonic()
        resp = await client.post("/v1/search", data=slow, headers=DXF)
        elapsed = time.monotonic() - start
        body = await resp.json()
        assert (resp.status, body["code"]) == (422, "time_limit"), body
        assert body["context"]["cpuSeconds"] == 1.0 and body["context"]["runKey"]  # a failed run
        assert elapsed < 1.0 + 2.0, f"answered after {elapsed:.1f} s"
        ok = await client.post("/v1/search", data=(DXF_CORPUS / "xclip.dxf").read_bytes(),
                               headers=DXF)
        assert ok.status == 200
        assert before and before.isdisjoint(box.pids())  # a fresh parser took over


async def test_a_killed_parser_fails_only_its_own_upload(
        world: World, slow: bytes, aiohttp_client: Any) -> None:
    with _sandbox(cpu=120.0) as box:
        client = await _client(world, box, aiohttp_client)
        app = client.server.app
        assert app is not None
        small = (DXF_CORPUS / "xclip.dxf").read_bytes()
        base = max(parser_children(os.getpid()).values())
        doomed = asyncio.create_task(client.post("/v1/search", data=slow, headers=DXF))
        await _until(lambda: max(parser_children(os.getpid()).values(), default=0)
                     > base + 1.0, "the slow drawing is being parsed")
        others = [asyncio.create_task(client.post("/v1/search", data=small, headers=DXF))
                  for _ in range(3)]
        await _until(lambda: len(app[UPLOADS]) == 4, "all four uploads are in flight")
        killer = Killer(os.getpid(), cpu=base + 2.0)
        killer.start()
        try:
            crashed = await doomed
            answers = [await o for o in others]
        finally:
            killer.stop()
        body = await crashed.json()
        assert (crashed.status, body["code"]) == (422, "parser_crash")
        assert [a.status for a in answers] == [200, 200, 200]
        assert killer.kills >= 2  # in the pool, then again when tried alone


async def test_uploads_beyond_the_limit_get_429_with_retry_after(
        world: World, aiohttp_client: Any) -> None:
    with _sandbox(cpu=10.0) as box:
        client = await _client(world, box, aiohttp_client, max_concurrent_uploads=1)
        app = client.server.app
        assert app is not None
        release = asyncio.Event()
        data = (DXF_CORPUS / "xclip.dxf").read_bytes()

        async def trickle() -> AsyncIterator[bytes]:
            yield data[:100]
            await release.wait()
            yield data[100:]

        first = asyncio.create_task(client.post("/v1/search", data=trickle(), headers=DXF))
        await _until(lambda: len(app[UPLOADS]) == 1, "the first upload is in flight")
        busy = await client.post("/v1/search", data=data, headers=DXF)
        body = await busy.json()
        assert (busy.status, body["code"]) == (429, "busy")
        assert busy.headers["Retry-After"] == "1"
        release.set()
        assert (await first).status == 200
        assert (await client.post("/v1/search", data=data, headers=DXF)).status == 200


async def test_a_gzip_body_is_refused_and_the_connection_closed(
        world: World, aiohttp_client: Any) -> None:
    with _sandbox(cpu=10.0) as box:
        client = await _client(world, box, aiohttp_client)
        bomb = gzip.compress(b"0" * 200 * 1024 * 1024)  # 200 MiB of JSON-ish zeros, ~200 KB
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"POST /v1/search HTTP/1.1\r\nHost: w\r\nContent-Type: application/json"
                     b"\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb))
        writer.write(bomb)
        # the answer, then the connection ends (EOF, or a reset as the rest of the body
        # was never read): nothing goes on reading and inflating it
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(reader.read(65536), timeout=20):
                raw += chunk
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 415")
        assert json.loads(payload)["code"] == "unsupported_content_encoding"


ENV_PROBE = """
import json, os, sys
from pathlib import Path
from controller.features.sandbox import FeatureSandbox
leak = open(sys.argv[2], "rb")
os.set_inheritable(leak.fileno(), True)
box = FeatureSandbox(1)
box.extract(Path(sys.argv[1]).read_bytes())
pids = box.pids() if hasattr(box, "pids") else list(box._pool._processes)
out = {}
for pid in pids:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\\0")
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    out[pid] = {"env": sorted(e.decode().split("=", 1)[0] for e in env if e), "fds": fds}
box.close()
print(json.dumps(out))
"""


def test_parser_children_get_no_secrets_and_no_inherited_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    env = {**os.environ, "CADML_STORE_URL": "postgresql://cadml:hunter2@db/cadml",
           "CADML_ADMIN_TOKEN": "s3cret", "AWS_SECRET_ACCESS_KEY": "k"}
    probe = subprocess.run([sys.executable, "-c", ENV_PROBE, str(DXF_CORPUS / "xclip.dxf"),
                            str(secret)], capture_output=True, text=True, env=env,
                           check=True, timeout=120)
    children = json.loads(probe.stdout)
    assert children
    for child in children.values():
        assert child["env"] == ["LANG", "PATH"]
        # pipes and sockets to the parent, /dev/null: no file of the parent's
        assert {f for f in child["fds"] if f.startswith("/")} <= {"/dev/null"}, child["fds"]
