"""Scratch stores for the benchmarks: a SQLite file in a temporary folder, or a fresh
PostgreSQL database created from an admin URL and dropped afterwards."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade


@contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}"))
        upgrade(store.engine)
        try:
            yield store
        finally:
            store.dispose()


@contextmanager
def pg_store(admin_url: str) -> Iterator[Store]:
    name = f"cadml_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    store = Store(make_engine(make_url(admin_url).set(database=name).render_as_string(False)))
    try:
        upgrade(store.engine)
        yield store
    finally:
        store.dispose()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
