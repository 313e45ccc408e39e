"""Where the worker's CPU goes per search request: a profile of the server process.

Run: python -m bench.worker_profile [--requests 3000] [--profile out.prof] [--top 30]
The worker of bench/worker_bench.py's HTTP figure (a SQLite store, the corpus index as
STABLE) serves in a process of its own; after a warm-up, the clients send `--requests`
vector searches. Printed: the server's CPU per request split by thread (Linux /proc: the
event loop's thread, the run writer's, …) and, with --profile, the event loop thread's
cProfile table (wall time inside each function, so waits for the GIL count too; run
without --profile for CPU figures undistorted by the profiler).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.worker_bench import _free_port, _http_store, _load, _wait_for_port


def _serve_profiled(tmp: str, port: int, out: str) -> None:
    """The worker server; the profiler starts on SIGUSR1 (after the warm-up)."""
    import cProfile

    from aiohttp import web

    from bench.worker_bench import _apps
    from controller.store import Store
    from controller.store.engine import make_engine

    app = _apps(Store(make_engine(f"sqlite:///{tmp}/w.db")))["worker"]
    profiler = cProfile.Profile()
    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    try:
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    finally:
        profiler.disable()
        if out:
            profiler.dump_stats(out)


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process (Linux /proc), by thread name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        name = "main (event loop)" if tid == str(pid) else f"thread {tid}"
        out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", default="", help="write the cProfile stats here")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # tmp, port: the child
    args = parser.parse_args()
    if args.serve:
        _serve_profiled(args.serve[0], int(args.serve[1]), args.profile)
        return
    with tempfile.TemporaryDirectory() as tmp:
        store, vector = _http_store(tmp)
        store.dispose()
        port = _free_port()
        child = subprocess.Popen([sys.executable, "-m", "bench.worker_profile", "--serve", tmp,
                                  str(port), "--profile", args.profile])
        try:
            _wait_for_port(port)
            body = {"vector": vector, "topK": 10}
            asyncio.run(_load(port, body, min(args.requests, 400), args.concurrency))
            if args.profile:
                child.send_signal(signal.SIGUSR1)
                time.sleep(0.2)
            before = _thread_cpu(child.pid)
            asyncio.run(_load(port, body, args.requests, args.concurrency))
            after = _thread_cpu(child.pid)
        finally:
            child.send_signal(signal.SIGINT)
            child.wait(30)
    per = {name: (cpu - before.get(name, 0.0)) / args.requests * 1e3
           for name, cpu in after.items() if cpu > before.get(name, 0.0)}
    print(f"worker server CPU per request ({args.requests} requests, {args.concurrency} "
          f"clients): {sum(per.values()):.3f} ms = " +
          ", ".join(f"{name} {ms:.3f} ms" for name, ms in sorted(per.items())))
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
