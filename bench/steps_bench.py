"""Benchmark: what canary steps cost a Git-mode reconcile pass.

Run: python -m bench.steps_bench [--scale 400,2000] [--store URL]
For each size N, the same generated repository (models with a STABLE and a CANARY
version and a 90/10 policy) is reconciled twice into fresh stores: as generated, and
with `strategy.steps` (setWeight 5, pause, setWeight 10) on every policy. Prints the
first reconcile and the no-op pass in ms/resource for both, and the ratio. Target: the
steps cost at most 1.2x on the no-op pass (their walk is read once per pass with the
tenant's other rows, and written only when it moves).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.reconcile_bench import MAX, TENANT, _best, _git, _noop, _store
from bench.validate_bench import generate
from controller.reconcile.gitmode import reconcile_repo

STEPS = """  strategy:
    steps:
      - setWeight: 5
      - pause: {}
      - setWeight: 10
"""


def _repo(root: Path, resources: int, steps: bool) -> int:
    root.mkdir()
    n = generate(root, resources)
    if steps:
        for path in root.glob("*.yaml"):
            path.write_text(path.read_text().replace(
                "    - {version: 1.1.0, weight: 10}\n",
                "    - {version: 1.1.0, weight: 10}\n" + STEPS))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "bench")
    return n


def measure(size: int, url: str | None, steps: bool, repeat: int) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp, _store(url) as store:
        repo = Path(tmp) / "repo"
        n = _repo(repo, size, steps)
        start = time.perf_counter()
        first = reconcile_repo(store, str(repo), "HEAD", [], MAX)
        t_first = time.perf_counter() - start
        assert first.ok and first.changed
        with store.read(TENANT, "bench") as tx:
            walked = {s.phase for s in tx.observe().steps.values()}
        assert walked == ({"Paused"} if steps else set()), walked
        return n, t_first, _best(repeat, lambda: _noop(store, repo))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="400,2000")
    parser.add_argument("--store", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("resources  first ms/res (plain, steps)  no-op ms/res (plain, steps)  "
          "no-op steps/plain")
    for size in (int(s) for s in args.scale.split(",")):
        n, first_plain, noop_plain = measure(size, args.store, False, args.repeat)
        _, first_steps, noop_steps = measure(size, args.store, True, args.repeat)
        per = 1000.0 / n
        print(f"{n:9d}  {first_plain * per:10.3f} {first_steps * per:10.3f}      "
              f"{noop_plain * per:10.3f} {noop_steps * per:10.3f}      "
              f"{noop_steps / noop_plain:8.2f}x")


if __name__ == "__main__":
    main()
