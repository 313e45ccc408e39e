"""Progress of an index build: drawings/s and an ETA, as lines for stderr.

The rate counts drawings parsed in this run only, from the moment the cache hits
were served: reused vectors cost nothing and would make the ETA a lie.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BuildTick:
    """One drawing finished: `parsed` is False when its vector came from the cache."""

    done: int
    total: int
    name: str
    what: str
    parsed: bool


def rate_and_eta(parsed: int, to_parse: int, elapsed_s: float) -> tuple[float, float | None]:
    """Purely computational: drawings/s so far and seconds left (None before any rate)."""
    if parsed <= 0 or elapsed_s <= 0:
        return 0.0, None
    rate = parsed / elapsed_s
    return rate, max(to_parse - parsed, 0) / rate


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA ?"
    s = round(seconds)
    return f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressMeter:
    """Turns ticks into stderr lines; `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.reused = 0
        self.parsed = 0

    def lines(self, tick: BuildTick) -> list[str]:
        if not tick.parsed:
            self.reused += 1
            if self.parsed == 0:
                self.start = self.clock()  # parsing starts after the last hit
            return []
        out = []
        if self.parsed == 0 and self.reused:
            out.append(f"reused {self.reused} cached feature vectors, parsing "
                       f"{tick.total - self.reused}")
        self.parsed += 1
        rate, eta = rate_and_eta(self.parsed, tick.total - self.reused, self.clock() - self.start)
        width = 30
        filled = tick.done * width // tick.total
        out.append(f"[{'#' * filled}{'-' * (width - filled)}] {tick.done}/{tick.total} "
                   f"{rate:.1f} drawings/s {format_eta(eta)} {tick.name}: {tick.what}")
        return out
