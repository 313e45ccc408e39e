"""Worker fixtures: real index artifacts built from the DXF corpus, a real store, a runtime."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.records import ModelRow, PolicyRow, RouteRow, VersionRow
from controller.search.build import BuildResult, build_index
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.worker.auth import TokenFile, WriteGuard
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import DXF_CORPUS
from tests.worker.jsonchecks import codec_backend  # noqa: F401 (a fixture)

TENANT, MODEL = "acme-cad", "part-sim"
# a user allowed to review and bind (tokens as `cadml worker --auth-token-file` reads them)
EDITOR = {"Authorization": "Bearer t-ann"}


def editor_guard() -> WriteGuard:
    return WriteGuard(TokenFile.parse("t-ann ann@acme edit"))


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("index") / "flat"
    return build_index(DXF_CORPUS, out, kind="flat", workers=2)


@pytest.fixture(scope="session")
def corpus_hnsw(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("index") / "hnsw"
    return build_index(DXF_CORPUS, out, kind="hnsw", workers=2)


@dataclass
class World:
    store: Store
    runtime: WorkerRuntime
    stable: BuildResult
    canary: BuildResult
    root: Path

    def publish(self, routes: list[RouteRow], source: str = "policy",
                thresholds: dict[str, object] | None = None, refresh_seconds: int = 5) -> int:
        with self.store.transaction(TENANT, "test") as tx:
            return tx.publish_snapshot(MODEL, routes, thresholds or {
                "1.0.0": {"similarity": {"value": 0.5, "source": "model"}},
                "1.1.0": {"similarity": {"value": 0.5, "source": "policy"}}}, source,
                refresh_seconds=refresh_seconds)


def copy_artifact(src: BuildResult, dest: Path) -> BuildResult:
    shutil.copytree(src.manifest_path.parent, dest)
    return BuildResult(dest / "manifest.json", src.manifest_sha256, src.indexed, src.skipped)


def build_world(store: Store, root: Path, index: BuildResult, hnsw: BuildResult,
                refresh_seconds: int = 5, **settings: object) -> World:
    """A model with a STABLE (flat) and a CANARY (HNSW) version, a 90/10 policy, a worker."""
    stable = copy_artifact(index, root / "stable")
    canary = copy_artifact(hnsw, root / "canary")
    with store.transaction(TENANT, "seed") as tx:
        tx.upsert_model(ModelRow(MODEL, MODEL, "acme", "Part sim", spec_hash="m"))
        for name, semver, stage, art in (("ps-1-0-0", "1.0.0", "STABLE", stable),
                                         ("ps-1-1-0", "1.1.0", "CANARY", canary)):
            tx.upsert_version(VersionRow(name, MODEL, semver, stage,
                                         art.manifest_path.as_uri(), "faiss-index",
                                         art.manifest_sha256, spec_hash=semver))
        tx.upsert_policy(PolicyRow(MODEL, MODEL, {}, 5, 1, "p"))
    runtime = WorkerRuntime(store, WorkerSettings(TENANT, MODEL, "sqlite://",
                                                  worker_id="w-test", admin_token="s3cret",
                                                  **settings))  # type: ignore[arg-type]
    w = World(store, runtime, stable, canary, root)
    w.publish([RouteRow("1.0.0", 90, True), RouteRow("1.1.0", 10, False)],
              refresh_seconds=refresh_seconds)
    runtime.refresh()
    return w


@pytest.fixture
def world(tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult
          ) -> Iterator[World]:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    upgrade(store.engine)
    yield build_world(store, tmp_path, corpus_index, corpus_hnsw)
    store.dispose()
