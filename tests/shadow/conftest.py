"""Real indexes of the corpus: v4 (the worker tests' flat index) and a v3 one."""

from __future__ import annotations

import pytest

from controller.search.build import BuildResult, build_index
from tests.conftest import DXF_CORPUS
from tests.worker.conftest import corpus_hnsw, corpus_index, world  # noqa: F401


@pytest.fixture(scope="session")
def corpus_v3(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("index") / "flat-v3"
    return build_index(DXF_CORPUS, out, kind="flat", feature_version="v3", workers=2)


@pytest.fixture(scope="session")
def corpus_v3_half(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """A v3 index of every other drawing: a version whose answers differ a lot."""
    import shutil

    src = tmp_path_factory.mktemp("half-corpus")
    for path in sorted(DXF_CORPUS.glob("*.dxf"))[::2]:
        shutil.copy(path, src / path.name)
    out = tmp_path_factory.mktemp("index") / "flat-v3-half"
    return build_index(src, out, kind="flat", feature_version="v3", workers=2)
