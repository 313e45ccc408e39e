"""http(s) artifacts: downloaded from a real HTTP server, verified while streaming, cached."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from controller.search.artifacts import ArtifactError, load_artifact
from controller.search.build import BuildResult
from controller.search.fetch import Fetcher, sha256_file
from tests.worker.conftest import MODEL, TENANT, World, copy_artifact


class Server:
    """A static file server on loopback that counts the requests it answered."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                outer.requests.append(self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
            Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path, corpus_index: BuildResult) -> Iterator[tuple[Server, BuildResult]]:
    art = copy_artifact(corpus_index, tmp_path / "www" / "part-sim" / "1.0.0")
    server = Server(tmp_path / "www")
    yield server, art
    server.stop()


def _uri(server: Server) -> str:
    return f"{server.base}/part-sim/1.0.0/manifest.json"


def test_a_downloaded_index_serves_what_the_file_serves(
        served: tuple[Server, BuildResult], tmp_path: Path) -> None:
    server, art = served
    fetcher = Fetcher(tmp_path / "cache")
    remote = load_artifact(_uri(server), art.manifest_sha256, "faiss-index", fetcher=fetcher)
    local = load_artifact(art.manifest_path.as_uri(), art.manifest_sha256, "faiss-index")
    assert remote.degraded is None and remote.ids == local.ids
    queries = local.vectors[:20]
    assert np.array_equal(remote.index.search(queries, 5)[1], local.index.search(queries, 5)[1])
    cached = sorted(p.name for p in (tmp_path / "cache" / art.manifest_sha256).iterdir())
    assert cached == ["index.faiss", "manifest.json", "vectors.npy"]  # nothing half-written

    server.stop()  # a restarted worker loads from its verified cache, no network needed
    again = load_artifact(_uri(server), art.manifest_sha256, "faiss-index", fetcher=fetcher)
    assert again.ids == local.ids


def test_a_wrong_download_is_refused_and_leaves_nothing(
        served: tuple[Server, BuildResult], tmp_path: Path) -> None:
    server, art = served
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError) as exc:
        load_artifact(_uri(server), "0" * 64, "faiss-index", fetcher=Fetcher(cache))
    assert exc.value.code == "checksum_mismatch"
    assert not any(p.is_file() for p in cache.rglob("*"))
    with pytest.raises(ArtifactError) as exc:
        load_artifact(f"{server.base}/nope/manifest.json", "0" * 64, "faiss-index",
                      fetcher=Fetcher(cache))
    assert exc.value.code == "artifact_missing"
    with pytest.raises(ArtifactError) as exc:
        load_artifact(_uri(server), None, "faiss-index", fetcher=Fetcher(cache))
    assert exc.value.code == "checksum_required"
    with pytest.raises(ArtifactError) as exc:
        load_artifact(_uri(server), art.manifest_sha256, "faiss-index",
                      fetcher=Fetcher(cache, max_bytes=100))
    assert exc.value.code == "artifact_too_large"


def test_a_missing_remote_index_degrades_to_exact_search(
        served: tuple[Server, BuildResult], tmp_path: Path) -> None:
    server, art = served
    (art.manifest_path.parent / "index.faiss").unlink()
    loaded = load_artifact(_uri(server), art.manifest_sha256, "faiss-index",
                           fetcher=Fetcher(tmp_path / "cache"))
    assert loaded.degraded and loaded.index.kind == "exact"


def test_a_manifest_cannot_reach_outside_its_folder(
        served: tuple[Server, BuildResult], tmp_path: Path) -> None:
    server, art = served
    manifest = json.loads(art.manifest_path.read_text())
    manifest["vectors"]["file"] = "../../secrets.npy"
    art.manifest_path.write_text(json.dumps(manifest))
    sha = sha256_file(art.manifest_path)
    for uri in (_uri(server), art.manifest_path.as_uri()):
        with pytest.raises(ArtifactError) as exc:
            load_artifact(uri, sha, "faiss-index", fetcher=Fetcher(tmp_path / "cache"))
        assert exc.value.code == "artifact_corrupt" and "plain file" in str(exc.value)


def test_the_worker_serves_a_version_published_by_url(
        served: tuple[Server, BuildResult], world: World, tmp_path: Path) -> None:
    server, art = served
    world.runtime.fetcher = Fetcher(tmp_path / "worker-cache")
    with world.store.transaction(TENANT, "test") as tx:
        row = next(v for v in tx.versions(MODEL) if v.version == "1.0.0")
        tx.upsert_version(replace(row, artifact_uri=_uri(server),
                                  artifact_sha256=art.manifest_sha256))
    world.runtime.refresh()
    ok, detail = world.runtime.ready()
    assert ok and detail["versions"]["1.0.0"] == "Ready" and not detail["loadErrors"]
    assert any(r.startswith("/part-sim/1.0.0/") for r in server.requests)
    vectors = np.load(art.manifest_path.parent / "vectors.npy")
    (outcome,) = world.runtime.search(vectors[:1], ["job-by-url"], k=3)
    assert outcome.version in ("1.0.0", "1.1.0") and outcome.hits


@pytest.mark.parametrize("name", ["file:%2F{path}", "file:{path}", "%2E%2E%2Fsecret.npy",
                                  "http:%2F%2Fevil.example%2Fv.npy"])
def test_a_companion_name_with_a_scheme_or_encoded_separators_is_refused(
        served: tuple[Server, BuildResult], tmp_path: Path, name: str) -> None:
    """An http manifest must not make the worker read a local file (or another server)."""
    server, art = served
    secret = tmp_path / "secret.npy"  # a readable local file that would pass as vectors
    secret.write_bytes((art.manifest_path.parent / "vectors.npy").read_bytes())
    manifest = json.loads(art.manifest_path.read_text())
    manifest["vectors"] = {"file": name.format(path=str(secret).replace("/", "%2F")),
                           "sha256": sha256_file(secret)}
    art.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as exc:
        load_artifact(_uri(server), sha256_file(art.manifest_path), "faiss-index",
                      fetcher=Fetcher(tmp_path / "cache"))
    assert exc.value.code == "artifact_corrupt" and "plain file" in str(exc.value)


def test_a_wrong_sha256_never_shows_the_files_real_digest(world: World, tmp_path: Path
                                                          ) -> None:
    """/readyz must not be a hash oracle for files the worker can read."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker can read this; a ModelVersion author cannot")
    real = sha256_file(secret)
    with world.store.transaction(TENANT, "test") as tx:
        row = next(v for v in tx.versions(MODEL) if v.version == "1.1.0")
        tx.upsert_version(replace(row, artifact_uri=secret.as_uri(), artifact_sha256="0" * 64,
                                  artifact_format="pickle"))
    world.runtime.refresh()
    _ok, detail = world.runtime.ready()
    assert detail["loadErrors"]["1.1.0"].startswith("checksum_mismatch")
    assert real not in json.dumps(detail)
    with world.store.read(TENANT, "t") as tx:
        assert real not in json.dumps([e.details for e in tx.audit_events()])
