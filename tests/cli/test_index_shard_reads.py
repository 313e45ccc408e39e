"""What a shard build records of each drawing is what it parsed, read once: the sha256 and
size of the very bytes the parser child read (a drawing changed after its parse keeps
the hash of the parsed bytes), and a drawing swapped for a symbolic link out of the
folder between the listing and the parse is not read but skipped with its reason.

Two slow generated drawings make the window: with one parser, the largest is parsed
first, the second takes seconds; the test acts on the progress line that names the first
(the positive signal), and the smallest drawing is parsed last."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ezdxf

from tests.cli.test_index_shards import _env, shard_meta
from tests.conftest import DXF_CORPUS


def lines_drawing(path: Path, count: int) -> None:
    doc = ezdxf.new()
    msp = doc.modelspace()
    for i in range(count):
        msp.add_line((i, 0), (i, i % 89))
    text = io.StringIO()
    doc.write(text)
    path.write_text(text.getvalue())


def in_the_window(home: Path, src: Path, out: Path) -> subprocess.Popen[str]:
    """A one-parser shard build of `src` (big.dxf, second.dxf, then the rest), once it
    said it parsed big.dxf: second.dxf is being parsed (seconds), the rest is not read."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "index", "build", str(src), "--shard", "0/1",
         "--out", str(out), "--workers", "1", "--no-cache", "--cpu-seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home))
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.rstrip().endswith("big.dxf: 20000 entities"), first
    return proc


def test_the_shard_records_the_bytes_parsed_and_skips_a_swapped_in_link(tmp_path: Path
                                                                          ) -> None:
    src = tmp_path / "src"
    src.mkdir()
    lines_drawing(src / "big.dxf", 70_000)  # parsed first
    lines_drawing(src / "second.dxf", 50_000)  # seconds of parsing: the window
    shutil.copyfile(DXF_CORPUS / "3dface.dxf", src / "small.dxf")  # parsed last
    (tmp_path / "outside.dxf").write_bytes((DXF_CORPUS / "colors.dxf").read_bytes())
    parsed = (src / "big.dxf").read_bytes()
    out = tmp_path / "shard-0-of-1.cadml-shard"
    proc = in_the_window(tmp_path, src, out)
    (src / "big.dxf").write_bytes(b"999\nchanged after its parse\n" + parsed)
    os.unlink(src / "small.dxf")
    (src / "small.dxf").symlink_to(tmp_path / "outside.dxf")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    meta = shard_meta(out)
    files = {f["id"]: f for f in meta["files"]}
    assert (files["big.dxf"]["sha256"], files["big.dxf"]["size"]) == (
        hashlib.sha256(parsed).hexdigest(), len(parsed))
    assert "small.dxf" not in files
    assert [(s["file"], s["code"]) for s in meta["skipped"]] == [("small.dxf", "outside_root")]
    assert "symbolic link" in meta["skipped"][0]["reason"]


def test_a_fifo_named_like_a_drawing_is_skipped_not_waited_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(DXF_CORPUS / "3dface.dxf", src / "a.dxf")
    os.mkfifo(src / "pipe.dxf")  # nobody writes to it: an open() for reading would block
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "index", "build", str(src), "--out",
         str(tmp_path / "out"), "--workers", "1", "--no-cache", "--quiet", "-o", "json"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    skipped = json.loads(proc.stdout)["skipped"]
    assert [(s["file"], s["code"]) for s in skipped] == [("pipe.dxf", "not_a_file")]
