"""Benchmark: `cadml index build` full vs incremental (the feature cache).

Run: python -m bench.index_bench [--copies 10] [--workers 1,2] [--changed 0.01]
The real corpus is replicated --copies times, each copy with its own DXF comment so
every file differs (no cache hit between copies). For each worker count, in one run:
  full       a build without the cache: the baseline
  fill       a build that also fills a fresh cache (the cache's overhead)
  unchanged  a rebuild with the cache, nothing changed
  changed    a rebuild after --changed of the drawings got new bytes (target <= 0.05 x full)
and the parallel efficiency of `full` against one worker. The `changed` rebuild is
checked byte for byte against a clean build of the same inputs. The load average
is printed before and after: on a shared machine, trust the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from controller.search.build import BuildResult, build_index
from tests.corpus import DXF_CORPUS

ARTIFACT = ("manifest.json", "vectors.npy", "index.faiss")


def replicate(dest: Path, copies: int) -> list[Path]:
    """`copies` copies of every corpus drawing, each with a comment that makes it unique."""
    out = []
    for i in range(copies):
        for path in sorted(DXF_CORPUS.rglob("*.dxf")):
            target = dest / f"c{i:03d}" / path.relative_to(DXF_CORPUS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f"999\ncopy {i}\n".encode() + path.read_bytes())
            out.append(target)
    return out


def change(paths: list[Path], share: float, tag: str) -> int:
    """Give `share` of the drawings (evenly spread) new bytes; returns how many."""
    n = max(1, round(len(paths) * share))
    for path in paths[:: max(1, len(paths) // n)][:n]:
        path.write_bytes(f"999\nchanged {tag}\n".encode() + path.read_bytes())
    return n


def timed(build: Callable[[], BuildResult]) -> tuple[float, BuildResult]:
    start = time.perf_counter()
    result = build()
    return time.perf_counter() - start, result


def same_artifact(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ARTIFACT)


def measure(root: Path, paths: list[Path], workers: int, share: float) -> dict[str, float]:
    """The four builds for one worker count (see the module docstring), in seconds."""
    def build(out: str, cache: Path | None) -> Callable[[], BuildResult]:
        return lambda: build_index(root / "src", root / f"{out}-{workers}", workers=workers,
                                   cache=cache)

    cache = root / f"cache-{workers}"
    full, res = timed(build("full", None))
    fill, _ = timed(build("fill", cache))
    unchanged, again = timed(build("unchanged", cache))
    n = change(paths, share, f"w{workers}")
    changed, inc = timed(build("changed", cache))
    build("clean", None)()
    if again.parsed != 0 or inc.parsed != n:
        raise RuntimeError(f"parsed {again.parsed} unchanged / {inc.parsed} of {n} changed")
    return {"full": full, "fill": fill, "unchanged": unchanged, "changed": changed,
            "total": res.indexed + len(res.skipped), "parsed": inc.parsed,
            "same": same_artifact(root / f"changed-{workers}", root / f"clean-{workers}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--changed", type=float, default=0.01)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = replicate(root / "src", args.copies)
        print(f"{len(paths)} drawings ({args.copies} copies of {DXF_CORPUS}), "
              f"workers {counts}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"{'workers':>7} {'full s':>8} {'dwg/s':>7} {'eff':>5} {'fill s':>8} "
              f"{'x full':>6} {'unch. s':>8} {'x full':>6} {'chg. s':>8} {'x full':>6} "
              f"{'parsed':>6} {'same':>5}")
        one_worker: float | None = None
        for w in counts:
            row = measure(root, paths, w, args.changed)
            one_worker = row["full"] * w if one_worker is None else one_worker
            eff = one_worker / row["full"] / w
            print(f"{w:>7} {row['full']:>8.2f} {row['total'] / row['full']:>7.1f} {eff:>5.2f} "
                  f"{row['fill']:>8.2f} {row['fill'] / row['full']:>6.2f} "
                  f"{row['unchanged']:>8.2f} {row['unchanged'] / row['full']:>6.3f} "
                  f"{row['changed']:>8.2f} {row['changed'] / row['full']:>6.3f} "
                  f"{row['parsed']:>6} {row['same']!s:>5}")
        print(f"load average now {os.getloadavg()[0]:.1f}; target: changed rebuild <= 0.05 x "
              f"full; eff = (1-worker full) / (full x workers)"
              f"{'' if counts[0] == 1 else ' (first count taken as linear)'}")


if __name__ == "__main__":
    main()
