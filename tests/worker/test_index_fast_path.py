"""The worker's direct faiss call returns what faiss' own numpy wrapper returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.search.index import FaissIndex, build_faiss, read_faiss, write_faiss


def _wrapper(index: FaissIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss' numpy `search` (the reference), its -1 padding given distance +inf."""
    dist, ids = index.index.search(queries, k)
    return np.where(ids < 0, np.inf, dist).astype(np.float32), ids


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize(("n", "k", "queries"), [(500, 10, 1), (500, 10, 7), (3, 10, 1),
                                                 (3, 10, 4), (1, 1, 1), (40, 40, 2)])
def test_direct_search_equals_the_numpy_wrapper(tmp_path: Path, kind: str, n: int, k: int,
                                                queries: int) -> None:
    rng = np.random.default_rng(n * 31 + k + queries)
    data = rng.normal(size=(n, 24)).astype(np.float32)
    q = rng.normal(size=(queries, 24))  # float64, as a JSON body decodes: converted
    built = build_faiss(data, kind)
    write_faiss(built, str(tmp_path / "i.faiss"))
    for index in (built, read_faiss(str(tmp_path / "i.faiss"), kind)):  # as a worker loads it
        dist, ids = index.search(q, k)
        want_dist, want_ids = _wrapper(index, q.astype(np.float32), k)
        assert dist.dtype == np.float32 and ids.dtype == np.int64
        assert np.array_equal(ids, want_ids)
        assert np.array_equal(dist, want_dist)
        if k > n:  # faiss pads with -1; the worker's answer says +inf there
            assert (ids[:, n:] == -1).all() and np.isinf(dist[:, n:]).all()


def test_a_strided_query_is_searched_as_its_values(tmp_path: Path) -> None:
    data = np.random.default_rng(3).normal(size=(100, 24)).astype(np.float32)
    index = build_faiss(data)
    wide = np.repeat(data[:5], 2, axis=1)[:, ::2]  # not contiguous, same values as data[:5]
    dist, ids = index.search(wide, 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4] and np.allclose(dist[:, 0], 0.0)


@pytest.mark.parametrize(("shape", "k"), [((1, 23), 5), ((24,), 5), ((1, 24), 0)])
def test_a_wrong_shape_or_k_is_refused_not_searched(shape: tuple[int, ...], k: int) -> None:
    index = build_faiss(np.zeros((10, 24), dtype=np.float32))
    with pytest.raises(ValueError, match="the index takes"):
        index.search(np.zeros(shape, dtype=np.float32), k)
