"""`cadml index build` streams: the parent process never holds the drawings' bytes, so its
peak memory does not grow with the corpus; drawings are handed to the parsers largest
first; the artifact does not depend on the order the parsers finish in.

The parent's peak RSS is its own `ru_maxrss`, read inside the process that runs the
command (a parser child's memory is not the parent's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import DXF_CORPUS, ROOT

BIG = 4 * 2**20  # a 4 MiB comment: quick to parse, heavy to hold
RUN_AND_MEASURE = """
import json, resource, sys
from controller.cli import main
code = main(sys.argv[1:])
sys.stderr.write("PEAK " + json.dumps({"code": code, "kib":
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}) + "\\n")
"""


def _peak_kib(home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `cadml index build ARGS -o json` and return the parent's peak RSS (KiB)."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    proc = subprocess.run([sys.executable, "-c", RUN_AND_MEASURE, "index", "build", *args,
                           "--quiet", "-o", "json"], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT), "HOME": str(home)},
                          timeout=600, check=False)
    peak = json.loads(proc.stderr.rsplit("PEAK ", 1)[1])
    assert peak["code"] == 0, proc.stderr
    return int(peak["kib"]), json.loads(proc.stdout)


def _heavy_drawings(folder: Path, count: int) -> None:
    """`count` distinct drawings of 4 MiB each: a real drawing behind a long comment."""
    folder.mkdir()
    base = (DXF_CORPUS / "3dface.dxf").read_bytes()
    for i in range(count):
        (folder / f"d{i:03d}.dxf").write_bytes(
            f"999\n{i:04d}".encode() + b"x" * BIG + b"\n" + base)


def test_the_parents_peak_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """4x the drawings (24 vs 96 MiB of them), default cache on. The parent read every
    drawing to hash it and kept every uncached one in memory until parsing started: its
    peak grew by the corpus (~72 MiB here; 200 GB for 1M drawings of 200 KB)."""
    peaks = {}
    for count in (6, 24):
        _heavy_drawings(tmp_path / f"src{count}", count)
        home = tmp_path / f"home{count}"  # a cache of its own: every drawing is new
        peaks[count], result = _peak_kib(home, str(tmp_path / f"src{count}"), "--out",
                                         str(tmp_path / f"out{count}"), "--workers", "1")
        assert (result["indexed"], result["parsed"]) == (count, count)
    growth_mib = (peaks[24] - peaks[6]) / 1024
    assert growth_mib < 24, (peaks, growth_mib)  # one drawing held is 4 MiB; all are 72


def test_the_artifact_is_the_same_whatever_order_parsers_finish(tmp_path: Path) -> None:
    """One worker vs three (completion order differs; rows follow the sorted file names),
    with and without the cache: the same bytes."""
    src = tmp_path / "src"
    shutil.copytree(DXF_CORPUS, src, copy_function=shutil.copyfile)
    outs = []
    for workers, cache in (("1", "--no-cache"), ("3", "--no-cache"), ("3", "")):
        out = tmp_path / f"out-{workers}-{bool(cache)}"
        args = [str(src), "--out", str(out), "--workers", workers]
        _peak_kib(tmp_path, *args, *([cache] if cache else []))
        outs.append({n: (out / n).read_bytes()
                     for n in ("manifest.json", "vectors.npy", "index.faiss")})
    assert outs[0] == outs[1] == outs[2]


def test_the_largest_drawings_are_parsed_first(tmp_path: Path) -> None:
    """With one parser, drawings finish in the order they were handed out: by size, the
    largest first, so a big drawing never starts last and makes the build's tail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "controller", "index", "build",
                           str(DXF_CORPUS), "--out", str(tmp_path / "out"), "--workers", "1",
                           "--no-cache"], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    names = [line.split(" drawings/s ", 1)[1].split()[2].rstrip(":")
             for line in proc.stderr.splitlines() if " drawings/s " in line]
    sizes = [(DXF_CORPUS / name).stat().st_size for name in names]
    assert len(names) > 40 and sizes == sorted(sizes, reverse=True), list(
        zip(names, sizes, strict=True))


def test_a_cache_that_cannot_take_entries_costs_the_entries_not_the_build(tmp_path: Path
                                                                          ) -> None:
    """The cache folder is writable but its entries' folder cannot be made (a file is in
    the way, as a full or broken disk would): the build completes, says so on stderr,
    and its artifact equals a build without the cache. It aborted with a traceback."""
    from controller.features.identity import extractor_version

    src = tmp_path / "src"
    src.mkdir()
    for name in ("3dface.dxf", "VP4.dxf", "colors.dxf"):
        shutil.copyfile(DXF_CORPUS / name, src / name)
    cache = tmp_path / "cache"
    (cache / extractor_version()).mkdir(parents=True)
    (cache / extractor_version() / "v4").write_text("in the way")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    outs, warnings = [], []
    for flags in (["--cache", str(cache)], ["--no-cache"]):
        out = tmp_path / f"out{len(outs)}"
        proc = subprocess.run([sys.executable, "-m", "controller", "index", "build", str(src),
                               "--out", str(out), "--quiet", "-o", "json", *flags],
                              capture_output=True, text=True, env=env, timeout=600,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["indexed"] == 3
        outs.append({n: (out / n).read_bytes() for n in ("manifest.json", "vectors.npy")})
        warnings.append([line for line in proc.stderr.splitlines() if "warning" in line])
    assert outs[0] == outs[1]
    assert len(warnings[0]) == 1 and warnings[1] == []
    assert warnings[0][0].startswith("warning: 3 feature vectors could not be cached (last: ")
