"""Vector indexes behind one narrow seam: faiss (flat or HNSW) and the exact numpy fallback.

Both return squared L2 distances and row ids, best first, padded with -1 when k
exceeds the index size — so a Degraded version answers exactly like its faiss
flat index would.

`FaissIndex.search` calls faiss' C++ search itself (`search_c`) with output arrays of
its own: the numpy wrapper faiss puts in front of it (shape asserts, a second
contiguity pass, dtype conversions) cost as much as a one-query flat search over a
small index, on every request (bench/worker_bench.py's HTTP figure).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class VectorIndex(Protocol):
    kind: str

    @property
    def ntotal(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


class ExactIndex:
    """Brute-force squared-L2 search in numpy (the degraded path, and the test oracle)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.norms = np.einsum("ij,ij->i", self.vectors, self.vectors)

    def describe(self) -> dict[str, Any]:
        return {"index": "exact"}

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n, kk = self.ntotal, min(k, self.ntotal)
        dist = np.full((q.shape[0], k), np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        if kk == 0:
            return dist, ids
        d = (np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ self.vectors.T)
             + self.norms[None, :])
        np.maximum(d, 0.0, out=d)
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < n else \
            np.tile(np.arange(n), (q.shape[0], 1))
        rows = np.arange(q.shape[0])[:, None]
        order = np.lexsort((part, d[rows, part]), axis=1)  # by distance, then id
        top = part[rows, order]
        dist[:, :kk] = d[rows, top]
        ids[:, :kk] = top
        return dist, ids


class FaissIndex:
    def __init__(self, index: Any, kind: str) -> None:
        import faiss

        self.index = index
        self.kind = kind
        # the C function itself where faiss exposes it (its Python wrapper only forwards)
        self._ptr = getattr(getattr(faiss, "_swigfaiss", None), "swig_ptr", faiss.swig_ptr)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def describe(self) -> dict[str, Any]:
        """What the index is, and for HNSW the efSearch it searches with."""
        if self.kind != "hnsw":
            return {"index": self.kind}
        import faiss

        hnsw: Any = faiss.downcast_index(self.index)
        return {"index": "hnsw", "efSearch": int(hnsw.hnsw.efSearch)}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """What faiss' own `index.search(queries, k)` returns, with +inf where it pads."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.index.d or k < 1:
            raise ValueError(f"queries of shape {q.shape} and k={k}: the index takes "
                             f"(n, {self.index.d}) and k >= 1")
        n = q.shape[0]
        dist = np.empty((n, k), dtype=np.float32)
        ids = np.empty((n, k), dtype=np.int64)
        ptr = self._ptr
        self.index.search_c(n, ptr(q), k, ptr(dist), ptr(ids))
        if n and ids.min() < 0:  # fewer than k vectors found: faiss pads with -1
            dist[ids < 0] = np.inf
        return dist, ids


def build_faiss(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32,
                ef_construction: int = 80, ef_search: int = 96) -> FaissIndex:
    import faiss

    data = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = data.shape[1]
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, hnsw)")
    index.add(data)
    return FaissIndex(index, kind)


def read_faiss(path: str, kind: str, ef_search: int | None = None) -> FaissIndex:
    import faiss

    index: Any = faiss.read_index(path)
    if kind == "hnsw" and ef_search is not None:
        hnsw: Any = faiss.downcast_index(index)
        hnsw.hnsw.efSearch = ef_search
    return FaissIndex(index, kind)


def write_faiss(index: FaissIndex, path: str) -> None:
    import faiss

    faiss.write_index(index.index, path)
