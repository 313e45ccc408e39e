"""Run keys stay unique across workers sharing a store, and across forks and restarts."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.store.repository import RunFilter
from controller.worker.runkeys import new_run_key
from tests.worker.conftest import MODEL, TENANT, World
from tests.worker.process import WorkerProcess

KEY = re.compile(r"[0-9a-f]{32}")


def test_keys_are_32_hex_digits_and_distinct_in_one_process() -> None:
    keys = [new_run_key() for _ in range(10_000)]
    assert all(KEY.fullmatch(k) for k in keys)
    assert len(set(keys)) == len(keys)


def test_a_forked_child_draws_keys_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one key, then leave without running pytest's exit
        os.write(write, new_run_key().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    ours = new_run_key()
    assert KEY.fullmatch(child) and child != ours


@pytest.fixture
def two_workers(world: World, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    try:
        for i in range(2):
            workers.append(WorkerProcess(f"{TENANT}/{MODEL}", str(world.store.engine.url), [],
                                         tmp_path / f"worker-{i}.log"))
        yield workers
    finally:
        for w in workers:
            w.stop()


def test_two_workers_on_one_store_record_every_run_under_its_own_key(
        world: World, two_workers: list[WorkerProcess]) -> None:
    vector = [float(x) for x in np.load(world.stable.manifest_path.parent / "vectors.npy")[0]]
    keys = []
    for i in range(40):
        status, body = two_workers[i % 2].call("POST", "/v1/search",
                                               {"vector": vector, "jobId": f"job-{i}"})
        assert status == 200, body
        keys.append(body["runKey"])
    assert len(set(keys)) == 40 and all(KEY.fullmatch(k) for k in keys)
    with world.store.read(TENANT) as tx:
        stored = {r["runKey"]: r["jobId"] for r in tx.runs(RunFilter(model=MODEL))}
    assert {k: stored.get(k) for k in keys} == {k: f"job-{i}" for i, k in enumerate(keys)}

