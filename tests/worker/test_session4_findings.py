"""Session-4 adversarial review: each test reproduces a defect through a public interface
(HTTP against a real worker app, the CLI). Real SQLite store, real faiss indexes built
from the DXF corpus."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.errors import UsageError
from controller.features.sandbox import FeatureSandbox, SandboxLimits
from controller.records import ModelRow, VersionRow
from controller.search.build import BuildResult, build_index
from controller.search.featurecache import UNCACHED_CODES
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.store.repository import RunFilter
from controller.worker.app import make_app
from controller.worker.auth import TokenFile
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import DXF_CORPUS
from tests.stores import Backend
from tests.worker.conftest import EDITOR, MODEL, TENANT, World, build_world, editor_guard

OTHER = "other-sim"


@pytest.fixture
def sandbox() -> Iterator[FeatureSandbox]:
    box = FeatureSandbox(1)
    yield box
    box.close()


def _vector(world: World) -> list[float]:
    return [float(x) for x in np.load(world.stable.manifest_path.parent / "vectors.npy")[0]]


async def _client(runtime: WorkerRuntime, sandbox: FeatureSandbox, aiohttp_client: Any) -> Any:
    app = make_app(runtime, sandbox=sandbox, refresh=False, guard=editor_guard())
    app.on_cleanup.clear()
    return await aiohttp_client(app, headers=EDITOR)


async def test_a_worker_reviews_only_runs_of_the_model_it_serves(
        world: World, sandbox: FeatureSandbox, aiohttp_client: Any) -> None:
    """The write is authorized as `create models/reviews` on the worker's own model, so a
    worker of model `other-sim` must not review a run of `part-sim` (a user with the edit
    role on one model only would review every model of the tenant through it)."""
    served = await _client(world.runtime, sandbox, aiohttp_client)
    run = await (await served.post("/v1/search", json={"vector": _vector(world),
                                                       "jobId": "x-1"})).json()
    with world.store.transaction(TENANT, "seed") as tx:
        tx.upsert_model(ModelRow(OTHER, OTHER, "acme", "Other", spec_hash="o"))
    other = WorkerRuntime(world.store, WorkerSettings(TENANT, OTHER, "unused",
                                                      worker_id="w-other"))
    client = await _client(other, sandbox, aiohttp_client)
    resp = await client.post(f"/v1/runs/{run['runKey']}/review",
                             json={"status": "APPROVED", "agree": True})
    body = await resp.json()
    assert (resp.status, body.get("code")) == (404, "not_found"), body
    # nor read it: a worker answers for its own model, as GET /v1/jobs/{job}/binding does
    resp = await client.get(f"/v1/runs/{run['runKey']}")
    assert resp.status == 404, await resp.text()
    assert (await served.get(f"/v1/runs/{run['runKey']}")).status == 200
    with world.store.read(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
    assert stored is not None and stored["reviewer"] is None, stored


def _big_drawing(path: Path, lines: int = 100_000) -> None:
    import ezdxf

    doc = ezdxf.new()  # type: ignore[attr-defined]
    msp = doc.modelspace()
    for i in range(lines):
        msp.add_line((i, 0), (i, 1 + i % 7))
    doc.saveas(path)


def test_running_out_of_memory_is_never_cached_as_an_unreadable_drawing(tmp_path: Path
                                                                         ) -> None:
    """A drawing that runs the parser out of memory under a tight limit is refused with
    `memory_limit` (a refusal of this run, never cached). It was `invalid_drawing` ("not a
    readable DXF drawing: MemoryError") whenever the MemoryError came from inside the DXF
    reader: cached, so every later build, whatever its limits, skipped the drawing. Tight
    builds at a few limits (where the parser runs out of memory depends on the machine);
    then a build with the default limits over the same cache must index the drawing."""
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    shutil.copy(DXF_CORPUS / "3dface.dxf", src / "small.dxf")
    _big_drawing(src / "big.dxf")
    codes = set()
    for mib in (280, 320, 360):
        built = build_index(src, tmp_path / f"tight-{mib}", workers=1, cache=cache,
                            limits=SandboxLimits(memory_bytes=mib * 2**20))
        codes |= {s["code"] for s in built.skipped if s["file"] == "big.dxf"}
    # a child that runs out of memory while it reports the MemoryError dies ("lost
    # sys.stderr"): parser_crash, also a refusal of this run that is never cached
    assert codes <= {"memory_limit", "time_limit", "parser_crash"}, codes
    assert codes <= UNCACHED_CODES
    again = build_index(src, tmp_path / "roomy", workers=1, cache=cache,
                        limits=SandboxLimits(cpu_seconds=30))
    assert [s for s in again.skipped if s["file"] == "big.dxf"] == [], again.skipped


async def test_binding_a_job_through_another_models_worker_leaves_its_binding_alone(
        world: World, sandbox: FeatureSandbox, aiohttp_client: Any) -> None:
    """A job bound to a version of `part-sim`: a worker of `other-sim` (whose writes are
    authorized on `other-sim` alone) must not take the binding over. It did: the store keeps
    one binding per job and tenant, so the bind moved it, which is the DELETE that same
    worker refuses with 404. Answered 409 now; the binding stays where it was."""
    served = await _client(world.runtime, sandbox, aiohttp_client)
    resp = await served.post("/v1/jobs/j-7/binding", json={"version": "1.1.0"})
    assert resp.status == 200, await resp.text()
    _other_model(world)
    other = WorkerRuntime(world.store, WorkerSettings(TENANT, OTHER, "unused",
                                                      worker_id="w-other"))
    other.refresh()
    client = await _client(other, sandbox, aiohttp_client)
    resp = await client.post("/v1/jobs/j-7/binding", json={"version": "2.0.0"})
    body = await resp.json()
    assert (resp.status, body.get("code")) == (409, "bound_elsewhere"), body
    with world.store.read(TENANT, "t") as tx:
        found = tx.job_binding("j-7")
    assert found is not None and (found["model"], found["version"]) == (MODEL, "1.1.0")


def _other_model(world: World) -> None:
    """`other-sim` with one STABLE version (the corpus index) and no policy: its default
    routing serves it."""
    with world.store.transaction(TENANT, "seed") as tx:
        tx.upsert_model(ModelRow(OTHER, OTHER, "acme", "Other", spec_hash="o"))
        tx.upsert_version(VersionRow("os-2-0-0", OTHER, "2.0.0", "STABLE",
                                     world.stable.manifest_path.as_uri(), "faiss-index",
                                     world.stable.manifest_sha256, spec_hash="2.0.0"))


LONG_JOB = "j" * 300  # the store keeps job keys of up to 256 characters


async def test_a_job_id_longer_than_the_store_keeps_is_a_bad_request(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult,
        sandbox: FeatureSandbox, aiohttp_client: Any) -> None:
    """A jobId over 256 characters: 400 bad_request naming the field, nothing recorded, on
    both engines. On PostgreSQL the search ran and the run's insert failed: a 500, and a
    batch with one such query lost the runs of all its queries."""
    world = build_world(backend.store, tmp_path, corpus_index, corpus_hnsw)
    client = await _client(world.runtime, sandbox, aiohttp_client)
    vector = _vector(world)
    for path, body in (("/v1/search", {"vector": vector, "jobId": LONG_JOB}),
                       ("/v1/search/batch", {"queries": [{"vector": vector, "jobId": "ok-1"},
                                                         {"vector": vector,
                                                          "jobId": LONG_JOB}]}),
                       (f"/v1/jobs/{LONG_JOB}/binding", {"version": "1.0.0"})):
        resp = await client.post(path, json=body)
        answer = await resp.json()
        if path.endswith("batch"):
            assert resp.status == 200, answer
            ok, bad = answer["results"]
            assert "runKey" in ok and bad["error"]["code"] == "bad_request", answer
        else:
            assert (resp.status, answer.get("code")) == (400, "bad_request"), (path, answer)
    with world.store.read(TENANT, "t") as tx:
        assert tx.job_binding(LONG_JOB) is None
        assert [r["jobId"] for r in tx.runs(RunFilter())] == ["ok-1"]


@pytest.mark.parametrize("human", ["no-match-after-checking-the-hole-pattern", {"a": 1}])
async def test_a_human_decision_the_store_cannot_keep_is_a_bad_request(
        backend: Backend, tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult,
        sandbox: FeatureSandbox, aiohttp_client: Any, human: object) -> None:
    """humanDecision is a short label (the store keeps 32 characters): a longer one, or
    one that is not a string, is 400 bad_request and the run stays unreviewed. It was a
    500 StoreError on PostgreSQL and stored as given (a dict's repr) on SQLite."""
    world = build_world(backend.store, tmp_path, corpus_index, corpus_hnsw)
    client = await _client(world.runtime, sandbox, aiohttp_client)
    run = await (await client.post("/v1/search", json={"vector": _vector(world),
                                                       "jobId": "h-1"})).json()
    resp = await client.post(f"/v1/runs/{run['runKey']}/review",
                             json={"status": "REJECTED", "agree": False,
                                   "humanDecision": human})
    answer = await resp.json()
    assert (resp.status, answer.get("code")) == (400, "bad_request"), answer
    with world.store.read(TENANT, "t") as tx:
        stored = tx.run(run["runKey"])
    assert stored is not None and stored["review_status"] == "PENDING_REVIEW", stored


def test_a_token_file_user_longer_than_the_store_keeps_is_refused_at_start() -> None:
    """The reviewer recorded is the token's user (the store keeps 256 characters): a longer
    one is refused when the file is read, not a 500 at the first review on PostgreSQL."""
    with pytest.raises(UsageError, match="line 1"):
        TokenFile.parse(f"t-1 {'u' * 300} edit\n")


@pytest.mark.parametrize(("body", "field"), [
    ("[" * 100_000 + "]" * 100_000, "body"),  # nested past the JSON decoder's recursion
    ('{"vector": [1.0], "topK": Infinity}', "topK"),  # Python's json reads Infinity
])
async def test_hostile_json_is_a_bad_request_not_an_internal_error(
        world: World, sandbox: FeatureSandbox, aiohttp_client: Any, body: str, field: str
        ) -> None:
    """Both were 500 internal_error (RecursionError, OverflowError from int(inf))."""
    client = await _client(world.runtime, sandbox, aiohttp_client)
    resp = await client.post("/v1/search", data=body,
                             headers={"Content-Type": "application/json"})
    answer = await resp.json()
    assert (resp.status, answer.get("code")) == (400, "bad_request"), (field, answer)


@pytest.mark.parametrize("damage", [lambda v: v[:3], lambda v: [float("nan")] * len(v)])
def test_a_damaged_cache_vector_is_a_miss(tmp_path: Path, damage: Any) -> None:
    """A cache entry whose vector has the wrong length (or is not finite) is a miss, as the
    cache promises for damaged entries: the rebuild parses the drawing again and writes the
    artifact a build without the cache writes. It was exit 3, internal error (np.vstack)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("3dface.dxf", "VP4.dxf"):
        shutil.copy(DXF_CORPUS / name, src / name)
    cache = tmp_path / "cache"
    assert main(["index", "build", str(src), "--out", str(tmp_path / "a"), "--cache",
                 str(cache), "--quiet"]) == 0
    entry = sorted(cache.rglob("*.json"))[0]
    record = json.loads(entry.read_text())
    record["vector"] = damage(record["vector"])
    entry.write_text(json.dumps(record))
    assert main(["index", "build", str(src), "--out", str(tmp_path / "b"), "--cache",
                 str(cache), "--quiet"]) == 0
    assert main(["index", "build", str(src), "--out", str(tmp_path / "c"), "--no-cache",
                 "--quiet"]) == 0
    assert (tmp_path / "b" / "vectors.npy").read_bytes() == \
        (tmp_path / "c" / "vectors.npy").read_bytes()


@pytest.mark.parametrize(("option", "value"), [
    ("--port", "99999"), ("--port", "-5"),  # were exit 3: OverflowError from bind()
    ("--cpu-seconds", "0"), ("--cpu-seconds", "-1"), ("--cpu-seconds", "nan"),
    ("--loader-cpu-seconds", "0"), ("--backoff", "-1"), ("--backoff-max", "inf"),
])
def test_worker_limits_out_of_range_are_usage_errors(
        option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything starts, exit 2. `--cpu-seconds 0` started a worker whose
    parser had no CPU limit at all (setitimer 0 disarms the timer); -1 one that refused
    every drawing."""
    with pytest.raises(SystemExit) as stopped:  # argparse's usage error
        main(["worker", "--model", f"{TENANT}/{MODEL}", option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "internal error" not in err, err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_index_build_cpu_seconds_must_be_finite(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nan` skipped every drawing ("more than nan s of CPU", exit 1); `inf` was exit 3
    (OverflowError from the timer). Both are usage errors now, before --out is made."""
    assert main(["index", "build", str(DXF_CORPUS), "--out", str(tmp_path / "out"),
                 "--no-cache", "--cpu-seconds", value]) == 2
    assert "--cpu-seconds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


async def test_a_multipart_drawing_over_the_upload_limit_is_refused(
        tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult,
        sandbox: FeatureSandbox, aiohttp_client: Any) -> None:
    """--max-upload-bytes bounds every request body: a multipart upload whose drawing part
    is over it is 413 too_large, never read whole into memory. A probe that held (aiohttp
    bounds a multipart part by client_max_size too): kept as a regression test."""
    import aiohttp

    store = Store(make_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    upgrade(store.engine)
    try:
        world = build_world(store, tmp_path, corpus_index, corpus_hnsw,
                            max_upload_bytes=1024 * 1024)
        client = await _client(world.runtime, sandbox, aiohttp_client)
        form = aiohttp.FormData()
        form.add_field("jobId", "big-1")
        form.add_field("drawing", b"0\nSECTION\n" + b" " * (8 * 1024 * 1024),
                       filename="big.dxf", content_type="application/dxf")
        resp = await client.post("/v1/search", data=form)
        answer = await resp.json()
        assert (resp.status, answer.get("code")) == (413, "too_large"), answer
    finally:
        store.dispose()


def test_an_unrelated_policy_edit_does_not_revive_an_aborted_canary() -> None:
    """The analysis state (and its abort) holds for the spec it judged; a platform engineer
    who only changes how often workers refresh gets the failed canary back on 10 % of the
    traffic until analysis fails it again (failureLimit more measurements)."""
    from controller.evaluation import analysis_key, judges

    judged = {"modelRef": MODEL, "refreshSeconds": 5,
              "weights": [{"version": "1.0.0", "weight": 90},
                          {"version": "1.1.0", "weight": 10}],
              "analysis": {"intervalSeconds": 60, "failureLimit": 2}}
    for edit in ({"refreshSeconds": 10}, {"thresholds": {"1.1.0": {"similarity": 0.9}}},
                 {"validUntil": "2027-01-01T00:00:00Z"}):
        assert judges(analysis_key(judged), {**judged, **edit}, "whole-spec-hash"), edit
    # the experiment itself changed: analysis starts afresh
    for edit in ({"weights": [{"version": "1.0.0", "weight": 80},
                              {"version": "1.1.0", "weight": 20}]},
                 {"analysis": {"intervalSeconds": 60, "failureLimit": 3}}):
        assert not judges(analysis_key(judged), {**judged, **edit}, "whole-spec-hash"), edit
    # state an older cadml keyed by the spec without modelRef still holds
    legacy = hashlib.sha256(json.dumps({k: v for k, v in judged.items() if k != "modelRef"},
                                       sort_keys=True).encode()).hexdigest()
    assert judges(legacy, judged, "whole-spec-hash")


@pytest.mark.parametrize("job", ["a\n2026-11-30T20:00:00+00:00  acme-cad/part-sim 1.0.0",
                                 "x\x1b]0;owned\x07\x1b[2J"])
async def test_a_job_id_with_control_characters_is_a_bad_request(
        world: World, sandbox: FeatureSandbox, aiohttp_client: Any, job: str) -> None:
    """Searches need no token, and `cadml runs` prints each run's job id as is: a newline
    forged a line of its output, an escape sequence ran in the terminal of whoever read
    it. 400 now, nothing recorded."""
    client = await _client(world.runtime, sandbox, aiohttp_client)
    resp = await client.post("/v1/search", json={"vector": _vector(world), "jobId": job})
    answer = await resp.json()
    assert (resp.status, answer.get("code")) == (400, "bad_request"), answer
    with world.store.read(TENANT, "t") as tx:
        assert tx.runs(RunFilter()) == []
