"""Stores on real engines: a SQLite file, and PostgreSQL when CADML_TEST_PG_URL names a server.

The PostgreSQL store connects as `cadml_app`, a role that owns nothing and is no
superuser, so row-level security applies as in production; migrations and raw
"behind the application's back" SQL use the admin URL. Locally the PostgreSQL
cases skip when no server is configured; in CI (CI=true) a missing server fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from controller.store import Store
from controller.store.engine import make_engine
from controller.store.migrate import upgrade

PG_URL = os.environ.get("CADML_TEST_PG_URL", "")
APP_ROLE = "cadml_app"
_TEMPLATE = f"cadml_test_template_{os.getpid()}"  # one per test session: sessions may overlap


def pg_required() -> None:
    if not PG_URL:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the PostgreSQL tests: CADML_TEST_PG_URL is not set")
        pytest.skip("no PostgreSQL (set CADML_TEST_PG_URL, see .ci/start-postgres)")


def _admin(database: str = "postgres") -> Engine:
    url = make_url(PG_URL).set(database=database)
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    pg_required()
    admin = _admin()
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {_TEMPLATE}"))
        c.execute(text(f"CREATE DATABASE {_TEMPLATE}"))
        c.execute(text(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') "
            f"THEN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; END IF; END $$"))
    engine = make_engine(make_url(PG_URL).set(database=_TEMPLATE).render_as_string(False))
    upgrade(engine, app_role=APP_ROLE)
    engine.dispose()
    yield _TEMPLATE
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)"))
    admin.dispose()


def new_pg_database(template: str | None) -> str:
    name = f"cadml_t_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")))
    admin.dispose()
    return name


def drop_pg_database(name: str) -> None:
    admin = _admin()
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


class Backend:
    """A migrated store plus an admin engine that bypasses the application."""

    def __init__(self, kind: str, app_url: str, admin_url: str,
                 database: str | None = None) -> None:
        self.kind = kind
        self.app_url = app_url
        self.admin_url = admin_url
        self.database = database  # a PostgreSQL database of its own, dropped on close
        self.store = Store(make_engine(app_url))
        self.admin = make_engine(admin_url)

    def close(self) -> None:
        self.store.dispose()
        self.admin.dispose()
        if self.database is not None:
            drop_pg_database(self.database)


def open_sqlite(path: Path, template: Path | None = None) -> Backend:
    """A migrated SQLite store in the file `path`: a copy of the migrated file `template`
    where given (many stores in one test), else migrated here."""
    if template is not None:
        shutil.copyfile(template, path)
    url = f"sqlite:///{path}"
    b = Backend("sqlite", url, url)
    if template is None:
        upgrade(b.store.engine)
    return b


def open_postgresql(template: str) -> Backend:
    """A new PostgreSQL database copied from the migrated `template`; the store connects as
    the application role. `close()` drops the database."""
    db = new_pg_database(template)
    base = make_url(PG_URL).set(database=db)
    return Backend("postgresql", base.set(username=APP_ROLE, password=None).render_as_string(False),
                   base.render_as_string(False), database=db)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The same case on both engines."""
    b = (open_sqlite(tmp_path / "store.db") if request.param == "sqlite"
         else open_postgresql(request.getfixturevalue("pg_template")))
    yield b
    b.close()


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """A case about SQLite alone (polling instead of LISTEN/NOTIFY, file locking)."""
    b = open_sqlite(tmp_path / "store.db")
    yield b
    b.close()


@pytest.fixture
def pg_backend(pg_template: str) -> Iterator[Backend]:
    """A case about PostgreSQL alone (row-level security, grants, LISTEN/NOTIFY)."""
    b = open_postgresql(pg_template)
    yield b
    b.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


def refuse_version(backend: Backend, semver: str) -> None:
    """A rule inside the database the planner cannot foresee: inserting this semver fails
    with a unique violation, as a stale row would make it (deterministic: a retry fails
    the same way)."""
    message = "UNIQUE constraint failed: model_version.tenant_id, model_version.model_id, " \
              "model_version.version"
    with backend.admin.begin() as c:
        if backend.kind == "sqlite":
            c.execute(text(f"CREATE TRIGGER refuse_version BEFORE INSERT ON model_version "
                           f"WHEN NEW.version = '{semver}' "
                           f"BEGIN SELECT RAISE(ABORT, '{message}'); END"))
            return
        c.execute(text(f"CREATE FUNCTION refuse_version() RETURNS trigger LANGUAGE plpgsql AS "
                       f"$$ BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = "
                       f"'unique_violation'; END $$"))
        c.execute(text(f"CREATE TRIGGER refuse_version BEFORE INSERT ON model_version "
                       f"FOR EACH ROW WHEN (NEW.version = '{semver}') "
                       f"EXECUTE FUNCTION refuse_version()"))


def stop_refusing(backend: Backend) -> None:
    """Drop what `refuse_version` installed: the cause of the conflict is gone."""
    on = "" if backend.kind == "sqlite" else " ON model_version"
    with backend.admin.begin() as c:
        c.execute(text(f"DROP TRIGGER refuse_version{on}"))
