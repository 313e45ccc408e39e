"""Alembic, driven from code: upgrade a store to a revision and read its current revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from controller.store.engine import READ_ONLY

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(app_role: str = "cadml_app") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["app_role"] = app_role
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # the package always ships migrations
    return head


def upgrade(engine: Engine, revision: str = "head", app_role: str = "cadml_app") -> None:
    cfg = _config(app_role)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


# What the runtime role may do, table by table (the migrations grant the same as they
# create tables; `grant_runtime_role` re-applies all of it, e.g. for a role made later).
APPEND_ONLY = frozenset({"release_record", "audit_event", "tenant"})


def grant_runtime_role(engine: Engine, role: str) -> list[str]:
    """Grant `role` what the runtime needs on PostgreSQL (idempotent); the tables it may
    write. Refuses a role row-level security would not apply to."""
    from sqlalchemy import text

    from controller.errors import UsageError
    from controller.store.tables import metadata

    if not role.replace("_", "").isalnum():
        raise UsageError(f"--app-role {role!r}: letters, digits and _ only")
    with engine.begin() as conn:
        found = conn.execute(text(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).first()
        if found is None:
            raise UsageError(f"role {role} does not exist: CREATE ROLE {role} LOGIN PASSWORD "
                             "'…' NOSUPERUSER NOBYPASSRLS, then run `cadml db upgrade` again")
        owned = conn.execute(text(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
            "AND tableowner = :r"), {"r": role}).scalar()
        if found.rolsuper or found.rolbypassrls or owned:
            raise UsageError(f"role {role} is a superuser, BYPASSRLS or owns the tables: "
                             "row-level security would not apply to it; use a plain role")
        for table in sorted(metadata.tables):
            verbs = "SELECT, INSERT" if table in APPEND_ONLY else \
                "SELECT, INSERT, UPDATE, DELETE"
            conn.execute(text(f"GRANT {verbs} ON {table} TO {role}"))
        conn.execute(text(f"GRANT SELECT ON alembic_version TO {role}"))
        conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    return sorted(t for t in metadata.tables if t not in APPEND_ONLY)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})  # a probe: no write lock on SQLite
        return MigrationContext.configure(conn).get_current_revision()
