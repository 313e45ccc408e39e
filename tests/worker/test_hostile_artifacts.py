"""Hostile artifacts through the worker: a canary version whose artifact is a crafted pickle.

Each payload would create a marker file if any code ran. The worker must refuse it
with a structured code before loading anything, keep serving STABLE, and (in audit
mode) write the opcode census of the refusal to the audit trail.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from controller.records import VersionRow
from controller.search.build import BuildResult
from controller.search.fetch import sha256_file
from controller.search.pickle_scan import UnsafeArtifact, safe_load
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.worker.app import make_app
from tests.worker.conftest import MODEL, TENANT, World, build_world

Client = TestClient  # type: ignore[type-arg]


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _arg(a: str | bytes) -> bytes:
    return _str(a) if isinstance(a, str) else b"B" + struct.pack("<I", len(a)) + a  # BINBYTES


def _call(module: str, name: str, *args: str | bytes, stack: bool = False) -> bytes:
    """The opcodes of module.name(*args): GLOBAL (protocol 2) or STACK_GLOBAL (4)."""
    glob = _str(module) + _str(name) + b"\x93" if stack else f"c{module}\n{name}\n".encode()
    return glob + b"(" + b"".join(_arg(a) for a in args) + b"tR"


def _whole(body: bytes, proto: int = 2) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


def payloads(marker: Path) -> dict[str, bytes]:
    touch = f"open({str(marker)!r}, 'w').close()"
    inner = _whole(_call("os", "system", f"touch {marker}"))
    valid = pickle.dumps({"vectors": np.eye(3, 24, dtype=np.float32), "ids": ["a", "b", "c"]},
                         protocol=2)
    assert valid.endswith(b"u.")  # SETITEMS, STOP: the dict is on top of the stack
    return {
        "dotted path pdb.os.system via STACK_GLOBAL":
            _whole(_call("pdb", "os.system", f"touch {marker}", stack=True), proto=4),
        "cPickle.loads (Python 2 name mapped to pickle.loads)":
            _whole(_call("cPickle", "loads", inner)),
        "StringIO.open (Python 2 name mapped to io.open)":
            _whole(_call("StringIO", "open", str(marker), "w")),
        "timeit.timeit runs its setup string": _whole(_call("timeit", "timeit", "pass", touch)),
        "cProfile.run": _whole(_call("cProfile", "run", touch)),
        "valid artifact dict that also calls cPickle.loads":
            valid[:-1] + _str("hook") + _call("cPickle", "loads", inner) + b"s.",
    }


PAYLOADS = list(payloads(Path("/nonexistent")))


@pytest.fixture
def pickle_world(tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult
                 ) -> Any:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    upgrade(store.engine)
    yield build_world(store, tmp_path, corpus_index, corpus_hnsw, pickle_mode="audit")
    store.dispose()


def _canary_pickle(world: World, data: bytes) -> None:
    path = world.root / "canary.pkl"
    path.write_bytes(data)
    with world.store.transaction(TENANT, "seed") as tx:
        tx.upsert_version(VersionRow("ps-1-1-0", MODEL, "1.1.0", "CANARY", path.as_uri(),
                                     "pickle", sha256_file(path), spec_hash="pkl"))


@pytest.mark.parametrize("name", PAYLOADS)
async def test_a_hostile_canary_pickle_runs_nothing_and_stable_keeps_serving(
        name: str, pickle_world: World, tmp_path: Path, aiohttp_client: Any) -> None:
    marker = tmp_path / "pwned"
    _canary_pickle(pickle_world, payloads(marker)[name])
    pickle_world.runtime.refresh()
    assert not marker.exists()
    assert pickle_world.runtime.load_errors["1.1.0"].startswith("denied_global: ")
    app = make_app(pickle_world.runtime, refresh=False)
    app.on_cleanup.clear()
    client: Client = await aiohttp_client(app)
    ready = await (await client.get("/readyz")).json()
    assert ready["loadErrors"]["1.1.0"].startswith("denied_global")
    vector = [float(x) for x in np.load(pickle_world.stable.manifest_path.parent
                                        / "vectors.npy")[0]]
    served = 0
    for i in range(20):  # STABLE's share is served; the canary's share is told why not
        resp = await client.post("/v1/search", json={"vector": vector, "jobId": f"j{i}"})
        body = await resp.json()
        if resp.status == 200:
            assert body["version"] == "1.0.0"
            served += 1
        else:
            assert (resp.status, body["code"]) == (503, "version_unavailable")
            assert body["context"]["loadError"].startswith("denied_global")
    assert served >= 10
    with pickle_world.store.read(TENANT, "t") as tx:
        scans = [e.details for e in tx.audit_events() if e.action == "artifact-scan"]
    assert len(scans) == 1 and scans[0]["refused"] == "denied_global"
    opcodes = scans[0]["opcodes"]
    assert opcodes.get("GLOBAL", 0) + opcodes.get("STACK_GLOBAL", 0) >= 1
    assert scans[0]["globals"][-1] in ("pdb.os.system", "cPickle.loads", "StringIO.open",
                                       "timeit.timeit", "cProfile.run")
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_the_restricted_unpickler_alone_refuses_each_payload(name: str, tmp_path: Path
                                                             ) -> None:
    """The loader enforces the policy even where the scanner would have missed it."""
    from controller.search import pickle_scan

    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeArtifact) as exc:
        pickle_scan._Restricted(payloads(marker)[name]).load()
    assert exc.value.code == "denied_global" and not marker.exists()


def test_a_clean_pickle_is_audited_as_loaded(pickle_world: World) -> None:
    data = pickle.dumps({"vectors": np.eye(3, 24, dtype=np.float32), "ids": ["a", "b", "c"]},
                        protocol=4)
    _canary_pickle(pickle_world, data)
    pickle_world.runtime.refresh()
    assert "1.1.0" in pickle_world.runtime.versions
    with pickle_world.store.read(TENANT, "t") as tx:
        scans = [e.details for e in tx.audit_events() if e.action == "artifact-scan"]
    assert scans[-1]["refused"] is None and "numpy.ndarray" in scans[-1]["globals"]


def test_blacklist_mode_is_gone_with_a_clear_error() -> None:
    with pytest.raises(UnsafeArtifact) as exc:
        safe_load(pickle.dumps({}), "blacklist")
    assert exc.value.code == "scan_mode" and "whitelist" in str(exc.value)
    cli = subprocess.run([sys.executable, "-m", "controller", "worker", "--model", "a/b",
                          "--pickle-mode", "blacklist"], capture_output=True, text=True,
                         check=False, timeout=60)
    assert cli.returncode == 2
    assert "removed" in cli.stderr and "'whitelist'" in cli.stderr


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on


def _peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def _npz_bomb(path: Path, rows: int = 16_000_000) -> None:
    """An npz whose vectors inflate to 1.5 GiB of zeros from about 1.5 MB on disk."""
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (rows, 24)})
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("vectors.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(rows * 24 * 4 // len(zeros)):
                f.write(zeros)
        buf = io.BytesIO()
        np.save(buf, np.array(["a", "b"]))
        z.writestr("ids.npy", buf.getvalue())


MiB = 1024 * 1024
BOMBS = {
    "memo bomb (LONG_BINPUT 2**28)": ("pickle", "artifact_memory_limit"),
    "ids: range(10**10)": ("pickle", "artifact_corrupt"),
    "npz zip bomb (1.5 GiB of zeros)": ("npz", "artifact_too_large"),
}


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    _npz_bomb(path)
    return path


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_resource_bomb_artifact_is_refused_without_the_worker_growing(
        name: str, tmp_path: Path, npz_bomb: Path, corpus_index: BuildResult,
        corpus_hnsw: BuildResult) -> None:
    """Deserialised in a child under RLIMIT_AS/RLIMIT_CPU: the worker's own peak RSS
    stays put, the refusal has a code, STABLE keeps serving."""
    fmt, code = BOMBS[name]
    store = Store(make_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    upgrade(store.engine)
    world = build_world(store, tmp_path, corpus_index, corpus_hnsw,
                        loader_memory_bytes=512 * MiB, loader_cpu_seconds=20.0)
    try:
        path = tmp_path / f"bomb.{fmt}"
        if name.startswith("memo"):
            path.write_bytes(b"\x80\x04N" + b"r" + struct.pack("<I", 2**28) + b".")
        elif name.startswith("ids"):
            path.write_bytes(pickle.dumps({"vectors": np.zeros((2, 24), np.float32),
                                           "ids": range(10**10)}, protocol=4))
        else:
            path.write_bytes(npz_bomb.read_bytes())
        with world.store.transaction(TENANT, "seed") as tx:
            tx.upsert_version(VersionRow("ps-1-1-0", MODEL, "1.1.0", "CANARY", path.as_uri(),
                                         fmt, sha256_file(path), spec_hash="bomb"))
        _peak_rss_reset()
        before = _peak_rss()
        world.runtime.refresh()
        grown = _peak_rss() - before
        assert world.runtime.load_errors["1.1.0"].startswith(f"{code}: ")
        assert grown < 64 * MiB, f"the worker grew by {grown // MiB} MiB"
        assert "1.0.0" in world.runtime.versions
        vectors = np.load(world.stable.manifest_path.parent / "vectors.npy")
        (outcome,) = world.runtime.search(vectors[:1], ["job-0"], k=3)
        assert outcome.hits
    finally:
        store.dispose()


def test_a_hash_valid_faiss_index_bomb_degrades_the_version_not_the_worker(
        world: World) -> None:
    """A crafted index (its vector claims 4 GiB) is read first by the limited child: the
    version is served Degraded by exact search, the worker's peak RSS stays put."""
    import json

    art = world.stable.manifest_path.parent
    index = bytearray((art / "index.faiss").read_bytes())
    assert index[:4] == b"IxF2"  # flat: fourcc, d, ntotal, 2 dummies, trained, metric, codes
    index[37:45] = struct.pack("<Q", 2**30)
    (art / "index.faiss").write_bytes(bytes(index))
    manifest = json.loads(world.stable.manifest_path.read_text())
    manifest["index"]["sha256"] = sha256_file(art / "index.faiss")
    world.stable.manifest_path.write_text(json.dumps(manifest))
    with world.store.transaction(TENANT, "seed") as tx:
        row = next(v for v in tx.versions(MODEL) if v.version == "1.0.0")
        tx.upsert_version(replace(row, artifact_sha256=sha256_file(world.stable.manifest_path)))
    world.runtime.settings = replace(world.runtime.settings, loader_memory_bytes=1024 * MiB)
    _peak_rss_reset()
    before = _peak_rss()
    world.runtime.refresh()
    grown = _peak_rss() - before
    lv = world.runtime.versions["1.0.0"]
    assert lv.degraded and "artifact_memory_limit" not in world.runtime.load_errors
    assert "more memory" in lv.degraded and lv.artifact.index.kind == "exact"
    assert grown < 64 * MiB, f"the worker grew by {grown // MiB} MiB"
    vectors = np.load(art / "vectors.npy")
    (outcome,) = world.runtime.search(vectors[:1], ["job-0"], k=3)
    assert outcome.version == "1.0.0" and outcome.degraded and outcome.hits[0].distance < 1e-3
