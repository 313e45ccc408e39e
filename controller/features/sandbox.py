"""Parsing untrusted drawings in separate processes with CPU-time and memory limits.

ezdxf is pure Python and hostile files can make it slow or hungry (DESIGN §9), so
every extraction runs in a pool process whose address space is capped
(RLIMIT_AS) and whose CPU time per drawing is capped by a virtual-time timer. A
process that dies is replaced; the caller gets an `InvalidDrawing`, never a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import resource
import signal
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.features.extract import Features, InvalidDrawing, features_from_bytes


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 10.0
    memory_bytes: int = 2 * 1024 * 1024 * 1024
    max_bytes: int = 50 * 1024 * 1024


class _CpuLimit(Exception):
    pass


def _init(memory_bytes: int) -> None:
    # Import the parser before any limit applies: an import cut short by the CPU timer
    # would leave a half-initialised module behind for every later drawing.
    import ezdxf
    import ezdxf.document
    import ezdxf.filemanagement
    import ezdxf.lldxf.tagger
    import ezdxf.recover

    ezdxf.new()  # type: ignore[attr-defined]  # loads lazily imported entity modules too
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _on_cpu_limit(_signum: int, _frame: Any) -> None:
    raise _CpuLimit


def _extract(data: bytes, version: str, limits: SandboxLimits) -> tuple[Any, ...]:
    signal.signal(signal.SIGVTALRM, _on_cpu_limit)
    signal.setitimer(signal.ITIMER_VIRTUAL, limits.cpu_seconds)
    try:
        f = features_from_bytes(data, version, max_bytes=limits.max_bytes)
        return ("ok", f.vector.tolist(), f.version, f.entities, f.truncated, f.recovered)
    except InvalidDrawing as exc:
        return ("err", str(exc), exc.code, exc.stage, exc.context, exc.status)
    except _CpuLimit:
        return ("err", f"parsing took more than {limits.cpu_seconds} s of CPU", "time_limit",
                "parse", {"cpuSeconds": limits.cpu_seconds}, 422)
    except MemoryError:
        return ("err", f"parsing needed more than {limits.memory_bytes} bytes of memory",
                "memory_limit", "parse", {"memoryBytes": limits.memory_bytes}, 422)
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)


def _result(raw: tuple[Any, ...]) -> Features:
    if raw[0] == "ok":
        return Features(np.asarray(raw[1], dtype=np.float32), raw[2], raw[3], raw[4], raw[5])
    raise InvalidDrawing(raw[1], code=raw[2], stage=raw[3], context=raw[4], status=raw[5])


class FeatureSandbox:
    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None) -> None:
        self.workers = workers
        self.limits = limits or SandboxLimits()
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init, initargs=(self.limits.memory_bytes,))

    def extract(self, data: bytes, version: str = "v4") -> Features:
        try:
            return _result(self._pool.submit(_extract, data, version, self.limits).result())
        except BrokenProcessPool:
            self._pool = self._new_pool()
            raise InvalidDrawing("the parser process died on this drawing", code="parser_crash",
                                 stage="parse") from None

    async def extract_async(self, data: bytes, version: str = "v4") -> Features:
        try:
            future = self._pool.submit(_extract, data, version, self.limits)
            return _result(await asyncio.wrap_future(future))
        except BrokenProcessPool:
            self._pool = self._new_pool()
            raise InvalidDrawing("the parser process died on this drawing", code="parser_crash",
                                 stage="parse") from None

    def map(self, items: list[tuple[str, bytes]], version: str) -> Any:
        """(name, Features | InvalidDrawing) as each finishes, for progress output."""
        futures = {self._pool.submit(_extract, data, version, self.limits): name
                   for name, data in items}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                yield name, _result(future.result())
            except InvalidDrawing as exc:
                yield name, exc
            except BrokenProcessPool:
                yield name, InvalidDrawing("the parser process died", code="parser_crash")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
