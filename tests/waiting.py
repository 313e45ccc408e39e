"""Waiting for a positive signal in async tests (never sleep-then-assert)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def until(probe: Any, timeout: float) -> Any:
    """Poll `probe` (async) until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def until_sync(probe: Any, timeout: float) -> Any:
    """`until` for a plain (blocking) probe, in tests that race threads."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
