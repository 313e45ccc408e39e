"""Benchmark: Git-mode reconcile of 1,000 resources (first pass and no-op pass) vs validation.

Run: python -m bench.reconcile_bench [--resources N] [--store URL]
Builds a Git repository of N generated resources (models, a STABLE and a CANARY
version each, a policy), then times in one run: `cadml validate --git-ref HEAD`
of the tree, a first reconcile into an empty store, and a second (no-op) pass.
Target: the no-op pass costs at most 2x validation.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.validate_bench import generate
from controller.reconcile.gitmode import reconcile_repo
from controller.sources import collect_git
from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade
from controller.validation import validate_files

MAX = 8 * 1024 * 1024


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
                        "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com",
                        "PATH": "/usr/bin:/bin:/usr/local/bin"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        n = generate(repo, args.resources)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "bench")
        store = Store(make_engine(args.store or f"sqlite:///{Path(tmp) / 'bench.db'}"))
        upgrade(store.engine)

        def validate() -> None:
            files, _ = collect_git(str(repo), "HEAD", [], MAX)
            assert validate_files(files, datetime.now(UTC)).ok

        best_validate = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            validate()
            best_validate = min(best_validate, time.perf_counter() - start)
        start = time.perf_counter()
        first = reconcile_repo(store, str(repo), "HEAD", [], MAX)
        t_first = time.perf_counter() - start
        assert first.ok and first.changed
        best_noop = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            again = reconcile_repo(store, str(repo), "HEAD", [], MAX)
            best_noop = min(best_noop, time.perf_counter() - start)
            assert again.ok and not again.changed
        store.dispose()
    per = 1000.0 / n
    print(f"resources: {n}")
    print(f"validate --git-ref HEAD: {best_validate:.3f} s ({best_validate * per:.3f} ms/resource)")
    print(f"first reconcile:         {t_first:.3f} s ({t_first * per:.3f} ms/resource) "
          f"ratio {t_first / best_validate:.2f}x validation")
    print(f"no-op reconcile:         {best_noop:.3f} s ({best_noop * per:.3f} ms/resource) "
          f"ratio {best_noop / best_validate:.2f}x validation (target <= 2x)")


if __name__ == "__main__":
    main()
