"""Run keys: 32 hex digits, unique across workers and restarts, cheap on every request.

A key is a per-process random prefix (64 bits from os.urandom, drawn again in a forked
child) followed by a per-process counter: unique within a process by construction, and
between processes unless two of them draw the same prefix (about 1 in 2**64 per pair).
It replaces uuid4 on the search path, where uuid4 (an os.urandom call and a UUID object
per run) cost as much as the routing of the request.
"""

from __future__ import annotations

import itertools
import os


class _Keys:
    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()  # next() on it is atomic under the GIL

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_KEYS = _Keys()
os.register_at_fork(after_in_child=_KEYS.reseed)


def new_run_key() -> str:
    """A fresh run key (the store's unique (tenant, run_key))."""
    return _KEYS.next()
