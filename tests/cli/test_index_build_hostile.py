"""`cadml index build` beside hostile files: a 1 GiB sparse file, a parser that is
SIGKILLed mid-drawing, symbolic links out of the source folder. Every real drawing
must still be indexed, and everything passed over listed with its reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import DXF_CORPUS
from tests.worker.hostile import Killer, slow_dxf

REAL = ["3dface.dxf", "VP4.dxf", "colors.dxf", "columns_R2007.dxf", "caret_encoding.dxf",
        "dimension_in_block.dxf", "hatch_issues.dxf", "acad_table_simple.dxf",
        "Minimal_DXF_AC1009.dxf", "clockwise_arcs_hatch.dxf", "columns_R2018.dxf",
        "circle_radius_le_0.dxf"]


def _build(source: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    # a feature cache of its own: a shared one may hold a vector of the slow drawing from
    # a build under other limits (a cached success is reused whatever the limits)
    env = {**{k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"},
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HOME": str(out.parent)}
    return subprocess.Popen([sys.executable, "-m", "controller", "index", "build", str(source),
                             "--out", str(out), "--quiet", "-o", "json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _real_drawings(source: Path) -> None:
    source.mkdir()
    for name in REAL:
        shutil.copy(DXF_CORPUS / name, source / name)


def test_a_1gib_sparse_file_and_a_killed_parser_fail_only_themselves(tmp_path: Path) -> None:
    source = tmp_path / "drawings"
    _real_drawings(source)
    with (source / "00-huge.dxf").open("wb") as f:  # 1 GiB, sorted first: never read whole
        f.truncate(1024**3)
    (source / "01-slow.dxf").write_bytes(slow_dxf())  # its parser is killed every time
    proc = _build(source, tmp_path / "out", "--workers", "1", "--cpu-seconds", "120")
    killer = Killer(proc.pid, cpu=4.0)
    killer.start()
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        killer.stop()
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    skipped = {s["file"]: s["code"] for s in result["skipped"]}
    assert skipped == {"00-huge.dxf": "too_large", "01-slow.dxf": "parser_crash"}
    assert result["indexed"] == len(REAL)
    assert killer.kills >= 2  # killed in the pool, then again when tried alone
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(f["id"] for f in manifest["files"]) == sorted(REAL)


def test_symbolic_links_out_of_the_source_are_listed_not_followed(tmp_path: Path) -> None:
    source = tmp_path / "drawings"
    _real_drawings(source)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(DXF_CORPUS / "xclip.dxf", outside / "secret.dxf")
    (source / "leak.dxf").symlink_to(outside / "secret.dxf")
    (source / "leakdir").symlink_to(outside)
    (source / "inside.dxf").symlink_to(source / "VP4.dxf")  # stays inside: indexed
    proc = _build(source, tmp_path / "out")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    skipped = {s["file"]: s["code"] for s in result["skipped"]}
    assert skipped == {"leak.dxf": "outside_root", "leakdir": "outside_root"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    ids = {f["id"] for f in manifest["files"]}
    assert ids == set(REAL) | {"inside.dxf"}
    assert not any("secret" in i for i in ids)
