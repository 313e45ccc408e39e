"""`cadml index merge` of a shard file that says more (or other) than a shard build writes:
refused with the shard and the field, nothing written. A hostile shard must not put a
field into the merged manifest (its file and skipped entries and its extractor are copied
into it), and a shard's declared counts and hashes must hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_index_shards import built, refused, rewrite_meta, shard_meta  # noqa: F401


def _files(meta: dict[str, Any], n: int, **change: Any) -> list[dict[str, Any]]:
    files = [dict(f) for f in meta["files"]]
    files[n] = {**files[n], **change}
    return files


HOSTILE = {
    # name: (changes to shard.json given its meta, the field the error names)
    "an extra key in a file entry": (
        lambda m: {"files": _files(m, 0, evil="<script>")}, "files[0].evil"),
    "a missing key in a file entry": (
        lambda m: {"files": [{k: v for k, v in f.items() if k != "recovered"}
                             for f in m["files"]]}, "files[0].recovered"),
    "a nested object as entities": (
        lambda m: {"files": _files(m, 1, entities={"$ref": "x"})}, "files[1].entities"),
    "a bool as entities": (lambda m: {"files": _files(m, 0, entities=True)}, "files[0].entities"),
    "a string as truncated": (
        lambda m: {"files": _files(m, 0, truncated="no")}, "files[0].truncated"),
    "a sha256 that is no sha256": (
        lambda m: {"files": _files(m, 0, sha256="../x")}, "files[0].sha256"),
    "a negative size": (lambda m: {"files": _files(m, 0, size=-1)}, "files[0].size"),
    "an extra key in a skipped entry": (
        lambda m: {"skipped": [{**m["skipped"][0], "admin": True}, *m["skipped"][1:]]},
        "skipped[0]"),
    "an extra extractor field": (
        lambda m: {"extractor": {**m["extractor"], "note": "trust me"}}, "extractor"),
    "a nested extractor value": (
        lambda m: {"extractor": {**m["extractor"], "ezdxf": ["1.4.5"]}}, "extractor"),
    "an unknown top-level field": (lambda m: {"signature": "x"}, "signature"),
    "a vectors entry naming another file": (
        lambda m: {"vectors": {**m["vectors"], "file": "../vectors.npy"}}, "vectors"),
    "a listing count that is not a count": (
        lambda m: {"listing": {**m["listing"], "entries": -3}}, "listing"),
    "a listing with an extra key": (
        lambda m: {"listing": {**m["listing"], "more": 1}}, "listing"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_shard_saying_more_than_a_shard_build_writes_is_refused(
        built: tuple[Path, Path, list[Path]], tmp_path: Path, case: str) -> None:  # noqa: F811
    home, _, (s0, s1, s2) = built
    change, field = HOSTILE[case]
    meta = shard_meta(s1)
    assert meta["files"] and meta["skipped"], "the fixture's shard 1 lists both"
    bad = rewrite_meta(s1, tmp_path / "bad.cadml-shard", **change(meta))
    err = refused(home, tmp_path / "out", s0, bad, s2)
    assert f"shard {bad}: {field}: " in err, err
    assert "build this shard again" in err


def test_a_merge_of_shards_with_many_rows_each_keeps_each_rows_vector(tmp_path: Path) -> None:
    """The vectors are gathered per shard once (not a mask over every row per shard): each
    merged row is its drawing's vector, across 16 synthetic shards."""
    from bench.shard_bench import synthetic
    from controller.search.shards import merge_shards, read_compatible

    paths = synthetic(tmp_path / "shards", 3000, 16)
    shards = read_compatible(paths)
    merged = merge_shards(shards)
    by_name = {n: shard.vectors[row] for shard in shards for row, n in enumerate(shard.names)}
    names = [f["id"] for f in merged.files]
    assert names == sorted(by_name)  # "dNNNN/part-NNNNNNN.dxf": string order is path order
    for name, vector in zip(names, merged.vectors, strict=True):
        assert (vector == by_name[name]).all()
