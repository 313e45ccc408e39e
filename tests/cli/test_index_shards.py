"""Sharded index builds as a user runs them: `cadml index build --shard I/N` in N parallel
processes over a real DXF corpus subset, then `cadml index merge`. The merged artifact
must be the bytes of one `cadml index build` over the same folder, and a merge of shards
that do not make one build is refused (file, field, what to do) with nothing written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.search.build import manifest_order
from controller.search.shards import Shard, check_shards, merge_shards, shard_of
from tests.conftest import DXF_CORPUS, ROOT

ARTIFACT_FILES = ("manifest.json", "vectors.npy", "index.faiss")
SUBSET = ["3dface.dxf", "VP4.dxf", "colors.dxf", "columns_R2007.dxf", "caret_encoding.dxf",
          "dimension_in_block.dxf", "hatch_issues.dxf", "acad_table_simple.dxf",
          "Minimal_DXF_AC1009.dxf", "clockwise_arcs_hatch.dxf", "circle_radius_le_0.dxf"]


def _env(home: Path, pythonpath: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    return {**env, "PYTHONPATH": str(pythonpath), "HOME": str(home)}


def cadml(home: Path, *args: str, pythonpath: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "index", *args],
                          capture_output=True, text=True, env=_env(home, pythonpath),
                          timeout=300, check=False)


def ok_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def make_source(root: Path) -> Path:
    """Real drawings, some in a sub-folder whose name sorts differently as a string than as
    a path ("parts/x.dxf" walks before "parts-old.dxf"), a drawing that is refused and a
    link out of the folder: every kind of entry a manifest orders."""
    src = root / "src"
    (src / "parts").mkdir(parents=True)
    for name in SUBSET:
        shutil.copyfile(DXF_CORPUS / name, src / name)
    for name in ("colors.dxf", "VP4.dxf"):
        (src / "parts" / name).write_bytes(b"999\nanother part\n" + (DXF_CORPUS / name)
                                           .read_bytes())
    shutil.copyfile(DXF_CORPUS / "3dface.dxf", src / "parts-old.dxf")
    (src / "aa-not-a-drawing.dxf").write_bytes(b"0\nSECTION\n2\nENTITIES\n0\nENDSEC\n")
    (root / "outside.dxf").write_bytes((DXF_CORPUS / "colors.dxf").read_bytes())
    (src / "zz-link.dxf").symlink_to(root / "outside.dxf")
    return src


def build_shards(home: Path, src: Path, folder: Path, n: int, *extra: str,
                 pythonpath: Path = ROOT) -> list[dict[str, Any]]:
    """N `cadml index build --shard i/N` processes at once, as an Indexed Job's pods run."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "controller", "index", "build", str(src), "--shard", f"{i}/{n}",
         "--out", str(folder / f"shard-{i}.cadml-shard"), "--workers", "1", "--quiet",
         "-o", "json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(home, pythonpath)) for i in range(n)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def artifact_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ARTIFACT_FILES}


def shard_meta(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        meta: dict[str, Any] = json.loads(zf.read("shard.json"))
    return meta


def rewrite_meta(path: Path, dest: Path, **changes: Any) -> Path:
    """A copy of a shard whose shard.json says something else (vectors untouched)."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    meta = {**json.loads(members["shard.json"]), **changes}
    members["shard.json"] = json.dumps(meta).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    dest.write_bytes(buf.getvalue())
    return dest


def test_three_shard_processes_merge_into_the_bytes_of_one_build(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    cache = tmp_path / "cache"
    shards = build_shards(tmp_path, src, tmp_path / "shards", 3, "--cache", str(cache))
    files = [tmp_path / "shards" / f"shard-{i}.cadml-shard" for i in (2, 0, 1)]  # any order
    merged = ok_json(cadml(tmp_path, "merge", *map(str, files), "--out",
                           str(tmp_path / "merged"), "-o", "json"))
    single = ok_json(cadml(tmp_path, "build", str(src), "--out", str(tmp_path / "single"),
                           "--no-cache", "--quiet", "-o", "json"))

    assert artifact_bytes(tmp_path / "merged") == artifact_bytes(tmp_path / "single")
    assert merged["sha256"] == single["sha256"]
    assert merged["uri"] == (tmp_path / "merged" / "manifest.json").resolve().as_uri()
    assert merged["indexed"] == single["indexed"] == len(SUBSET) + 3
    assert [s["code"] for s in merged["skipped"]] == ["no_entities", "outside_root"]
    # every drawing in exactly one shard, the one its path hashes to, with its sha256/size
    placed: dict[str, int] = {}
    for i in range(3):
        meta = shard_meta(tmp_path / "shards" / f"shard-{i}.cadml-shard")
        assert meta["shard"] == {"index": i, "count": 3}
        for f in meta["files"]:
            data = (src / f["id"]).read_bytes()
            assert (f["sha256"], f["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
            assert f["id"] not in placed and shard_of(f["id"], 3) == i
            placed[f["id"]] = i
    assert len(placed) == merged["indexed"] and len({*placed.values()}) == 3
    assert sum(s["indexed"] for s in shards) == merged["indexed"]
    # the shards used the feature cache like a build: a rebuild of the folder parses nothing
    again = ok_json(cadml(tmp_path, "build", str(src), "--out", str(tmp_path / "again"),
                          "--cache", str(cache), "--quiet", "-o", "json"))
    assert again["parsed"] == 0 and again["sha256"] == single["sha256"]


def test_empty_shards_merge_too(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SUBSET[:2]:
        shutil.copyfile(DXF_CORPUS / name, src / name)
    shards = build_shards(tmp_path, src, tmp_path / "shards", 5, "--no-cache")
    assert sorted(s["indexed"] for s in shards)[:3] == [0, 0, 0]
    merged = ok_json(cadml(tmp_path, "merge", *map(str, sorted((tmp_path / "shards").iterdir())),
                           "--out", str(tmp_path / "merged"), "-o", "json"))
    single = ok_json(cadml(tmp_path, "build", str(src), "--out", str(tmp_path / "single"),
                           "--no-cache", "--quiet", "-o", "json"))
    assert artifact_bytes(tmp_path / "merged") == artifact_bytes(tmp_path / "single")
    assert merged["sha256"] == single["sha256"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[Path]]]:
    """One folder, its three shards, and the home they were built in."""
    root = tmp_path_factory.mktemp("shards")
    src = make_source(root)
    build_shards(root, src, root / "shards", 3, "--no-cache")
    yield root, src, [root / "shards" / f"shard-{i}.cadml-shard" for i in range(3)]


def refused(home: Path, out: Path, *shards: Path) -> str:
    """Merge that must be refused: exit 1, one line on stderr, nothing written to `out`."""
    before = sorted(out.rglob("*")) if out.exists() else None
    proc = cadml(home, "merge", *map(str, shards), "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert (sorted(out.rglob("*")) if out.exists() else None) == before
    return proc.stderr


def test_a_missing_shard_is_refused_and_named(built: tuple[Path, Path, list[Path]],
                                              tmp_path: Path) -> None:
    home, _, (s0, _, s2) = built
    err = refused(home, tmp_path / "out", s0, s2)
    assert "1 of 3 shards missing: 1/3" in err and "--shard I/3" in err
    err = refused(home, tmp_path / "out", s0, s2, tmp_path / "no-such.cadml-shard")
    assert f"shard {tmp_path / 'no-such.cadml-shard'}: no such file" in err


def test_a_shard_given_twice_is_refused(built: tuple[Path, Path, list[Path]],
                                        tmp_path: Path) -> None:
    home, _, (s0, s1, s2) = built
    copy = tmp_path / "copy-of-0.cadml-shard"
    shutil.copyfile(s0, copy)
    err = refused(home, tmp_path / "out", s0, s1, s2, copy)
    assert f"shards {s0} and {copy} are both shard 0/3; pass each shard once" in err


def test_shards_of_another_build_are_refused_with_the_field(
        built: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    home, src, (s0, s1, s2) = built
    other = build_shards(home, src, tmp_path / "cpu", 3, "--no-cache", "--cpu-seconds", "5")
    assert other
    err = refused(home, tmp_path / "out", s0, s1, tmp_path / "cpu" / "shard-2.cadml-shard")
    assert f"shard {tmp_path / 'cpu' / 'shard-2.cadml-shard'}: parameters is" in err
    assert '"cpuSeconds": 5.0' in err and "build every shard with the same options" in err
    halves = build_shards(home, src, tmp_path / "halves", 2, "--no-cache")
    assert halves
    err = refused(home, tmp_path / "out", s0, s1, s2, tmp_path / "halves" / "shard-0.cadml-shard")
    assert "shard.count is 2" in err


def test_a_shard_from_another_extractor_is_refused(built: tuple[Path, Path, list[Path]],
                                                    tmp_path: Path) -> None:
    """Shard 1 built by another cadml: a copy of this one whose FEATURE_CODE_VERSION was
    bumped (what a release that changes extraction does)."""
    home, src, (s0, _, s2) = built
    other = tmp_path / "other-cadml"
    shutil.copytree(ROOT / "controller", other / "controller",
                    ignore=shutil.ignore_patterns("__pycache__"))
    identity = other / "controller" / "features" / "identity.py"
    text = identity.read_text()
    assert "FEATURE_CODE_VERSION = " in text
    identity.write_text(text.replace("FEATURE_CODE_VERSION = ", "FEATURE_CODE_VERSION = 1 + "))
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "index", "build", str(src), "--shard", "1/3",
         "--out", str(tmp_path / "other-1.cadml-shard"), "--no-cache", "--quiet"],
        capture_output=True, text=True, env=_env(home, other), timeout=300, check=False,
        cwd=other)  # `python -m` puts the working folder first on sys.path
    assert proc.returncode == 0, proc.stderr
    theirs = shard_meta(tmp_path / "other-1.cadml-shard")["extractorVersion"]
    ours = shard_meta(s0)["extractorVersion"]
    assert theirs != ours
    err = refused(home, tmp_path / "out", s0, tmp_path / "other-1.cadml-shard", s2)
    assert f"extractorVersion {theirs} differs from {ours} of {s0}" in err
    assert "rebuild every shard with one cadml" in err


def test_a_folder_that_changed_between_shard_builds_is_refused(tmp_path: Path) -> None:
    """An Indexed Job with parallelism below N starts its last shards later: a drawing
    renamed (or added, removed) meanwhile must not make a half-old, half-new index."""
    src = make_source(tmp_path)
    build_shards(tmp_path, src, tmp_path / "shards", 2, "--no-cache")
    (src / "colors.dxf").rename(src / "colours.dxf")
    proc = cadml(tmp_path, "build", str(src), "--shard", "1/2", "--out",
                 str(tmp_path / "later-1.cadml-shard"), "--no-cache", "--quiet")
    assert proc.returncode == 0, proc.stderr
    err = refused(tmp_path, tmp_path / "out", tmp_path / "shards" / "shard-0.cadml-shard",
                  tmp_path / "later-1.cadml-shard")
    assert f"shard {tmp_path / 'later-1.cadml-shard'}: listing is" in err
    assert "the folder changed between the shards' builds" in err


@pytest.mark.parametrize("damage", ["truncated", "flipped-vector-byte", "not-a-zip",
                                    "field-missing", "files-differ-from-vectors"])
def test_a_damaged_shard_is_refused_with_the_field(built: tuple[Path, Path, list[Path]],
                                                   tmp_path: Path, damage: str) -> None:
    home, _, (s0, s1, s2) = built
    bad = tmp_path / "bad.cadml-shard"
    data = s1.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flipped-vector-byte":
        at = data.rindex(b"\x93NUMPY") + 200  # inside the float32 rows
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    elif damage == "not-a-zip":
        bad.write_text("hello")
    elif damage == "field-missing":
        meta = shard_meta(s1)
        rewrite_meta(s1, bad, featureVersion=None, files=meta["files"])
    else:
        rewrite_meta(s1, bad, files=shard_meta(s1)["files"][1:])
    err = refused(home, tmp_path / "out", s0, bad, s2)
    assert f"shard {bad}: " in err and "build this shard again" in err
    expected = {"truncated": "file: not a readable shard file",
                "flipped-vector-byte": "file: not a readable shard file",
                "not-a-zip": "file: not a readable shard file",
                "field-missing": "featureVersion: missing or malformed",
                "files-differ-from-vectors": "vectors.npy: must be a finite float32"}[damage]
    assert expected in err


def test_a_failed_merge_leaves_an_existing_artifact_untouched(
        built: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    home, _, (s0, s1, s2) = built
    out = tmp_path / "out"
    ok_json(cadml(home, "merge", str(s0), str(s1), str(s2), "--out", str(out), "-o", "json"))
    before = artifact_bytes(out)
    refused(home, out, s0, s1)
    assert artifact_bytes(out) == before


@pytest.mark.parametrize("shard", ["3/3", "-1/3", "0/0", "1", "a/b", "0/100001"])
def test_a_bad_shard_option_is_a_usage_error(built: tuple[Path, Path, list[Path]],
                                             tmp_path: Path, shard: str) -> None:
    home, src, _ = built
    proc = cadml(home, "build", str(src), f"--shard={shard}", "--out",
                 str(tmp_path / "s.cadml-shard"), "--no-cache")
    assert proc.returncode == 2, proc.stderr
    assert f"--shard {shard!r}: use I/N with 0 <= I < N" in proc.stderr
    assert not (tmp_path / "s.cadml-shard").exists() and "drawings/s" not in proc.stderr


def test_a_shard_out_that_is_a_folder_is_a_usage_error(built: tuple[Path, Path, list[Path]],
                                                        tmp_path: Path) -> None:
    home, src, _ = built
    proc = cadml(home, "build", str(src), "--shard", "0/2", "--out", str(tmp_path), "--no-cache")
    assert proc.returncode == 2, proc.stderr
    assert "with --shard, --out names the shard file" in proc.stderr


# -- the pure parts: the assignment is pinned, a merge of any split is the build's order --

def test_the_shard_of_a_path_is_pinned() -> None:
    """Shards built by two machines (or two cadml releases) must agree on the split: a
    change of the hash is a change of the shard format."""
    assert [shard_of("3dface.dxf", n) for n in (1, 2, 3, 7, 1000)] == [0, 1, 2, 2, 665]
    assert [shard_of("parts/colors.dxf", n) for n in (1, 2, 3, 7, 1000)] == [0, 1, 0, 4, 529]
    assert [shard_of("a b/ü.dxf", n) for n in (1, 2, 3, 7, 1000)] == [0, 0, 1, 0, 710]


names_st = st.lists(st.lists(st.sampled_from(["a", "a-b", "a.dxf", "b", "Z", "ü", "a b"]),
                             min_size=1, max_size=3).map("/".join), unique=True, max_size=30)


@given(names=names_st, skipped=names_st, count=st.integers(1, 6), backwards=st.booleans())
@settings(max_examples=200, deadline=None)
def test_a_merge_of_any_split_is_in_the_order_of_one_build(names: list[str],
                                                           skipped: list[str],
                                                           count: int,
                                                           backwards: bool) -> None:
    """Shards list their drawings in manifest order; one listing them otherwise (backwards)
    merges into the same order too."""
    skipped = [s for s in skipped if s not in names]
    vectors = {name: np.full(24, i, np.float32) for i, name in enumerate(names)}
    shards = []
    for i in range(count):
        mine = sorted((n for n in names if shard_of(n, count) == i), key=manifest_order,
                      reverse=backwards)
        meta = {"shard": {"index": i, "count": count}, "dim": 24, "featureVersion": "v4",
                "extractorVersion": "x1-0", "extractor": {}, "parameters": {"kind": "flat"},
                "listing": {"entries": len(names) + len(skipped), "sha256": "x"},
                "files": [{"id": n, "entities": 1, "truncated": False, "recovered": True,
                           "sha256": "x", "size": 1} for n in mine],
                "skipped": [{"file": s, "code": "c", "reason": "r"} for s in skipped
                            if shard_of(s, count) == i]}
        rows = [vectors[n] for n in mine]
        shards.append(Shard(Path(f"{i}"), meta, np.array(rows, np.float32).reshape(-1, 24)))
    assert check_shards(shards) == []
    merged = merge_shards(list(reversed(shards)))
    build_order = sorted(names, key=lambda n: PurePosixPath(n).parts)  # as the walk sorts
    assert [f["id"] for f in merged.files] == build_order
    assert list(merged.files) == [{"id": n, "entities": 1, "truncated": False,
                                   "recovered": True} for n in build_order]
    assert [s["file"] for s in merged.skipped] == sorted(
        skipped, key=lambda n: PurePosixPath(n).parts)
    assert merged.vectors.shape == (len(names), 24)
    for row, name in zip(merged.vectors, build_order, strict=True):
        assert (row == vectors[name]).all()
