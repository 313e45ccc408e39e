"""What the run writer and the answer codec cost a request, without HTTP or a store.

Run: python -m bench.record_path_bench [--writes 20000] [--repeat 7]

1. The run writer: CPU time (the process's, both threads) per `RunWriter.write` of one
   run with a commit that does nothing, at 1 and 64 concurrent requests: the price of
   the group commit's hand-offs and of its bounds (the watchdog, the health check).
   CPU time rather than wall time: this machine's cores are shared.
2. `codec.dumps` of a 10-result search answer, with orjson and with json alone, with
   ordinary distances and with distances below 1e-4 (json alone then takes the pure-Python
   encoder: Python spells those floats differently from orjson).
Each figure is the median of --repeat rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
from typing import Any

from controller.worker import codec
from controller.worker.runwriter import RunWriter


class _Outcome:
    run_key = job_id = "r"


async def writer_cpu_us(writes: int, repeat: int) -> dict[int, float]:
    writer = RunWriter(lambda _: None)
    writer.start()
    out = {}
    try:
        for concurrency in (1, 64):
            rounds = []
            for _ in range(repeat):
                done, started = 0, time.process_time()
                while done < writes:
                    await asyncio.gather(*(writer.write([_Outcome()])  # type: ignore[list-item]
                                           for _ in range(concurrency)))
                    done += concurrency
                rounds.append((time.process_time() - started) / done * 1e6)
            out[concurrency] = statistics.median(rounds)
    finally:
        await writer.stop()
    return out


def answer(scale: float) -> dict[str, Any]:
    return {"runKey": "3e8a9f0c1d2b4e5f8a7b6c5d4e3f2a1b", "jobId": "job-42",
            "version": "1.0.0", "policyVersion": 7, "routeSource": "policy",
            "decision": "PENDING_REVIEW", "reviewStatus": "PENDING_REVIEW",
            "thresholds": {"similarity": {"value": 0.82, "source": "model"}},
            "metThreshold": True, "failedThresholds": [], "degraded": False,
            "latencyMs": 0.412, "parseMs": None, "searchMs": 0.031, "binding": None,
            "results": [{"id": f"part-{i}.dxf", "distance": 0.123456 * i * scale,
                         "score": 1 / (1 + 0.123456 * i * scale)} for i in range(10)]}


def dumps_us(body: dict[str, Any], repeat: int) -> float:
    return statistics.median(timeit.repeat(lambda: codec.dumps(body), number=2000,
                                           repeat=repeat)) / 2000 * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    cpu = asyncio.run(writer_cpu_us(args.writes, args.repeat))
    print("run writer, CPU us per write (no-op commit): "
          + ", ".join(f"{c} concurrent: {us:.1f}" for c, us in cpu.items()))
    backends = [("orjson", codec.orjson)] if codec.orjson is not None else []
    for name, module in [*backends, ("json", None)]:
        codec.orjson = module
        print(f"codec.dumps ({name}), us per 10-result answer: "
              f"{dumps_us(answer(1.0), args.repeat):.1f}; with distances below 1e-4: "
              f"{dumps_us(answer(1e-5), args.repeat):.1f}")


if __name__ == "__main__":
    main()
