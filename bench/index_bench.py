"""Benchmark: `cadml index build` at corpus scale — parallel scaling, the parent's memory,
and the incremental rebuild (the feature cache).

Run: python -m bench.index_bench [--drawings 2000] [--workers 1,2,...] [--changed 0.01]
     [--small 500] [--compare OLD_TREE]
The real corpus is replicated until there are --drawings files, each copy with its own
DXF comment so every file differs (no cache hit between copies). Every build runs in a
fresh process that reports its own peak RSS (`ru_maxrss` of RUSAGE_SELF: the parent
alone, not its parser children) and its own CPU time (the serial part). Measured:
  scaling    a full build without the cache for each worker count (default: 1 up to
             the cores present): drawings/s, speed-up and parallel efficiency against
             the 1-worker build of the same run, seconds to the first drawing (pool
             start-up), the parent's CPU seconds
  memory     the parent's peak RSS of a default build (cache on, cold) of --small and
             of --drawings drawings: it must not grow with the count
  rebuild    a rebuild with nothing changed, and after --changed of the drawings got
             new bytes, as a ratio of the cold build (target <= 0.05); the changed
             rebuild is checked byte for byte against a clean build of the same inputs
  manifest   (synthetic, --manifest-sizes) write_artifact of N manifest entries (random
             vectors): seconds, and the peak RSS on top of what the inputs take
--compare OLD_TREE runs the memory builds with another checkout's code too (e.g. the
commit before a change: `git archive REV | tar -x -C /tmp/old`). The load average is
printed before and after: on a shared machine, trust the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.corpus import DXF_CORPUS

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ("manifest.json", "vectors.npy", "index.faiss")

# Runs one build in a fresh interpreter and prints what it measured of itself; plain
# code (not an import of this module) so that --compare can run an older checkout.
ONE_BUILD = """
import json, resource, sys, time
from pathlib import Path
from controller.search.build import build_index
spec = json.loads(sys.argv[1])
start, first = time.perf_counter(), []
def tick(_t):
    if not first:
        first.append(time.perf_counter() - start)
res = build_index(Path(spec["src"]), Path(spec["out"]), workers=spec["workers"],
                  cache=Path(spec["cache"]) if spec["cache"] else None, progress=tick)
wall = time.perf_counter() - start
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": __import__("controller").__file__, "s": wall,
                  "first_s": first[0] if first else None,
                  "rss_mib": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "total": res.indexed + len(res.skipped), "parsed": res.parsed}))
"""

# write_artifact of N synthetic entries, in a fresh interpreter (either checkout's code)
ONE_MANIFEST = """
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np, faiss
from controller.search.build import write_artifact
n = int(sys.argv[1])
files = [{"id": f"d{i // 1000:04d}/part-{i:07d}.dxf", "entities": 100 + i % 5000,
          "truncated": False, "recovered": i % 9 == 0} for i in range(n)]
vectors = np.random.default_rng(0).random((n, 24), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    write_artifact(Path(tmp), vectors, files, [], "v4", "flat")
    size = (Path(tmp) / "manifest.json").stat().st_size
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"s": wall, "inputs_mib": before / 1024, "extra_mib": (peak - before) / 1024,
                  "manifest_mib": size / 2**20}))
"""


def replicate(dest: Path, count: int) -> list[Path]:
    """`count` drawings: copies of the corpus, each file with a comment of its own."""
    originals = [(p, p.read_bytes()) for p in sorted(DXF_CORPUS.rglob("*.dxf"))]
    out = []
    for i in range(-(-count // len(originals))):
        for path, data in originals:
            target = dest / f"c{i:03d}" / path.relative_to(DXF_CORPUS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f"999\ncopy {i}\n".encode() + data)
            out.append(target)
    return out


def change(paths: list[Path], share: float, tag: str) -> int:
    """Give `share` of the drawings (evenly spread) new bytes; returns how many."""
    n = max(1, round(len(paths) * share))
    for path in paths[:: max(1, len(paths) // n)][:n]:
        path.write_bytes(f"999\nchanged {tag}\n".encode() + path.read_bytes())
    return n


def build(src: Path, out: Path, workers: int, cache: Path | None,
          tree: Path = ROOT) -> dict[str, Any]:
    spec = {"src": str(src), "out": str(out), "workers": workers,
            "cache": str(cache) if cache else None}
    proc = subprocess.run([sys.executable, "-c", ONE_BUILD, json.dumps(spec)],
                          capture_output=True, text=True, check=False, cwd=tree,  # -c: cwd
                          env={**os.environ, "PYTHONPATH": str(tree)})          # comes first
    if proc.returncode:
        raise RuntimeError(f"build failed: {proc.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return row


def same_artifact(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ARTIFACT)


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def scaling(root: Path, counts: list[int]) -> None:
    print(f"\nscaling: full build, no cache ({load()} load)")
    print(f"{'workers':>7} {'s':>8} {'dwg/s':>7} {'speedup':>7} {'eff':>5} {'first s':>7} "
          f"{'parent cpu s':>12} {'parent MiB':>10}")
    base: float | None = None
    for w in counts:
        row = build(root / "src", root / f"full-{w}", w, None)
        base = base if base is not None else row["s"] * w  # the first count taken as linear
        speedup = base / row["s"]
        print(f"{w:>7} {row['s']:>8.2f} {row['total'] / row['s']:>7.1f} {speedup:>7.2f} "
              f"{speedup / w:>5.2f} {row['first_s']:>7.2f} {row['cpu_s']:>12.2f} "
              f"{row['rss_mib']:>10.1f}")


def memory(root: Path, small: int, workers: int, trees: dict[str, Path]) -> None:
    print(f"\nmemory: the parent's peak RSS, default build (cache on, cold), {workers} "
          f"workers ({load()} load)")
    print(f"{'code':>8} {'drawings':>8} {'s':>8} {'peak MiB':>9} {'growth MiB':>10}")
    for label, tree in trees.items():
        first: float | None = None
        for name in ("small", "src"):
            row = build(root / name, root / f"mem-{label}-{name}", workers,
                        root / f"cache-mem-{label}-{name}", tree)
            first = first if first is not None else row["rss_mib"]
            print(f"{label:>8} {row['total']:>8} {row['s']:>8.2f} {row['rss_mib']:>9.1f} "
                  f"{row['rss_mib'] - first:>10.1f}")


def manifest(sizes: list[int], trees: dict[str, Path]) -> None:
    print(f"\nmanifest: write_artifact of N synthetic entries ({load()} load)")
    print(f"{'code':>8} {'entries':>8} {'s':>7} {'manifest MiB':>12} {'inputs MiB':>10} "
          f"{'extra peak MiB':>14}")
    for label, tree in trees.items():
        for n in sizes:
            proc = subprocess.run([sys.executable, "-c", ONE_MANIFEST, str(n)], cwd=tree,
                                  capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(tree)})
            row = json.loads(proc.stdout.splitlines()[-1])
            print(f"{label:>8} {n:>8} {row['s']:>7.1f} {row['manifest_mib']:>12.0f} "
                  f"{row['inputs_mib']:>10.0f} {row['extra_mib']:>14.0f}")


def rebuild(root: Path, paths: list[Path], workers: int, share: float) -> None:
    print(f"\nrebuild with the cache, {workers} workers ({load()} load)")
    cache = root / "cache-rebuild"
    cold = build(root / "src", root / "cold", workers, cache)
    unchanged = build(root / "src", root / "unchanged", workers, cache)
    n = change(paths, share, "bench")
    changed = build(root / "src", root / "changed", workers, cache)
    build(root / "src", root / "clean", workers, None)
    if unchanged["parsed"] != 0 or changed["parsed"] != n:
        raise RuntimeError(f"parsed {unchanged['parsed']} unchanged / {changed['parsed']} of "
                           f"{n} changed")
    print(f"{'build':>10} {'s':>8} {'x cold':>7} {'parsed':>6}")
    for label, row in (("cold", cold), ("unchanged", unchanged), ("changed", changed)):
        print(f"{label:>10} {row['s']:>8.2f} {row['s'] / cold['s']:>7.3f} {row['parsed']:>6}")
    same = same_artifact(root / "changed", root / "clean")
    print(f"changed rebuild byte-identical to a clean build: {same}; target: changed <= "
          "0.05 x cold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = os.cpu_count() or 1
    parser.add_argument("--drawings", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--workers", default=",".join(str(w) for w in range(1, cores + 1)),
                        help="comma-separated worker counts for the scaling table "
                             "(default: 1 up to the cores present)")
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--manifest-sizes", default="",
                        help="comma-separated entry counts for the synthetic manifest part "
                             "(e.g. 100000,1000000; it runs only when given)")
    parser.add_argument("--only", choices=("scaling", "memory", "rebuild", "manifest"),
                        action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--compare", type=Path, metavar="OLD_TREE",
                        help="another checkout whose memory is measured too")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    parts = args.only or ["scaling", "memory", "rebuild", "manifest"]
    trees = {"this": ROOT, **({"compare": args.compare} if args.compare else {})}
    top = min(max(counts), cores)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        paths = replicate(root / "src", args.drawings)
        replicate(root / "small", args.small)
        print(f"{len(paths)} drawings (copies of {DXF_CORPUS}; {args.small}+ for the small "
              f"build) written in {time.perf_counter() - start:.1f} s; {cores} CPUs, "
              f"load average {load()}")
        if "scaling" in parts:
            scaling(root, counts)
        if "memory" in parts:
            memory(root, args.small, top, trees)
        if "rebuild" in parts:
            rebuild(root, paths, top, args.changed)
        if "manifest" in parts and args.manifest_sizes:
            manifest([int(n) for n in args.manifest_sizes.split(",")], trees)
        print(f"\nload average now {load()}; eff = speed-up / workers, speed-up = "
              f"(first count's seconds x its workers) / seconds")


if __name__ == "__main__":
    main()
