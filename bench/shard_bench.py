"""Benchmark: sharded index builds (`cadml index build --shard I/N` + `cadml index merge`).

Run: python -m bench.shard_bench [--copies 2] [--shards 1,2,3] [--merge-sizes 100000]
                                 [--merge-shards 16]
1. Real drawings: the corpus replicated --copies times (each copy with its own comment).
   For each N in --shards: N shard processes at once (one parser each, no cache), then
   the merge, against one `cadml index build --workers N`; wall seconds of each, and
   whether the merged artifact is byte-identical to the single build (it must be).
2. Merge at corpus scale: --merge-shards synthetic shard files holding --merge-sizes
   drawings in all (random v4 vectors, real shard format), merged by `cadml index merge`
   in a subprocess: wall seconds and the merge's peak RSS.
Every command runs as a user runs it (a subprocess). On a shared machine, trust the
ratios and the byte-identity, not the seconds; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.index_bench import replicate, same_artifact
from controller.features import identity
from controller.features.sandbox import SandboxLimits
from controller.search.shards import SHARD_FORMAT, build_parameters, listing, shard_of, write_shard

CADML = [sys.executable, "-m", "controller", "index"]


def run_all(commands: list[list[str]]) -> tuple[float, int]:
    """Run the commands at once; wall seconds until the last ends, and the largest peak
    RSS (KiB) among them."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for c in commands]
    peak = 0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r}: exit {proc.returncode}: "
                               f"{proc.stderr.read().decode() if proc.stderr else ''}")
        peak = max(peak, usage.ru_maxrss)
    return time.perf_counter() - start, peak


def real(root: Path, copies: int, counts: list[int]) -> None:
    replicate(root / "src", copies)
    total = len(list((root / "src").rglob("*.dxf")))
    print(f"{total} drawings ({copies} copies of the corpus)")
    print(f"{'N':>3} {'single s':>9} {'shards s':>9} {'merge s':>8} {'shards+merge':>13} "
          "identical")
    for n in counts:
        single = root / f"single-{n}"
        t_single, _ = run_all([[*CADML, "build", str(root / "src"), "--out", str(single),
                                "--workers", str(n), "--no-cache", "--quiet"]])
        folder = root / f"shards-{n}"
        t_shards, _ = run_all([[*CADML, "build", str(root / "src"), "--shard", f"{i}/{n}",
                                "--out", str(folder / f"{i}.cadml-shard"), "--workers", "1",
                                "--no-cache", "--quiet"] for i in range(n)])
        merged = root / f"merged-{n}"
        t_merge, _ = run_all([[*CADML, "merge", *map(str, sorted(folder.iterdir())), "--out",
                               str(merged)]])
        print(f"{n:>3} {t_single:>9.1f} {t_shards:>9.1f} {t_merge:>8.2f} "
              f"{t_shards + t_merge:>13.1f} {same_artifact(single, merged)}")


def synthetic(folder: Path, drawings: int, count: int) -> list[Path]:
    """`count` shard files with `drawings` entries in all, as `build_shard` writes them."""
    folder.mkdir(parents=True)
    names = [f"d{i // 1000:04d}/part-{i:07d}.dxf" for i in range(drawings)]
    rng = np.random.default_rng(0)
    described = identity.describe()
    by_shard: list[list[str]] = [[] for _ in range(count)]
    for name in names:
        by_shard[shard_of(name, count)].append(name)
    paths = []
    for index, mine in enumerate(by_shard):
        meta = {"format": SHARD_FORMAT, "shard": {"index": index, "count": count},
                "featureVersion": "v4", "dim": 24,
                "extractorVersion": described["extractorVersion"],
                "extractor": {k: v for k, v in described.items() if k != "extractorVersion"},
                "parameters": build_parameters("flat", SandboxLimits()), "source": "synthetic",
                "listing": listing(names),
                "files": [{"id": n, "entities": 100, "truncated": False, "recovered": False,
                           "sha256": "0" * 64, "size": 200_000} for n in mine],
                "skipped": []}
        path = folder / f"{index}.cadml-shard"
        write_shard(path, meta, rng.random((len(mine), 24), dtype=np.float32))
        paths.append(path)
    return paths


def merge_scale(root: Path, sizes: list[int], count: int) -> None:
    print(f"{'drawings':>9} {'shards':>6} {'shard MB':>9} {'merge s':>8} {'peak RSS MiB':>13}")
    for size in sizes:
        paths = synthetic(root / f"syn-{size}", size, count)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        seconds, peak = run_all([[*CADML, "merge", *map(str, paths), "--out",
                                  str(root / f"syn-out-{size}")]])
        print(f"{size:>9} {count:>6} {mb:>9.1f} {seconds:>8.1f} {peak / 1024:>13.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--shards", default="1,2,3")
    ap.add_argument("--merge-sizes", default="100000")
    ap.add_argument("--merge-shards", type=int, default=16)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        if args.copies:
            real(Path(tmp), args.copies, [int(n) for n in args.shards.split(",") if n])
        sizes = [int(n) for n in args.merge_sizes.split(",") if n]
        if sizes:
            merge_scale(Path(tmp), sizes, args.merge_shards)
    print(f"load average {os.getloadavg()}; self {resource.getrusage(resource.RUSAGE_SELF)[0]:.1f}"
          " CPU s")


if __name__ == "__main__":
    main()
