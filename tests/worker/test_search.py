"""faiss vs exact search, artifacts (checksums, degradation), and hostile pickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from controller.search.artifacts import ArtifactError, load_artifact
from controller.search.build import BuildResult
from controller.search.fetch import sha256_file
from controller.search.index import ExactIndex, build_faiss
from controller.search.pickle_scan import UnsafeArtifact, safe_load, scan
from tests.worker.conftest import copy_artifact


@pytest.mark.parametrize("n", [1, 7, 5000])
@pytest.mark.parametrize("k", [1, 10])
def test_faiss_flat_topk_equals_exact_numpy(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    data = rng.normal(size=(n, 24)).astype(np.float32)
    queries = rng.normal(size=(50, 24)).astype(np.float32)
    fd, fi = build_faiss(data).search(queries, k)
    ed, ei = ExactIndex(data).search(queries, k)
    assert np.array_equal(fi, ei)
    assert np.allclose(fd[np.isfinite(fd)], ed[np.isfinite(ed)], rtol=1e-4, atol=1e-3)


def test_on_corpus_vectors_the_distances_agree(corpus_index: BuildResult) -> None:
    vectors = np.load(corpus_index.manifest_path.parent / "vectors.npy")
    art = load_artifact(corpus_index.manifest_path.as_uri(), corpus_index.manifest_sha256,
                        "faiss-index")
    assert art.degraded is None and art.index.kind == "flat"
    fd, _ = art.index.search(vectors, 5)
    ed, _ = ExactIndex(vectors).search(vectors, 5)
    # identical drawings tie at distance 0; ids may order ties differently, distances not
    assert np.allclose(fd, ed, rtol=1e-4, atol=1e-3)


def test_hnsw_recall_at_10() -> None:
    rng = np.random.default_rng(7)
    data = rng.normal(size=(20_000, 24)).astype(np.float32)
    queries = rng.normal(size=(200, 24)).astype(np.float32)
    _, exact = ExactIndex(data).search(queries, 10)
    _, approx = build_faiss(data, "hnsw", ef_search=128).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.97


def test_checksum_mismatch_refuses_the_artifact(tmp_path: Path,
                                                corpus_index: BuildResult) -> None:
    art = copy_artifact(corpus_index, tmp_path / "a")
    with pytest.raises(ArtifactError) as exc:
        load_artifact(art.manifest_path.as_uri(), "0" * 64, "faiss-index")
    assert exc.value.code == "checksum_mismatch"
    vectors = art.manifest_path.parent / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="vectors"):
        load_artifact(art.manifest_path.as_uri(), art.manifest_sha256, "faiss-index")


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_broken_faiss_index_degrades_to_identical_exact_results(
    tmp_path: Path, corpus_index: BuildResult, damage: str
) -> None:
    good = load_artifact(corpus_index.manifest_path.as_uri(), corpus_index.manifest_sha256,
                         "faiss-index")
    art = copy_artifact(corpus_index, tmp_path / "a")
    index_file = art.manifest_path.parent / "index.faiss"
    if damage == "missing":
        index_file.unlink()
    else:
        index_file.write_bytes(b"\0" * 100)
    degraded = load_artifact(art.manifest_path.as_uri(), art.manifest_sha256, "faiss-index")
    assert degraded.degraded and degraded.index.kind == "exact"
    q = good.vectors[::3] + 0.01
    gd, gi = good.index.search(q, 5)
    dd, di = degraded.index.search(q, 5)
    assert np.array_equal(gi, di) and np.allclose(gd, dd, rtol=1e-4, atol=1e-3)


def test_unsupported_scheme_is_a_structured_error() -> None:
    with pytest.raises(ArtifactError) as exc:
        load_artifact("s3://bucket/x.faiss", None, "faiss-index")
    assert exc.value.code == "unsupported_scheme"


def _pickle_artifact(tmp_path: Path, payload: object, protocol: int = 4) -> tuple[str, str]:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path.as_uri(), sha256_file(path)


def test_a_clean_pickle_loads(tmp_path: Path) -> None:
    payload = {"vectors": np.eye(3, 24, dtype=np.float32), "ids": ["a", "b", "c"]}
    for protocol in (2, 4, 5):
        uri, sha = _pickle_artifact(tmp_path, payload, protocol)
        art = load_artifact(uri, sha, "pickle")
        assert art.ids == ["a", "b", "c"] and art.vectors.shape == (3, 24)


class _System:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/cadml-pwned",))


class _Eval:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("__import__('os').getcwd()",))


def _stack_global_from_memo() -> bytes:
    # protocol-4 style: names pushed, memoised, fetched back from the memo, then STACK_GLOBAL
    return (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93\x8c\x04true\x85R.")


HOSTILE = {
    "os.system protocol 2": pickle.dumps(_System(), protocol=2),
    "os.system protocol 4": pickle.dumps(_System(), protocol=4),
    "builtins.eval": pickle.dumps(_Eval(), protocol=4),
    "STACK_GLOBAL names from memo": _stack_global_from_memo(),
    "payload with junk byte appended": pickle.dumps(_System(), protocol=4) + b"\x00",
    "clean pickle with junk appended": pickle.dumps({"ids": []}, protocol=4) + b"junk",
    "truncated": pickle.dumps(_System(), protocol=4)[:-3],
    "subprocess via GLOBAL": b"csubprocess\ncheck_output\n(S'id'\ntR.",
    "persistent id": b"\x80\x02P0\n.",
}


@pytest.mark.parametrize("mode", ["whitelist", "audit"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_pickles_are_refused_before_anything_runs(name: str, mode: str) -> None:
    marker = Path("/tmp/cadml-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafeArtifact) as exc:
        safe_load(HOSTILE[name], mode)
    assert exc.value.code and exc.value.stage == "artifact"
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["whitelist", "audit"])
def test_audit_refuses_what_the_whitelist_refuses(mode: str) -> None:
    from collections import Counter

    data = pickle.dumps({"counts": Counter(a=1)}, protocol=4)
    with pytest.raises(UnsafeArtifact, match="not in the allowlist") as exc:
        scan(data, mode)
    assert exc.value.report is not None and exc.value.report.refused == "denied_global"


def test_audit_mode_reports_the_opcodes_seen() -> None:
    report = scan(pickle.dumps({"vectors": np.ones((2, 2))}, protocol=4), "audit")
    data = report.as_dict()
    assert data["mode"] == "audit" and data["opcodes"]["STACK_GLOBAL"] >= 2
    assert "numpy.ndarray" in data["globals"]
    json.dumps(data)  # persistable as an audit event


def test_oversized_pickle_is_refused_before_scanning() -> None:
    with pytest.raises(UnsafeArtifact) as exc:
        scan(b"\x80\x04" + b"N" * 2048 + b".", "whitelist", max_bytes=1024)
    assert exc.value.code == "pickle_too_large"
