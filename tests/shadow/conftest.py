"""Real indexes of the corpus: v4 (the worker tests' flat index) and a v3 one."""

from __future__ import annotations

import pytest

from controller.search.build import BuildResult, build_index
from tests.conftest import DXF_CORPUS
from tests.worker.conftest import corpus_hnsw, corpus_index  # noqa: F401


@pytest.fixture(scope="session")
def corpus_v3(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("index") / "flat-v3"
    return build_index(DXF_CORPUS, out, kind="flat", feature_version="v3", workers=2)
