"""Engines for the store: where the embedded SQLite file lives and how connections behave.

SQLite: foreign keys on, WAL journal, and write transactions that take the write
lock up front (BEGIN IMMEDIATE) so two writers queue instead of failing halfway;
a connection marked read-only (`READ_ONLY` execution option) begins a deferred
transaction with `query_only` set instead: in WAL it reads one snapshot and neither
waits for nor blocks the writer. A `timeout` in the URL's query (seconds, default 30)
bounds how long a writer waits for the lock before `database is locked`.
PostgreSQL: psycopg 3; every transaction is scoped to one tenant with
`set_config('app.tenant_id', …, true)`, which ends at COMMIT (safe with pools).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from controller.errors import UsageError

ENV_URL = "CADML_STORE_URL"
READ_ONLY = "cadml_read_only"  # connection execution option: this transaction only reads


def default_sqlite_path(env: dict[str, str] | None = None) -> Path:
    """`$CADML_HOME/cadml.db`, else `$XDG_DATA_HOME/cadml/cadml.db`, else ~/.local/share/cadml."""
    env = dict(os.environ) if env is None else env
    if env.get("CADML_HOME"):
        return Path(env["CADML_HOME"]) / "cadml.db"
    base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "cadml" / "cadml.db"


def resolve_url(cli_value: str | None, env: dict[str, str] | None = None) -> str:
    """--store beats CADML_STORE_URL beats the embedded SQLite default."""
    env = dict(os.environ) if env is None else env
    if cli_value:
        return cli_value
    if env.get(ENV_URL):
        return env[ENV_URL]
    return f"sqlite:///{default_sqlite_path(env)}"


URL_FORMS = "sqlite:///PATH or postgresql://USER@HOST/DB"


def parse_store_url(url: str) -> URL:
    """A store URL cadml can open (`postgres://` is read as `postgresql://`), or a usage
    error naming it (password hidden) and the forms that work."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"store URL {url!r} is not a URL: use {URL_FORMS}") from None
    if parsed.drivername == "postgres":
        parsed = parsed.set(drivername="postgresql")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(f"store URL {parsed.render_as_string(hide_password=True)}: "
                         f"{parsed.get_backend_name()!r} is not supported; cadml keeps its "
                         f"store in SQLite or PostgreSQL: use {URL_FORMS}")
    return parsed


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (None: not SQLite, or in memory)."""
    parsed = parse_store_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str, *, create_dirs: bool = True, **kwargs: Any) -> Engine:
    """An engine for `url`; a SQLite file's folder is made unless `create_dirs` is false."""
    parsed = parse_store_url(url)
    url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and create_dirs:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        timeout = float(parsed.query.get("timeout", 30))  # type: ignore[arg-type]
        engine = create_engine(url, connect_args={"timeout": timeout}, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            read_only = bool(conn.get_execution_options().get(READ_ONLY))
            info = conn.connection.info  # kept with the pooled DBAPI connection
            if info.get("query_only") is not read_only:  # only when it changes: a statement
                conn.exec_driver_sql(f"PRAGMA query_only = {int(read_only)}")  # per write
                info["query_only"] = read_only
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, **kwargs)
