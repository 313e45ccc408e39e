"""The feature cache and the per-drawing CPU limit, as a user runs `cadml index build`: a
drawing that parsed in 2-3 s of CPU under a generous limit is not reused by a rebuild
with `--cpu-seconds 1` (a clean build with that limit skips it: the incremental artifact
must be the clean one's bytes), and is reused again once the limit allows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from controller.features import features_from_bytes
from controller.search.featurecache import content_key, decode, encode
from tests.cli.test_index_build import artifact_bytes, build_json
from tests.cli.test_index_shard_reads import lines_drawing
from tests.conftest import DXF_CORPUS

SLOW_LINES = 80_000  # ~3 s of CPU to parse here (ezdxf reads every entity)


@pytest.fixture(scope="module")
def slow_drawing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.dxf"
    lines_drawing(path, SLOW_LINES)
    return path


def test_a_rebuild_with_a_lower_cpu_limit_equals_the_clean_build(tmp_path: Path,
                                                                 slow_drawing: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("3dface.dxf", "colors.dxf", "VP4.dxf"):
        shutil.copyfile(DXF_CORPUS / name, src / name)
    shutil.copyfile(slow_drawing, src / "slow.dxf")
    cache = str(tmp_path / "cache")
    first = build_json(tmp_path, str(src), "--out", str(tmp_path / "first"), "--cache", cache,
                       "--cpu-seconds", "60", "--quiet")
    assert (first["indexed"], first["parsed"]) == (4, 4)
    inc = build_json(tmp_path, str(src), "--out", str(tmp_path / "inc"), "--cache", cache,
                     "--cpu-seconds", "1", "--quiet")
    clean = build_json(tmp_path, str(src), "--out", str(tmp_path / "clean"), "--no-cache",
                       "--cpu-seconds", "1", "--quiet")
    assert [(s["file"], s["code"]) for s in clean["skipped"]] == [("slow.dxf", "time_limit")]
    assert artifact_bytes(tmp_path / "inc") == artifact_bytes(tmp_path / "clean")
    assert (inc["parsed"], inc["reused"]) == (1, 3)  # the slow one tried again, in vain
    again = build_json(tmp_path, str(src), "--out", str(tmp_path / "again"), "--cache", cache,
                       "--cpu-seconds", "60", "--quiet")  # its entry is still there
    assert (again["parsed"], again["reused"]) == (0, 4)
    assert artifact_bytes(tmp_path / "again") == artifact_bytes(tmp_path / "first")


def test_an_entry_is_a_hit_only_under_a_limit_above_its_cost() -> None:
    f = features_from_bytes((DXF_CORPUS / "3dface.dxf").read_bytes(), "v4")
    sha = content_key(b"x")
    record = json.loads(json.dumps(encode(sha, f, cpu_seconds=2.5)))
    assert record["cpuSeconds"] == 2.5
    assert decode(sha, record, "v4", cpu_limit=3.0) is not None
    assert decode(sha, record, "v4", cpu_limit=2.5) is None  # the timer fires at the limit
    assert decode(sha, record, "v4", cpu_limit=1.0) is None
    for cost in (None, "2", float("nan"), -1.0):  # an older or damaged entry: a miss
        assert decode(sha, {**record, "cpuSeconds": cost}, "v4", cpu_limit=3.0) is None
