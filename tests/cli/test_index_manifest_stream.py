"""The manifest written entry by entry (controller.search.jsonstream) is, byte for byte,
what json.dumps(indent=N) writes: for any manifest-like dict, with unicode, escapes,
empty lists, nested dicts and lists as entries."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.search.build import manifest_order, write_artifact
from controller.search.jsonstream import Lazy, chunks, dump

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)), max_leaves=12)
entries = st.one_of(st.dictionaries(st.text(), scalars, max_size=5), values)
manifests = st.dictionaries(st.text(), st.one_of(values, st.lists(entries, max_size=6)),
                            max_size=6)


def streamed(obj: dict[str, Any], indent: int) -> str:
    lazy = {k: Lazy(iter(v)) if isinstance(v, list) else v for k, v in obj.items()}
    fh = io.StringIO()
    dump(lazy, fh, indent)
    return fh.getvalue()


@settings(max_examples=400, deadline=None)
@given(manifests, st.sampled_from([1, 2]))
def test_streamed_bytes_equal_json_dumps(obj: dict[str, Any], indent: int) -> None:
    assert streamed(obj, indent) == json.dumps(obj, indent=indent)


def test_each_list_entry_is_a_piece_of_its_own() -> None:
    """The list is never joined into one string: a piece per entry (memory holds one)."""
    files = ({"id": f"d{i}.dxf", "entities": i} for i in range(1000))
    pieces = list(chunks({"count": 1000, "files": Lazy(files), "skipped": Lazy([])}, 2))
    assert len(pieces) >= 1000
    assert max(map(len, pieces)) < 200


def test_a_manifest_with_unicode_escapes_and_empty_lists() -> None:
    obj = {"format": "cadml-index/v1", "files": [{"id": "pläne/\"\u03b1\"\n.dxf", "entities": 3,
                                                  "truncated": False}],
           "skipped": [], "extractor": {"ezdxf": "1.3", "nested": {"a": [1, {}]}}}
    assert streamed(obj, 2) == json.dumps(obj, indent=2)


def test_writing_a_manifest_does_not_hold_its_text(tmp_path: Path) -> None:
    """write_artifact of 50,000 entries: the Python memory it allocates on top of its
    inputs stays far below the manifest's size (json.dumps(indent=2) built the whole text
    and its pieces: 41 MB for this 6.5 MB file; now ~2 MB). tracemalloc counts
    allocations, not time: stable."""
    n = 50_000
    files = [{"id": f"folder-{i // 1000:03d}/part-{i:06d}.dxf", "entities": i,
              "truncated": False, "recovered": i % 7 == 0} for i in range(n)]
    vectors = np.random.default_rng(0).random((n, 24), dtype=np.float32)
    import faiss  # noqa: F401  (imported first: its import allocates, the write does not)

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        write_artifact(tmp_path / "out", vectors, files, [], "v4", "flat")
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    size = (tmp_path / "out" / "manifest.json").stat().st_size
    assert size > 6_000_000
    assert peak < size / 2, f"{peak} bytes allocated writing a {size}-byte manifest"
    text = (tmp_path / "out" / "manifest.json").read_text("utf-8")
    assert json.loads(text)["files"] == files


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "/", "ü", " ", "a.dxf"]),
                max_size=8).map("".join))
def test_the_manifest_order_is_the_parts_of_the_path(name: str) -> None:
    """manifest_order's fast path (split on "/") agrees with pathlib for any name."""
    assert manifest_order(name) == PurePosixPath(name).parts
