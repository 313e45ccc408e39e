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
from controller.worker.runtime import WorkerRuntime, WorkerSettings
from tests.conftest import DXF_CORPUS

TENANT, MODEL = "acme-cad", "part-sim"


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
                thresholds: dict[str, object] | None = None) -> int:
        with self.store.transaction(TENANT, "test") as tx:
            return tx.publish_snapshot(MODEL, routes, thresholds or {
                "1.0.0": {"similarity": {"value": 0.5, "source": "model"}},
                "1.1.0": {"similarity": {"value": 0.5, "source": "policy"}}}, source)


def copy_artifact(src: BuildResult, dest: Path) -> BuildResult:
    shutil.copytree(src.manifest_path.parent, dest)
    return BuildResult(dest / "manifest.json", src.manifest_sha256, src.indexed, src.skipped)


@pytest.fixture
def world(tmp_path: Path, corpus_index: BuildResult, corpus_hnsw: BuildResult
          ) -> Iterator[World]:
    stable = copy_artifact(corpus_index, tmp_path / "stable")
    canary = copy_artifact(corpus_hnsw, tmp_path / "canary")
    store = Store(make_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    upgrade(store.engine)
    with store.transaction(TENANT, "seed") as tx:
        tx.upsert_model(ModelRow(MODEL, MODEL, "acme", "Part sim", spec_hash="m"))
        for name, semver, stage, art in (("ps-1-0-0", "1.0.0", "STABLE", stable),
                                         ("ps-1-1-0", "1.1.0", "CANARY", canary)):
            tx.upsert_version(VersionRow(name, MODEL, semver, stage,
                                         art.manifest_path.as_uri(), "faiss-index",
                                         art.manifest_sha256, spec_hash=semver))
        tx.upsert_policy(PolicyRow(MODEL, MODEL, {}, 5, 1, "p"))
    runtime = WorkerRuntime(store, WorkerSettings(TENANT, MODEL, "sqlite://",
                                                  worker_id="w-test", admin_token="s3cret"))
    w = World(store, runtime, stable, canary, tmp_path)
    w.publish([RouteRow("1.0.0", 90, True), RouteRow("1.1.0", 10, False)])
    runtime.refresh()
    yield w
    store.dispose()
