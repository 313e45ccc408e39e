"""Run keys: 32 hex digits of os.urandom, as unique and unguessable as uuid4's, at a third
of its cost on every request (uuid4 builds a UUID object around the same random bytes;
bench/worker_bench.py's HTTP figure). A forked worker draws its own bytes: nothing is
kept per process, so nothing repeats across workers, forks or restarts, and a key tells
nothing about the worker's request count or order."""

from __future__ import annotations

import os


def new_run_key() -> str:
    """A fresh run key (the store's unique (tenant, run_key))."""
    return os.urandom(16).hex()
